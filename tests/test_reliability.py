"""Nothing is silently lost or corrupted: a NaN stops every family before it reaches the weights or
a checkpoint; checkpoints are written atomically and an unreadable one is named and skipped; bad
values and bad YAML fail before work starts, naming the file/key; a failed start leaves no run
folder behind; a dead DDP rank is named."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from experiments.callbacks import (
    FiniteGuard,
    NonFiniteError,
    Preemption,
    SafeCheckpointIO,
    StepSeed,
    UnreadableCheckpointError,
)
from experiments.cli import CONFIG_DIR

SYNTHETIC = CONFIG_DIR / "fusion" / "synthetic-concat.yaml"
QUICK = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
SMALL_DATA = ["--data.init_args.num_train", "256", "--data.init_args.num_val", "64",
              "--data.init_args.num_test", "64"]

# Data / agents that turn NaN at a chosen batch, importable by class_path from the run folder.
HELPERS = '''
import torch
from datamodules import SyntheticMultimodalDataModule
from rl import REINFORCE


class NaNSynthetic(SyntheticMultimodalDataModule):
    """Synthetic data whose training batch number `nan_at` (counted over all epochs) has a NaN
    image at sample `nan_sample`."""

    def __init__(self, nan_at: int = 6, nan_sample: int = 17, **kwargs):
        super().__init__(**kwargs)
        self.nan_at, self.nan_sample, self.seen = nan_at, nan_sample, 0

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if self.trainer is not None and self.trainer.training:
            if self.seen == self.nan_at:
                batch["image"][self.nan_sample] = float("nan")
            self.seen += 1
        return batch


class NaNReturnREINFORCE(REINFORCE):
    """A reward that turns NaN (a broken env): the second rollout's return 3 is NaN."""

    def collect_rollout(self):
        batch = super().collect_rollout()
        if self.num_updates == 1:
            batch["returns"][3] = float("nan")
        return batch
