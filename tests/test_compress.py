"""fusion.distill and fusion.compress: distillation loss and training, int8 quantisation, scheduled pruning."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from tiny_encoders import Flat
from torch import nn

from fusion import AttentionFusion, ConcatFusion, FusionClassifier, LeNetImageEncoder
from fusion.compress import (
    ScheduledPruning,
    cubic_sparsity,
    parameter_count,
    quantize_int8,
    size_on_disk,
    sparsity,
)
from fusion.distill import DistillationClassifier, distillation_loss, load_teacher


def toy_data(n: int, seed: int) -> dict:
    """4 classes: the label is the quadrant of (x0, x1) of ``a``; ``b`` is a noisy copy of it."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 6, generator=g)
    label = (a[:, 0] > 0).long() + 2 * (a[:, 1] > 0).long()
    return {"a": a, "b": a + 0.5 * torch.randn(n, 6, generator=g), "label": label}


def batches(data: dict, size: int = 50) -> list[dict]:
    return [{k: v[i:i + size] for k, v in data.items()} for i in range(0, len(data["label"]), size)]


def accuracy(model: nn.Module, data: dict) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data).argmax(-1) == data["label"]).float().mean())


def quiet_trainer(max_epochs: int, tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, accelerator="cpu", **kwargs)


def test_distillation_loss_on_a_hand_computed_case():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[2 * math.log(3.0), 0.0]])
    total, soft, hard = distillation_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=0.25)
    # teacher at T=2: softmax([ln 3, 0]) = [3/4, 1/4]; student: [1/2, 1/2]
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(soft) == pytest.approx(4.0 * kl, rel=1e-6)  # times T^2
    assert float(hard) == pytest.approx(math.log(2.0), rel=1e-6)
    assert float(total) == pytest.approx(0.25 * 4.0 * kl + 0.75 * math.log(2.0), rel=1e-6)
    same, soft0, _ = distillation_loss(teacher, teacher, torch.tensor([0]), 2.0, 1.0)
    assert float(soft0) == pytest.approx(0.0, abs=1e-7) and float(same) == pytest.approx(0.0, abs=1e-7)


def test_a_small_student_learns_from_its_teacher(tmp_path):
    torch.manual_seed(0)
    train, test = toy_data(600, 0), toy_data(400, 1)
    teacher = FusionClassifier({"a": Flat(6, 64), "b": Flat(6, 64)}, lambda d: ConcatFusion(d, out_dim=64),
                               num_classes=4, hidden_dims=[64], dropout=0.0)
    opt = torch.optim.Adam(teacher.parameters(), lr=0.01)
    teacher.train()
    for _ in range(20):
        for b in batches(train):
            opt.zero_grad()
            nn.functional.cross_entropy(teacher(b), b["label"]).backward()
            opt.step()
    teacher_acc = accuracy(teacher, test)
    assert teacher_acc > 0.9
    student = DistillationClassifier({"a": Flat(6, 8), "b": Flat(6, 8)}, ConcatFusion, num_classes=4, teacher=teacher,
                                     temperature=2.0, alpha=0.7, dropout=0.0,
                                     optimizer=lambda p: torch.optim.Adam(p, lr=0.02))
    assert parameter_count(student) * 4 <= parameter_count(teacher)
    before = accuracy(student, test)
    student.train()
    quiet_trainer(15, tmp_path, enable_checkpointing=False).fit(
        student, train_dataloaders=torch.utils.data.DataLoader(batches(train), batch_size=None, shuffle=True))
    after = accuracy(student, test)
    assert before < 0.6 and after > 0.85 and after >= teacher_acc - 0.1
    assert "teacher" not in " ".join(student.state_dict())  # the teacher is not saved with the student


