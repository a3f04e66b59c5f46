"""Lightning modules for fusion: the science (losses, metrics, optimisers); the Trainer does the rest.

``FusionClassifier``: encoders per modality -> fusion head -> (MLP) classifier.
``UnimodalClassifier``: the same with one encoder, the baseline a fusion model must beat.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from datamodules.checks import check_value
from fusion.artifacts import save_figure
from fusion.encoders import Encoder
from fusion.heads import ConcatFusion, pooled_features
from fusion.pretrained import from_pretrained, save_pretrained

FusionHeadFactory = Callable[[dict[str, int]], nn.Module]

# Batch keys that describe a sample rather than carry a modality.
NON_MODALITY_KEYS = frozenset({"label", "present", "id", "index"})


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


def is_plain_data(value: Any) -> bool:
    """True for what a config is made of (numbers, strings, lists and dicts of them)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_data(v) for k, v in value.items())
    return False


def _as_plain(value: Any) -> Any:
    """A config with jsonargparse ``Namespace``s in it (rebuilding a model parses its config in
    place) as plain dicts."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_plain(v) for v in value]
    return value


def encoder_states_from(path: str | os.PathLike, key: str = "model.init_args.init_encoders_from"
                        ) -> dict[str, dict[str, torch.Tensor]]:
    """The encoders' weights in a checkpoint (``last.ckpt``), a ``save_pretrained`` folder or a
    ``.safetensors`` file: ``{modality: state_dict}`` from the ``encoders.<modality>.*`` entries.

    Read as data only (safetensors, or ``torch.load(weights_only=True)``): a file that would run
    code is refused. Any model with an ``encoders`` dict qualifies (a ``ContrastivePretrainer``,
    a ``FusionClassifier``, a ``MultiTaskClassifier``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"{key} = {str(path)!r}: no such file (give a checkpoint such as "
                                "runs/<experiment>/checkpoints/last.ckpt or a save_pretrained folder)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        import pickle

        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{key} = {str(path)!r} is not loadable as data (torch.load(weights_only=True) "
                             f"refused it: {err}); only checkpoints of plain tensors are read") from err
        state = state.get("state_dict", state) if isinstance(state, dict) else {}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in state.items():
        if name.startswith("encoders.") and name.count(".") >= 2:
            modality, rest = name[len("encoders."):].split(".", 1)
            groups.setdefault(modality, {})[rest] = value
    if not groups:
        raise ValueError(f"{key} = {str(path)!r} holds no encoder weights (no 'encoders.<modality>.*' entries; "
                         f"it has e.g. {sorted(state)[:5]})")
    return groups


def mlp(in_dim: int, hidden_dims: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    """Dropout-Linear(-ReLU) stack; ``hidden_dims=[]`` is a linear classifier."""
    layers: list[nn.Module] = []
    for h in hidden_dims:
        layers += [nn.Dropout(dropout), nn.Linear(in_dim, h), nn.ReLU(inplace=True)]
        in_dim = h
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(in_dim, out_dim))


def fusion_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    unimodal_logits: dict[str, torch.Tensor],
    present: dict[str, torch.Tensor],
    unimodal_loss_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = CE(logits, y) + w * sum_m CE(unimodal_logits[m][present_m], y[present_m])``.

    Each auxiliary term is the mean cross-entropy over the samples where modality ``m`` is
    present only (an absent modality has nothing to classify). A modality absent from the whole
    batch adds ``0 * logits.sum()``: no loss, but a (zero) gradient, so DDP still sees every
    parameter used. Returns the total and the auxiliary terms that were computed (for logging).
    """
    loss = nn.functional.cross_entropy(logits, label)
    terms: dict[str, torch.Tensor] = {}
    for m, z in unimodal_logits.items():
        keep = present[m]
        if not keep.any():
            loss = loss + 0.0 * z.sum()
            continue
        terms[m] = nn.functional.cross_entropy(z[keep], label[keep])
        loss = loss + unimodal_loss_weight * terms[m]
    return loss, terms


class FusionClassifier(pl.LightningModule):
    """Encoders per modality -> fusion head -> classifier.

    Args:
        encoders: modality name -> encoder (``nn.Module`` returning ``[B, T, D]`` with ``out_dim``).
        fusion: a fusion head class configured without ``in_dims`` (``class_path`` + options in a
            config), or an already built head.
        num_classes: number of labels (>= 2).
        hidden_dims: hidden widths of the MLP classifier on the fused vector (``[]``: linear).
        dropout: dropout before each classifier layer, in [0, 1).
        modality_dropout: per-sample probability, in [0, 1), of hiding each modality in training
            (at least one stays), so the model learns to cope when one is missing at test time.
        drop_at_test: modalities marked absent in validation/test/predict (robustness evaluation).
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
        strict_modalities: a modality the data provides but no encoder uses is an error at fit
            start instead of a warning.
        init_encoders_from: start the encoders from the ``encoders.<modality>`` weights of a
            checkpoint (a ``ContrastivePretrainer``'s ``last.ckpt``) or a ``save_pretrained`` folder,
            read as data at fit start (a resumed run then restores its own weights over them).
        freeze_encoders: keep the encoders fixed (no gradients, normalisation statistics frozen):
            with ``init_encoders_from`` and a linear classifier, a linear probe.
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
        strict_modalities: bool = False,
        init_encoders_from: str | None = None,
        freeze_encoders: bool = False,
    ) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims or [])
        drop_at_test = list(drop_at_test or [])
        check_value("num_classes", num_classes, isinstance(num_classes, int) and num_classes >= 2, "an integer >= 2")
        check_value("hidden_dims", hidden_dims, all(isinstance(h, int) and h > 0 for h in hidden_dims),
                     "a list of positive integers")
        check_value("dropout", dropout, 0.0 <= dropout < 1.0, "in [0, 1)")
        check_value("modality_dropout", modality_dropout, 0.0 <= modality_dropout < 1.0, "in [0, 1)")
        check_value("warmup_fraction", warmup_fraction, 0.0 <= warmup_fraction < 1.0, "in [0, 1)")
        check_value("unimodal_loss_weight", unimodal_loss_weight, unimodal_loss_weight >= 0, ">= 0")
        if not encoders:
            raise ValueError("model.init_args.encoders is empty: give at least one modality -> encoder")
        unknown = sorted(set(drop_at_test) - set(encoders))
        if unknown:
            raise ValueError(f"model.init_args.drop_at_test = {drop_at_test} names {unknown}, which the model has no "
                             f"encoder for; its modalities are {sorted(encoders)}")
        if cosine_schedule and lr_scheduler is not None:
            raise ValueError("model.init_args: set either lr_scheduler or cosine_schedule: true, not both")
        self._save_config_hyperparameters(inspect.currentframe())
        self.encoders = nn.ModuleDict(encoders)
        for m, enc in self.encoders.items():
            if not hasattr(enc, "out_dim"):
                raise TypeError(f"encoder {m!r} ({type(enc).__name__}) has no `out_dim`; fusegen encoders "
                                "return [B, T, D] and set out_dim = D (see fusion/encoders.py)")
        in_dims = {m: enc.out_dim for m, enc in self.encoders.items()}
        self.fusion = fusion if isinstance(fusion, nn.Module) else fusion(in_dims)
        self.num_classes = num_classes
        self.classifier = mlp(self.fusion.out_dim, hidden_dims, num_classes, dropout)
        self.unimodal_loss_weight = unimodal_loss_weight
        self.unimodal_heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in in_dims.items()}
                                            if unimodal_loss_weight > 0 else {})
        self.modality_dropout = modality_dropout
        self.drop_at_test = drop_at_test
        self.strict_modalities = strict_modalities
        self.init_encoders_from, self.freeze_encoders = init_encoders_from, freeze_encoders
        self._encoders_initialised = False
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
        self._pending_batch_checks: set[str] = set()

    def _save_config_hyperparameters(self, frame: Any) -> None:
        """Keep the hyperparameters that are plain data and arguments of this class, drop built objects.

        Through ``fusegen``/LightningCLI, ``save_hyperparameters`` receives the parsed config (class
        paths + init args, all plain data), so ``load_from_checkpoint(path)`` rebuilds encoders and
        head from the checkpoint alone. Built in Python, the same arguments are modules, classes and
        callables: they must not be pickled into the checkpoint (it loads with
        ``weights_only=True``, and their weights are in the state dict anyway); such a model is
        reloaded by passing them again, ``load_from_checkpoint(path, encoders=..., fusion=...)``,
        or saved config-free with ``save_pretrained``. Deciding on the values themselves keeps to
        the public ``save_hyperparameters``/``hparams`` API. Arguments of a base class that a
        subclass fixes (``UnimodalClassifier`` has no ``fusion``) are dropped too.
        """
        with warnings.catch_warnings():  # the built modules are dropped right below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(frame=frame)
        accepted = inspect.signature(type(self).__init__).parameters
        for key in [k for k, v in self.hparams.items()
                    if not k.startswith("_") and (k not in accepted or not is_plain_data(v))]:
            del self.hparams[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the CLI's config of a reloaded model, so that its own checkpoints reload alike."""
        saved = checkpoint.get("hyper_parameters") or {}
        if "_class_path" in saved:  # rebuilt from a config, outside the CLI: the built modules were dropped
            for key, value in saved.items():
                value = _as_plain(value)
                if key not in self.hparams and is_plain_data(value):
                    self.hparams[key] = value

    # ------------------------------------------------------------------ config-free save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (encoders, head and options as class paths + init args) and
        ``model.safetensors`` into ``directory``; ``from_pretrained`` rebuilds the model from them
        alone, with no training config and nothing unpickled (see ``fusion.pretrained``)."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> "FusionClassifier":
        """The model saved by ``save_pretrained``, in eval mode (``overrides`` replace init args)."""
        return from_pretrained(directory, expected=cls, **overrides)

    # ------------------------------------------------------------------ checks before training
    def setup(self, stage: str) -> None:
        """Compare the model with the data before any step: labels beyond ``num_classes`` and
        modalities without an encoder. Uses the datamodule's ``num_classes``/``modalities`` when it
        has them, else the first batch (see ``_check_batch``)."""
        if stage == "fit":
            self.initialise_encoders()
        datamodule = self.trainer.datamodule
        self._pending_batch_checks = {"labels"}
        data_classes = getattr(datamodule, "num_classes", None)
        if isinstance(data_classes, int):
            if data_classes > self.num_classes:
                raise ValueError(
                    f"model.init_args.num_classes = {self.num_classes} is smaller than the datamodule's "
                    f"num_classes = {data_classes} ({type(datamodule).__name__}); set "
                    f"model.init_args.num_classes to {data_classes}")
            self._pending_batch_checks.discard("labels")
        if stage != "fit":
            return
        modalities = getattr(datamodule, "modalities", None)
        if modalities is None:
            self._pending_batch_checks.add("modalities")
        else:
            self._check_modalities(set(modalities), f"{type(datamodule).__name__}.modalities")

    def initialise_encoders(self) -> None:
        """Load ``init_encoders_from`` (once per model) and apply ``freeze_encoders``."""
        if self.init_encoders_from and not self._encoders_initialised:
            self.load_encoders(self.init_encoders_from)
        self._encoders_initialised = True
        if self.freeze_encoders:
            for enc in self.encoders.values():
                if hasattr(enc, "freeze"):
                    enc.freeze()
                else:
                    enc.requires_grad_(False).eval()

    def load_encoders(self, path: str | os.PathLike) -> None:
        """Copy every encoder's weights from ``path`` (see ``encoder_states_from``), strictly."""
        states = encoder_states_from(path)
        missing = [m for m in self.encoders if m not in states]
        if missing:
            raise ValueError(f"model.init_args.init_encoders_from = {str(path)!r} has encoders for {sorted(states)} "
                             f"but not for {missing}; the model's encoders are {sorted(self.encoders)}")
        for m, enc in self.encoders.items():
            try:
                enc.load_state_dict(states[m])
            except RuntimeError as err:
                raise ValueError(f"model.init_args.init_encoders_from = {str(path)!r}: its {m!r} encoder does not "
                                 f"fit model.init_args.encoders.{m} ({type(enc).__name__}): {err}") from err

    def _check_modalities(self, provided: set[str], source: str) -> None:
        missing = sorted(set(self.encoders) - provided)
        if missing:
            raise ValueError(f"the model has encoders for {missing} but the data provides only {sorted(provided)} "
                             f"({source}); remove model.init_args.encoders.{missing[0]} or use a datamodule with it")
        unused = sorted(provided - set(self.encoders))
        if unused:
            message = (f"the data provides {unused} ({source}) but no encoder in model.init_args.encoders uses "
                       f"them: the model trains on {sorted(self.encoders)} only")
            if self.strict_modalities:
                raise ValueError(f"{message} (model.init_args.strict_modalities is true)")
            warnings.warn(f"{message}; set model.init_args.strict_modalities: true to make this an error",
                          UserWarning, stacklevel=2)

    def _check_batch(self, batch: dict) -> None:
        """The checks ``setup`` could not do from the datamodule, on the first batch seen."""
        if "labels" in self._pending_batch_checks and "label" in batch and len(batch["label"]):
            top = int(batch["label"].max())
            if top >= self.num_classes or int(batch["label"].min()) < 0:
                raise ValueError(f"model.init_args.num_classes = {self.num_classes} but the data has label {top} "
                                 f"(labels must be in [0, num_classes)); set model.init_args.num_classes to at "
                                 f"least {top + 1}, the datamodule's number of classes")
        if "modalities" in self._pending_batch_checks:
            provided = set(batch) - NON_MODALITY_KEYS | set(batch.get("present") or {})
            self._check_modalities(provided, "the keys of the first batch")
        self._pending_batch_checks.clear()

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

    def embed(self, batch: dict) -> torch.Tensor:
        """The fused vector ``[B, fusion.out_dim]`` the classifier sees (for probes and retrieval)."""
        present = self.presence(batch)
        features, token_masks = self.encode(batch, present)
        return self.fusion(features, present=present, token_mask=token_masks)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._pending_batch_checks:
            self._check_batch(batch)
        label = batch["label"]
        logits, present, features, token_masks = self.forward_with_features(batch)
        unimodal_logits = {}
        if self.unimodal_heads:
            pooled = pooled_features(features, list(self.unimodal_heads), present, token_masks)
            unimodal_logits = {m: head(z) for (m, head), z in zip(self.unimodal_heads.items(), pooled)}
        loss, terms = fusion_loss(logits, label, unimodal_logits, present, self.unimodal_loss_weight)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(label))
        for m, aux in terms.items():
            self.log(f"train/loss_{m}", aux, batch_size=int(present[m].sum()))
        return loss

    def _eval_step(self, batch: dict, metrics: torchmetrics.MetricCollection, stage: str) -> torch.Tensor:
        if self._pending_batch_checks:
            self._check_batch(batch)
        logits = self(batch)
        loss = nn.functional.cross_entropy(logits, batch["label"])
        metrics.update(logits, batch["label"])
        # sync_dist: under DDP each rank sees a shard; the logged loss is the mean over all of them.
        self.log(f"{stage}/loss", loss, batch_size=len(batch["label"]), sync_dist=True)
        self.log_dict(metrics, prog_bar=(stage == "val"), batch_size=len(batch["label"]), sync_dist=True)
        return logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._eval_step(batch, self.test_metrics, "test")
        self.test_confusion.update(logits, batch["label"])

    def on_test_epoch_end(self) -> None:
        self.confusion_png = self._save_confusion_matrix()
        self.test_confusion.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """Class probabilities per input, with the batch's ``id``/``index`` and ``label`` when it
        has them: what ``fusion.prediction.PredictionWriter`` writes to ``predictions.csv``."""
        out: dict[str, Any] = {"probs": self(batch).float().softmax(dim=-1).cpu()}
        for key in ("id", "index", "label"):
            if key in batch:
                value = batch[key]
                out[key] = value.cpu() if isinstance(value, torch.Tensor) else list(value)
        return out

    def configure_callbacks(self) -> list[pl.Callback]:
        from fusion.prediction import PredictionWriter

        return [PredictionWriter()]

    # ------------------------------------------------------------------ pictures
    def _save_confusion_matrix(self) -> Path | None:
        """``<run_dir>/pictures/confusion_matrix[_no-<m>...].png`` (see fusion.artifacts)."""
        if self.trainer.sanity_checking:
            return None
        import matplotlib

        matplotlib.use("Agg")
        names = getattr(self.trainer.datamodule, "class_names", None)
        labels = [str(n) for n in names] if names and len(names) == self.num_classes else None
        fig, ax = self.test_confusion.plot(labels=labels)
        suffix = "".join(f"_no-{m}" for m in self.drop_at_test)
        ax.set_title(f"test confusion matrix{suffix.replace('_', ' ')}")
        return save_figure(self.trainer, f"confusion_matrix{suffix}", fig)

    # ------------------------------------------------------------------ optimisation
    def optimizer_and_cosine_schedule(self, total_steps: int):
        """The configured optimizer and its warm-up + cosine schedule over ``total_steps`` (to be
        stepped once per optimizer step); also usable from a hand-written loop."""
        from transformers import get_cosine_schedule_with_warmup

        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
        warmup_steps = int(self.warmup_fraction * total_steps)
        return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)

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

    Other modalities in the batch are ignored (no unused-modality warning), so it trains on the
    very same datamodule as the fusion models it is compared with.
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
        init_encoders_from: str | None = None,
        freeze_encoders: bool = False,
    ) -> None:
        super().__init__({modality: encoder}, ConcatFusion, num_classes, hidden_dims=hidden_dims, dropout=dropout,
                         optimizer=optimizer, lr_scheduler=lr_scheduler, cosine_schedule=cosine_schedule,
                         warmup_fraction=warmup_fraction, init_encoders_from=init_encoders_from,
                         freeze_encoders=freeze_encoders)
        self.modality = modality

    @property
    def encoder(self) -> nn.Module:
        """The one encoder (``encoders[modality]``)."""
        return self.encoders[self.modality]

    def _check_modalities(self, provided: set[str], source: str) -> None:
        if self.modality not in provided:
            super()._check_modalities(provided, source)  # the "data lacks it" error
