"""Tiny stand-in encoders shared by the explain, compress and export tests."""

from __future__ import annotations

import torch
from torch import nn


class Flat(nn.Module):
    """A linear encoder: ``[B, F] -> [B, 1, D]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin, self.out_dim = nn.Linear(in_dim, out_dim), out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).unsqueeze(1)
