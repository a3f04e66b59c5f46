"""Tiny stand-in encoders shared by the tests (explain, compress, export, SSL on HFDataModule)."""

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


class Pixels(nn.Module):
    """Images ``[B, C, H, W]`` flattened through a two-layer MLP: ``-> [B, 1, D]``."""

    def __init__(self, in_dim: int, out_dim: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).unsqueeze(1)


class TokenBag(nn.Module):
    """Token ids ``{"input_ids", "attention_mask"}`` -> one embedding per token ``[B, L, D]``; the
    model pools them over the attention mask (a bag of tokens; 259 = the byte tokenizer's vocabulary)."""

    def __init__(self, vocab: int = 259, out_dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, out_dim)
        self.out_dim = out_dim

    def forward(self, x: dict) -> torch.Tensor:
        return self.embed(x["input_ids"])
