"""Reliability pieces of the ``fusegen`` Trainer, loaded by ``experiments/trainer.yaml``.

``FiniteGuard``: one non-finite-loss/gradient stop for every family (fusion, GANs, RL agents).
``SafeCheckpointIO``: checkpoints written atomically (temp file beside the target, fsync, rename),
never written with non-finite weights, and loaded as data (``torch.load(weights_only=True)`` with
an explicit allowlist), never as code; a full disk is named, with the checkpoint that is kept.
``StepSeed``: the random draws of every training batch depend only on (seed, epoch, batch), so a
resumed run draws what an uninterrupted one would (dropout, SpecAugment, modality dropout).
``Preemption``: SIGTERM/SIGINT finish the current step, write a checkpoint of it and exit non-zero.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import random
import re
import signal
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from datamodules.base import default_seed
from datamodules.files import NoSpaceError, atomic_path, disk_full_error

log = logging.getLogger(__name__)

FIX_HINTS = (
    "Fixes: check the named input for NaN/inf (a corrupt file, a division by zero in a transform); "
    "lower the learning rate; clip gradients (trainer.gradient_clip_val, or the module's own "
    "gradient_clip_val / max_grad_norm for GANs and RL agents); use precision 32-true or bf16-mixed "
    "instead of 16-mixed. Resume from the last good checkpoint with --ckpt_path last."
)


MODALITY_KEYS = ("image", "audio", "text", "video")


class NonFiniteError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; raised before the optimizer step."""


# ---------------------------------------------------------------------------------- batch scan
def non_finite_inputs(batch: Any, prefix: str = "") -> list[tuple[str, list[int], str]]:
    """``(key, sample indices, "NaN"/"inf")`` of every floating tensor in ``batch`` holding NaN/inf.

    Keys are batch-dict keys (the modality for fusegen's batch contract; nested keys joined by
    dots); indices are positions along the first (sample) dimension."""
    found: list[tuple[str, list[int], str]] = []
    if isinstance(batch, dict):
        for key, value in batch.items():
            found += non_finite_inputs(value, f"{prefix}{key}.")
    elif isinstance(batch, (list, tuple)):
        for i, value in enumerate(batch):
            found += non_finite_inputs(value, f"{prefix}{i}.")
    elif isinstance(batch, torch.Tensor) and batch.is_floating_point() and batch.numel():
        bad = ~torch.isfinite(batch)
        if bad.any():
            per_sample = bad.reshape(bad.shape[0], -1).any(dim=1) if bad.dim() > 1 else bad
            kind = "NaN" if torch.isnan(batch).any() else "inf"
            found.append((prefix.rstrip("."), per_sample.nonzero().flatten().tolist(), kind))
    return found


def describe_inputs(batch: Any, batch_idx: int | None) -> str:
    where = f"batch {batch_idx}" if batch_idx is not None else "the batch"
    found = non_finite_inputs(batch)
    if not found:
        return f"{where} has only finite inputs (the model or the update produced it)"
    parts = []
    for key, samples, kind in found:
        shown = ", ".join(map(str, samples[:5])) + (f" (+{len(samples) - 5} more)" if len(samples) > 5 else "")
        name = f"modality {key!r}" if key.split(".")[0] in MODALITY_KEYS else f"batch key {key!r}"
        parts.append(f"{where}, sample{'s' if len(samples) > 1 else ''} {shown}, {name} has {kind}")
    return "; ".join(parts)


def _is_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all()) if value.is_floating_point() else True
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def _losses(outputs: Any) -> dict[str, Any]:
    """The loss-like values of a ``training_step`` output: a tensor, a dict of them, or ``None``."""
    if outputs is None:
        return {}
    if isinstance(outputs, dict):
        return {k: v for k, v in outputs.items() if isinstance(v, (torch.Tensor, float))}
    return {"loss": outputs}