'''

GAN_YAML = """
experiment: gan-nan
trainer: {max_epochs: 2, limit_val_batches: 0}
model:
  class_path: generative.GAN
  init_args:
    generator: {class_path: generative.Generator, init_args: {ngf: 8}}
    discriminator: {class_path: generative.Discriminator, init_args: {ndf: 8}}
    metrics: null
    grid_every_n_epochs: 0
data:
  class_path: nanhelpers.NaNSynthetic
  init_args: {nan_at: 3, nan_sample: 5, num_train: 64, num_val: 16, num_test: 16, batch_size: 16}
"""

RL_YAML = """
experiment: rl-nan
trainer: {max_epochs: 5, log_every_n_steps: 1}
model:
  class_path: nanhelpers.NaNReturnREINFORCE
  init_args:
    env_id: CartPole-v1
    policy: {class_path: rl.ActorCritic, init_args: {hidden: [8]}}
    num_envs: 2
    n_steps: 16
    total_timesteps: 256
    eval_every_steps: 64
    n_eval_episodes: 1
"""


@pytest.fixture
def helpers(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (in_tmp / "nanhelpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(in_tmp))
    return in_tmp


def all_finite(ckpt: Path) -> bool:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ---------------------------------------------------------------------------------- NaN stop
def test_nan_image_stops_fusion_fit_naming_step_sample_modality(helpers: Path, cli_exit):
    # 4 batches per epoch: epoch 0 ends with a good last.ckpt, then batch 2 of epoch 1 has a NaN image
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), *SMALL_DATA, *QUICK,
                            "--data.class_path", "nanhelpers.NaNSynthetic", "--data.init_args.nan_at", "6",
                            "--trainer.max_epochs", "3")
    assert code != 0, err[-2000:]
    assert "global step 6, epoch 1, batch 2" in err
    assert "sample 17, modality 'image' has NaN" in err
    assert "lower the learning rate" in err and "weights are still finite" in err
    last = helpers / "runs" / "synthetic-concat" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4  # written by epoch 0, never overwritten
    assert all_finite(last)


def test_nan_batch_stops_the_gan(helpers: Path, cli_exit):
    (helpers / "gan.yaml").write_text(GAN_YAML)
    code, _, err = cli_exit("fit", "--config", "gan.yaml", *QUICK)
    assert code != 0
    # manual optimisation: the discriminator loss of batch 3 is caught before its backward;
    # global_step counts D and G steps (2 per batch)
    assert "non-finite loss" in err and "global step 6, epoch 0, batch 3" in err, err[-2000:]
    assert "sample 5, modality 'image' has NaN" in err


def test_nan_return_stops_the_rl_agent(helpers: Path, cli_exit):
    (helpers / "rl.yaml").write_text(RL_YAML)
    code, _, err = cli_exit("fit", "--config", "rl.yaml", *QUICK)
    assert code != 0
    assert "non-finite loss" in err and "global step 1, epoch 0, batch 1" in err, err[-2000:]
    assert "sample 3, batch key 'returns' has NaN" in err


class _NaNGradient(pl.LightningModule):
    """A finite loss (0) whose gradient is NaN: d/dw sqrt(0 * w) = 0 * inf."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def training_step(self, batch, batch_idx):
        return torch.sqrt(self.w * 0.0).sum() + 0.0 * batch.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(8, 2), batch_size=4)


def test_nan_gradient_with_finite_loss_stops_before_the_step(tmp_path: Path):
    model = _NaNGradient()
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[FiniteGuard()], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient in 1 parameter \(w\) at global step 0"):
        trainer.fit(model)
    assert torch.equal(model.w.detach(), torch.ones(3))  # the NaN update never happened


def test_checkpoint_io_refuses_non_finite_weights(tmp_path: Path):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"a": torch.ones(2), "b": torch.ones(2)}}, path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match=r"refusing to write .*last.ckpt: 1 of 2 tensors .*\bb\b"):
        io.save_checkpoint({"state_dict": {"a": torch.ones(2), "b": torch.tensor([1.0, math.nan])}}, path)
    assert path.read_bytes() == before
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["b"], torch.ones(2))


OWN_LISTS = {"callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint"}], "plugins": []}


@pytest.mark.parametrize("override", [None, OWN_LISTS], ids=["trainer.yaml", "replaced-lists"])
def test_every_run_has_the_guard_and_the_safe_checkpoint_io(override, in_tmp: Path):
    from experiments.cli import FusegenCLI

    args = ["--config", str(SYNTHETIC), *QUICK]
    if override:
        (in_tmp / "own.yaml").write_text(yaml.safe_dump({"trainer": override}))
        args += ["--config", "own.yaml"]
    cli = FusegenCLI(args=args, run=False)
    for cls in (FiniteGuard, StepSeed, Preemption):
        assert sum(isinstance(c, cls) for c in cli.trainer.callbacks) == 1, cls.__name__
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)


# ---------------------------------------------------------------------------------- atomic checkpoints
def test_killed_save_leaves_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    io = SafeCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "global_step": 1}, path)
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as a kill would, mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "global_step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the temp file went with the failure


def test_unreadable_checkpoint_is_named(tmp_path: Path, in_tmp: Path, cli_exit):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableCheckpointError, match=r"empty.ckpt is unreadable .*0 bytes.*truncated or corrupt"):
        SafeCheckpointIO().load_checkpoint(empty)
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), *SMALL_DATA, *QUICK,
                            "--trainer.max_epochs", "1", "--ckpt_path", str(empty))
    assert code != 0 and f"checkpoint {empty} is unreadable" in err


def test_resume_last_falls_back_to_newest_readable_checkpoint(in_tmp: Path, cli_exit):
    args = ["fit", "--config", str(SYNTHETIC), *SMALL_DATA, *QUICK]
    assert cli_exit(*args, "--trainer.max_epochs", "1")[0] == 0
    folder = in_tmp / "runs" / "synthetic-concat" / "checkpoints"
    good = next(p for p in folder.glob("epoch=*.ckpt"))
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:1000])  # a torn last.ckpt
    (folder / ".last.ckpt.abc123.fusegen-tmp").write_bytes(b"left by a killed save")
    with pytest.warns(UserWarning) as warned:
        code, _, err = cli_exit(*args, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert code == 0, err[-2000:]
    messages = [str(w.message) for w in warned]
    assert any("skipped last.ckpt" in m and f"resuming from {good}" in m for m in messages), messages
    assert any("fusegen-tmp" in m and "killed" in m for m in messages)
    assert not list(folder.glob("*.fusegen-tmp"))
    resumed = torch.load(folder / "last.ckpt", weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 8)  # continued from epoch 0's 4 steps
    assert (folder / "last.ckpt.unreadable").stat().st_size == 1000  # the torn file, set aside


# ---------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("key", ["model.init_args.optimizer.init_args.lr"])
def test_negative_learning_rate_names_key_value_and_range(key: str, in_tmp: Path, cli_exit):
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), *QUICK, f"--{key}", "-0.001")
    assert code != 0
    assert f"{key} = -0.001" in err and ">= 0" in err
    assert not (in_tmp / "runs").exists()


def test_negative_gan_learning_rate_names_key(in_tmp: Path, cli_exit):
    gan = yaml.safe_load(GAN_YAML)
    gan["data"] = {"class_path": "datamodules.SyntheticMultimodalDataModule", "init_args": {"num_train": 32}}
    gan["model"]["init_args"]["optimizer_d"] = {"class_path": "torch.optim.Adam", "init_args": {"lr": -1.0}}
    (in_tmp / "gan.yaml").write_text(yaml.safe_dump(gan))
    code, _, err = cli_exit("fit", "--config", "gan.yaml", *QUICK)
    assert code != 0 and "model.init_args.optimizer_d.init_args.lr = -1.0" in err


def test_failure_before_first_step_leaves_no_run_folder(helpers: Path, cli_exit):
    # a NaN in the very first batch: the run fails at step 0, after the loggers made version_0/
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), *SMALL_DATA, *QUICK,
                            "--data.class_path", "nanhelpers.NaNSynthetic", "--data.init_args.nan_at", "0")
    assert code != 0 and "global step 0" in err
    assert not (helpers / "runs").exists(), sorted(map(str, (helpers / "runs").rglob("*")))


def test_failure_keeps_folders_of_earlier_runs(helpers: Path, cli_exit):
    args = ["fit", "--config", str(SYNTHETIC), *SMALL_DATA, *QUICK]
    assert cli_exit(*args, "--trainer.max_epochs", "1")[0] == 0
    code, _, _ = cli_exit(*args, "--data.class_path", "nanhelpers.NaNSynthetic", "--data.init_args.nan_at", "0")
    assert code != 0
    run = helpers / "runs" / "synthetic-concat"
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["version_0"]
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["version_0"]
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_yaml_syntax_error_names_file_line_and_column(in_tmp: Path, cli_exit):
    bad = in_tmp / "broken.yaml"
    bad.write_text("model:\n  init_args:\n    dropout: [0.1\n    num_classes: 3\n")
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), "--config", str(bad))
    assert code != 0
    first = err.strip().splitlines()[0]
    assert first.startswith(f"fusegen: error: {bad}:4:16: ") and "YAML" in first, err


# ---------------------------------------------------------------------------------- DDP
RANK_DIES = '''
import pytorch_lightning as pl


