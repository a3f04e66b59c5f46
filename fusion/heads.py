"""Fusion heads: ``dict[str, Tensor[B, T_m, D_m]]`` (+ presence mask) -> ``Tensor[B, out_dim]``.

Heads are built from the encoders' widths: a config names the head and its own options, and the
LightningModule calls it with ``in_dims`` (see ``FusionClassifier``). All share one call:

    head(features, present=None, token_mask=None)

* ``present[m]``: ``BoolTensor[B]``, False where modality ``m`` is missing for that sample;
* ``token_mask[m]``: ``BoolTensor[B, T_m]``, False on padding tokens (text).

Heads record their constructor arguments (``fusion.pretrained.Configurable``), so a model built
with them saves with ``save_pretrained`` and comes back with ``from_pretrained``.

Every head copes with a modality absent for some -- or all -- samples without NaNs:

==========================  ============================================  ==========================
head                        how                                           a missing modality
==========================  ============================================  ==========================
``ConcatFusion``            pool, concatenate, optional MLP               contributes zeros
``MeanFusion``              average of the linearly projected pooled      left out of the average
                            modality vectors                              (mean over present ones)
``AttentionFusion``         modality tokens + modality embeddings +       its tokens are masked out
                            fusion token through a small Transformer      as attention keys
``GatedFusion``             attention-weighted sum of projected modality  gets weight 0 (softmax over
                            vectors (MultiBench/TorchMultimodal style)     the present ones)
``TensorFusion``            outer product of ``[h_m, 1]`` (Zadeh 2017)    ``h_m = 0`` keeps the other
                                                                          modalities' terms
``LowRankTensorFusion``     rank-r factorised tensor fusion (Liu 2018)    same as TensorFusion
==========================  ============================================  ==========================
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.pretrained import Configurable

Features = dict[str, torch.Tensor]
Masks = dict[str, torch.Tensor] | None


def masked_mean(tokens: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the token axis counting only valid tokens; all-invalid rows give zeros."""
    if token_mask is None:
        return tokens.mean(dim=1)
    w = token_mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def present_of(m: str, x: torch.Tensor, present: Masks) -> torch.Tensor:
    """``present[m]`` as a bool vector (all True when no mask is given)."""
    if present is not None and m in present:
        return present[m].to(device=x.device, dtype=torch.bool)
    return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)


def pooled_features(features: Features, modalities: list[str], present: Masks, token_mask: Masks) -> list[torch.Tensor]:
    """One vector per modality: masked mean of its tokens, zeroed where the modality is absent."""
    out = []
    for m in modalities:
        v = masked_mean(features[m], (token_mask or {}).get(m))
        out.append(v * present_of(m, v, present).to(v.dtype).unsqueeze(-1))
    return out


