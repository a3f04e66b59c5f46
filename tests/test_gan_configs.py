"""Every shipped GAN config parses (--print_config) and runs (--trainer.fast_dev_run 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "experiments" / "gan").glob("*.yaml"))
SMALL = ["--model.init_args.classifier_epochs", "1", "--model.init_args.classifier_train_limit", "2048",
         "--model.init_args.generator.init_args.ngf", "8", "--model.init_args.discriminator.init_args.ndf", "8"]


def _fusegen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"dcgan-mnist", "cdcgan-mnist", "wgan-gp-mnist", "speech-to-digit"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_print_config(config: Path, in_tmp: Path) -> None:
    out = _fusegen("fit", "--config", str(config), "--print_config", cwd=in_tmp)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"experiment: {config.stem}" in out.stdout


@pytest.mark.parametrize("name", ["dcgan-mnist", "cdcgan-mnist", "wgan-gp-mnist"])
def test_fast_dev_run(name: str, data_root, in_tmp: Path) -> None:
    from experiments.cli import FusegenCLI

    cli = FusegenCLI(args=["fit", "--config", str(REPO / "experiments" / "gan" / f"{name}.yaml"),
                           "--trainer.fast_dev_run", "2", "--trainer.enable_progress_bar", "false", *SMALL])
    assert cli.trainer.global_step == 2  # fast_dev_run 2 = two optimizer steps
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss_d"])


@pytest.mark.slow
def test_fast_dev_run_speech(data_root, in_tmp: Path) -> None:
    out = _fusegen("fit", "--config", str(REPO / "experiments" / "gan" / "speech-to-digit.yaml"),
                   "--trainer.fast_dev_run", "2", *SMALL, cwd=in_tmp)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_ddp_cpu_preset(data_root, in_tmp: Path) -> None:
    """Two CPU processes (gloo): manual optimisation with toggled optimizers, EMA, grids, metrics."""
    out = _fusegen("fit", "--config", str(REPO / "experiments" / "gan" / "cdcgan-mnist.yaml"),
                   "--config", str(REPO / "experiments" / "presets" / "ddp-cpu.yaml"),
                   "--trainer.max_steps", "8", "--trainer.limit_val_batches", "2",
                   "--data.init_args.train_limit", "512", "--trainer.enable_progress_bar", "false", *SMALL, cwd=in_tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(in_tmp.glob("runs/cdcgan-mnist/tensorboard/version_0/samples/epoch_000.png"))
