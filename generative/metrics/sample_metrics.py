"""``SampleMetrics``: the evaluation a ``GAN`` is given (``GAN(metrics=SampleMetrics(...))``).

It collects features of real and generated images during a validation/test epoch, then scores
them with the pure functions of ``generative.metrics.functions``; every score comes with its
protocol (extractor, sample counts, split, sampler), since FID is biased at small sample counts
and scores compare only under one protocol. It is not part of the GAN's checkpoint: a fixed
extractor is an evaluation choice, not model state.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import nn

from datamodules.checks import check_choice, check_int
from generative.metrics.functions import (
    frechet_distance,
    kernel_inception_distance,
    kid_subset_size,
    precision_recall_density_coverage,
)

log = logging.getLogger(__name__)

METRICS = ("fid", "kid", "precision_recall", "density_coverage")


class SampleMetrics:
    """FID, KID, precision/recall and density/coverage of generated images on ``features``.

    Args:
        features: an extractor (``generative.metrics.DigitFeatures``, ``InceptionFeatures``,
            ``TimmFeatures``, ``EncoderFeatures`` or any frozen module ``[B, C, H, W] -> [B, D]``).
        metrics: which of ``fid``, ``kid``, ``precision_recall``, ``density_coverage`` to report.
        num_samples: at most this many real and generated images per evaluation (the rest of the
            split is skipped); limit the split with ``trainer.limit_val_batches`` to save time.
        kid_subsets / kid_subset_size: KID's random subsets (torch-fidelity: 100 of 1000); the
            size shrinks, with a warning, to the number of samples when that is smaller.
        k: the neighbourhood size of precision/recall/density/coverage (``prdc``'s ``nearest_k``).
        agreement: for conditional GANs whose extractor has ``classify`` (the digit classifier):
            also report how often it reads the requested class in the generated image.
    """

    def __init__(self, features: nn.Module, metrics: Sequence[str] = METRICS, num_samples: int = 10000,
                 kid_subsets: int = 100, kid_subset_size: int = 1000, k: int = 5, agreement: bool = True) -> None:
        for name in metrics:
            check_choice("metrics.init_args.metrics", name, METRICS, prefix="model.init_args.")
        check_int("metrics.init_args.num_samples", num_samples, prefix="model.init_args.")
        self.features, self.metrics, self.num_samples = features, list(metrics), num_samples
        self.kid_subsets, self.kid_subset_size, self.k = kid_subsets, kid_subset_size, k
        self.agreement = agreement and hasattr(features, "classify")
        self.reset()

    @property
    def name(self) -> str:
        return getattr(self.features, "name", type(self.features).__name__)

    def reset(self) -> None:
        self._real: list[torch.Tensor] = []
        self._fake: list[torch.Tensor] = []
        self._hits = self._asked = 0

    def to(self, device: torch.device) -> SampleMetrics:
        self.features = self.features.to(device)
        return self

    @staticmethod
    def _count(chunks: list[torch.Tensor]) -> int:
        return sum(len(c) for c in chunks)

    @torch.no_grad()
    def update(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Add a batch: real and generated images in [-1, 1]; ``labels`` the classes the fakes were asked for."""
        for store, images in ((self._real, real), (self._fake, fake)):
            room = self.num_samples - self._count(store)
            if room > 0:
                store.append(self.features(images[:room]).double().cpu())
        if self.agreement and labels is not None:
            room = self.num_samples - self._asked
            if room > 0:
                predicted = self.features.classify(fake[:room]).argmax(1)
                self._hits += int((predicted == labels[:room]).sum())
                self._asked += len(predicted)

    def compute(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The scores; ``gather`` (e.g. ``LightningModule.all_gather``) joins the processes' features first."""
        real, fake = torch.cat(self._real), torch.cat(self._fake)
        hits, asked = torch.tensor([self._hits, self._asked], dtype=torch.float64), None
        if gather is not None:
            real, fake = (gather(x).reshape(-1, x.shape[-1]).cpu() for x in (real, fake))
            hits = gather(hits).reshape(-1, 2).sum(0).cpu()
        out: dict[str, float] = {}
        if "fid" in self.metrics:
            out["fid"] = frechet_distance(real, fake)
        if "kid" in self.metrics:
            self._kid_size = kid_subset_size(len(real), len(fake), self.kid_subset_size)
            out["kid"], out["kid_std"] = kernel_inception_distance(real, fake, self.kid_subsets, self._kid_size)
        if {"precision_recall", "density_coverage"} & set(self.metrics):
            prdc = precision_recall_density_coverage(real, fake, self.k)
            keys = (["precision", "recall"] if "precision_recall" in self.metrics else []) + (
                ["density", "coverage"] if "density_coverage" in self.metrics else [])
            out.update({key: prdc[key] for key in keys})
        asked = float(hits[1])
        if self.agreement and asked:
            out["agreement"] = float(hits[0]) / asked
        self._n = (len(real), len(fake))
        return out

    def protocol(self, split: str, sampler: str = "") -> str:
        """One line naming what the last scores were measured on."""
        n_real, n_fake = getattr(self, "_n", (0, 0))
        parts = [f"features {self.name}", f"{n_real} real ({split} split) / {n_fake} generated"]
        if "kid" in self.metrics:
            parts.append(f"KID {self.kid_subsets} subsets of {getattr(self, '_kid_size', self.kid_subset_size)}")
        if {"precision_recall", "density_coverage"} & set(self.metrics):
            parts.append(f"k={self.k}")
        if sampler:
            parts.append(sampler)
        return "; ".join(parts)
