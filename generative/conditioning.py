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
    log.info("condition encoder loaded from %s", path)


def _auto_checkpoint(gan: "GAN", encoder: nn.Module, modality: str) -> Path | None:
    """Train (once, cached) an audio-only FusionClassifier on the GAN's datamodule."""
    key = hashlib.sha1(repr(encoder).encode() + repr(type(gan.trainer.datamodule)).encode()).hexdigest()[:10]
    folder = cache_dir("speech-encoder")
    path = folder / f"{modality}-{key}.ckpt"
    if path.is_file():
        return path
    if gan.trainer.fast_dev_run:
        log.warning("fast_dev_run: no cached %s encoder at %s, keeping random weights", modality, path)
        return None
    outer = gan.trainer
    acc = train_condition_encoder(encoder, outer.datamodule, modality, path)
    outer.datamodule.trainer = outer  # the inner Trainer re-pointed the shared datamodule
    log.warning("trained the %s condition encoder: held-out test accuracy %.3f (cached at %s)", modality, acc, path)
    return path


def train_condition_encoder(encoder: nn.Module, datamodule, modality: str, path: Path, max_steps: int = 600,
                            seed: int = 0) -> float:
    """Fit ``FusionClassifier({modality: encoder}, ConcatFusion)`` on ``datamodule`` for ``max_steps``
    batches; save its checkpoint to ``path`` and return its test accuracy (held-out speaker for
    AV-MNIST). A step budget, not epochs: AV-MNIST pairs 55,000 images with ~2,250 recordings, so
    600 batches already show every recording ~17 times."""
    import pytorch_lightning as pl

    from fusion import ConcatFusion, FusionClassifier

    pl.seed_everything(seed)
    enc = copy.deepcopy(encoder).requires_grad_(True).train()
    model = FusionClassifier(encoders={modality: enc}, fusion=lambda dims: ConcatFusion(dims, out_dim=128),
                             num_classes=10, dropout=0.2,
                             optimizer=lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=1e-2))
    trainer = pl.Trainer(max_steps=max_steps, max_epochs=-1, limit_val_batches=0, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    result = trainer.test(model, datamodule=datamodule, verbose=False)
    acc = float(result[0]["test/acc"])
    tmp = path.with_suffix(".tmp")
    trainer.save_checkpoint(tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps({"test_acc": acc, "max_steps": max_steps}, indent=2))
    return acc
