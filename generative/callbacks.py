"""GAN callbacks: a fixed-noise sample grid per epoch, a latent interpolation grid, and the
writer of ``fusegen predict``'s images.

Grids draw from ``GAN.sampling_generator`` (the EMA generator when there is one) and go through
``fusion.artifacts.save_figure``: ``<run_dir>/pictures/samples/epoch_XXX.png`` and
``<run_dir>/pictures/interpolation.png``, also logged to TensorBoard (and any logger with
``log_image``). The noise comes from a fixed seed, so grids of different epochs (and runs) show
the same latent points and are directly comparable. Predictions land in
``<run_dir>/predictions/``: one PNG per generated image and ``grid.png``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from datamodules.files import atomic_path
from fusion.artifacts import PREDICTIONS, artifact_dir, save_figure


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images in [-1, 1] ``[N, C, H, W]`` -> one grid image ``[C, H', W']`` in [0, 1]."""
    return make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latent batches (stays on the Gaussian's typical shell)."""
    a_n, b_n = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


class SampleGrid(pl.Callback):
    """Every ``every_n_epochs``: ``pictures/samples/epoch_XXX.png`` from ``num_samples`` fixed latents.

    For a conditional GAN the grid has 10 columns, column ``c`` conditioned on class ``c``.
    """

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 100, nrow: int = 10, seed: int = 1234) -> None:
        self.every_n_epochs, self.num_samples, self.nrow, self.seed = every_n_epochs, num_samples, nrow, seed
        self.last_path: Path | None = None

    def fixed_noise(self, nz: int) -> torch.Tensor:
        return torch.randn(self.num_samples, nz, generator=torch.Generator().manual_seed(self.seed))

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        cond = pl_module.grid_conditions(self.num_samples)
        if pl_module.hparams.condition is not None and cond is None:
            return  # encoder-conditioned GAN before its first validation: nothing to condition on yet
        images = pl_module.sample(self.fixed_noise(pl_module.nz), cond)
        self.last_path = save_figure(trainer, f"samples/epoch_{trainer.current_epoch:03d}",
                                     image_grid(images, self.nrow), tag="samples")


class InterpolationGrid(pl.Callback):
    """At the end of fit: ``pictures/interpolation.png``, each row a slerp between two latents
    (conditional GANs keep one class per row, rows cycling through the classes)."""

    def __init__(self, rows: int = 10, steps: int = 10, seed: int = 4321) -> None:
        self.rows, self.steps, self.seed = rows, steps, seed
        self.last_path: Path | None = None

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        g = torch.Generator().manual_seed(self.seed)
        a = torch.randn(self.rows, 1, pl_module.nz, generator=g)
        b = torch.randn(self.rows, 1, pl_module.nz, generator=g)
        t = torch.linspace(0, 1, self.steps).view(1, -1, 1)
        z = slerp(a, b, t).reshape(-1, pl_module.nz)  # row-major: row r, step s
        cond = None
        if pl_module.hparams.condition is not None:
            per_row = pl_module.grid_conditions(self.rows)  # row r keeps class r
            if per_row is None:
                return
            cond = per_row.repeat_interleave(self.steps, dim=0)
        images = pl_module.sample(z, cond)
        self.last_path = save_figure(trainer, "interpolation", image_grid(images, self.steps))


def _file_label(label: int, class_names: Sequence[str] | None) -> str:
    name = str(class_names[label]) if class_names is not None and 0 <= label < len(class_names) else str(label)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or str(label)


class PredictionWriter(BasePredictionWriter):
    """Writes ``GAN.predict_step``'s images: ``<run_dir>/predictions/<index>[_<class>].png`` (the
    index of the predict-split row it was generated for; the class name from the datamodule's
    ``class_names`` when it has them) and ``grid.png`` with the first ``grid_size`` images.
    Every process writes its own rows (file names never collide); the grid is rank zero's."""

    def __init__(self, grid_size: int = 100, nrow: int = 10) -> None:
        super().__init__(write_interval="batch")
        self.grid_size, self.nrow = grid_size, nrow
        self.folder: Path | None = None
        self.written: list[Path] = []
        self._grid: list[torch.Tensor] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder = artifact_dir(trainer, PREDICTIONS)
        self.written, self._grid = [], []

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        if prediction is None:
            return
        images, labels = prediction["images"], prediction["labels"]
        n = len(images)
        indices = list(batch_indices)[:n] if batch_indices else [len(self.written) + i for i in range(n)]
        class_names = getattr(trainer.datamodule, "class_names", None) if trainer.datamodule is not None else None
        for i, (index, image) in enumerate(zip(indices, images)):
            name = f"{index:05d}" if labels is None else f"{index:05d}_{_file_label(int(labels[i]), class_names)}"
            path = self.folder / f"{name}.png"
            with atomic_path(path) as tmp:
                save_image(image, tmp, format="png")
            self.written.append(path)
        room = self.grid_size - sum(len(g) for g in self._grid)
        if room > 0:
            self._grid.append(images[:room])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self._grid:
            return
        grid = make_grid(torch.cat(self._grid), nrow=self.nrow, padding=2)
        with atomic_path(self.folder / "grid.png") as tmp:
            save_image(grid, tmp, format="png")
        wanted = pl_module.hparams.num_predictions
        short = "" if len(self.written) >= wanted or trainer.world_size > 1 else (
            f" (num_predictions={wanted}, but the predict split has only {len(self.written)} rows)")
        print(f"fusegen: wrote {len(self.written)} generated images and grid.png to {self.folder}{short}")
