"""Picture callbacks for GANs: a fixed-noise sample grid per epoch and a latent interpolation grid.

Both draw from ``GAN.sampler`` (the EMA generator when there is one), write PNGs under
``<trainer.log_dir>/samples/`` (the run folder) and log them to TensorBoard when a
``TensorBoardLogger`` is attached. The noise is drawn from a fixed seed, so grids of different
epochs (and different runs) show the same latent points and are directly comparable.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image


def picture_dir(trainer: pl.Trainer) -> Path:
    """``<log_dir>/samples`` of the first logger, else ``<default_root_dir>/samples``.

    Call it on every rank: under DDP ``trainer.log_dir`` is a collective (broadcast) call, so
    calling it from rank zero alone would hang the run."""
    base = trainer.log_dir or trainer.default_root_dir
    return Path(base) / "samples"


def write_grid(trainer: pl.Trainer, folder: Path, images: torch.Tensor, name: str, tag: str, nrow: int) -> Path:
    """Save ``images`` in [-1, 1] as one PNG grid under ``folder`` and log it to TensorBoard."""
    grid = make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    save_image(grid, path)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, grid, global_step=trainer.global_step)
    return path


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latent batches (stays on the Gaussian's typical shell)."""
    a_n, b_n = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


class SampleGrid(pl.Callback):
    """Every ``every_n_epochs``: ``samples/epoch_XXX.png`` from ``num_samples`` fixed latents.

    For a conditional GAN the grid has 10 columns, column ``c`` conditioned on digit ``c``.
    """

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 100, nrow: int = 10, seed: int = 1234) -> None:
        self.every_n_epochs, self.num_samples, self.nrow, self.seed = every_n_epochs, num_samples, nrow, seed
        self.last_path: Path | None = None
        self.folder: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.folder = picture_dir(trainer)  # on every rank (see picture_dir)

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
        self.last_path = write_grid(trainer, self.folder, images, f"epoch_{trainer.current_epoch:03d}.png", "samples",
                                    self.nrow)


class InterpolationGrid(pl.Callback):
    """At the end of fit: ``samples/interpolation.png``, each row a slerp between two latents
    (conditional GANs keep one digit per row, rows cycling through the digits)."""

    def __init__(self, rows: int = 10, steps: int = 10, seed: int = 4321) -> None:
        self.rows, self.steps, self.seed = rows, steps, seed
        self.last_path: Path | None = None
        self.folder: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.folder = picture_dir(trainer)  # on every rank (see picture_dir)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        g = torch.Generator().manual_seed(self.seed)
        a, b = torch.randn(self.rows, 1, pl_module.nz, generator=g), torch.randn(self.rows, 1, pl_module.nz, generator=g)
        t = torch.linspace(0, 1, self.steps).view(1, -1, 1)
        z = slerp(a, b, t).reshape(-1, pl_module.nz)  # row-major: row r, step s
        cond = pl_module.grid_conditions(self.rows * self.steps)
        if cond is not None:  # grid_conditions puts digit c in column c; here a row keeps its digit
            per_row = pl_module.grid_conditions(self.rows)
            cond = per_row.repeat_interleave(self.steps, dim=0)
        elif pl_module.hparams.condition is not None:
            return
        images = pl_module.sample(z, cond)
        self.last_path = write_grid(trainer, self.folder, images, "interpolation.png", "interpolation", self.steps)
