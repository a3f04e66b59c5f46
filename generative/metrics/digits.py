"""The digit classifier: a feature extractor for MNIST-like digits that needs no download.

InceptionV3 weights cannot always be downloaded and fit 28x28 digits poorly, so fusegen trains a
small digit CNN on MNIST once (>= 99% test accuracy, ~1-2 minutes on CPU) and caches it as
safetensors under ``datamodules.paths.cache_dir("classifier")``. ``generative.metrics.DigitFeatures``
hands its penultimate layer to ``SampleMetrics``; its logits score conditional samples (does the
generated image show the digit that was asked for?). It is trained by ``load_digit_classifier``,
called when a config builds a ``DigitFeatures``; the GAN itself never trains it.

Scores are comparable only between runs that use the same extractor (same cache key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from datamodules.files import atomic_path, atomic_write_json, remove_stale_temp_files
from datamodules.paths import cache_dir

log = logging.getLogger(__name__)


class DigitClassifier(nn.Module):
    """A LeNet-style CNN for 28x28 digits in [-1, 1]; ``features`` is the 128-d penultimate layer."""

    num_features = 128

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, self.num_features), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(self.num_features, num_classes)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """Any GAN output -> [B, 1, 28, 28]: RGB is averaged to grey, other sizes are resized."""
        images = images.float()
        if images.shape[1] != 1:
            images = images.mean(dim=1, keepdim=True)
        if images.shape[-2:] != (28, 28):
            images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        return images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(images)))


def _evaluate(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            correct += (model(batch["image"]).argmax(1) == batch["label"]).sum().item()
            total += len(batch["label"])
    return correct / max(total, 1)


def train_digit_classifier(epochs: int = 2, train_limit: int | None = None, batch_size: int = 128,
                           lr: float = 2e-3, seed: int = 0, root: str | None = None) -> tuple[DigitClassifier, dict]:
    """Train the digit CNN on MNIST (images in [-1, 1], as GANs produce them).

    Returns the model and ``{"test_acc", "epochs", "train_limit", "seconds"}``.
    """
    with torch.inference_mode(False), torch.enable_grad():  # callable from inside a validation loop
        return _train(epochs, train_limit, batch_size, lr, seed, root)


def _train(epochs: int, train_limit: int | None, batch_size: int, lr: float, seed: int,
           root: str | None) -> tuple[DigitClassifier, dict]:
    from datamodules import MNISTDataModule

    torch.manual_seed(seed)
    dm = MNISTDataModule(root=root, batch_size=batch_size, normalize="tanh")
    dm.setup("fit")
    dm.setup("test")
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = len(dm.train_dataloader())
    if train_limit:
        steps_per_epoch = min(steps_per_epoch, max(1, train_limit // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        for i, batch in enumerate(dm.train_dataloader()):
            if i >= steps_per_epoch:
                break
            # Small random shifts make the classifier robust to the GAN's imperfect centring.
            images = torch.roll(batch["image"], shifts=tuple(torch.randint(-2, 3, (2,)).tolist()), dims=(2, 3))
            loss = F.cross_entropy(model(images), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("digit classifier: epoch %d done, loss %.4f", epoch, loss.item())
    info = {"test_acc": _evaluate(model, dm.test_dataloader()), "epochs": epochs, "train_limit": train_limit,
            "seconds": round(time.time() - start, 1)}
    return model.eval(), info


def _key(epochs: int, train_limit: int | None, seed: int) -> str:
    return f"digit-cnn-e{epochs}-n{train_limit or 'all'}-s{seed}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_cached(weights: Path, meta: Path) -> DigitClassifier | None:
    """The cached classifier if its files are complete and match, else ``None`` (with a warning).

    The JSON is written last and records the weights' sha256, so a run killed between the two
    writes, a truncated or a corrupted weights file is caught here and the entry rebuilt."""
    if not weights.is_file() and not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("sha256") != _sha256(weights):
            raise ValueError("sha256 mismatch")
        model = DigitClassifier()
        model.load_state_dict(load_file(str(weights)))
        return model.eval()
    except Exception as err:  # noqa: BLE001 - any damage means: rebuild
        log.warning("digit classifier cache %s is incomplete or corrupt (%s): rebuilding it", weights,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None


def load_digit_classifier(epochs: int = 2, train_limit: int | None = None, seed: int = 0,
                          root: str | None = None, cache: Path | None = None) -> DigitClassifier:
    """The cached digit classifier (trained on first use). The cache key is the training recipe,
    so a quick test classifier (``train_limit``) never replaces the full one."""
    folder = Path(cache) if cache else cache_dir("classifier")
    key = _key(epochs, train_limit, seed)
    weights, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
    cached = _load_cached(weights, meta)
    if cached is not None:
        return cached
    remove_stale_temp_files(folder)
    log.warning("training the digit classifier for FID features (once; cached at %s)", weights)
    model, info = train_digit_classifier(epochs=epochs, train_limit=train_limit, seed=seed, root=root)
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    atomic_write_json(meta, {**info, "sha256": _sha256(weights)})
    return model


def classifier_info(epochs: int = 2, train_limit: int | None = None, seed: int = 0) -> dict:
    """The training record (test accuracy etc.) of a cached classifier, ``{}`` if not built yet."""
    meta = cache_dir("classifier") / f"{_key(epochs, train_limit, seed)}.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}
