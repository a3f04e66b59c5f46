"""Label budgets (N per class or a fraction, seeded, stratified) and AV-MNIST's second label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import AVMNISTDataModule
from datamodules.budget import label_budget


def test_labels_per_class_and_fraction_are_stratified_seeded_and_disjoint() -> None:
    y = np.repeat(np.arange(10), [600, 500, 550, 540, 560, 520, 580, 530, 590, 530])  # 5,500 rows
    keep, rest = label_budget(y, labels_per_class=7, seed=0)
    assert len(keep) == 70 and np.all(np.bincount(y[keep]) == 7)
    assert len(np.intersect1d(keep, rest)) == 0 and len(keep) + len(rest) == len(y)
    keep1, _ = label_budget(y, fraction=0.01, seed=0)
    assert len(keep1) == 55  # round(0.01 * 5,500): largest remainders make the total exact
    assert np.abs(np.bincount(y[keep1], minlength=10) - 0.01 * np.bincount(y)).max() < 1
    again, _ = label_budget(y, fraction=0.01, seed=0)
    other, _ = label_budget(y, fraction=0.01, seed=1)
    assert np.array_equal(keep1, again) and not np.array_equal(keep1, other)
    everything, none = label_budget(torch.as_tensor(y))
    assert len(everything) == len(y) and len(none) == 0
    few = np.array([0, 0, 1])  # a class with fewer rows than asked keeps them all
    assert label_budget(few, labels_per_class=5)[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("kwargs, message", [
    ({"labels_per_class": 0}, r"data.init_args.labels_per_class = 0 is not allowed"),
    ({"label_fraction": 1.5}, r"data.init_args.label_fraction = 1.5 is not allowed: a number in \(0.0, 1.0\]"),
    ({"labels_per_class": 5, "label_fraction": 0.1}, r"set one label budget, not both"),
])
def test_bad_budget_is_named_before_any_data_is_read(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        AVMNISTDataModule(root="/nonexistent", **kwargs)


def test_avmnist_budget_keeps_n_per_class_and_batches_carry_the_speaker(data_root: Path) -> None:
    dm = AVMNISTDataModule(root=str(data_root), split="recording", labels_per_class=55, batch_size=550)
    dm.setup()
    train = dm.splits["train"]
    assert len(train) == 550 and torch.all(torch.bincount(train.label) == 55)
    assert len(dm.unlabelled_rows) == 55_000 - 550
    batch = next(iter(dm.train_dataloader()))
    assert batch["speaker"].shape == batch["label"].shape and batch["speaker"].dtype == torch.int64
    assert dm.speaker_names == sorted(dm.speaker_names) and len(dm.speaker_names) >= 6
    # The speaker label is that of the recording paired with each image, and every speaker is in training.
    rec_speaker = [dm.meta["rec_speaker"][r] for r in train.recording.tolist()]
    assert [dm.speaker_names[s] for s in train.speaker.tolist()] == rec_speaker
    assert set(train.speaker.tolist()) == set(range(len(dm.speaker_names)))
    assert len(dm.splits["test"]) == 10_000  # budgets touch the training rows only
