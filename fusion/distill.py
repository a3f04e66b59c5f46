"""Knowledge distillation (Hinton et al. 2015, *Distilling the Knowledge in a Neural Network*).

A smaller student is trained on the teacher's softened class probabilities plus the labels::

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

``T^2`` keeps the soft term's gradients on the scale of the hard term's as ``T`` grows. The
student is any ``FusionClassifier`` (encoders, head and classifier by config); the teacher comes
from a checkpoint of any fusion model, read as data (``torch.load(weights_only=True)``) and
rebuilt from the config saved in it. The teacher is no submodule of the student: it is not
trained, and not saved in the student's checkpoints (which stay the student's size).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from datamodules.checks import check_real, check_value
from fusion.heads import pooled_features
from fusion.module import FusionClassifier, FusionHeadFactory
from fusion.pretrained import check_config_classes


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, label: torch.Tensor,
                      temperature: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, soft, hard)``: ``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(z_s, y)``, batch means."""
    t = temperature
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits / t, dim=-1),
                                nn.functional.log_softmax(teacher_logits.detach() / t, dim=-1),
                                reduction="batchmean", log_target=True) * (t * t)
    hard = nn.functional.cross_entropy(student_logits, label)
    return alpha * soft + (1.0 - alpha) * hard, soft, hard


def load_teacher(path: str | Path) -> pl.LightningModule:
    """The fusion model saved in a ``fusegen fit`` checkpoint, rebuilt from its saved config, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_args.teacher_checkpoint = {str(path)!r}: no such file; train the teacher "
                                "first (fusegen fit --config <teacher config>) and give its checkpoint "
                                "(runs/<experiment>/checkpoints/last.ckpt)")
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters") or {}
    # A checkpoint is data: it may name no class outside the allowlist (Lightning's own instantiator aside).
    check_config_classes({k: v for k, v in hparams.items() if k != "_instantiator"}, path, "hyper_parameters")
    class_path = hparams.get("_class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(f"model.init_args.teacher_checkpoint = {str(path)!r} has no saved model config "
                         "(_class_path); give a checkpoint written by fusegen fit")
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, FusionClassifier)):
        raise ValueError(f"model.init_args.teacher_checkpoint = {str(path)!r} holds a {class_path}, not a fusion "
                         "classifier (FusionClassifier or a subclass)")
    teacher = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return teacher.eval().requires_grad_(False)


class DistillationClassifier(FusionClassifier):
    """A ``FusionClassifier`` student trained from a teacher's logits (see the module doc).

    Args:
        teacher_checkpoint: the teacher's ``fusegen fit`` checkpoint (loaded when fitting starts, so
            a trained student reloads, tests and exports without it).
        teacher: an already built teacher (Python use) instead of ``teacher_checkpoint``.
        temperature: softmax temperature ``T`` of the soft targets (> 0; 2 to 8 is usual).
        alpha: weight of the soft (teacher) term in [0, 1]; ``1 - alpha`` weighs the labels.
        the rest: as ``FusionClassifier`` (the student's encoders, head, classifier and optimiser).
    """

    def __init__(self, encoders: dict[str, nn.Module], fusion: FusionHeadFactory, num_classes: int,
                 teacher_checkpoint: str | None = None, teacher: nn.Module | None = None, temperature: float = 4.0,
                 alpha: float = 0.9, hidden_dims: list[int] | None = None, dropout: float = 0.1,
                 modality_dropout: float = 0.0, drop_at_test: list[str] | None = None,
                 optimizer: OptimizerCallable = torch.optim.AdamW, lr_scheduler: LRSchedulerCallable | None = None,
                 cosine_schedule: bool = False, warmup_fraction: float = 0.0, unimodal_loss_weight: float = 0.0,
                 strict_modalities: bool = False) -> None:
        check_real("temperature", temperature, 0.0, low_open=True)
        check_real("alpha", alpha, 0.0, 1.0)
        check_value("teacher_checkpoint", teacher_checkpoint, teacher_checkpoint is not None or teacher is not None,
                    "a fusegen fit checkpoint of the teacher model (or pass teacher= in Python)")
        super().__init__(encoders, fusion, num_classes, hidden_dims=hidden_dims, dropout=dropout,
                         modality_dropout=modality_dropout, drop_at_test=drop_at_test, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, cosine_schedule=cosine_schedule, warmup_fraction=warmup_fraction,
                         unimodal_loss_weight=unimodal_loss_weight, strict_modalities=strict_modalities)
        self.hparams.update({"teacher_checkpoint": teacher_checkpoint, "temperature": temperature, "alpha": alpha})
        self.teacher_checkpoint, self.temperature, self.alpha = teacher_checkpoint, temperature, alpha
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False) if teacher is not None else None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.teacher is None:
            self.__dict__["teacher"] = load_teacher(self.teacher_checkpoint)
        if self.teacher is not None:
            classes = getattr(self.teacher, "num_classes", self.num_classes)
            if classes != self.num_classes:
                raise ValueError(f"the teacher has {classes} classes but model.init_args.num_classes = "
                                 f"{self.num_classes}; distil into a student with the same classes")

    def teacher_logits(self, batch: dict) -> torch.Tensor:
        teacher = self.teacher.to(self.device).eval()
        with torch.no_grad():
            return teacher(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._pending_batch_checks:
            self._check_batch(batch)
        label = batch["label"]
        logits, present, features, token_masks = self.forward_with_features(batch)
        loss, soft, hard = distillation_loss(logits, self.teacher_logits(batch), label, self.temperature, self.alpha)
        if self.unimodal_heads:
            pooled = pooled_features(features, list(self.unimodal_heads), present, token_masks)
            for (m, head), z in zip(self.unimodal_heads.items(), pooled):
                if present[m].any():
                    loss = loss + self.unimodal_loss_weight * nn.functional.cross_entropy(
                        head(z)[present[m]], label[present[m]])
                else:
                    loss = loss + 0.0 * head(z).sum()
        n = len(label)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/loss_soft", soft, batch_size=n)
        self.log("train/loss_hard", hard, batch_size=n)
        return loss
