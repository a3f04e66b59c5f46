"""Exponential moving average of the generator's weights, with a warm-up decay.

Sampling from an EMA of G (Karras et al. 2018; Yazıcı et al. 2019) gives steadier images than G
itself, whose weights oscillate under the adversarial game. ``torch.optim.swa_utils.AveragedModel``
holds the copy; ``get_ema_warmup_multi_avg_fn`` is its update rule.
"""

from __future__ import annotations

from typing import Callable

import torch


def ema_decay_at(num_averaged: int, decay: float, warmup: bool = True) -> float:
    """The EMA decay used for the update after ``num_averaged`` earlier updates.

    With ``warmup`` the decay is ``min(decay, (1 + t) / (10 + t))`` (TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``, as in many GAN codebases): early on the average
    follows the young generator closely instead of dragging its first, near-random weights along;
    it reaches ``decay`` after ``(10 * decay - 1) / (1 - decay)`` updates (890 for 0.99, 8990 for
    0.999)."""
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged)) if warmup else decay


def get_ema_warmup_multi_avg_fn(decay: float = 0.999, warmup: bool = True) -> Callable:
    """``multi_avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: an EMA with decay
    ``ema_decay_at(num_averaged, decay, warmup)``. The update count is ``AveragedModel.n_averaged``,
    a buffer, so it is checkpointed and a resumed run continues the same schedule."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"ema_decay={decay}: must be in [0, 1]")

    @torch.no_grad()
    def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        d = ema_decay_at(int(num_averaged), decay, warmup)
        for p_ema, p in zip(ema_params, params):
            if torch.is_floating_point(p_ema) or torch.is_complex(p_ema):
                p_ema.lerp_(p, 1.0 - d)  # ema += (1 - d) * (p - ema)
            else:  # integer buffers (BatchNorm's num_batches_tracked)
                p_ema.copy_(p_ema * d + p * (1.0 - d))

    return ema_update