# ---------------------------------------------------------------------------------- the guard
class FiniteGuard(Callback):
    """Stop training at the first non-finite loss or gradient, before it reaches the weights.

    - the loss is checked before ``backward`` (``on_before_backward``: automatic and manual
      optimisation alike), so a NaN batch never produces a NaN update;
    - gradients are checked before every ``optimizer.step`` (``on_before_optimizer_step``), so
      the weights stay finite when the loss is finite but its gradient is not;
    - the ``training_step`` outputs (``loss`` or e.g. a GAN's ``{"loss_d", "loss_g"}``) are
      checked at batch end, for losses that never went through backward.

    The error names the global step, epoch and batch index, the samples and modalities of the
    batch holding NaN/inf (when the input is the cause) and the fixes. Training stops with an
    exception, so ``ModelCheckpoint`` never saves the wrecked weights; the last good checkpoint
    stays. Under DDP every rank takes the same decision (gradients are all-reduced before the
    check; the batch-end check is reduced across ranks), so no rank is left waiting.

    Args:
        check_gradients: also check gradients (one fused norm per step; a per-parameter scan only
            when it is not finite). Skipped under 16-mixed precision, whose GradScaler already
            skips steps with inf gradients on purpose.
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients
        self._batch: Any = None
        self._batch_idx: int | None = None
        self._bad_loss: str | None = None

    # -- where we are
    def _where(self, trainer: pl.Trainer) -> str:
        rank = f", rank {trainer.global_rank}" if trainer.world_size > 1 else ""
        return (f"global step {trainer.global_step}, epoch {trainer.current_epoch}, "
                f"batch {self._batch_idx}{rank}")

    def _fail(self, trainer: pl.Trainer, what: str, before_step: bool = True) -> None:
        last = _last_checkpoint(trainer)
        kept = f" The last good checkpoint is {last}." if last else ""
        stopped = ("Training stopped before the optimizer step, so the weights are still finite." if before_step
                   else "Training stopped at the end of this batch; no checkpoint was written from it.")
        raise NonFiniteError(
            f"non-finite {what} at {self._where(trainer)}: {describe_inputs(self._batch, self._batch_idx)}. "
            f"{stopped}{kept} {FIX_HINTS}")

    # -- hooks
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch, self._batch_idx, self._bad_loss = batch, batch_idx, None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if _is_finite(loss):
            return
        self._bad_loss = f"loss ({float(loss.detach().float().reshape(-1)[0])})"
        if trainer.world_size == 1:
            self._fail(trainer, self._bad_loss)
        # Under DDP another rank may hold a finite loss; its all-reduced gradient is non-finite on
        # every rank, so the gradient check below stops all of them together.

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if not self.check_gradients or _uses_grad_scaler(trainer):
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        bad = [names.get(id(p), "?") for group in optimizer.param_groups for p in group["params"]
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        if not bad:  # the norm overflowed, every gradient is finite
            return
        shown = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        what = f"gradient in {len(bad)} parameter{'s' if len(bad) > 1 else ''} ({shown})"
        if self._bad_loss:
            what = f"{self._bad_loss} and {what}"
        self._fail(trainer, what)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bad = [f"{k} ({float(torch.as_tensor(v).float().reshape(-1)[0])})"
               for k, v in _losses(outputs).items() if not _is_finite(v)]
        if trainer.world_size > 1:
            if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
                return
            bad = bad or ["loss on another rank"]
        if bad:
            self._fail(trainer, ", ".join(bad), before_step=False)


def _uses_grad_scaler(trainer: pl.Trainer) -> bool:
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return path or None


# ---------------------------------------------------------------------------------- checkpoint IO
def checkpoint_safe_globals() -> list[Any]:
    """The non-primitive types a fusegen Lightning checkpoint may hold besides tensors.

    Through the CLI a checkpoint's hyperparameters are the config (class paths + init args: str,
    numbers, lists, dicts), so none are needed there; a module built in Python and saved with
    ``save_hyperparameters`` may hold paths or these config objects."""
    import pathlib

    allowed: list[Any] = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
    try:
        from fusion import SpecAugment

        allowed.append(SpecAugment)
    except ImportError:
        pass
    return allowed


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that only an unrestricted unpickler could build (possibly code)."""


class UnreadableCheckpointError(OSError):
    """A checkpoint file is truncated or corrupt."""


def _is_local(path: Any) -> bool:
    return "://" not in str(path)


def load_checkpoint_as_data(path: str | os.PathLike, map_location: Any = None, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with fusegen's allowlist and errors naming the file."""
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        detail = f"it would call {found.group(1)}" if found else str(err).strip().splitlines()[0]
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint {path}: it holds objects that torch.load(weights_only=True) will not "
            f"build ({detail}). fusegen loads checkpoints as data, never as code; a checkpoint written by "
            "fusegen never needs more. If you wrote it yourself and trust it, load it in Python with "
            "torch.load(..., weights_only=False) and re-save its state_dict.") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError) as err:
        raise UnreadableCheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {_first_sentence(err)}; "
            f"{_size(path)}): it is truncated or corrupt. Delete it, or resume from another checkpoint in "
            f"{Path(path).parent} (--ckpt_path last picks the newest readable one).") from None


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip()
    return text.split(". ")[0] if text else "the file ends early"


