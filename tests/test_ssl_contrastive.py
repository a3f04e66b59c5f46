"""Contrastive pretraining: the losses against hand-computed values, learning without labels,
retrieval above chance, encoders carried into classifiers, and the DDP gather."""

from __future__ import annotations

import functools
import math
import os
import socket
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from fusion import ConcatFusion, ContrastivePretrainer, FusionClassifier, UnimodalClassifier
from fusion.contrastive import (
    MAX_LOGIT_SCALE,
    contrastive_loss,
    gather_with_grad,
    infonce_loss,
    retrieval_metrics,
    siglip_loss,
)
from fusion.pretrained import Configurable

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False)


class VectorEncoder(Configurable, nn.Module):
    """A tiny encoder of flat vectors: ``[B, D_in] -> [B, 1, out_dim]`` (the encoder contract)."""

    def __init__(self, in_dim: int, out_dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 64), nn.ReLU(), nn.Linear(64, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).unsqueeze(1)


def paired_views(n: int, seed: int, labels: bool = True) -> list[dict]:
    """Two modalities seeing one latent per instance through different random maps plus noise;
    the class is the latent's nearest of 4 centres (so class retrieval has a meaning too)."""
    g = torch.Generator().manual_seed(1234)
    map_a, map_b, centres = torch.randn(8, 12, generator=g), torch.randn(8, 20, generator=g), torch.randn(4, 8,
                                                                                                          generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(4, (n,), generator=g)
    z = 1.5 * centres[y] + torch.randn(n, 8, generator=g)
    a = z @ map_a + 0.3 * torch.randn(n, 12, generator=g)
    b = torch.tanh(z @ map_b) + 0.1 * torch.randn(n, 20, generator=g)
    rows = [{"a": a[i], "b": b[i]} for i in range(n)]
    if labels:
        for i, r in enumerate(rows):
            r["label"] = y[i]
    return rows


def make_pretrainer(**kwargs) -> ContrastivePretrainer:
    torch.manual_seed(0)
    return ContrastivePretrainer({"a": VectorEncoder(12), "b": VectorEncoder(20)}, embed_dim=16,
                                 optimizer=functools.partial(torch.optim.Adam, lr=3e-3), **kwargs)


# ---------------------------------------------------------------------------------------------- losses
def test_infonce_equals_the_hand_computed_value() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    b = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    s = math.log(1 / 0.07)
    sims = [[sum(x * y for x, y in zip(ra, rb)) for rb in b.tolist()] for ra in a.tolist()]
    scale = 1 / 0.07

    def ce(row: list[float], target: int) -> float:
        return -(scale * row[target] - math.log(sum(math.exp(scale * v) for v in row)))

    image_to_text = sum(ce(sims[i], i) for i in range(3)) / 3
    text_to_image = sum(ce([sims[j][i] for j in range(3)], i) for i in range(3)) / 3
    expected = (image_to_text + text_to_image) / 2
    got = infonce_loss(a, b, torch.tensor(s))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Pairs swapped: a different (higher) value, so the targets really are the diagonal.
    assert infonce_loss(a, b[[1, 0, 2]], torch.tensor(s)).item() > expected + 1


def test_siglip_equals_the_hand_computed_value() -> None:
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    b = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    t, bias = 10.0, -10.0
    total = 0.0
    for i, ra in enumerate(a.tolist()):
        for j, rb in enumerate(b.tolist()):
            logit = t * sum(x * y for x, y in zip(ra, rb)) + bias
            sign = 1.0 if i == j else -1.0
            total += math.log(1 + math.exp(-sign * logit))
    got = siglip_loss(a, b, torch.tensor(math.log(t)), torch.tensor(bias))
    assert got.item() == pytest.approx(total / 2, rel=1e-5)


def test_logit_scale_starts_at_ln_1_over_007_and_is_clamped_to_ln_100() -> None:
    model = make_pretrainer()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.on_train_batch_end(None, None, 0)
    assert model.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    siglip = make_pretrainer(loss="siglip")
    assert siglip.logit_scale.item() == pytest.approx(math.log(10)) and siglip.logit_bias.item() == -10.0


def test_three_modalities_align_each_to_the_anchor_and_skip_absent_rows() -> None:
    torch.manual_seed(0)
    z = {m: nn.functional.normalize(torch.randn(6, 4), dim=-1) for m in ("image", "audio", "text")}
    present = {m: torch.ones(6, dtype=torch.bool) for m in z}
    present["text"][:2] = False
    pairs = [("image", "audio"), ("image", "text")]
    s = torch.tensor(2.0)
    total, terms = contrastive_loss(z, present, pairs, s)
    assert set(terms) == {"image-audio", "image-text"}
    assert terms["image-text"].item() == pytest.approx(infonce_loss(z["image"][2:], z["text"][2:], s).item())
    assert total.item() == pytest.approx((terms["image-audio"] + terms["image-text"]).item() / 2)
    with pytest.raises(ValueError, match=r"model.init_args.anchor = 'video'.*\['a', 'b'\]"):
        make_pretrainer(anchor="video")


def test_retrieval_metrics_on_a_known_ranking() -> None:
    q = torch.eye(4)
    g = torch.eye(4)[[0, 2, 1, 3]]  # queries 1 and 2 find each other's item first
    r = retrieval_metrics(q, g, labels=torch.tensor([0, 0, 1, 1]), ks=(1, 2))
    assert r["R@1"] == 0.5 and r["R@2"] == 1.0 and r["median_rank"] == 1.5
    assert r["class_R@1"] == 0.5 and r["class_chance"] == 0.5


# ---------------------------------------------------------------------------------------------- training
class LabelTrap(dict):
    """A batch whose label must never be read."""

    def __getitem__(self, key):
        assert key != "label", "training read the label"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != "label", "training read the label"
        return super().get(key, default)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[ContrastivePretrainer, pl.Trainer, Path, list[float]]:
    root = tmp_path_factory.mktemp("ssl")
    model = make_pretrainer()
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    train = DataLoader(paired_views(512, seed=1, labels=False), batch_size=64, shuffle=True)  # no labels at all
    val = DataLoader(paired_views(200, seed=2), batch_size=100)
    trainer = pl.Trainer(max_epochs=6, default_root_dir=root, callbacks=[Record()],
                         **{**QUIET, "enable_checkpointing": True})
    trainer.fit(model, train, val)
    return model, trainer, root, losses


def test_loss_falls_and_retrieval_beats_chance_without_training_labels(pretrained, tmp_path) -> None:
    model, trainer, root, losses = pretrained
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.6 * first, (first, last)
    m = model.last_metrics
    chance = m["val/retrieval/a2b/chance@1"]
    assert chance == pytest.approx(1 / 200)
    for direction in ("a2b", "b2a"):
        assert m[f"val/retrieval/{direction}/R@1"] > 20 * chance, m
        assert m[f"val/retrieval/{direction}/R@10"] > m[f"val/retrieval/{direction}/R@1"]
        assert m[f"val/retrieval/{direction}/class_R@1"] > m[f"val/retrieval/{direction}/class_chance"] + 0.3
        assert m[f"val/retrieval/{direction}/median_rank"] < 20
    assert model.embedding_png == root / "pictures" / "embeddings_val.png" and model.embedding_png.stat().st_size > 5000
    # An untrained model is near chance on the same split: the figures measure learning.
    fresh = make_pretrainer()
    val = DataLoader(paired_views(200, seed=2), batch_size=100)
    pl.Trainer(default_root_dir=tmp_path, **QUIET).validate(fresh, val, verbose=False)
    assert fresh.last_metrics["val/retrieval/a2b/R@1"] < m["val/retrieval/a2b/R@1"] / 3


def test_a_batch_without_labels_trains_and_the_label_is_never_read() -> None:
    model = make_pretrainer()
    rows = paired_views(32, seed=3)
    batch = LabelTrap({"a": torch.stack([r["a"] for r in rows]), "b": torch.stack([r["b"] for r in rows]),
                       "label": torch.stack([r["label"] for r in rows])})
    loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and model.projections["a"].weight.grad.abs().sum() > 0
    assert model.logit_scale.grad is not None


# ---------------------------------------------------------------------------------------------- transfer
def test_encoders_load_from_a_pretrainer_checkpoint_and_a_save_pretrained_folder(pretrained, tmp_path) -> None:
    model, trainer, root, _ = pretrained
    ckpt = root / "checkpoints" / "last.ckpt" if (root / "checkpoints" / "last.ckpt").exists() else None
    ckpt = ckpt or next(root.rglob("*.ckpt"))
    clf = FusionClassifier({"a": VectorEncoder(12), "b": VectorEncoder(20)}, ConcatFusion, num_classes=4,
                           init_encoders_from=str(ckpt), freeze_encoders=True)
    assert not torch.equal(clf.encoders["a"].net[0].weight, model.encoders["a"].net[0].weight)
    clf.initialise_encoders()
    for m in ("a", "b"):
        for key, value in model.encoders[m].state_dict().items():
            torch.testing.assert_close(clf.encoders[m].state_dict()[key], value)
    assert not any(p.requires_grad for p in clf.encoders.parameters())
    assert all(p.requires_grad for p in clf.classifier.parameters())
    # A save_pretrained folder serves as well, into a one-modality model.
    folder = model.save_pretrained(tmp_path / "pretrained")
    uni = UnimodalClassifier("b", VectorEncoder(20), num_classes=4, init_encoders_from=str(folder))
    uni.initialise_encoders()
    torch.testing.assert_close(uni.encoder.net[2].weight, model.encoders["b"].net[2].weight)
    assert uni.encoder.net[2].weight.requires_grad  # fine-tuning: not frozen
    # A modality the checkpoint lacks is named, with what the checkpoint has.
    bad = FusionClassifier({"a": VectorEncoder(12), "text": VectorEncoder(5)}, ConcatFusion, num_classes=4,
                           init_encoders_from=str(ckpt))
    with pytest.raises(ValueError, match=r"has encoders for \['a', 'b'\] but not for \['text'\]"):
        bad.initialise_encoders()
    with pytest.raises(FileNotFoundError, match=r"init_encoders_from = '.*nope.ckpt': no such file"):
        FusionClassifier({"a": VectorEncoder(12)}, ConcatFusion, num_classes=4,
                         init_encoders_from=str(tmp_path / "nope.ckpt")).initialise_encoders()


def test_fine_tuned_classifier_learns_from_the_pretrained_encoders(pretrained, tmp_path) -> None:
    """A linear probe on the frozen pretrained encoders separates the classes far above chance."""
    model, trainer, root, _ = pretrained
    ckpt = next(root.rglob("last.ckpt"), None) or next(root.rglob("*.ckpt"))
    probe = FusionClassifier({"a": VectorEncoder(12), "b": VectorEncoder(20)}, ConcatFusion, num_classes=4,
                             dropout=0.0, init_encoders_from=str(ckpt), freeze_encoders=True,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    train = DataLoader(paired_views(40, seed=5), batch_size=40)  # 10 labels per class
    test = DataLoader(paired_views(400, seed=6), batch_size=400)
    trainer = pl.Trainer(max_epochs=60, default_root_dir=tmp_path, **QUIET)
    trainer.fit(probe, train)
    acc = trainer.test(probe, test, verbose=False)[0]["test/acc"]
    assert acc > 0.7, acc


# ---------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial weights on every process, as DDP broadcasts them
    nets = nn.ModuleDict({"a": nn.Linear(12, 8), "b": nn.Linear(20, 8)})
    scale = nn.Parameter(torch.tensor(2.0))
    rows = paired_views(16, seed=9)
    x = {m: torch.stack([r[m] for r in rows])[rank * 8:(rank + 1) * 8] for m in ("a", "b")}  # this process's half
    z = {m: gather_with_grad(nn.functional.normalize(nets[m](x[m]), dim=-1)) for m in x}
    present = {m: torch.ones(len(z[m]), dtype=torch.bool) for m in z}
    loss, _ = contrastive_loss(z, present, [("a", "b")], scale)
    loss.backward()
    # What DDP's reducer does with the gradients each process computed: average over processes.
    grads = {f"nets.{n}": p.grad.clone() for n, p in nets.named_parameters()} | {"scale": scale.grad.clone()}
    for g in grads.values():
        dist.all_reduce(g)
        g /= world
    if rank == 0:
        torch.save({"loss": loss.detach(), "grads": grads, "n": len(z["a"])}, out)
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~20 s idle, minutes on a loaded machine
@pytest.mark.timeout(300)
def test_ddp_gather_matches_the_global_batch_on_one_process(tmp_path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert got["n"] == 16  # every process saw the global batch of negatives
    torch.manual_seed(0)
    nets = nn.ModuleDict({"a": nn.Linear(12, 8), "b": nn.Linear(20, 8)})
    scale = nn.Parameter(torch.tensor(2.0))
    rows = paired_views(16, seed=9)
    z = {m: nn.functional.normalize(nets[m](torch.stack([r[m] for r in rows])), dim=-1) for m in ("a", "b")}
    loss, _ = contrastive_loss(z, {m: torch.ones(16, dtype=torch.bool) for m in z}, [("a", "b")], scale)
    loss.backward()
    assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(got["grads"]["scale"], scale.grad)
    for name, p in nets.named_parameters():
        torch.testing.assert_close(got["grads"][f"nets.{name}"], p.grad, rtol=1e-4, atol=1e-6)
    # Without the gather each process's loss sees only its 8 local negatives: a different loss.
    z_half = {m: v[:8] for m, v in z.items()}
    half, _ = contrastive_loss(z_half, {m: torch.ones(8, dtype=torch.bool) for m in z}, [("a", "b")], scale)
    assert abs(half.item() - loss.item()) > 1e-3


# ---------------------------------------------------------------------------------------------- zero-shot
class TokenEncoder(Configurable, nn.Module):
    """Embedding bag over token ids: ``{"input_ids", "attention_mask"} -> [B, L, out_dim]``."""

    def __init__(self, vocab: int = 32, out_dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, out_dim)
        self.out_dim = out_dim

    def forward(self, x: dict) -> torch.Tensor:
        return self.embed(x["input_ids"])


class CaptionedDigits(pl.LightningDataModule):
    """Vectors paired with a caption holding the class word (token ``1 + class``) among filler
    tokens; the datamodule's tokenizer turns the prompt ``w<c>`` into that token."""

    class_names = ["w0", "w1", "w2", "w3"]

    @staticmethod
    def tokenizer(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor([[1 + int(t[1:])] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def rows(self, n: int, seed: int) -> list[dict]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for r in paired_views(n, seed):
            ids = torch.randint(5, 32, (4,), generator=g)
            ids[int(torch.randint(4, (1,), generator=g))] = 1 + int(r["label"])
            out.append({"image": r["a"], "text": {"input_ids": ids, "attention_mask": torch.ones(4, dtype=torch.long)},
                        "label": r["label"]})
        return out

    def train_dataloader(self) -> DataLoader:
        return DataLoader([{k: v for k, v in r.items() if k != "label"} for r in self.rows(384, 1)], batch_size=64,
                          shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.rows(200, 2), batch_size=100)


def test_zero_shot_classifies_by_the_nearest_class_prompt(tmp_path) -> None:
    torch.manual_seed(0)
    model = ContrastivePretrainer({"image": VectorEncoder(12), "text": TokenEncoder()}, embed_dim=16,
                                  optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer = pl.Trainer(max_epochs=5, default_root_dir=tmp_path, **QUIET)
    trainer.validate(model, datamodule=CaptionedDigits(), verbose=False)
    before = model.last_metrics["val/zero_shot/image/acc"]
    trainer.fit(model, datamodule=CaptionedDigits())
    m = model.last_metrics
    assert m["val/zero_shot/chance"] < 0.35 and m["val/zero_shot/image/acc"] > 0.7 > before, (before, m)
