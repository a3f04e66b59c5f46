"""Exact resume (fusion and GAN through the CLI), preemption (SIGTERM/SIGINT mid-epoch) and disk-full errors.

One helper for every family: run ``fusegen fit`` uninterrupted, then the same run stopped and
continued with ``--ckpt_path last``, and compare the losses logged at every step.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules.files import NoSpaceError, atomic_write_bytes
from experiments.callbacks import SafeCheckpointIO, load_checkpoint_as_data
from experiments.cli import FusegenCLI

REPO = Path(__file__).resolve().parents[1]

# Image + audio fusion with every random draw the resume must repeat: shuffled batches, dropout,
# modality dropout and SpecAugment (masks and warps). 5 batches of 16 per epoch.
FUSION = """
experiment: tiny-fusion
trainer:
  max_epochs: 2
  limit_train_batches: 5
  limit_val_batches: 2
  log_every_n_steps: 1
model:
  class_path: fusion.FusionClassifier
  init_args:
    num_classes: 10
    encoders:
      image: {class_path: fusion.SmallCNNImageEncoder, init_args: {out_dim: 16}}
      audio:
        class_path: fusion.AudioEncoder
        init_args: {out_dim: 16, width: 8, spec_augment: {freq_mask: 4, time_mask: 4, time_warp: 0.1}}
    fusion: {class_path: fusion.ConcatFusion, init_args: {out_dim: 32}}
    dropout: 0.3
    modality_dropout: 0.3
    optimizer: {class_path: torch.optim.AdamW, init_args: {lr: 0.003}}
data:
  class_path: datamodules.SyntheticMultimodalDataModule
  init_args: {num_train: 160, num_val: 32, num_test: 32, batch_size: 16}
"""

GAN = """
experiment: tiny-gan
trainer:
  max_epochs: 2
  limit_train_batches: 4
  limit_val_batches: 0
  log_every_n_steps: 1
model:
  class_path: generative.GAN
  init_args:
    generator: {class_path: generative.Generator, init_args: {nz: 16, ngf: 8}}
    discriminator: {class_path: generative.Discriminator, init_args: {ndf: 8}}
    metrics: null
    grid_every_n_epochs: 0
    ema_decay: 0.9
data:
  class_path: datamodules.SyntheticMultimodalDataModule
  init_args: {num_train: 96, num_val: 16, num_test: 16, batch_size: 16}
