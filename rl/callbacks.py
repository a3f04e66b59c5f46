"""The learning-curve picture: episode return against env steps, written at the end of fit."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger


def run_dir(trainer: pl.Trainer) -> Path:
    """Where pictures go: the first logger's version folder, else ``default_root_dir``."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class LearningCurve(pl.Callback):
    """Plots the agent's ``history`` (training-episode returns and evaluation returns against env
    steps) to ``<log_dir>/learning_curve.png`` and to TensorBoard; sets ``learning_curve_path``."""

    def __init__(self, filename: str = "learning_curve.png") -> None:
        self.filename = filename

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = run_dir(trainer) / self.filename  # on every rank: trainer.log_dir broadcasts under DDP
        if not trainer.is_global_zero:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        history = pl_module.history
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        if history["train"]:
            steps, returns = zip(*[(p[0], p[1]) for p in history["train"]])
            ax.plot(steps, returns, color="tab:blue", alpha=0.5, lw=1, label="training episodes (mean per update)")
        if history["eval"]:
            steps, returns = zip(*[(p[0], p[1]) for p in history["eval"]])
            ax.plot(steps, returns, "o-", color="tab:red", ms=3, label="evaluation (deterministic, mean)")
        if getattr(pl_module.hparams, "target_return", None) is not None:
            ax.axhline(pl_module.hparams.target_return, color="gray", ls="--", lw=1, label="target")
        h = pl_module.hparams
        ax.set(xlabel="env steps", ylabel="episode return",
               title=f"{type(pl_module).__name__} on {h.env_id}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("rl/learning_curve", fig, global_step=int(pl_module.env_steps))
        plt.close(fig)
        pl_module.learning_curve_path = str(out)
