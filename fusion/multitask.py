"""Multi-task classification: shared encoders + fusion, one head per task.

Each task reads its own label from the batch (AV-MNIST: the digit in ``label`` and the speaker of
the recording in ``speaker``; ``HFDataModule``: one key per ``label_columns`` entry) and has its own
classifier, loss, metrics and confusion matrix. The task losses are combined

- ``weighting="fixed"``: ``L = sum_t w_t L_t`` with the configured weights;
- ``weighting="uncertainty"``: homoscedastic uncertainty (Kendall, Gal & Cipolla 2018,
  *Multi-Task Learning Using Uncertainty to Weigh Losses*), for classification
  ``L = sum_t w_t (exp(-s_t) L_t + s_t / 2)`` with ``s_t = log sigma_t^2`` learned per task
  (initialised to 0, i.e. weight 1); ``exp(-s_t)`` is logged as the task's effective weight.

Tasks in a config::

    tasks:
      - {name: digit, num_classes: 10, label_key: label}
      - {name: speaker, num_classes: 6, label_key: speaker, weight: 0.5}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchmetrics
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from datamodules.checks import check_choice, check_value
from fusion.artifacts import save_figure
from fusion.module import FusionClassifier, FusionHeadFactory, mlp

WEIGHTINGS = ("fixed", "uncertainty")
TASK_KEYS = {"name", "num_classes", "label_key", "weight"}


def uncertainty_weighted_loss(losses: torch.Tensor, log_vars: torch.Tensor,
                              weights: torch.Tensor | None = None) -> torch.Tensor:
    """Kendall et al. (2018) for classification: ``sum_t w_t (exp(-s_t) L_t + s_t / 2)``."""
    terms = torch.exp(-log_vars) * losses + 0.5 * log_vars
    return (terms if weights is None else weights * terms).sum()


def normalise_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks as plain dicts with defaults filled in; a bad entry names its index and key."""
    if not tasks:
        raise ValueError("model.init_args.tasks is empty: give one or more {name, num_classes, label_key, weight}")
    out, names = [], set()
    for i, task in enumerate(tasks):
        task = dict(task.as_dict() if hasattr(task, "as_dict") else task)
        where = f"tasks[{i}]"
        unknown = sorted(set(task) - TASK_KEYS)
        check_value(where, task, not unknown and "name" in task and "num_classes" in task,
                    f"a mapping with name and num_classes (and optionally label_key, weight); unknown keys "
                    f"{unknown}" if unknown else "a mapping with name and num_classes (and optionally label_key, "
                    "weight)")
        task.setdefault("label_key", "label")
        task.setdefault("weight", 1.0)
        check_value(f"{where}.name", task["name"], isinstance(task["name"], str) and task["name"] not in names
                    and task["name"].isidentifier(), "a unique identifier-like name")
        check_value(f"{where}.num_classes", task["num_classes"],
                    isinstance(task["num_classes"], int) and task["num_classes"] >= 2, "an integer >= 2")
        check_value(f"{where}.weight", task["weight"], isinstance(task["weight"], (int, float)) and task["weight"] >= 0,
                    "a number >= 0")
        names.add(task["name"])
        out.append(task)
    return out


