"""Lightning modules for fusion: the science (losses, metrics, optimisers); the Trainer does the rest."""

from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

FusionHeadFactory = Callable[[dict[str, int]], nn.Module]


def token_mask_of(raw: object, tokens: torch.Tensor) -> torch.Tensor | None:
    """Text-like inputs carry an attention mask; use it when it lines up with the tokens."""
    if isinstance(raw, dict) and "attention_mask" in raw and raw["attention_mask"].shape[1] == tokens.shape[1]:
        return raw["attention_mask"].bool()
    return None


class FusionClassifier(pl.LightningModule):
    """Encoders per modality -> fusion head -> linear classifier.

    Args:
        encoders: modality name -> encoder (``nn.Module`` returning ``[B, T, D]`` with ``out_dim``).
        fusion: a fusion head class (configured without ``in_dims``) or a built head.
        num_classes: number of labels.
        modality_dropout: per-sample probability of hiding each modality in training, so the model
            learns to cope when one is missing at test time.
        optimizer / lr_scheduler: injected from the config (``class_path: torch.optim.AdamW``...).
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: FusionHeadFactory,
        num_classes: int,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoders", "fusion"])
        self.encoders = nn.ModuleDict(encoders)
        in_dims = {m: enc.out_dim for m, enc in self.encoders.items()}
        self.fusion = fusion if isinstance(fusion, nn.Module) else fusion(in_dims)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.fusion.out_dim, num_classes))
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        metrics = torchmetrics.MetricCollection({
            "acc": torchmetrics.classification.MulticlassAccuracy(num_classes),
            "f1": torchmetrics.classification.MulticlassF1Score(num_classes, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, batch: dict) -> torch.Tensor:
        present = batch.get("present")
        if self.training and self.hparams.modality_dropout > 0 and present is not None:
            present = {m: p & (torch.rand_like(p, dtype=torch.float) >= self.hparams.modality_dropout)
                       for m, p in present.items()}
        features, token_masks = {}, {}
        for m, enc in self.encoders.items():
            if m not in batch:
                raise KeyError(f"batch has no {m!r} input but the model has a {m!r} encoder; "
                               f"batch keys: {sorted(batch)}")
            features[m] = enc(batch[m])
            mask = token_mask_of(batch[m], features[m])
            if mask is not None:
                token_masks[m] = mask
        return self.classifier(self.fusion(features, present=present, token_mask=token_masks))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self(batch), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _eval_step(self, batch: dict, metrics: torchmetrics.MetricCollection, stage: str) -> None:
        logits = self(batch)
        loss = nn.functional.cross_entropy(logits, batch["label"])
        metrics.update(logits, batch["label"])
        self.log(f"{stage}/loss", loss, batch_size=len(batch["label"]))
        self.log_dict(metrics, prog_bar=(stage == "val"), batch_size=len(batch["label"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch).argmax(dim=-1)

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "epoch"}}
