"""MNIST, image only: for GANs (``normalize="tanh"`` -> [-1, 1]) and unimodal baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.base import DIGIT_NAMES, BatchedDataset, RealDataModule
from datamodules.sources import load_mnist

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class ImageSet(BatchedDataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, image_size: int, normalize: str) -> None:
        self.images, self.labels, self.image_size, self.normalize = images, labels, image_size, normalize

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, index: torch.Tensor) -> dict:
        x = self.images[index].unsqueeze(1).float() / 255.0
        if self.image_size != x.shape[-1]:  # resized per batch: cheaper than storing every size
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=self.image_size < x.shape[-1])
        x = x * 2.0 - 1.0 if self.normalize == "tanh" else (x - MNIST_MEAN) / MNIST_STD
        return {"image": x, "label": self.labels[index],
                "present": {"image": torch.ones(len(index), dtype=torch.bool)}}


class MNISTDataModule(RealDataModule):
    """MNIST digits: train = first ``60000 - val_size`` training images, val = the last
    ``val_size``, test = the 10,000 test images. Batches: ``{"image": [B, 1, S, S], "label",
    "present": {"image"}}``.

    Args:
        root: data root with ``MNIST/raw/*.gz`` (read-only is fine; see ``sources.load_mnist``).
        image_size: output side S (bilinear resize, e.g. 32 or 64 for DCGAN-style nets).
        normalize: ``"tanh"`` -> [-1, 1] (matches a tanh generator), ``"standard"`` -> (x - 0.1307) / 0.3081.
        val_size: images held out from the training set for validation.
        download: fetch missing files into the cache (needs internet).
        train_limit: use only the first N training images (quick runs).
    """

    num_classes = 10
    modalities = ("image",)

    @property
    def class_names(self) -> list[str]:
        return list(DIGIT_NAMES)

    def __init__(self, root: str | None = None, batch_size: int = 64, image_size: int = 28, normalize: str = "tanh",
                 val_size: int = 5000, num_workers: int = 0, download: bool = False,
                 train_limit: int | None = None) -> None:
        super().__init__()
        if normalize not in ("tanh", "standard"):
            raise ValueError(f"normalize must be 'tanh' or 'standard', got {normalize!r}")
        if not 0 <= val_size < 60000:
            raise ValueError(f"val_size must be in [0, 60000), got {val_size}")
        self.save_hyperparameters()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, self.hparams.image_size, self.hparams.image_size)

    def prepare_data(self) -> None:
        load_mnist(self.hparams.root, download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        m = load_mnist(hp.root, download=hp.download)
        n_train = 60000 - hp.val_size
        parts = {"train": (m["train_images"][:n_train], m["train_labels"][:n_train]),
                 "val": (m["train_images"][n_train:], m["train_labels"][n_train:]),
                 "test": (m["test_images"], m["test_labels"])}
        if hp.train_limit is not None:
            parts["train"] = tuple(t[: hp.train_limit] for t in parts["train"])
        self.splits = {s: ImageSet(x, y, hp.image_size, hp.normalize) for s, (x, y) in parts.items()}
