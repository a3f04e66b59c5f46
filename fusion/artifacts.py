"""Where a run's files go, and the one way every family saves a picture.

Layout (the same for fusion models, GANs and agents; ``run_dir`` is ``runs/<experiment>/``
through the CLI, i.e. the loggers' ``save_dir``)::

    <run_dir>/pictures/<name>.png      confusion matrices, sample grids, learning curves, ...
    <run_dir>/predictions/...          what ``fusegen predict`` writes (CSV, PNGs, videos)
    <run_dir>/checkpoints/             ModelCheckpoint (trainer.yaml)
    <run_dir>/tensorboard/version_N/   TensorBoard events (pictures are logged there too)
    <run_dir>/csv/version_N/           metrics.csv

``save_figure`` writes the PNG atomically (on a full disk the error names it and the previous
picture is kept) and adds it to every attached logger that takes images (TensorBoard's
``add_figure``/``add_image``, and any logger with ``log_image``, e.g. Weights & Biases), so no
module or callback talks to a logger's internals itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from datamodules.files import NoSpaceError, atomic_path, disk_full_error

PICTURES = "pictures"
PREDICTIONS = "predictions"


def run_dir(trainer: pl.Trainer) -> Path:
    """The run folder: the first logger's ``save_dir``, else ``trainer.default_root_dir``.

    Unlike ``trainer.log_dir`` this is no collective call under DDP, so any rank may ask."""
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir:
            return Path(save_dir)
    return Path(trainer.default_root_dir)


def artifact_dir(trainer: pl.Trainer, kind: str = PICTURES) -> Path:
    """``<run_dir>/<kind>/``, created."""
    folder = run_dir(trainer) / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(trainer: pl.Trainer, name: str, figure: Any, step: int | None = None,
                tag: str | None = None) -> Path | None:
    """Save ``figure`` as ``<run_dir>/pictures/<name>.png`` and log it to the loggers.

    ``figure`` is a matplotlib ``Figure`` (closed afterwards) or an image tensor ``[C, H, W]``
    with values in [0, 1]. ``name`` may contain ``/`` (``samples/epoch_003``): the part before
    the last slash is a sub-folder. ``tag`` is the loggers' name for the picture (default
    ``name``); pictures of one series share a tag (``samples``) and differ by ``step``, so
    TensorBoard shows them on one slider. Rank zero only (other ranks return ``None``): call it
    from every rank, it never blocks."""
    if not trainer.is_global_zero:
        if _is_matplotlib_figure(figure):
            _close(figure)
        return None
    step = trainer.global_step if step is None else step
    tag = name if tag is None else tag
    path = artifact_dir(trainer) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if _is_matplotlib_figure(figure):
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        else:
            from torchvision.utils import save_image

            image = torch.as_tensor(figure).detach().float().cpu()
            with atomic_path(path) as tmp:
                save_image(image, tmp, format="png")
    except NoSpaceError as err:
        if _is_matplotlib_figure(figure):
            _close(figure)
        cause = err.__cause__ or err
        raise disk_full_error(path, cause, what="picture") from cause
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.TensorBoardLogger):
            if _is_matplotlib_figure(figure):
                logger.experiment.add_figure(tag, figure, global_step=step, close=False)
            else:
                logger.experiment.add_image(tag, torch.as_tensor(figure).float().cpu(), global_step=step)
        elif hasattr(logger, "log_image"):
            logger.log_image(key=tag, images=[str(path)], step=step)
    if _is_matplotlib_figure(figure):
        _close(figure)
    return path


def _is_matplotlib_figure(obj: Any) -> bool:
    return type(obj).__module__.startswith("matplotlib") and hasattr(obj, "savefig")


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


class FrozenModule(nn.Module):
    """Wraps a module as a fixed function: no gradients, and eval mode that sticks.

    Lightning calls ``.train()`` on the whole model at every epoch; a frozen feature extractor
    (a condition encoder, a metric's classifier, a frozen fusion encoder) must keep its
    BatchNorm statistics and dropout off regardless. ``forward`` runs under ``no_grad``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FrozenModule":
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)

