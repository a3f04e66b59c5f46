"""The Fréchet classifier distance: the digit classifier is trained once, cached, and its
features separate real digits from non-digits."""

from __future__ import annotations

import pytest
import torch

import generative.metrics as metrics
from generative import DigitClassifier, frechet_distance, load_digit_classifier

RECIPE = {"epochs": 1, "train_limit": 2048}  # same as tests/test_gan_module.py: trained once per session


def test_classifier_is_cached_and_reloaded(data_root, monkeypatch) -> None:
    first = load_digit_classifier(**RECIPE)
    info = metrics.classifier_info(**RECIPE)
    assert info["test_acc"] > 0.5  # 2k images, one epoch: far above chance (measured 0.73; full recipe >= 0.99)
    files = sorted(p.name for p in metrics.cache_dir("classifier").iterdir())
    assert "digit-cnn-e1-n2048-s0.safetensors" in files and "digit-cnn-e1-n2048-s0.json" in files

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded, not retrained")

    monkeypatch.setattr(metrics, "train_digit_classifier", no_training)
    second = load_digit_classifier(**RECIPE)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_frechet_distance_separates_digits_from_noise(data_root) -> None:
    from datamodules import MNISTDataModule

    classifier = load_digit_classifier(**RECIPE)
    dm = MNISTDataModule(batch_size=250)
    dm.setup("fit")
    batches = iter(dm.val_dataloader())
    a, b = next(batches)["image"], next(batches)["image"]
    same = frechet_distance(classifier)
    same.update(a, real=True)
    same.update(b, real=False)
    noise = frechet_distance(classifier)
    noise.update(a, real=True)
    noise.update(torch.rand_like(b) * 2 - 1, real=False)
    blurred = frechet_distance(classifier)
    blurred.update(a, real=True)
    blurred.update(torch.nn.functional.avg_pool2d(b, 3, 1, 1), real=False)
    d_same, d_blur, d_noise = same.compute().item(), blurred.compute().item(), noise.compute().item()
    assert d_same < d_blur < d_noise, (d_same, d_blur, d_noise)
    assert d_same < 0.1 * d_noise


def test_extractor_accepts_other_sizes_and_rgb() -> None:
    clf = DigitClassifier()
    feats = metrics.ClassifierFeatures(clf)
    feats.train()
    assert not feats.classifier.training  # the metric's extractor never leaves eval mode
    assert feats(torch.rand(2, 3, 64, 64) * 2 - 1).shape == (2, DigitClassifier.num_features)
    assert feats(torch.rand(2, 1, 32, 32)).shape == (2, DigitClassifier.num_features)


@pytest.mark.slow
def test_full_classifier_reaches_99_percent(data_root) -> None:
    load_digit_classifier()
    assert metrics.classifier_info()["test_acc"] >= 0.99
