"""Run an encoder (or a whole fusion model) over a datamodule split and get one vector per sample.

The usual next step after training: a linear probe, nearest-neighbour retrieval, a t-SNE plot,
or features for a model outside fusegen::

    model = FusionClassifier.load_from_checkpoint("runs/synthetic-concat/checkpoints/last.ckpt")
    x, y = extract_features(model.encoders["image"], datamodule, split="test", modality="image")
    x, y = extract_features(model, datamodule, split="test", out="runs/features/")  # fused vectors

Files: ``out`` (a folder, or a path ending in ``.safetensors``) receives ``features.safetensors``
holding ``features [N, D]`` and ``labels [N]``, written atomically; read it back with
``safetensors.torch.load_file``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from datamodules.files import atomic_path
from fusion.heads import masked_mean

POOLINGS = ("mean", "max", "first")
STAGE_OF_SPLIT = {"train": "fit", "val": "fit", "test": "test", "predict": "predict"}


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def split_loader(datamodule: pl.LightningDataModule, split: str) -> DataLoader:
    """The datamodule's loader for ``split`` in dataset order (the train split is not shuffled
    when the datamodule exposes its datasets as ``splits``, as fusegen's do)."""
    if split not in STAGE_OF_SPLIT:
        raise ValueError(f"split = {split!r}: choose one of {sorted(STAGE_OF_SPLIT)}")
    datamodule.prepare_data()
    datamodule.setup(STAGE_OF_SPLIT[split])
    splits = getattr(datamodule, "splits", None)
    if isinstance(splits, dict) and split in splits:
        from datamodules import collate

        batch_size = getattr(getattr(datamodule, "hparams", {}), "batch_size", None) or 256
        return DataLoader(splits[split], batch_size=batch_size, shuffle=False, collate_fn=collate)
    return getattr(datamodule, {"val": "val_dataloader"}.get(split, f"{split}_dataloader"))()


def pool_tokens(tokens: torch.Tensor, token_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """``[B, T, D] -> [B, D]``: mean / max over valid tokens, or the first token (a CLS token)."""
    if pooling == "mean":
        return masked_mean(tokens, token_mask)
    if pooling == "max":
        if token_mask is None:
            return tokens.amax(dim=1)
        return tokens.masked_fill(~token_mask.bool().unsqueeze(-1), torch.finfo(tokens.dtype).min).amax(dim=1)
    if pooling == "first":
        return tokens[:, 0]
    raise ValueError(f"pooling = {pooling!r}: choose one of {list(POOLINGS)}")


@torch.no_grad()
def extract_features(
    encoder_or_model: nn.Module,
    datamodule: pl.LightningDataModule,
    split: str = "test",
    modality: str | None = None,
    pooling: str = "mean",
    out: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[N, D]`` and labels ``[N]`` of a datamodule split.

    Args:
        encoder_or_model: an encoder (``forward(x) -> [B, T, D]``; its tokens are pooled), or a
            model with ``embed(batch)`` such as ``FusionClassifier`` (the fused vector its
            classifier sees; ``modality``/``pooling`` are then unused).
        datamodule: any datamodule with the fusegen batch contract.
        split: ``train`` / ``val`` / ``test`` / ``predict``.
        modality: the batch key the encoder reads; may be left out when the datamodule provides
            one modality only. Samples where that modality is absent (``batch["present"]``) are
            left out: their input is a blank, not data.
        pooling: ``mean`` (over valid tokens), ``max`` or ``first``.
        out: also write ``features.safetensors`` there (a folder, or a ``.safetensors`` path).
    """
    from fusion.module import token_mask_of

    if pooling not in POOLINGS:
        raise ValueError(f"pooling = {pooling!r}: choose one of {list(POOLINGS)}")
    whole_model = hasattr(encoder_or_model, "embed")
    if not whole_model and modality is None:
        provided = tuple(getattr(datamodule, "modalities", ()) or ())
        if len(provided) != 1:
            raise ValueError(f"extract_features: name the modality the encoder reads (modality=...); the datamodule "
                             f"provides {list(provided) or 'no `modalities` list'}")
        modality = provided[0]
    param = next(iter(encoder_or_model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = encoder_or_model.training
    encoder_or_model.eval()
    features, labels = [], []
    try:
        for batch in split_loader(datamodule, split):
            batch = _to(batch, device)
            if whole_model:
                z, keep = encoder_or_model.embed(batch), None
            else:
                if modality not in batch:
                    raise KeyError(f"extract_features: the {split} batches have no {modality!r} input; "
                                   f"batch keys: {sorted(batch)}")
                tokens = encoder_or_model(batch[modality])
                z = pool_tokens(tokens, token_mask_of(batch[modality], tokens), pooling)
                keep = (batch.get("present") or {}).get(modality)
            label = batch["label"]
            if keep is not None:
                z, label = z[keep.bool()], label[keep.bool()]
            features.append(z.float().cpu())
            labels.append(label.cpu())
    finally:
        encoder_or_model.train(was_training)
    x, y = torch.cat(features), torch.cat(labels)
    if out is not None:
        save_features(out, x, y)
    return x, y


def save_features(out: str | os.PathLike, features: torch.Tensor, labels: torch.Tensor) -> Path:
    """Write ``features`` and ``labels`` to ``out`` (folder -> ``out/features.safetensors``)."""
    from safetensors.torch import save_file

    path = Path(out)
    if path.suffix != ".safetensors":
        path = path / "features.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"features": features.contiguous(), "labels": labels.contiguous()}, str(tmp))
    return path