class DieOnRank1(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and batch_idx == 1:
            raise RuntimeError("rank 1 broke on purpose")
'''


@pytest.mark.slow
def test_dead_ddp_rank_is_named(in_tmp: Path):
    (in_tmp / "dies.py").write_text(textwrap.dedent(RANK_DIES))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(in_tmp), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "fit", "--config", str(SYNTHETIC),
         "--config", str(CONFIG_DIR / "presets" / "ddp-cpu.yaml"), *SMALL_DATA, "--trainer.max_epochs", "1",
         "--trainer.enable_progress_bar", "false", "--experiment", "ddp-dies",
         "--trainer.callbacks+=dies.DieOnRank1"],
        cwd=in_tmp, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0
    err = proc.stderr
    assert "rank 1 failed: RuntimeError: rank 1 broke on purpose" in err, err[-3000:]
    assert "rank 0 lost contact with the other ranks" in err and "rank 1 failed first" in err, err[-3000:]
    assert "Connection reset by peer" not in err.splitlines()[-1]


def test_constructor_check_is_printed_alone_not_inside_a_config_dump(in_tmp: Path, cli_exit):
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), *QUICK, *SMALL_DATA,
                            "--model.init_args.dropout", "1.5")
    assert code == 1
    assert "model.init_args.dropout = 1.5 is not allowed" in err
    assert "Given value" not in err and "Union subtypes" not in err
    assert len(err.strip().splitlines()) <= 3