"""

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _config(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def fit(folder: Path, text: str, *args: str) -> FusegenCLI:
    """``fusegen fit`` in-process; runs land in ``folder/runs``."""
    return FusegenCLI(args=["fit", "--config", str(_config(folder, text)), *QUIET,
                            "--trainer.default_root_dir", str(folder / "runs"), *args])


def step_losses(run_dir: Path, keys: tuple[str, ...]) -> dict[int, tuple[float, ...]]:
    """``{step: (loss, ...)}`` from every ``metrics.csv`` of a run folder (a resumed run adds a version)."""
    out: dict[int, tuple[float, ...]] = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if all(row.get(k) for k in keys):
                out[int(row["step"])] = tuple(float(row[k]) for k in keys)
    return out


def assert_same_losses(full: dict, resumed: dict, steps: range) -> None:
    missing = [s for s in steps if s not in resumed]
    assert not missing, f"the resumed run logged no loss at steps {missing}"
    for step in steps:
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), (
            f"step {step}: resumed {resumed[step]} vs uninterrupted {full[step]}")


def resume_matches(tmp_path: Path, text: str, keys: tuple[str, ...]) -> None:
    """Uninterrupted (2 epochs) vs stopped after the first and resumed: identical losses in the second."""
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full_dir.mkdir()
    cut_dir.mkdir()
    full = fit(full_dir, text)
    fit(cut_dir, text, "--trainer.max_epochs", "1")
    resumed = fit(cut_dir, text, "--ckpt_path", "last")
    assert resumed.trainer.global_step == full.trainer.global_step
    full_losses = step_losses(Path(full.trainer.logger.save_dir), keys)
    resumed_losses = step_losses(Path(resumed.trainer.logger.save_dir), keys)
    logged = sorted(full_losses)  # logger steps: one per batch (a GAN makes two optimizer steps a batch)
    assert len(logged) >= 6, full_losses
    assert_same_losses(full_losses, resumed_losses, range(logged[len(logged) // 2], logged[-1] + 1))
    for (key, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f"{key} differs after the resumed run"


# ---------------------------------------------------------------------------------- exact resume
def test_fusion_resume_from_epoch_end_repeats_the_uninterrupted_run(tmp_path: Path) -> None:
    resume_matches(tmp_path, FUSION, ("train/loss",))


def test_gan_resume_from_epoch_end_repeats_the_uninterrupted_run(tmp_path: Path) -> None:
    resume_matches(tmp_path, GAN, ("train/loss_d", "train/loss_g"))


# ---------------------------------------------------------------------------------- preemption
class SignalAt(pl.Callback):
    """Test helper: at the start of training batch ``step`` (a global step), either send ``signal``
    to this process (in-process runs) or write ``marker`` and wait for an outside signal."""

    def __init__(self, step: int, signal: str = "", marker: str = "", wait_s: float = 120.0) -> None:
        self.step, self.signal, self.marker, self.wait_s = step, signal, marker, wait_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        if self.signal:
            os.kill(os.getpid(), getattr(signal, self.signal))
            return
        Path(self.marker).write_text(str(os.getpid()))
        preemption = next(c for c in trainer.callbacks if type(c).__name__ == "Preemption")
        deadline = time.time() + self.wait_s
        while preemption.received is None and time.time() < deadline:
            time.sleep(0.05)


def _signal_callback(**init_args: object) -> str:
    return json.dumps({"class_path": f"{__name__}.SignalAt", "init_args": init_args})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[float, ...]]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    cli = fit(folder, FUSION)
    assert cli.trainer.global_step == 10
    return step_losses(Path(cli.trainer.logger.save_dir), ("train/loss",))


def _check_preempted_checkpoint(folder: Path, step: int) -> None:
    ckpt = folder / "runs" / "tiny-fusion" / "checkpoints" / "last.ckpt"
    state = load_checkpoint_as_data(ckpt)
    assert state["global_step"] == step
    assert state["epoch"] == 1  # mid-epoch: the second epoch's batch `step - 5` was the last one done
    order = state["SyntheticMultimodalDataModule"]["train_order"]
    assert order["epoch"] == 1 and order["batches"] == step - 5
    assert not list(ckpt.parent.glob("*fusegen-tmp")), "a temporary file was left"


def test_sigterm_mid_epoch_saves_the_step_and_resume_continues_exactly(tmp_path: Path, uninterrupted) -> None:
    # The real CLI in a subprocess, killed from outside while it waits at the start of step 7.
    marker = tmp_path / "paused"
    config = _config(tmp_path, FUSION)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli", "fit", "--config", str(config), *QUIET,
         "--trainer.default_root_dir", str(tmp_path / "runs"),
         "--trainer.callbacks+", _signal_callback(step=7, marker=str(marker))],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), f"the run never reached step 7:\n{proc.communicate()[0][-3000:]}"
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped by SIGTERM after global step 8" in output and "--ckpt_path last" in output, output[-3000:]
    # The step that was running when the signal came finished and is in the checkpoint.
    _check_preempted_checkpoint(tmp_path, 8)

    resumed = fit(tmp_path, FUSION, "--ckpt_path", "last")
    assert resumed.trainer.global_step == 10
    assert_same_losses(uninterrupted, step_losses(tmp_path / "runs" / "tiny-fusion", ("train/loss",)), range(0, 10))


def test_sigint_mid_epoch_saves_the_step_and_resume_continues_exactly(tmp_path: Path, uninterrupted) -> None:
    # Ctrl+C at the start of step 6 (batch 1 of epoch 1): that step still finishes and is saved.
    # Python's own Ctrl+C handler first, as in a terminal: a shell's background job starts with SIGINT ignored.
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as stopped:
            fit(tmp_path, FUSION, "--trainer.callbacks+", _signal_callback(step=6, signal="SIGINT"))
        assert stopped.value.code == 128 + signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the Ctrl+C handler was not restored"
    finally:
        signal.signal(signal.SIGINT, outer)
    _check_preempted_checkpoint(tmp_path, 7)

    resumed = fit(tmp_path, FUSION, "--ckpt_path", "last")
    assert resumed.trainer.global_step == 10
    assert_same_losses(uninterrupted, step_losses(tmp_path / "runs" / "tiny-fusion", ("train/loss",)), range(0, 10))


# ---------------------------------------------------------------------------------- disk full
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 707840 vs 707732"


def _full_disk_torch_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
    Path(f).write_bytes(b"PK\x03\x04 torn")  # what a short write leaves behind
    raise RuntimeError(TORCH_SHORT_WRITE)


@pytest.mark.parametrize("target", ["last.ckpt", "epoch=1-step=10.ckpt"])
def test_disk_full_checkpoint_names_the_file_and_keeps_the_previous(tmp_path: Path, monkeypatch, target: str) -> None:
    io = SafeCheckpointIO()
    previous = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 5}, previous)
    before = previous.read_bytes()
    monkeypatch.setattr(torch, "save", _full_disk_torch_save)
    path = tmp_path / target
    with pytest.raises(NoSpaceError) as err:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 10}, path)
    message = str(err.value)
    # a rewrite of last.ckpt keeps last.ckpt; a new file keeps the newest checkpoint beside it
    assert f"no space left on device writing {path}; the previous checkpoint {previous} is kept" in message
    assert "unexpected pos" in message and err.value.errno == errno.ENOSPC
    assert previous.read_bytes() == before and load_checkpoint_as_data(previous)["global_step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "a torn or temporary file was left"


def test_disk_full_picture_and_cache_file_name_the_path_and_keep_the_previous(tmp_path: Path, monkeypatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fusion.artifacts import save_figure

    trainer = pl.Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    first = save_figure(trainer, "curve", plt.figure())
    before = first.read_bytes()
    figure = plt.figure()
    monkeypatch.setattr(type(figure), "savefig",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(NoSpaceError, match=f"no space left on device writing {first}; the previous picture {first} "
                                           "is kept"):
        save_figure(trainer, "curve", figure)
    assert first.read_bytes() == before and not plt.fignum_exists(figure.number)

    # A cache file: the fsync of the temporary file fails; a file never written before says so.
    cache = tmp_path / "cache" / "train.safetensors"
    atomic_write_bytes(cache, b"old")
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(NoSpaceError, match=f"writing {cache}; the previous file {cache} is kept"):
        atomic_write_bytes(cache, b"new")
    with pytest.raises(NoSpaceError, match="no earlier file was replaced"):
        atomic_write_bytes(cache.with_name("val.safetensors"), b"new")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert cache.read_bytes() == b"old" and sorted(p.name for p in cache.parent.iterdir()) == ["train.safetensors"]
