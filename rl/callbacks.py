"""The agents' run artefacts as callbacks: the learning-curve picture at the end of fit, and the
episodes of ``fusegen predict`` (a CSV of returns and a video)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from datamodules.files import atomic_write_text
from fusion.artifacts import PREDICTIONS, artifact_dir, save_figure
from rl.video import write_video


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
                    color="tab:blue", alpha=0.35, lw=1, label="training episodes (mean per update)")
        if history.get("last100"):
            ax.plot([p.env_steps for p in history["last100"]], [p.mean_return for p in history["last100"]],
                    color="tab:blue", lw=2, label="training episodes (mean of the last 100)")
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


class EpisodeWriter(pl.Callback):
    """``fusegen predict`` for agents: the returns of every episode to
    ``<run_dir>/predictions/episodes.csv`` (``episode,return,length``; gathered over DDP ranks)
    and the frames an episode brought (episode 0 when ``predict_video``) to ``episode_0.mp4``
    (``rl.write_video``). Sets the agent's ``predictions_path`` and ``video_path``."""

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows: list[tuple[int, float, int]] = []
        pl_module.video_path = None

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs["frames"]:
            path = artifact_dir(trainer, PREDICTIONS) / f"episode_{outputs['episode']}.mp4"
            pl_module.video_path = str(write_video(outputs["frames"], path, fps=outputs["fps"]))
        self.rows.append((outputs["episode"], outputs["return"], outputs["length"]))

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = torch.tensor(self.rows, dtype=torch.float64, device=pl_module.device).reshape(-1, 3)
        if trainer.world_size > 1:
            # Lightning's predict sampler does not pad: ranks hold up to ceil(n / world_size)
            # episodes, and all_gather needs one shape, so pad with episode -1 rows
            per_rank = math.ceil(len(trainer.predict_dataloaders.dataset) / trainer.world_size)
            padding = torch.full((per_rank - len(rows), 3), -1.0, dtype=rows.dtype, device=rows.device)
            rows = pl_module.all_gather(torch.cat([rows, padding])).reshape(-1, 3)
        if not trainer.is_global_zero:
            return
        unique = {int(e): (float(r), int(n)) for e, r, n in rows.tolist() if e >= 0}
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["episode", "return", "length"])
        for e in sorted(unique):
            writer.writerow([e, repr(unique[e][0]), unique[e][1]])
        path = artifact_dir(trainer, PREDICTIONS) / "episodes.csv"
        atomic_write_text(path, text.getvalue())
        pl_module.predictions_path = str(path)
        returns = [r for r, _ in unique.values()]
        video = f" and the first episode as {pl_module.video_path}" if pl_module.video_path else ""
        print(f"fusegen predict: {len(unique)} episodes of {pl_module.hparams.env_id}, mean return "
              f"{np.mean(returns):.1f}; wrote {path}{video}")
