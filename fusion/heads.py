"""Fusion heads: ``dict[str, Tensor[B, T_m, D_m]]`` (+ presence mask) -> ``Tensor[B, out_dim]``.

Heads are built from the encoders' widths: a config names the head and its own options, and
the LightningModule calls it with ``in_dims`` (see ``FusionClassifier``). Every head must cope
with a modality absent for some samples (``present[m][b] == False``).
"""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(tokens: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the token axis counting only valid tokens; all-invalid rows give zeros."""
    if token_mask is None:
        return tokens.mean(dim=1)
    w = token_mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class ConcatFusion(nn.Module):
    """Pool each modality, zero the absent ones, concatenate, optionally project."""

    def __init__(self, in_dims: dict[str, int], out_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        total = sum(in_dims.values())
        self.proj = (nn.Sequential(nn.Linear(total, out_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
                     if out_dim else nn.Identity())
        self.out_dim = out_dim or total

    def forward(self, features: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None,
                token_mask: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        pooled = []
        for m in self.modalities:
            v = masked_mean(features[m], (token_mask or {}).get(m))
            if present is not None and m in present:
                v = v * present[m].to(v.dtype).unsqueeze(-1)
            pooled.append(v)
        return self.proj(torch.cat(pooled, dim=-1))