class MultiTaskClassifier(FusionClassifier):
    """Encoders per modality -> fusion head -> one classifier per task (see the module doc).

    Args:
        tasks: list of ``{name, num_classes, label_key (default "label"), weight (default 1)}``.
        weighting: ``"fixed"`` (configured weights) or ``"uncertainty"`` (learned, Kendall et al.).
        Everything else as ``FusionClassifier`` (``init_encoders_from``/``freeze_encoders`` too).
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: FusionHeadFactory,
        tasks: list[dict[str, Any]],
        weighting: str = "fixed",
        hidden_dims: list[int] | None = None,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        cosine_schedule: bool = False,
        warmup_fraction: float = 0.0,
        init_encoders_from: str | None = None,
        freeze_encoders: bool = False,
    ) -> None:
        tasks = normalise_tasks(tasks)
        check_choice("weighting", weighting, WEIGHTINGS)
        super().__init__(encoders, fusion, max(t["num_classes"] for t in tasks), hidden_dims=hidden_dims,
                         dropout=dropout, modality_dropout=modality_dropout, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, cosine_schedule=cosine_schedule, warmup_fraction=warmup_fraction,
                         init_encoders_from=init_encoders_from, freeze_encoders=freeze_encoders)
        self.hparams["tasks"] = tasks  # plain dicts, whatever form the config gave them in
        del self.classifier, self.val_metrics, self.test_metrics, self.test_confusion
        self.tasks, self.weighting = tasks, weighting
        hidden_dims = list(hidden_dims or [])
        self.heads = nn.ModuleDict({t["name"]: mlp(self.fusion.out_dim, hidden_dims, t["num_classes"], dropout)
                                    for t in tasks})
        self.register_buffer("task_weights", torch.tensor([float(t["weight"]) for t in tasks]), persistent=False)
        self.log_vars = nn.Parameter(torch.zeros(len(tasks))) if weighting == "uncertainty" else None

        def metrics(k: int) -> torchmetrics.MetricCollection:
            return torchmetrics.MetricCollection({
                "acc": torchmetrics.classification.MulticlassAccuracy(k, average="micro"),
                "f1": torchmetrics.classification.MulticlassF1Score(k, average="macro")})

        self.task_val_metrics = nn.ModuleDict({t["name"]: metrics(t["num_classes"]).clone(prefix=f"val/{t['name']}/")
                                               for t in tasks})
        self.task_test_metrics = nn.ModuleDict({t["name"]: metrics(t["num_classes"]).clone(
            prefix=f"test/{t['name']}/") for t in tasks})
        self.task_confusion = nn.ModuleDict({t["name"]: torchmetrics.classification.MulticlassConfusionMatrix(
            t["num_classes"]) for t in tasks})
        self.confusion_pngs: dict[str, Path] = {}

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.initialise_encoders()
        self._pending_batch_checks = {"labels"}
        datamodule = self.trainer.datamodule
        modalities = getattr(datamodule, "modalities", None)
        if stage == "fit" and modalities is not None:
            self._check_modalities(set(modalities), f"{type(datamodule).__name__}.modalities")
        label_classes = getattr(datamodule, "label_classes", None)
        if isinstance(label_classes, dict):
            self._check_label_classes(label_classes, type(datamodule).__name__)

    def _check_label_classes(self, label_classes: dict[str, list[str]], source: str) -> None:
        """Each task against the datamodule's labels (``label_classes``: batch key -> class names),
        before any step: a key it does not serve, or more classes than the task's head has."""
        for t in self.tasks:
            key = t["label_key"]
            if key not in label_classes:
                raise KeyError(f"model.init_args.tasks: task {t['name']!r} reads batch[{key!r}], which {source} does "
                               f"not serve; its label keys: {sorted(label_classes)}")
            n = len(label_classes[key])
            if n > t["num_classes"]:
                raise ValueError(f"model.init_args.tasks: task {t['name']!r} has num_classes = {t['num_classes']} but "
                                 f"{source}'s {key!r} has {n} classes {label_classes[key][:20]}; set its num_classes "
                                 f"to {n}")

    def _check_batch(self, batch: dict) -> None:
        for t in self.tasks:
            key = t["label_key"]
            if key not in batch:
                raise KeyError(f"model.init_args.tasks: task {t['name']!r} reads batch[{key!r}], which the data does "
                               f"not provide; batch keys: {sorted(batch)}")
            y = batch[key]
            if len(y) and (int(y.max()) >= t["num_classes"] or int(y.min()) < 0):
                raise ValueError(f"model.init_args.tasks: task {t['name']!r} has num_classes = {t['num_classes']} but "
                                 f"batch[{key!r}] has label {int(y.max())}; labels must be in [0, num_classes)")
        self._pending_batch_checks.clear()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Logits per task name."""
        fused = self.embed(batch)
        return {name: head(fused) for name, head in self.heads.items()}

    def task_losses(self, logits: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        return torch.stack([nn.functional.cross_entropy(logits[t["name"]], batch[t["label_key"]]) for t in self.tasks])

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        if self.log_vars is None:
            return (self.task_weights * losses).sum()
        return uncertainty_weighted_loss(losses, self.log_vars, self.task_weights)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._pending_batch_checks:
            self._check_batch(batch)
        losses = self.task_losses(self(batch), batch)
        loss = self.combine(losses)
        n = len(batch[self.tasks[0]["label_key"]])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for i, t in enumerate(self.tasks):
            self.log(f"train/{t['name']}/loss", losses[i], batch_size=n)
            if self.log_vars is not None:
                self.log(f"train/{t['name']}/weight", torch.exp(-self.log_vars[i]).detach(), batch_size=n)
        return loss

    def _eval_step(self, batch: dict, metrics: nn.ModuleDict, stage: str) -> dict[str, torch.Tensor]:
        if self._pending_batch_checks:
            self._check_batch(batch)
        logits = self(batch)
        n = len(batch[self.tasks[0]["label_key"]])
        self.log(f"{stage}/loss", self.combine(self.task_losses(logits, batch)), batch_size=n, sync_dist=True)
        for t in self.tasks:
            metrics[t["name"]].update(logits[t["name"]], batch[t["label_key"]])
            self.log_dict(metrics[t["name"]], prog_bar=stage == "val", batch_size=n, sync_dist=True)
        return logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.task_val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._eval_step(batch, self.task_test_metrics, "test")
        for t in self.tasks:
            self.task_confusion[t["name"]].update(logits[t["name"]], batch[t["label_key"]])

    def on_test_epoch_end(self) -> None:
        for t in self.tasks:
            self.confusion_pngs[t["name"]] = self._save_task_confusion(t)
            self.task_confusion[t["name"]].reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        return {f"probs_{name}": z.float().softmax(dim=-1).cpu() for name, z in self(batch).items()}

    def configure_callbacks(self) -> list:
        return []

    def _save_task_confusion(self, task: dict) -> Path | None:
        if self.trainer.sanity_checking:
            return None
        import matplotlib

        matplotlib.use("Agg")
        fig, ax = self.task_confusion[task["name"]].plot()
        ax.set_title(f"test confusion matrix: {task['name']}")
        return save_figure(self.trainer, f"confusion_matrix_{task['name']}", fig)
