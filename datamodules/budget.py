"""Label budgets: train a classifier on N labels per class, or a fraction of the labelled rows.

The few-label setting of semi-/self-supervised learning: a seeded, class-stratified subset of the
training rows keeps its labels; the rest is kept for (label-free) pretraining only. One helper for
every labelled datamodule::

    labelled, rest = label_budget(train_labels, labels_per_class=55, seed=0)
    labelled, rest = label_budget(train_labels, fraction=0.01, seed=0)   # 1% of the rows

Stratified: with a fraction each class keeps its share (largest remainders make the total exactly
``round(fraction * N)``), so 1% of AV-MNIST's 55,000 training pairs is 550 rows, about 55 a class.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodules.checks import DATA, check_int, check_real


def check_budget(labels_per_class: int | None, label_fraction: float | None) -> None:
    """Argument checks for a datamodule's ``labels_per_class`` / ``label_fraction``."""
    check_int("labels_per_class", labels_per_class, optional=True, none_means="no per-class budget", prefix=DATA)
    check_real("label_fraction", label_fraction, 0.0, 1.0, low_open=True, optional=True,
               none_means="every label", prefix=DATA)
    if labels_per_class is not None and label_fraction is not None:
        raise ValueError(f"{DATA}labels_per_class = {labels_per_class} and {DATA}label_fraction = {label_fraction}: "
                         "set one label budget, not both")


def label_budget(labels: torch.Tensor | np.ndarray, labels_per_class: int | None = None,
                 fraction: float | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(labelled, rest)``, both sorted: a seeded class-stratified subset and the others.

    ``labels_per_class``: that many rows of every class (a class with fewer keeps all of them).
    ``fraction``: ``round(fraction * N)`` rows split over the classes by their shares. Neither:
    every row is labelled."""
    check_budget(labels_per_class, fraction)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    n = len(y)
    if labels_per_class is None and fraction is None:
        return np.arange(n), np.arange(0)
    rng = np.random.default_rng([seed, 2207])
    classes, counts = np.unique(y, return_counts=True)
    if labels_per_class is not None:
        quota = np.minimum(counts, labels_per_class)
    else:
        exact = fraction * counts
        quota = np.floor(exact).astype(np.int64)
        short = int(round(fraction * n)) - int(quota.sum())
        if short > 0:  # largest remainders get the rows rounding left over
            quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
        quota = np.minimum(quota, counts)
    chosen = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
    labelled = np.sort(np.concatenate(chosen)) if chosen else np.arange(0)
    rest = np.setdiff1d(np.arange(n), labelled, assume_unique=True)
    return labelled, rest