class ConcatFusion(Configurable, nn.Module):
    """Pool each modality, zero the absent ones, concatenate, optionally project (Linear-ReLU)."""

    def __init__(self, in_dims: dict[str, int], out_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        total = sum(in_dims.values())
        self.proj = (nn.Sequential(nn.Linear(total, out_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
                     if out_dim else nn.Identity())
        self.out_dim = out_dim or total

    def forward(self, features: Features, present: Masks = None, token_mask: Masks = None) -> torch.Tensor:
        return self.proj(torch.cat(pooled_features(features, self.modalities, present, token_mask), dim=-1))


class MeanFusion(Configurable, nn.Module):
    """The plain average of the projected modality vectors over the present modalities.

    ``out = sum_m p_m * W_m mean_t(x_m) / max(1, sum_m p_m)`` with ``p_m`` the presence of ``m``
    (token means count valid tokens only). The usual late-fusion baseline: no interaction between
    modalities beyond the sum; a sample with no modality present fuses to zeros.
    """

    def __init__(self, in_dims: dict[str, int], out_dim: int = 128) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in in_dims.items()})
        self.out_dim = out_dim

    def forward(self, features: Features, present: Masks = None, token_mask: Masks = None) -> torch.Tensor:
        pooled = pooled_features(features, self.modalities, None, token_mask)
        h = torch.stack([self.proj[m](v) for m, v in zip(self.modalities, pooled)], dim=1)  # [B, M, D]
        ok = torch.stack([present_of(m, v, present) for m, v in zip(self.modalities, pooled)], dim=1)  # [B, M]
        weights = ok.to(h.dtype) / ok.sum(dim=1, keepdim=True).clamp_min(1).to(h.dtype)
        return (weights.unsqueeze(-1) * h).sum(dim=1)


class _AttentionBlock(nn.Module):
    """Pre-norm Transformer block that keeps its attention weights for inspection."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(dim_feedforward, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)
        h, weights = self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=True,
                               average_attn_weights=False)
        x = x + self.dropout(h)
        return x + self.dropout(self.ff(self.norm2(x))), weights


class AttentionFusion(Configurable, nn.Module):
    """Modality tokens + learned modality embeddings + a fusion token through a small Transformer.

    Each modality's tokens are projected to ``d_model`` and tagged with a learned modality
    embedding; a learned fusion token is prepended and the fused vector is its final state. Tokens
    of absent modalities (``present``) and padding tokens (``token_mask``) are masked as keys, and
    the fusion token is never masked, so every query row has at least one key (no NaN).

    ``last_attention`` holds each layer's weights ``[B, heads, T, T]`` from the latest forward;
    ``modality_attention()`` summarises how much the fusion token attended to each modality.

    Args:
        d_model / num_heads / num_layers / dim_feedforward / dropout: Transformer size.
        pool_tokens: pool each modality to one token first (cheaper; attention over modalities only).
        max_tokens: average-pool a longer token sequence down to at most this many tokens.
    """

    def __init__(self, in_dims: dict[str, int], d_model: int = 64, num_heads: int = 4, num_layers: int = 1,
                 dim_feedforward: int | None = None, dropout: float = 0.1, pool_tokens: bool = False,
                 max_tokens: int | None = 64) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        self.pool_tokens, self.max_tokens = pool_tokens, max_tokens
        self.proj = nn.ModuleDict({m: nn.Linear(d, d_model) for m, d in in_dims.items()})
        self.modality_embed = nn.Parameter(0.02 * torch.randn(len(self.modalities), d_model))
        self.fusion_token = nn.Parameter(0.02 * torch.randn(1, 1, d_model))
        self.layers = nn.ModuleList(_AttentionBlock(d_model, num_heads, dim_feedforward or 2 * d_model, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.out_dim = d_model
        self.last_attention: list[torch.Tensor] = []
        self.last_segments: dict[str, slice] = {}

    def _tokens(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pool_tokens:
            return masked_mean(x, mask).unsqueeze(1), None
        if self.max_tokens and x.shape[1] > self.max_tokens and mask is None:
            x = nn.functional.adaptive_avg_pool1d(x.transpose(1, 2), self.max_tokens).transpose(1, 2)
        return x, mask

    def forward(self, features: Features, present: Masks = None, token_mask: Masks = None) -> torch.Tensor:
        first = features[self.modalities[0]]
        batch = first.shape[0]
        seq = [self.fusion_token.expand(batch, -1, -1)]
        valid = [torch.ones(batch, 1, dtype=torch.bool, device=first.device)]
        self.last_segments, start = {}, 1
        for i, m in enumerate(self.modalities):
            x, mask = self._tokens(features[m], (token_mask or {}).get(m))
            seq.append(self.proj[m](x) + self.modality_embed[i])
            ok = mask.bool() if mask is not None else torch.ones(batch, x.shape[1], dtype=torch.bool, device=x.device)
            valid.append(ok & present_of(m, x, present).unsqueeze(1))
            self.last_segments[m] = slice(start, start + x.shape[1])
            start += x.shape[1]
        h, key_padding_mask = torch.cat(seq, dim=1), ~torch.cat(valid, dim=1)
        self.last_attention = []
        for layer in self.layers:
            h, weights = layer(h, key_padding_mask)
            self.last_attention.append(weights.detach())
        return self.norm(h[:, 0])

    def modality_attention(self, layer: int = -1) -> dict[str, torch.Tensor]:
        """Fraction of the fusion token's attention (head-averaged) spent on each modality: ``{m: [B]}``."""
        if not self.last_attention:
            raise RuntimeError("modality_attention() needs a forward pass first")
        row = self.last_attention[layer][:, :, 0, :].mean(dim=1)  # [B, T]: the fusion token's query row
        return {m: row[:, s].sum(dim=1) for m, s in self.last_segments.items()}


class GatedFusion(Configurable, nn.Module):
    """Attention-weighted (gated) sum of per-modality vectors.

    Each pooled modality is projected to ``out_dim``; a small scorer gives one logit per modality
    and a softmax over the *present* modalities weighs them. ``last_weights`` ``[B, M]`` holds the
    weights of the latest forward. A sample with no modality present fuses to zeros.
    """

    def __init__(self, in_dims: dict[str, int], out_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, out_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
                                   for m, d in in_dims.items()})
        self.score = nn.Sequential(nn.Linear(out_dim, out_dim), nn.Tanh(), nn.Linear(out_dim, 1, bias=False))
        self.out_dim = out_dim
        self.last_weights: torch.Tensor | None = None

    def forward(self, features: Features, present: Masks = None, token_mask: Masks = None) -> torch.Tensor:
        pooled = pooled_features(features, self.modalities, None, token_mask)
        h = torch.stack([self.proj[m](v) for m, v in zip(self.modalities, pooled)], dim=1)  # [B, M, D]
        ok = torch.stack([present_of(m, v, present) for m, v in zip(self.modalities, pooled)], dim=1)  # [B, M]
        logits = self.score(h).squeeze(-1).masked_fill(~ok, torch.finfo(h.dtype).min)
        weights = logits.softmax(dim=-1) * ok  # all-absent rows: uniform softmax times 0 -> zeros
        self.last_weights = weights.detach()
        return (weights.unsqueeze(-1) * h).sum(dim=1)