def test_the_teacher_is_rebuilt_from_its_checkpoint_as_data(tmp_path):
    torch.manual_seed(0)
    config = {"_class_path": "fusion.FusionClassifier", "_instantiator": "pytorch_lightning.cli.instantiate_module",
              "encoders": {"image": {"class_path": "fusion.LeNetImageEncoder",
                                     "init_args": {"channels": 2, "additional_layers": 1, "out_dim": 4}}},
              "fusion": {"class_path": "fusion.ConcatFusion"}, "num_classes": 3}
    built = FusionClassifier({"image": LeNetImageEncoder(channels=2, additional_layers=1, out_dim=4)}, ConcatFusion,
                             num_classes=3).eval()
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": built.state_dict(), "hyper_parameters": config,
                "pytorch-lightning_version": pl.__version__}, path)
    teacher = load_teacher(path)
    x = {"image": torch.randn(2, 1, 28, 28)}
    assert torch.allclose(teacher(x), built(x)) and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(FileNotFoundError, match="teacher_checkpoint = .*nope.ckpt.*train the teacher"):
        load_teacher(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        DistillationClassifier({"a": Flat(2, 2)}, ConcatFusion, num_classes=2)


@pytest.mark.parametrize("backend", ["ao", "torchao"])
def test_int8_model_is_close_to_fp32_and_smaller(backend):
    torch.manual_seed(0)
    model = FusionClassifier({"a": Flat(64, 256), "b": Flat(64, 256)}, lambda d: ConcatFusion(d, out_dim=256),
                             num_classes=10, hidden_dims=[256], dropout=0.0).eval()
    x = {"a": torch.randn(64, 64), "b": torch.randn(64, 64)}
    int8 = quantize_int8(model, backend)
    with torch.no_grad():
        ref, got = model(x), int8(x)
    assert float((got - ref).norm() / ref.norm()) < 0.05  # int8 rounding: a few percent of the logits
    assert size_on_disk(int8) < 0.4 * size_on_disk(model)
    assert model.classifier[-1].weight.dtype == torch.float32  # the original is left alone


def test_pruning_follows_its_schedule_and_is_permanent_in_checkpoints(tmp_path):
    assert [round(cubic_sparsity(e, 0.8, 0, 2), 4) for e in range(4)] == [round(0.8 * (1 - (2 / 3) ** 3), 4),
                                                                         round(0.8 * (1 - (1 / 3) ** 3), 4), 0.8, 0.8]
    torch.manual_seed(0)
    model = FusionClassifier({"a": Flat(6, 32), "b": Flat(6, 32)}, lambda d: AttentionFusion(d, d_model=16),
                             num_classes=4, hidden_dims=[32], dropout=0.0)
    seen: list[float] = []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, module):  # runs after the pruning callback's own hook
            seen.append(sparsity(module))

    pruning = ScheduledPruning(final_sparsity=0.8, start_epoch=0, end_epoch=2)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(4, tmp_path, callbacks=[pruning, Record(), ckpt]).fit(
        model, train_dataloaders=torch.utils.data.DataLoader(batches(toy_data(200, 0)), batch_size=None))
    assert seen == pytest.approx([cubic_sparsity(e, 0.8, 0, 2) for e in range(4)], abs=0.01)
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert not [k for k in state if k.endswith(("_orig", "_mask"))]
    weights = [v for k, v in state.items() if k.endswith(".weight") and v.dim() == 2 and "out_proj" not in k]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.8, abs=0.01)
    assert not [k for k, _ in model.named_buffers() if k.endswith("_mask")]  # permanent in the model too
    assert size_on_disk(model, sparse=True) < size_on_disk(model)


def test_the_benchmark_prunes_before_the_last_epoch_and_reuses_only_matching_runs(tmp_path):
    from experiments.benchmarks.compress import pruning_window, reusable

    assert pruning_window(1) == (0, 0) and pruning_window(2) == (0, 0) and pruning_window(5) == (1, 3)
    for max_epochs in range(2, 13):
        start, end = pruning_window(max_epochs)
        assert 0 <= start <= end <= max_epochs - 2  # at least one epoch trains after the last pruning step
        assert cubic_sparsity(end, 0.8, start, end) == 0.8 and cubic_sparsity(start, 0.8, start, end) > 0
    done = tmp_path / "finished.json"
    assert not reusable(done, ["--trainer.max_epochs", "5"])  # never finished: trained again
    done.write_text('{"overrides": ["--trainer.max_epochs", "5"], "seconds": 3}')
    assert reusable(done, ["--trainer.max_epochs", "5"])
    assert not reusable(done, ["--trainer.max_epochs", "2"])  # another budget: trained again
    done.write_text("{not json")
    assert not reusable(done, ["--trainer.max_epochs", "5"])
