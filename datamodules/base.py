"""Shared pieces of the real-data modules: a batched in-memory dataset and a DataModule base.

Why batched: per-sample ``__getitem__`` + ``default_collate`` of nested dicts costs tens of
microseconds a sample in Python. ``BatchedDataset.__getitems__`` (which ``DataLoader`` calls with
the whole list of a batch's indices) gathers a batch with one tensor index per array instead,
so the loader stays far ahead of the model even with ``num_workers=0``.
"""

from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

DIGIT_NAMES = tuple(str(d) for d in range(10))


def _tree_map(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


class Batch(dict):
    """A batch already gathered by ``BatchedDataset.__getitems__`` (a plain dict otherwise).

    A ``DataLoader`` built without fusegen's ``collate`` would hand it to ``default_collate``,
    which indexes it like a list of samples; say what to do instead of a bare ``KeyError: 0``."""

    def __missing__(self, key: Any) -> Any:
        if isinstance(key, int):
            raise KeyError("this is a whole batch gathered by fusegen's BatchedDataset, not a list of samples: "
                           "build the loader with "
                           "`DataLoader(dataset, batch_size=..., collate_fn=datamodules.collate)` "
                           "or use the datamodule's train_dataloader()/val_dataloader()/test_dataloader()")
        raise KeyError(key)


def collate(items: Any) -> Any:
    """Collate that passes through batches already built by ``__getitems__``."""
    if isinstance(items, dict):
        return dict(items)  # a plain dict downstream
    return default_collate(items)


class BatchedDataset(Dataset):
    """Map-style dataset whose subclasses implement ``get_batch(index: LongTensor) -> dict``."""

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_batch(self, index: torch.Tensor) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitems__(self, indices: list[int]) -> dict:
        return Batch(self.get_batch(torch.as_tensor(indices, dtype=torch.long)))

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} samples")
        return _tree_map(lambda t: t[0], self.get_batch(torch.tensor([i % len(self)])))


class RealDataModule(pl.LightningDataModule):
    """Loader plumbing shared by the real-data modules: ``self.splits`` holds train/val/test.

    Every subclass also tells other modules what it serves: ``num_classes``, ``class_names``
    (``list[str]``, index = label) and ``modalities`` (the batch keys it provides)."""

    num_classes: int
    modalities: tuple[str, ...]

    @property
    def class_names(self) -> list[str]:
        names = self.__dict__.get("_class_names")
        return list(names) if names is not None else [str(i) for i in range(self.num_classes)]

    @class_names.setter
    def class_names(self, names: list[str]) -> None:  # a subclass may simply assign its names
        self.__dict__["_class_names"] = [str(n) for n in names]

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[str, BatchedDataset] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.splits:
            self.setup()
        workers = self.hparams.num_workers
        return DataLoader(
            self.splits[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def presence_masks(n: int, modalities: tuple[str, ...], missing_prob: float,
                   seed: list[int]) -> dict[str, torch.Tensor]:
    """Per-sample presence of each modality: absent with probability ``missing_prob``, seeded,
    and never all absent (a sample with nothing left gets one modality back at random)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    present = rng.random((n, len(modalities))) >= missing_prob
    empty = np.flatnonzero(~present.any(axis=1))
    present[empty, rng.integers(len(modalities), size=len(empty))] = True
    return {m: torch.from_numpy(present[:, j].copy()) for j, m in enumerate(modalities)}