def _with_one(v: torch.Tensor) -> torch.Tensor:
    """Append the constant 1 that keeps the unimodal (and bias) terms in a tensor product."""
    return torch.cat([v, torch.ones_like(v[:, :1])], dim=-1)


class TensorFusion(Configurable, nn.Module):
    """Tensor Fusion Network (Zadeh et al. 2017): outer product of ``[h_m, 1]`` over modalities.

    The product grows as ``prod(d_m + 1)``, so each modality is first projected to ``hidden_dim``
    (``None`` keeps the encoder widths). A missing modality has ``h_m = 0``: only the terms of the
    other modalities survive, which is exactly "fusion without m".
    """

    def __init__(self, in_dims: dict[str, int], hidden_dim: int | None = 32, out_dim: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        self.pre = nn.ModuleDict({m: nn.Linear(d, hidden_dim) if hidden_dim else nn.Identity()
                                  for m, d in in_dims.items()})
        size = 1
        for d in in_dims.values():
            size *= (hidden_dim or d) + 1
        self.post = nn.Sequential(nn.Dropout(dropout), nn.Linear(size, out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def forward(self, features: Features, present: Masks = None, token_mask: Masks = None) -> torch.Tensor:
        pooled = pooled_features(features, self.modalities, None, token_mask)
        z: torch.Tensor | None = None
        for m, v in zip(self.modalities, pooled):
            v = self.pre[m](v) * present_of(m, v, present).to(v.dtype).unsqueeze(-1)
            v = _with_one(v)
            z = v if z is None else (z.unsqueeze(-1) * v.unsqueeze(1)).flatten(1)
        return self.post(z)


class LowRankTensorFusion(Configurable, nn.Module):
    """Low-rank Multimodal Fusion (Liu et al. 2018): TensorFusion with the weight tensor factorised.

    ``out = sum_r w_r * prod_m ([h_m, 1] @ W_m[r]) + b`` -- linear in every modality's size
    instead of multiplicative. A missing modality (``h_m = 0``) contributes its learned constant row.
    """

    def __init__(self, in_dims: dict[str, int], out_dim: int = 128, rank: int = 8) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        self.factors = nn.ParameterDict({m: nn.Parameter(torch.empty(rank, d + 1, out_dim))
                                         for m, d in in_dims.items()})
        for w in self.factors.values():
            nn.init.xavier_normal_(w)
        self.rank_weights = nn.Parameter(torch.empty(1, rank))
        nn.init.xavier_normal_(self.rank_weights)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.out_dim = out_dim

    def forward(self, features: Features, present: Masks = None, token_mask: Masks = None) -> torch.Tensor:
        product: torch.Tensor | float = 1.0
        for m, v in zip(self.modalities, pooled_features(features, self.modalities, present, token_mask)):
            product = product * torch.einsum("bd,rdo->rbo", _with_one(v), self.factors[m])  # [rank, B, out]
        return torch.einsum("r,rbo->bo", self.rank_weights[0], product) + self.bias
