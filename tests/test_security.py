"""Checkpoints are data, not code: every checkpoint fusegen loads for resume/test/predict goes
through ``torch.load(weights_only=True)``; one whose pickle would run code is refused, naming the
file, and the code does not run; fusegen's own checkpoints of every family still resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.callbacks import SafeCheckpointIO, UnsafeCheckpointError
from experiments.cli import CONFIG_DIR

SYNTHETIC = CONFIG_DIR / "fusion" / "synthetic-concat.yaml"
QUICK = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
SMALL_DATA = ["--data.init_args.num_train", "128", "--data.init_args.num_val", "32", "--data.init_args.num_test", "32"]

GAN_YAML = """
experiment: gan-tiny
trainer: {limit_val_batches: 0}
model:
  class_path: generative.GAN
  init_args:
    generator: {class_path: generative.Generator, init_args: {ngf: 8}}
    discriminator: {class_path: generative.Discriminator, init_args: {ndf: 8}}
    metrics: null
    grid_every_n_epochs: 0
data:
  class_path: datamodules.SyntheticMultimodalDataModule
  init_args: {num_train: 64, num_val: 16, num_test: 16, batch_size: 32}
"""

RL_YAML = """
experiment: rl-tiny
model:
  class_path: rl.REINFORCE
  init_args:
    env_id: CartPole-v1
    policy: {class_path: rl.ActorCritic, init_args: {hidden: [8]}}
    num_envs: 2
    n_steps: 32
    total_timesteps: 100000
    eval_every_steps: 64
    n_eval_episodes: 1
    normalize_obs: true
"""


class Payload:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil_ckpt(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 0, "global_step": 0,
                "hyper_parameters": {"lr": Payload(marker)}}, path)
    return path, marker


def test_checkpoint_io_refuses_code(evil_ckpt: tuple[Path, Path]):
    path, marker = evil_ckpt
    with pytest.raises(UnsafeCheckpointError, match=rf"refusing to load checkpoint {path}.*weights_only=True.*open"):
        SafeCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_allowlisted_types_load(tmp_path: Path):
    path = tmp_path / "paths.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"root": tmp_path / "data"}}, path)
    assert SafeCheckpointIO().load_checkpoint(path)["hyper_parameters"]["root"] == tmp_path / "data"


@pytest.mark.parametrize("subcommand", ["fit", "test", "predict"])
def test_cli_refuses_a_checkpoint_that_runs_code(subcommand: str, evil_ckpt: tuple[Path, Path], in_tmp: Path,
                                                 cli_exit):
    path, marker = evil_ckpt
    code, _, err = cli_exit(subcommand, "--config", str(SYNTHETIC), *QUICK, "--ckpt_path", str(path))
    assert code != 0
    assert f"refusing to load checkpoint {path}" in err and "weights_only" in err and "Traceback" not in err
    assert not marker.exists()


def test_resume_last_skips_a_checkpoint_that_runs_code(evil_ckpt: tuple[Path, Path], in_tmp: Path,
                                                       cli_exit):
    path, marker = evil_ckpt
    folder = in_tmp / "runs" / "synthetic-concat" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(path.read_bytes())
    with pytest.warns(UserWarning):  # nothing readable: Lightning's own "no checkpoint" warning is not reached
        code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), *QUICK, "--ckpt_path", "last")
    assert code != 0 and "no readable checkpoint" in err and "last.ckpt (not loadable as data)" in err
    assert not marker.exists()


@pytest.mark.parametrize("family", ["fusion", "gan", "rl"])
def test_own_checkpoints_of_every_family_resume_as_data(family: str, in_tmp: Path, cli_exit):
    if family == "fusion":
        args, experiment = ["--config", str(SYNTHETIC), *SMALL_DATA], "synthetic-concat"
    else:
        (in_tmp / f"{family}.yaml").write_text(GAN_YAML if family == "gan" else RL_YAML)
        args, experiment = ["--config", f"{family}.yaml"], f"{family}-tiny"
    code, _, err = cli_exit("fit", *args, *QUICK, "--trainer.max_epochs", "1")
    assert code == 0, err[-2000:]
    last = in_tmp / "runs" / experiment / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)  # no allowlist needed for the CLI's checkpoints
    code, _, err = cli_exit("fit", *args, *QUICK, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert code == 0, err[-2000:]
    second = torch.load(last, weights_only=True)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"] > 0
