"""Lightning modules for fusion: the science (losses, metrics, optimisers); the Trainer does the rest.

``FusionClassifier``: encoders per modality -> fusion head -> (MLP) classifier.
``UnimodalClassifier``: the same with one encoder, the baseline a fusion model must beat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn

from fusion.encoders import Encoder
from fusion.heads import ConcatFusion, pooled_features

FusionHeadFactory = Callable[[dict[str, int]], nn.Module]


def token_mask_of(raw: object, tokens: torch.Tensor) -> torch.Tensor | None:
    """Text-like inputs carry an attention mask; use it when it lines up with the tokens."""
    if isinstance(raw, dict) and "attention_mask" in raw and raw["attention_mask"].shape[1] == tokens.shape[1]:
        return raw["attention_mask"].bool()
    return None


def _shape_of(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return str(list(x.shape))
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {_shape_of(v)}" for k, v in x.items()) + "}"
    return type(x).__name__


def _batch_size(batch: dict) -> int:
    return len(batch["label"]) if "label" in batch else next(
        v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))


def mlp(in_dim: int, hidden_dims: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    """Dropout-Linear(-ReLU) stack; ``hidden_dims=[]`` is a linear classifier."""
    layers: list[nn.Module] = []
    for h in hidden_dims:
        layers += [nn.Dropout(dropout), nn.Linear(in_dim, h), nn.ReLU(inplace=True)]
        in_dim = h
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(in_dim, out_dim))


class FusionClassifier(pl.LightningModule):
    """Encoders per modality -> fusion head -> classifier.

    Args:
        encoders: modality name -> encoder (``nn.Module`` returning ``[B, T, D]`` with ``out_dim``).
        fusion: a fusion head class configured without ``in_dims`` (``class_path`` + options in a
            config), or an already built head.
        num_classes: number of labels.
        hidden_dims: hidden widths of the MLP classifier on the fused vector (``[]``: linear).
        dropout: dropout before each classifier layer.
        modality_dropout: per-sample probability of hiding each modality in training (at least one
            stays), so the model learns to cope when one is missing at test time.
        drop_at_test: modalities marked absent in test/predict (robustness evaluation).
        unimodal_loss_weight: weight of auxiliary per-modality classification losses in training
            (a linear head on each encoder's pooled tokens, on the samples where that modality is
            present; the heads are not used for prediction). Joint training lets the easier
            modality dominate and under-trains the other ("modality laziness"; Wang et al., 2020,
            *What Makes Training Multi-Modal Classification Networks Hard?*); a loss of its own
            makes each encoder learn to classify alone. 0 = off.
        optimizer / lr_scheduler: injected from the config (``class_path: torch.optim.AdamW`` ...).
        cosine_schedule: instead of ``lr_scheduler``: warm up linearly over ``warmup_fraction`` of the
            run, then cosine-decay to 0 at its last step (transformers'
            ``get_cosine_schedule_with_warmup``, stepped per batch). The length comes from the
            Trainer (``estimated_stepping_batches``), so it follows ``max_epochs``/``max_steps``
            overrides without editing the config.
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: FusionHeadFactory,
        num_classes: int,
        hidden_dims: list[int] | None = None,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
        drop_at_test: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        cosine_schedule: bool = False,
        warmup_fraction: float = 0.0,
        unimodal_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if unimodal_loss_weight < 0:
            raise ValueError(f"model.init_args.unimodal_loss_weight must be >= 0, got {unimodal_loss_weight}")
        if cosine_schedule and lr_scheduler is not None:
            raise ValueError("model.init_args: set either lr_scheduler or cosine_schedule: true, not both")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"model.init_args.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        # Through the CLI the hyperparameters are the config (class paths + init args), so
        # `load_from_checkpoint` can rebuild encoders and head; built modules are not stored.
        self.save_hyperparameters(ignore=[] if _given_hyperparameters.get() is not None else ["encoders", "encoder", "fusion"])
        self.encoders = nn.ModuleDict(encoders)
        for m, enc in self.encoders.items():
            if not hasattr(enc, "out_dim"):
                raise TypeError(f"encoder {m!r} ({type(enc).__name__}) has no `out_dim`; fusegen encoders "
                                "return [B, T, D] and set out_dim = D (see fusion/encoders.py)")
        in_dims = {m: enc.out_dim for m, enc in self.encoders.items()}
        self.fusion = fusion if isinstance(fusion, nn.Module) else fusion(in_dims)
        self.classifier = mlp(self.fusion.out_dim, list(hidden_dims or []), num_classes, dropout)
        self.unimodal_loss_weight = unimodal_loss_weight
        self.unimodal_heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in in_dims.items()}
                                            if unimodal_loss_weight > 0 else {})
        self.modality_dropout = modality_dropout
        self.drop_at_test = list(drop_at_test or [])
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.cosine_schedule, self.warmup_fraction = cosine_schedule, warmup_fraction
        metrics = torchmetrics.MetricCollection({
            "acc": torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro"),
            "f1": torchmetrics.classification.MulticlassF1Score(num_classes, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_confusion = torchmetrics.classification.MulticlassConfusionMatrix(num_classes)
        self.confusion_png: Path | None = None

    # ------------------------------------------------------------------ forward
    def presence(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per-sample presence of each modality the model uses (after modality dropout / drop_at_test)."""
        n = _batch_size(batch)
        given = batch.get("present") or {}
        present = {}
        for m in self.encoders:
            p = given.get(m)
            present[m] = (p.to(self.device, torch.bool) if p is not None
                          else torch.full((n,), m in batch, dtype=torch.bool, device=self.device))
        if not self.training and self.drop_at_test:
            for m in self.drop_at_test:
                if m in present:
                    present[m] = torch.zeros_like(present[m])
        if self.training and self.modality_dropout > 0:
            kept = {m: p & (torch.rand(p.shape, device=p.device) >= self.modality_dropout) for m, p in present.items()}
            none_left = ~torch.stack(list(kept.values())).any(dim=0)
            present = {m: kept[m] | (p & none_left) for m, p in present.items()}  # keep >= 1 modality
        return present

    def encode(self, batch: dict, present: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """Run each encoder on its input, checking the input is there and well shaped."""
        features, token_masks = {}, {}
        n = _batch_size(batch)
        for m, enc in self.encoders.items():
            expected = enc.expected_shape() if isinstance(enc, Encoder) else "(see the encoder)"
            if m not in batch:
                if not present[m].any():  # marked absent for the whole batch: nothing to encode
                    features[m] = torch.zeros(n, 1, enc.out_dim, device=self.device)
                    continue
                raise KeyError(f"batch has no {m!r} input but the model has a {m!r} encoder (expected {expected}) "
                               f"and batch['present'][{m!r}] does not mark it absent; batch keys: {sorted(batch)}")
            if isinstance(enc, Encoder) and not enc.accepts(batch[m]):
                raise ValueError(f"{m!r} input has shape {_shape_of(batch[m])} but its encoder "
                                 f"{type(enc).__name__} expects {expected}")
            features[m] = enc(batch[m])
            mask = token_mask_of(batch[m], features[m])
            if mask is not None:
                token_masks[m] = mask
        return features, token_masks

    def forward_with_features(self, batch: dict) -> tuple[torch.Tensor, dict, dict, dict]:
        """Logits plus what produced them: presence masks, encoder tokens and token masks."""
        present = self.presence(batch)
        features, token_masks = self.encode(batch, present)
        logits = self.classifier(self.fusion(features, present=present, token_mask=token_masks))
        return logits, present, features, token_masks

    def forward(self, batch: dict) -> torch.Tensor:
        return self.forward_with_features(batch)[0]

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        label = batch["label"]
        logits, present, features, token_masks = self.forward_with_features(batch)
        loss = nn.functional.cross_entropy(logits, label)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(label))
        if self.unimodal_heads:
            pooled = pooled_features(features, list(self.unimodal_heads), present, token_masks)
            for (m, head), z in zip(self.unimodal_heads.items(), pooled):
                keep = present[m]
                if not keep.any():  # a zero-weight use, so DDP still sees a gradient for the head
                    loss = loss + 0.0 * head(z).sum()
                    continue
                aux = nn.functional.cross_entropy(head(z[keep]), label[keep])
                self.log(f"train/loss_{m}", aux, batch_size=int(keep.sum()))
                loss = loss + self.unimodal_loss_weight * aux
        return loss

    def _eval_step(self, batch: dict, metrics: torchmetrics.MetricCollection, stage: str) -> torch.Tensor:
        logits = self(batch)
        loss = nn.functional.cross_entropy(logits, batch["label"])
        metrics.update(logits, batch["label"])
        self.log(f"{stage}/loss", loss, batch_size=len(batch["label"]))
        self.log_dict(metrics, prog_bar=(stage == "val"), batch_size=len(batch["label"]))
        return logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._eval_step(batch, self.test_metrics, "test")
        self.test_confusion.update(logits, batch["label"])

    def on_test_epoch_end(self) -> None:
        self.confusion_png = self._save_confusion_matrix()
        self.test_confusion.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch).argmax(dim=-1)

    # ------------------------------------------------------------------ pictures
    def run_dir(self) -> Path:
        """The experiment's run folder (where the loggers write), ``runs/<experiment>/`` via the CLI."""
        for logger in self.trainer.loggers:
            if getattr(logger, "save_dir", None):
                return Path(logger.save_dir)
        return Path(self.trainer.default_root_dir)

    def _save_confusion_matrix(self) -> Path | None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = self.test_confusion.plot()
        suffix = "".join(f"_no-{m}" for m in self.drop_at_test)
        ax.set_title(f"test confusion matrix{suffix.replace('_', ' ')}")
        path = self.run_dir() / f"confusion_matrix{suffix}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        for logger in self.trainer.loggers:
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                logger.experiment.add_figure(f"test/confusion_matrix{suffix}", fig, self.global_step)
        plt.close(fig)
        return path

    # ------------------------------------------------------------------ optimisation
    def optimizer_and_cosine_schedule(self, total_steps: int):
        """The configured optimizer and its warm-up + cosine schedule over ``total_steps`` (to be
        stepped once per optimizer step); also usable from a hand-written loop."""
        from transformers import get_cosine_schedule_with_warmup

        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
        return optimizer, get_cosine_schedule_with_warmup(optimizer, int(self.warmup_fraction * total_steps), total_steps)

    def configure_optimizers(self):
        if self.cosine_schedule:
            optimizer, schedule = self.optimizer_and_cosine_schedule(int(self.trainer.estimated_stepping_batches))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "epoch", "monitor": "val/loss"}}


class UnimodalClassifier(FusionClassifier):
    """Baseline on one modality: the same encoders and classifier, ``ConcatFusion`` of one input.

    Other modalities in the batch are ignored, so it trains on the very same datamodule as the
    fusion models it is compared with.
    """

    def __init__(
        self,
        modality: str,
        encoder: nn.Module,
        num_classes: int,
        hidden_dims: list[int] | None = None,
        dropout: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        cosine_schedule: bool = False,
        warmup_fraction: float = 0.0,
    ) -> None:
        super().__init__({modality: encoder}, ConcatFusion, num_classes, hidden_dims=hidden_dims, dropout=dropout,
                         optimizer=optimizer, lr_scheduler=lr_scheduler, cosine_schedule=cosine_schedule,
                         warmup_fraction=warmup_fraction)
        self.modality = modality
