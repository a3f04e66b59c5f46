"""The learning-curve picture: episode return against env steps, written at the end of fit."""

from __future__ import annotations

import pytorch_lightning as pl

from fusion.artifacts import save_figure


class LearningCurve(pl.Callback):
    """Plots the agent's ``history`` (training-episode returns and evaluation returns against env
    steps) to ``<run_dir>/pictures/<name>.png`` and the loggers (``fusion.artifacts.save_figure``);
    sets the agent's ``learning_curve_path`` on rank zero."""

    def __init__(self, name: str = "learning_curve") -> None:
        self.name = name

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        history, h = pl_module.history, pl_module.hparams
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        if history["train"]:
            ax.plot([p.env_steps for p in history["train"]], [p.mean_return for p in history["train"]],
                    color="tab:blue", alpha=0.5, lw=1, label="training episodes (mean per update)")
        if history["eval"]:
            ax.plot([p.env_steps for p in history["eval"]], [p.mean_return for p in history["eval"]],
                    "o-", color="tab:red", ms=3, label="evaluation (deterministic, mean)")
        if getattr(h, "target_return", None) is not None:
            ax.axhline(h.target_return, color="gray", ls="--", lw=1, label="target")
        ax.set(xlabel="env steps (all ranks)", ylabel="episode return",
               title=f"{type(pl_module).__name__} on {h.env_id}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = save_figure(trainer, self.name, fig, step=int(pl_module.env_steps))
        pl_module.learning_curve_path = str(path) if path is not None else None
