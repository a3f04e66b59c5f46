"""Condition vectors from fusion encoders: weights from a fusion checkpoint, pooled to unit norm.

Speech-to-digit conditions the GAN on a spoken digit: the audio encoder of an audio-only
``fusion.FusionClassifier`` embeds the recording and the generator draws the digit; image-to-speech
is the mirror (an image encoder embeds a handwritten digit, the spectrogram GAN says it). Each
encoder's classifier is an experiment of its own (``experiments/gan/speech-encoder.yaml``,
``image-encoder.yaml``); the GAN config names its checkpoint (``encoder_checkpoint``) and keeps
the encoder frozen (``fusion.artifacts.FrozenModule``).

Checkpoints are files from elsewhere, so they are read as data: ``torch.load(weights_only=True)``
accepts tensors and plain containers only, and a file that asks to unpickle anything else (code)
is refused before any of it runs.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# The shipped experiments that train each modality's condition encoder (the error messages name them).
ENCODER_CONFIGS = {"audio": "speech-encoder", "image": "image-encoder"}


def encoder_command(modality: str) -> str:
    """How to make a ``modality`` condition encoder's checkpoint, and where it lands."""
    name = ENCODER_CONFIGS.get(modality)
    if name is None:
        return (f"train a fusion.FusionClassifier with an {modality!r} encoder (fusegen fit) and pass its "
                "checkpoints/last.ckpt")
    return f"`fusegen fit --config experiments/gan/{name}.yaml` writes runs/{name}/checkpoints/last.ckpt"


def pooled_unit_norm(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, T, D]`` encoder tokens (or ``[B, D]``) -> ``[B, D]``: mean over T, then unit L2 norm.

    The unit norm gives any encoder's embedding a one-hot label's scale: raw audio embeddings of
    norm ~20 let the projection discriminator's logits explode at step 0."""
    pooled = tokens.mean(dim=1) if tokens.dim() == 3 else tokens
    return F.normalize(pooled, dim=-1)


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint that holds more than tensors and plain containers (it would run code)."""


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint file's contents, loaded as data only (``weights_only=True``)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UntrustedCheckpointError(
            f"refused to load {str(path)!r}: it contains objects other than tensors and plain containers, which "
            f"could run code when unpickled ({str(err).splitlines()[0]}). Use a checkpoint written by fusegen / "
            "Lightning, or re-save only its state_dict with torch.save.") from None


def encoder_state_from_checkpoint(path: str | Path, modality: str) -> dict[str, torch.Tensor]:
    """The ``encoders.<modality>.*`` weights of a fusion checkpoint (Lightning ``.ckpt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder_checkpoint {str(path)!r} does not exist. Train the condition encoder first: "
            f"{encoder_command(modality)} (or set encoder_checkpoint: null for a random, frozen encoder in smoke "
            "tests)")
    state = read_checkpoint(path)
    state = state.get("state_dict", state)
    prefix = f"encoders.{modality}."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise KeyError(f"{str(path)!r} has no {prefix}* weights; its top-level keys: "
                       f"{sorted({k.split('.')[0] for k in state})}. Is it a fusion.FusionClassifier checkpoint "
                       f"with a {modality!r} encoder?")
    return sub


def load_condition_encoder(path: str | Path | None, encoder: nn.Module, modality: str) -> nn.Module:
    """``encoder`` with the ``encoders.<modality>.*`` weights of the fusion checkpoint ``path``.

    ``path=None`` returns the encoder as it is (random weights) with a warning: conditions then
    carry little information about the input, which is fine for smoke tests only."""
    if path is None:
        log.warning("encoder_checkpoint is null: the %s condition encoder keeps its random weights (smoke tests "
                    "only; %s)", modality, encoder_command(modality))
        return encoder
    state = encoder_state_from_checkpoint(path, modality)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"encoder_checkpoint {str(path)!r}: its {modality} encoder does not match "
                         f"model.init_args.condition_encoder ({str(err).splitlines()[0]}). Use the same encoder "
                         "class and init_args as the config that trained it.") from None
    log.info("condition encoder loaded from %s", path)
    return encoder
