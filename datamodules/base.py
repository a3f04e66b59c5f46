"""Shared pieces of the real-data modules: a batched in-memory dataset and a DataModule base.

Why batched: per-sample ``__getitem__`` + ``default_collate`` of nested dicts costs tens of
microseconds a sample in Python. ``BatchedDataset.__getitems__`` (which ``DataLoader`` calls with
the whole list of a batch's indices) gathers a batch with one tensor index per array instead,
so the loader stays far ahead of the model even with ``num_workers=0``.

Why ``ResumableSampler``: the training order of epoch ``e`` depends only on ``(seed, e)``, never on
the global RNG, and a checkpoint records how many batches of the epoch were done, so a run resumed
from any checkpoint (epoch end, or mid-epoch after a preemption) sees the same batches in the same
order as one that never stopped.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

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


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (one rank's share of a permutation seeded by ``seed + epoch``) that
    can start an epoch part-way, for exact mid-epoch resume.

    Lightning calls ``set_epoch`` before every epoch and keeps a ``DistributedSampler`` as it is
    under DDP, so a single process and every DDP rank use the same code path. ``start_at(epoch,
    skip)`` makes the next pass yield epoch ``epoch``'s order without its first ``skip`` indices;
    ``len()`` stays the whole epoch's, as Lightning counts the batches already done itself.
    ``generator``: the DataLoader's, reseeded from ``(seed, epoch)`` so loader-worker seeds do not
    depend on the global RNG either."""

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.generator = generator
        self._skip = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0  # a pending start_at belongs to the epoch it named
        super().set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed((self.seed * 1_000_003 + epoch) % 2**63)

    def start_at(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self._skip = max(0, int(skip))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


def default_seed() -> int:
    """The ``seed_everything`` seed (Lightning exports it as ``PL_GLOBAL_SEED``), else 0."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))
    except ValueError:
        return 0


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
        self._train_sampler: ResumableSampler | None = None
        self._resume_at: dict[str, int] | None = None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.splits:
            self.setup()
        workers = self.hparams.num_workers
        # An own generator everywhere: creating a loader's iterator draws its workers' base seed,
        # which must not advance (or depend on) the global RNG the model trains with.
        generator = torch.Generator().manual_seed(default_seed())
        sampler = None
        if split == "train":
            trainer = self.trainer
            sampler = ResumableSampler(self.splits[split], num_replicas=trainer.world_size if trainer else 1,
                                       rank=trainer.global_rank if trainer else 0, shuffle=shuffle,
                                       seed=self._resume_at["seed"] if self._resume_at else default_seed(),
                                       generator=generator)
            if self._resume_at:
                sampler.start_at(self._resume_at["epoch"], self._resume_at["batches"] * self.hparams.batch_size)
                self._resume_at = None
            self._train_sampler = sampler
        return DataLoader(
            self.splits[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
            generator=generator,
        )

    # Lightning saves a datamodule's state_dict in every checkpoint and loads it before it asks
    # for the loaders: where in its epoch the training order stands.
    def state_dict(self) -> dict[str, Any]:
        trainer, sampler = self.trainer, self._train_sampler
        if trainer is None or sampler is None or trainer.state.fn != "fit":
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        epoch = int(trainer.current_epoch)
        if done >= trainer.num_training_batches:  # an epoch-end checkpoint: the next epoch starts afresh
            epoch, done = epoch + 1, 0
        return {"train_order": {"seed": int(sampler.seed), "epoch": epoch, "batches": done}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        order = state_dict.get("train_order")
        self._resume_at = {k: int(order[k]) for k in ("seed", "epoch", "batches")} if order else None

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