def _size(path: Any) -> str:
    try:
        return f"{os.path.getsize(path)} bytes"
    except OSError:
        return "size unknown"


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, made crash-safe and code-free.

    - save: ``torch.save`` into a temporary file beside the target (``datamodules.files.atomic_path``:
      same folder, so the rename never becomes a cross-filesystem copy), fsync, rename. A kill at
      any moment leaves the previous checkpoint whole. Weights holding NaN/inf are never written
      (``check_finite``): the previous checkpoint is the last good one.
    - load: ``torch.load(weights_only=True)`` with an explicit allowlist; an unreadable or unsafe
      file is named in the error.

    Remote paths (``s3://``...) fall back to Lightning's writer.
    """

    def __init__(self, check_finite: bool = True) -> None:
        super().__init__()
        self.check_finite = check_finite

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if self.check_finite:
            bad = non_finite_tensors(checkpoint.get("state_dict", {}))
            if bad:
                raise NonFiniteError(
                    f"refusing to write {path}: {len(bad)} of {len(checkpoint['state_dict'])} tensors of the model "
                    f"hold NaN/inf (e.g. {', '.join(bad[:3])}); the previous checkpoint is kept. {FIX_HINTS}")
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except NoSpaceError as err:
            cause = err.__cause__ or err
            raise disk_full_error(path, cause, what="checkpoint", previous=_previous_checkpoint(Path(path))) from cause

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_checkpoint_as_data(path, map_location)


def _previous_checkpoint(path: Path) -> Path | None:
    """The checkpoint a failed write of ``path`` leaves as the newest: ``path`` itself (a rewrite of
    ``last.ckpt``), else the newest other ``*.ckpt`` beside it."""
    if path.is_file():
        return path
    others = [p for p in path.parent.glob("*.ckpt") if p.is_file() and p != path]
    return max(others, key=lambda p: p.stat().st_mtime) if others else None


def readable(path: Path) -> str | None:
    """``None`` if ``path`` is a loadable checkpoint, else why not (cheap: memory-mapped)."""
    if path.is_dir():  # a sharded (FSDP) checkpoint folder: Lightning's strategy reads it
        return None if (path / "meta.pt").is_file() else "a folder without meta.pt"
    try:
        load_checkpoint_as_data(path, map_location="cpu", mmap=True)
    except (UnreadableCheckpointError, UnsafeCheckpointError, OSError) as err:
        return "not loadable as data" if isinstance(err, UnsafeCheckpointError) else f"{_size(path)}, unreadable"
    return None


def newest_readable_checkpoint(folder: Path, candidates: Iterable[Path] | None = None
                               ) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest (by modification time) readable ``*.ckpt`` in ``folder``, and the newer ones that
    were skipped, each with why."""
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # removed meanwhile
            return -1.0

    files = sorted(candidates if candidates is not None else folder.glob("*.ckpt"), key=mtime, reverse=True)
    skipped = []
    for path in files:
        why = readable(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


# ---------------------------------------------------------------------------------- exact resume
class StepSeed(Callback):
    """Reseed the global RNGs (torch CPU and CUDA, numpy, ``random``) before every training batch
    from ``(seed, epoch, batch index, rank)``.

    Dropout, SpecAugment, modality dropout and a GAN's noise draw from the global RNG; what else ran
    before a batch (validation, a sanity check, pictures, a restart) would otherwise shift those
    draws, so a resumed run would not repeat the uninterrupted one. With the training order of
    ``datamodules.ResumableSampler`` (seeded by ``(seed, epoch)``, position saved in the checkpoint)
    and Lightning's loop, model and optimizer state, ``--ckpt_path last`` continues a run exactly,
    from an epoch-end checkpoint or a mid-epoch one (``Preemption``).

    Args:
        seed: base seed; ``None``: the ``seed_everything`` seed. Saved in checkpoints, so a resumed
            run keeps the seed it started with.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = default_seed()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_step(self.seed or 0, trainer.current_epoch, batch_idx, trainer.global_rank)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict.get("seed", self.seed)


def seed_step(*key: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and ``random`` from the integers ``key``."""
    high, low = np.random.SeedSequence([int(k) % 2**63 for k in key]).generate_state(2)
    torch.manual_seed((int(high) << 31) ^ int(low))
    np.random.seed(int(low))
    random.seed(int(high))


# ---------------------------------------------------------------------------------- preemption
class Preempted(SystemExit):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; the exit code is 128 + signal."""


class Preemption(Callback):
    """On SIGTERM or SIGINT: finish the running training step, write a checkpoint of it, exit non-zero.

    SIGTERM is what SLURM (preemption, ``scancel``, the time limit's warning), Kubernetes and
    ``docker stop`` send; SIGINT is Ctrl+C. The handler only sets a flag; at the end of the current
    training batch the checkpoint is written through the trainer's checkpoint IO
    (``SafeCheckpointIO``: atomic), as ``last.ckpt`` in the ``ModelCheckpoint`` folder: Lightning's
    loop state mid-epoch, model, optimizers, schedulers, the data order's position
    (``ResumableSampler``) and the callbacks' state (``StepSeed``). Then the process exits with
    ``128 + signal`` (143 for SIGTERM, 130 for SIGINT): non-zero, so SLURM's ``--requeue`` and
    Kubernetes restart policies treat the job as unfinished, and ``--ckpt_path last`` continues
    from that step. The exit comes right after Lightning has logged that step (at the start of the
    next batch, or at the epoch's end), so the step's metrics are in the logs too. Under DDP the
    ranks agree on stopping at the same step (one all-reduce of a flag per step). A second Ctrl+C
    stops at once, without a checkpoint. Under SLURM, Lightning's own auto-requeue
    (``SLURMEnvironment``, on its ``requeue_signal``) works as before.

    A signal that arrives before the first training batch (setup, the sanity check) stops the run
    with the same exit code; nothing has been trained since the last checkpoint, so none is written.
    """

    def __init__(self, signals: list[str] | None = None) -> None:
        names = signals if signals is not None else ["SIGTERM", "SIGINT"]
        for name in names:
            if not isinstance(getattr(signal, str(name), None), signal.Signals):
                raise ValueError(f"trainer.callbacks Preemption: signals entry {name!r} is not a signal name "
                                 "(e.g. SIGTERM, SIGINT, SIGUSR1)")
        self.signals = [getattr(signal, name) for name in names]
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._saved = False

    # -- handlers
    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        self.received = signum
        print(f"fusegen: received {signal.Signals(signum).name}: finishing this training step, then saving a "
              "checkpoint" + (" (Ctrl+C again to stop at once, without one)" if signum == signal.SIGINT else ""),
              file=sys.stderr, flush=True)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (e.g. a sweep worker thread)
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._handle and handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    # -- hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning's own signal connector, whose SIGTERM handler would end the fit with exit
        # code 0 and no checkpoint.
        self.received, self._saved = None, False
        self._install()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and not self._saved:
            self._save(trainer, batch_idx)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._exit_if_saved()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._exit_if_saved()  # before ModelCheckpoint's epoch-end save, which would mark the epoch done

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException) and not isinstance(exception, Preempted):
            exception.code = 128 + signal.SIGTERM  # Lightning's own SIGTERM stop exits 0 otherwise

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def _save(self, trainer: pl.Trainer, batch_idx: int) -> None:
        if self.received is None:  # another rank received it
            self.received = signal.SIGTERM
        path = preemption_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self._saved = True
        if trainer.is_global_zero:
            print(f"fusegen: stopped by {signal.Signals(self.received).name} after global step {trainer.global_step} "
                  f"(epoch {trainer.current_epoch}, batch {batch_idx}); saved {path}. Continue with --ckpt_path last.",
                  file=sys.stderr, flush=True)

    def _exit_if_saved(self) -> None:
        if self._saved:
            self._restore()
            raise Preempted(128 + int(self.received or signal.SIGTERM))


def preemption_checkpoint_path(trainer: pl.Trainer) -> Path:
    """``last.ckpt`` in the ``ModelCheckpoint`` folder (``--ckpt_path last`` takes it), else in
    ``<default_root_dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    if callback is not None and dirpath:
        return Path(callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST))
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
