"""Rollouts as a Lightning data source: an ``IterableDataset`` whose items are fresh rollouts.

Each item is one on-policy rollout (``num_envs * n_steps`` transitions with advantages),
collected when the training loop asks for it, i.e. right after the previous update. The
dataset has a length (rollouts per epoch), so Lightning neither prefetches (which would collect
with a stale policy) nor runs epochs of unknown size: validation (evaluation episodes),
logging and checkpointing trigger every epoch as for any other dataset.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterator

import torch
from torch.utils.data import IterableDataset

# Lightning warns that a sized IterableDataset may be mis-counted by several workers; rollouts
# are collected in the main process (num_workers=0), where the length is exact.
warnings.filterwarnings("ignore", message=r".*IterableDataset.*has `__len__` defined")


class RolloutDataset(IterableDataset):
    """Yields ``collect()`` up to ``rollouts_per_epoch`` times per epoch, fewer once ``remaining()``
    (rollouts left in the training budget) reaches 0."""

    def __init__(self, collect: Callable[[], dict[str, torch.Tensor]], rollouts_per_epoch: int,
                 remaining: Callable[[], int] | None = None) -> None:
        super().__init__()
        self.collect, self.rollouts_per_epoch, self.remaining = collect, rollouts_per_epoch, remaining

    def __len__(self) -> int:
        return self.rollouts_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = self.rollouts_per_epoch if self.remaining is None else min(self.rollouts_per_epoch, self.remaining())
        for _ in range(n):
            yield self.collect()
