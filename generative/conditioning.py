"""Condition vectors from fusion encoders: frozen, mean-pooled, loaded from a fusion checkpoint.

Speech-to-digit conditions the GAN on a spoken digit: the audio encoder of an audio-only
``fusion.FusionClassifier`` (trained on AV-MNIST's FSDD recordings) embeds the recording, and
the generator draws the digit. ``encoder_checkpoint`` names that classifier's checkpoint;
``"auto"`` trains one on the GAN's own datamodule once and caches it under
``datamodules.paths.cache_dir("speech-encoder")``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from datamodules.paths import cache_dir

if TYPE_CHECKING:
    from generative.module import GAN

log = logging.getLogger(__name__)


class FrozenEncoder(nn.Module):
    """Wraps an encoder ``[B, ...] -> [B, T, D]``: no gradients, always in eval mode, mean over T,
    then unit L2 norm, so any encoder's embedding has a one-hot label's scale (raw audio
    embeddings of norm ~20 let the projection discriminator's logits explode at step 0)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.out_dim = encoder.out_dim

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return super().train(False)  # Lightning calls .train() on the whole model every epoch

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(x)
        pooled = tokens.mean(dim=1) if tokens.dim() == 3 else tokens
        return torch.nn.functional.normalize(pooled, dim=-1)


def encoder_state_from_checkpoint(path: str | Path, modality: str) -> dict[str, torch.Tensor]:
    """The ``encoders.<modality>.*`` weights of a fusion checkpoint (Lightning ``.ckpt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder_checkpoint {str(path)!r} does not exist. Train an audio-only fusion classifier first "
            "(fusegen fit --config experiments/gan/speech-encoder.yaml) or set encoder_checkpoint: auto")
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    prefix = f"encoders.{modality}."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise KeyError(f"{str(path)!r} has no {prefix}* weights; its top-level keys: "
                       f"{sorted({k.split('.')[0] for k in state})}. Is it a fusion.FusionClassifier checkpoint "
                       f"with a {modality!r} encoder?")
    return sub


def load_encoder(gan: "GAN", checkpoint: str) -> None:
    """Fill ``gan.condition_encoder`` from ``checkpoint`` (a path, or ``"auto"``)."""
    modality = gan.hparams.condition
    encoder = gan.condition_encoder.encoder
    if checkpoint == "auto":
        path = _auto_checkpoint(gan, encoder, modality)
        if path is None:
            return
    else:
        path = Path(checkpoint)
    encoder.load_state_dict(encoder_state_from_checkpoint(path, modality))
    gan.encoder_path = path  # for reports: the JSON next to an `auto` checkpoint has its accuracy
    log.info("condition encoder loaded from %s", path)


# The ``auto`` recipe: long enough for SpecAugment (set on the encoder itself, e.g. AudioEncoder's
# freq_mask/time_mask) to pay off on the held-out speaker; measured with
# experiments/benchmarks/gan_speech_encoder.py (see generative/README.md).
AUTO_RECIPE = {"max_steps": 1500, "lr": 2e-3, "weight_decay": 1e-2, "dropout": 0.2, "seed": 0, "schedule": "constant"}


def auto_checkpoint_path(encoder: nn.Module, datamodule, modality: str) -> Path:
    """Where the ``auto`` encoder for this architecture, recipe and data is cached."""
    # The key covers the architecture (its repr includes the SpecAugment settings), the recipe and
    # the data: the datamodule's settings (split, held-out speakers, noise, ...) decide which
    # recordings the encoder may see, so an encoder is never reused across a different split.
    data = {k: v for k, v in sorted(getattr(datamodule, "hparams", {}).items()) if k != "num_workers"}
    blob = repr(encoder) + repr(type(datamodule)) + repr(data) + repr(sorted(AUTO_RECIPE.items()))
    return cache_dir("speech-encoder") / f"{modality}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}.ckpt"


def _auto_checkpoint(gan: "GAN", encoder: nn.Module, modality: str) -> Path | None:
    """Train (once, cached) an audio-only FusionClassifier on the GAN's datamodule."""
    path = auto_checkpoint_path(encoder, gan.trainer.datamodule, modality)
    if path.is_file():
        return path
    if gan.trainer.fast_dev_run:
        log.warning("fast_dev_run: no cached %s encoder at %s, keeping random weights", modality, path)
        return None
    outer = gan.trainer
    acc = train_condition_encoder(encoder, outer.datamodule, modality, path, **AUTO_RECIPE)
    outer.datamodule.trainer = outer  # the inner Trainer re-pointed the shared datamodule
    log.warning("trained the %s condition encoder: held-out test accuracy %.3f (cached at %s)", modality, acc, path)
    return path


def train_condition_encoder(encoder: nn.Module, datamodule, modality: str, path: Path | None,
                            max_steps: int = 1500, lr: float = 2e-3, weight_decay: float = 1e-2,
                            dropout: float = 0.2, seed: int = 0, schedule: str = "cosine") -> float:
    """Fit ``FusionClassifier({modality: encoder}, ConcatFusion)`` on ``datamodule`` for ``max_steps``
    batches with AdamW (``schedule="cosine"``: lr annealed to 0 per step, so the last weights are not
    a random point of a noisy constant-lr trajectory; ``"constant"``); save the checkpoint to
    ``path`` (if given, with a JSON of test and val accuracy beside it) and return the test accuracy
    (held-out speaker for AV-MNIST). A step budget, not epochs: AV-MNIST pairs 55,000 images with
    ~2,250 recordings, so 600 batches already show every recording ~17 times; with SpecAugment each
    showing is a different masked view, which is what generalises to an unseen speaker."""
    import pytorch_lightning as pl

    from fusion import ConcatFusion, FusionClassifier

    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule={schedule!r}: choose 'cosine' or 'constant'")

    pl.seed_everything(seed)
    enc = copy.deepcopy(encoder).requires_grad_(True).train()
    # cosine_schedule steps per batch over the Trainer's max_steps (a step budget of ~2 epochs).
    model = FusionClassifier(encoders={modality: enc}, fusion=lambda dims: ConcatFusion(dims, out_dim=128),
                             num_classes=10, dropout=dropout, cosine_schedule=schedule == "cosine",
                             optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay))
    # default_root_dir: where the classifier's test confusion-matrix PNG lands (not the cwd).
    root = path.parent if path is not None else cache_dir("speech-encoder")
    trainer = pl.Trainer(max_steps=max_steps, max_epochs=-1, limit_val_batches=0, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root)
    trainer.fit(model, datamodule=datamodule)
    acc = float(trainer.test(model, datamodule=datamodule, verbose=False)[0]["test/acc"])
    trainer.limit_val_batches = 1.0  # validate() after a fit without validation
    val_acc = float(trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/acc"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        trainer.save_checkpoint(tmp)
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps(
            {"test_acc": acc, "val_acc": val_acc, "max_steps": max_steps, "lr": lr, "weight_decay": weight_decay, "dropout": dropout,
             "seed": seed, "schedule": schedule, "encoder": repr(encoder)}, indent=2))
    return acc
