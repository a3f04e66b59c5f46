"""FusionClassifier / UnimodalClassifier: learning through the CLI, bad-input errors, the
confusion-matrix picture, and lifting a trained encoder out into another task."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file, save_file

from datamodules import SyntheticMultimodalDataModule, collate
from experiments.cli import FusegenCLI
from fusion import (
    AttentionFusion,
    ConcatFusion,
    FusionClassifier,
    LeNetImageEncoder,
    MelCNNAudioEncoder,
    SmallCNNImageEncoder,
    UnimodalClassifier,
)

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def synthetic_batch(n: int = 4) -> dict:
    dm = SyntheticMultimodalDataModule(num_train=n, num_val=n, num_test=n, batch_size=n)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def small_model(head=ConcatFusion, **kwargs) -> FusionClassifier:
    encoders = {"image": SmallCNNImageEncoder(width=8, out_dim=16),
                "audio": MelCNNAudioEncoder(n_mels=20, width=8, out_dim=16)}
    return FusionClassifier(encoders, head, num_classes=10, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[FusegenCLI, Path]:
    """Image + audio + text concat fusion on synthetic data, through the CLI and the shipped config."""
    root = tmp_path_factory.mktemp("runs")
    cli = FusegenCLI(args=[
        "fit", "--config", str(REPO / "experiments/fusion/synthetic-concat.yaml"), *QUIET,
        "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "3",
        "--data.init_args.num_train", "1000", "--data.init_args.num_val", "200", "--data.init_args.num_test", "300",
        "--model.init_args.encoders.image.init_args.width", "8",
        "--model.init_args.encoders.audio.init_args.width", "8",
    ])
    return cli, root


def test_fusion_learns_on_synthetic_data_and_draws_a_confusion_matrix(trained):
    cli, root = trained
    acc = float(cli.trainer.callback_metrics["val/acc"])
    assert acc > 0.35, f"val accuracy {acc:.2f} (chance 0.10)"
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert metrics["test/acc"] > 0.35 and 0 < metrics["test/f1"] <= 1
    png = root / "synthetic-concat" / "confusion_matrix.png"
    assert cli.model.confusion_png == png and png.stat().st_size > 1000
    assert list((root / "synthetic-concat" / "tensorboard").rglob("events.out.tfevents*"))
    # Robustness switch: removing modalities at test time still works (and costs accuracy).
    cli.model.drop_at_test = ["image", "text"]
    no_image = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert no_image["test/acc"] < metrics["test/acc"]
    assert (root / "synthetic-concat" / "confusion_matrix_no-image_no-text.png").is_file()
    cli.model.drop_at_test = []


def test_encoder_lifted_out_of_checkpoint_serves_another_task(trained, tmp_path):
    cli, root = trained
    ckpt = root / "synthetic-concat" / "checkpoints" / "last.ckpt"
    model = FusionClassifier.load_from_checkpoint(ckpt)  # rebuilt from the config stored by the CLI
    image_encoder = model.encoders["image"]
    # Save the encoder alone with safetensors and load it into a fresh one of the same class.
    save_file(image_encoder.state_dict(), tmp_path / "image_encoder.safetensors")
    fresh = SmallCNNImageEncoder(width=8, out_dim=64)
    fresh.load_state_dict(load_file(tmp_path / "image_encoder.safetensors"))
    fresh.freeze()
    # A different task: is the digit-like class >= 5? A linear probe on the frozen encoder.
    dm = SyntheticMultimodalDataModule(num_train=600, num_val=300, num_test=300, batch_size=100, seed=7)
    dm.setup()

    def features_and_labels(split: str):
        batch = next(iter(torch.utils.data.DataLoader(dm.splits[split], batch_size=len(dm.splits[split]), collate_fn=collate)))
        with torch.no_grad():
            return fresh(batch["image"]).mean(1), (batch["label"] >= 5).long()

    x, y = features_and_labels("train")
    xt, yt = features_and_labels("test")
    with torch.no_grad():
        torch.testing.assert_close(fresh(dm.splits["test"][0]["image"][None]),
                                   image_encoder.eval()(dm.splits["test"][0]["image"][None]))
    probe = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        opt.step()
    acc = (probe(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.6, f"probe accuracy {acc:.2f} (chance 0.5)"
    # And as the encoder of a unimodal model in a new LightningModule.
    uni = UnimodalClassifier("image", fresh, num_classes=2)
    assert uni(synthetic_batch()).shape == (4, 2)
    assert not any(p.requires_grad for p in uni.encoders["image"].parameters())


def test_missing_modality_error_names_it_and_the_expected_shape():
    model = small_model()
    batch = synthetic_batch()
    del batch["audio"]
    with pytest.raises(KeyError, match=r"'audio'.*expected \[B, \*\] or \[B, 1, \*\] or \[B, 1, \*, \*\]"):
        model(batch)
    # ...but a modality the mask marks absent for the whole batch may be left out.
    batch["present"]["audio"] = torch.zeros(4, dtype=torch.bool)
    assert torch.isfinite(model(batch)).all()


def test_wrong_shape_error_names_modality_expected_and_actual():
    model = FusionClassifier({"image": LeNetImageEncoder()}, ConcatFusion, num_classes=10)
    batch = synthetic_batch()
    batch["image"] = torch.randn(4, 3, 28, 28)
    with pytest.raises(ValueError, match=r"'image' input has shape \[4, 3, 28, 28\].*expects \[B, 1, \*, \*\]"):
        model(batch)


@pytest.mark.parametrize("head", [ConcatFusion, AttentionFusion])
def test_modality_dropout_and_missing_samples_give_finite_loss(head):
    pl.seed_everything(0)
    model = small_model(head, modality_dropout=0.5)
    batch = synthetic_batch(8)
    batch["present"]["image"][:3] = False
    model.train()
    present = model.presence(batch)
    assert torch.stack(list(present.values())).any(0).all()  # every sample keeps a modality
    loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
    loss.backward()
    assert torch.isfinite(loss)


def test_optimizer_and_scheduler_come_from_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = FusegenCLI(args=[
        "--config", str(REPO / "experiments/trainer.yaml"),
        "--config", str(REPO / "experiments/fusion/avmnist-multibench-lf.yaml"),
        "--lr_scheduler", "null",
        "--model.init_args.lr_scheduler", '{"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 5}}',
    ], run=False)
    conf = cli.model.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.SGD)
    assert conf["optimizer"].defaults["lr"] == 0.1 and conf["optimizer"].defaults["weight_decay"] == 1e-4
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_cosine_schedule_follows_the_trainers_length(tmp_path):
    """Warm-up then cosine decay to 0, sized from whatever max_epochs the Trainer was given."""
    lrs: list[float] = []

    class RecordLR(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    dm = SyntheticMultimodalDataModule(num_train=80, num_val=16, num_test=16, batch_size=16)  # 5 batches/epoch
    model = small_model(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), cosine_schedule=True, warmup_fraction=0.2)
    trainer = pl.Trainer(max_epochs=4, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordLR()])
    trainer.fit(model, datamodule=dm)
    assert len(lrs) == 20
    peak = lrs.index(max(lrs))
    assert peak == 4 and max(lrs) == pytest.approx(1e-2)          # 20% of 20 steps of warm-up
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rising, then
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # falling to ~0 at the end
    assert lrs[-1] < 0.02 * max(lrs)
    with pytest.raises(ValueError, match="either lr_scheduler or cosine_schedule"):
        small_model(cosine_schedule=True, lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))


def test_unimodal_losses_teach_each_encoder_to_classify_alone(tmp_path):
    """With unimodal_loss_weight the per-modality heads learn (above chance on their modality
    alone) and add to the training loss; a batch without a modality still gives every head a grad."""
    pl.seed_everything(0)
    dm = SyntheticMultimodalDataModule(num_train=600, num_val=200, num_test=16, batch_size=32)
    model = small_model(unimodal_loss_weight=1.0, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    trainer = pl.Trainer(max_epochs=6, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert {"train/loss_image", "train/loss_audio"} <= set(trainer.callback_metrics)
    model.eval()
    correct, total = {"image": 0, "audio": 0}, 0
    from fusion.heads import pooled_features
    with torch.no_grad():
        for batch in dm.val_dataloader():
            present = model.presence(batch)
            feats, masks = model.encode(batch, present)
            for (m, head), z in zip(model.unimodal_heads.items(), pooled_features(feats, ["image", "audio"], present, masks)):
                correct[m] += int((head(z).argmax(-1) == batch["label"]).sum())
            total += len(batch["label"])
    for m, c in correct.items():
        assert c / total > {"image": 0.18, "audio": 0.3}[m], f"{m} head alone: {c / total:.2f} (chance 0.10)"
    model = small_model(unimodal_loss_weight=1.0).train()  # (outside a Trainer: self.log only warns)
    batch = synthetic_batch(8)
    batch["present"]["audio"][:] = False
    model.training_step(batch, 0).backward()
    assert all(p.grad is not None for p in model.unimodal_heads.parameters())
    with pytest.raises(ValueError, match="unimodal_loss_weight must be >= 0, got -1"):
        small_model(unimodal_loss_weight=-1)
