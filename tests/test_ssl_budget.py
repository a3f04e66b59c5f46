"""Label budgets (N per class or a fraction, seeded, stratified) on AV-MNIST and the tri-modal digits,
and AV-MNIST's second label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import AVMNISTDataModule, TriModalDigitsDataModule
from datamodules.budget import label_budget
from datamodules.trimodal import WORDS


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
@pytest.mark.parametrize("datamodule", [AVMNISTDataModule, TriModalDigitsDataModule])
def test_bad_budget_is_named_before_any_data_is_read(kwargs, message, datamodule) -> None:
    with pytest.raises(ValueError, match=message):
        datamodule(root="/nonexistent", **kwargs)


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


def trimodal_budget(data_root: Path, **budget) -> TriModalDigitsDataModule:
    dm = TriModalDigitsDataModule(root=str(data_root), text_noise=0.3, **budget)
    dm.setup()
    return dm


def kept_rows(dm: TriModalDigitsDataModule) -> np.ndarray:
    return np.setdiff1d(np.arange(55_000), dm.unlabelled_rows.numpy())


def test_trimodal_budget_is_stratified_seeded_and_leaves_the_rest_for_pretraining(data_root: Path) -> None:
    dm = trimodal_budget(data_root, labels_per_class=5, budget_seed=3)
    labels = dm.labels()["train"]  # every training row's digit, before the budget
    train = dm.splits["train"]
    assert len(train) == 50 and torch.all(torch.bincount(train.paired.label) == 5)
    keep = kept_rows(dm)
    assert len(keep) == 50 and len(dm.unlabelled_rows) == 55_000 - 50  # the rest: for pretraining only
    assert np.array_equal(keep, label_budget(labels, labels_per_class=5, seed=3)[0])
    assert torch.equal(train.paired.label, labels[keep])  # the kept triples are those rows, in order
    # The texts are made for the kept rows' digits: a clean text names its row's digit.
    clean = [(t, y) for t, k, y in zip(train.texts, train.kinds, train.paired.label.tolist()) if k == 0]
    assert clean and all(WORDS[y] in t for t, y in clean)
    batch = train.get_batch(torch.arange(50))
    assert set(batch) >= {"image", "audio", "text", "label", "speaker"}
    assert torch.equal(batch["label"], train.paired.label)
    # Reproducible per seed; a fraction keeps round(f * N) rows, and its seed is the one given.
    again = trimodal_budget(data_root, labels_per_class=5, budget_seed=3)
    assert np.array_equal(kept_rows(again), keep) and again.splits["train"].texts == train.texts
    tiny = trimodal_budget(data_root, label_fraction=0.001, budget_seed=4)
    assert len(tiny.splits["train"]) == 55 and len(tiny.unlabelled_rows) == 55_000 - 55
    assert np.array_equal(kept_rows(tiny), label_budget(labels, fraction=0.001, seed=4)[0])
    assert not np.array_equal(kept_rows(tiny), label_budget(labels, fraction=0.001, seed=3)[0])
    assert len(tiny.splits["test"]) == len(dm.splits["test"]) == 10_000  # budgets touch the training rows only
