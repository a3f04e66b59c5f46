"""The GAN benchmarks' logic: the shared test-split scorer (every injected metric, with its protocol) and the
DiffAugment table's arms, resume and per-seed verdict."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datamodules import SyntheticMultimodalDataModule
from experiments.benchmarks import gan_diffaugment, gan_results
from generative import GAN, Discriminator, Generator
from generative.metrics import SampleMetrics

QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu",
         "devices": 1}
ALL = {"test_fid", "test_kid", "test_kid_std", "test_precision", "test_recall", "test_density", "test_coverage"}


class Pixels(torch.nn.Module):
    """A fixed 16-d extractor (4x4 average-pooled pixels) that also 'classifies' by its first 10 features."""

    name = "pixels-4x4"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[:, :10]


def _run(conditional: bool, ema_decay: float | None) -> SimpleNamespace:
    pl.seed_everything(0)
    cond = {"condition": "label", "num_classes": 10} if conditional else {}
    dim = {"cond_dim": 10} if conditional else {}
    metrics = SampleMetrics(Pixels(), num_samples=10000, kid_subsets=5, kid_subset_size=48)
    model = GAN(Generator(ngf=8, **dim), Discriminator(ndf=8, **dim), metrics=metrics, grid_every_n_epochs=0,
                ema_decay=ema_decay, **cond)
    dm = SyntheticMultimodalDataModule(num_train=32, num_val=16, num_test=48, batch_size=16)
    return SimpleNamespace(trainer=pl.Trainer(**QUIET), model=model, datamodule=dm)


def test_unconditional_scores_the_whole_test_split_with_every_metric() -> None:
    scores = gan_results.score_test_split(_run(conditional=False, ema_decay=0.9))
    assert set(scores) == ALL | {"test_protocol"}  # no agreement without a requested class
    assert scores["test_fid"] > 0 and 0 <= scores["test_precision"] <= 1 and 0 <= scores["test_coverage"] <= 1
    line = scores["test_protocol"]
    assert "pixels-4x4" in line and "48 real (test split) / 48 generated" in line and line.endswith("EMA generator")


def test_conditional_adds_agreement_and_names_a_raw_generator() -> None:
    scores = gan_results.score_test_split(_run(conditional=True, ema_decay=None))
    assert set(scores) == ALL | {"test_agreement", "test_protocol"}
    assert 0 <= scores["test_agreement"] <= 1
    assert scores["test_protocol"].endswith("; generator")


def test_diffaugment_table_splits_arms_resumes_and_judges_each_seed(tmp_path, monkeypatch, capsys) -> None:
    # Scores by (seed, arm): seed 0 DiffAugment better on both, seed 1 better FID but worse KID.
    table = {(0, "diffaugment"): (10.0, 1.0), (0, "plain"): (20.0, 2.0),
             (1, "diffaugment"): (10.0, 3.0), (1, "plain"): (20.0, 2.0)}
    trained = []

    def fake_train(arm, seed, steps, num_samples, width, out):
        trained.append((seed, arm))
        fid, kid = table[seed, arm]
        return {"fid": fid, "kid": kid, "kid_std": 0.0, "train_s": 1, "protocol": f"{num_samples} real"}

    monkeypatch.setattr(gan_diffaugment, "train_and_score", fake_train)
    base = ["gan_diffaugment", "--seeds", "0", "1", "--steps", "7", "--num-samples", "50", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*base, "--arms", "plain"])
    gan_diffaugment.main()
    partial = json.loads(capsys.readouterr().out)
    assert trained == [(0, "plain"), (1, "plain")] and "met" not in partial and "both arms" in partial["note"]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["s0-plain-7-n50-w32.json", "s1-plain-7-n50-w32.json"]

    monkeypatch.setattr(sys, "argv", base)
    gan_diffaugment.main()
    full = json.loads(capsys.readouterr().out)
    assert trained[2:] == [(0, "diffaugment"), (1, "diffaugment")]  # the plain runs were reused
    assert [row["met"] for row in full["per_seed"]] == [True, False]
    assert full["met"] is False and full["seeds_met"] == 1 and full["median"]["plain"]["fid"] == 20.0
