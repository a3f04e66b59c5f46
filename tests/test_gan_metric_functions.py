"""The metric maths on feature matrices: parity with torch-fidelity and prdc, and known cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generative.augment import diff_augment
from generative.metrics import (
    SampleMetrics,
    frechet_distance,
    inception_weights_path,
    kernel_inception_distance,
    precision_recall_density_coverage,
)


def _features(n: int = 400, d: int = 16, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + shift).astype(np.float32)


def test_parity_with_torch_fidelity_and_prdc() -> None:
    from prdc import compute_prdc
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    real, fake = _features(seed=0), _features(shift=0.4, seed=1)
    tr, tf = torch.from_numpy(real).double(), torch.from_numpy(fake).double()
    ref_fid = fid_statistics_to_metric(fid_features_to_statistics(tr), fid_features_to_statistics(tf), False)
    assert frechet_distance(real, fake) == pytest.approx(ref_fid["frechet_inception_distance"], rel=1e-3)
    ref_kid = kid_features_to_metric(tr, tf, kid_subsets=20, kid_subset_size=200, verbose=False)
    mean, std = kernel_inception_distance(real, fake, subsets=20, subset_size=200)
    assert mean == pytest.approx(ref_kid["kernel_inception_distance_mean"], rel=1e-3)
    assert std == pytest.approx(ref_kid["kernel_inception_distance_std"], rel=1e-3)
    ours = precision_recall_density_coverage(real, fake, k=5)
    ref = compute_prdc(real, fake, nearest_k=5)
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(float(ref[key]), rel=1e-3, abs=1e-6), key


def test_known_cases_halves_and_collapse() -> None:
    data = _features(n=800, seed=3)
    a, b = data[:400], data[400:]
    far = frechet_distance(a, _features(n=400, shift=1.0, seed=4))
    assert frechet_distance(a, b) < 0.05 * far
    kid, _ = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    assert abs(kid) < 0.01
    same = precision_recall_density_coverage(a, b)
    assert same["precision"] > 0.9 and same["recall"] > 0.9
    collapsed = np.repeat(b[:1], 400, axis=0) + 1e-4 * np.random.default_rng(5).normal(size=(400, 16))
    mode = precision_recall_density_coverage(a, collapsed)
    assert mode["recall"] < 0.05 and mode["coverage"] < 0.05


def test_kid_subset_shrinks_with_a_warning_and_protocol_is_named() -> None:
    class Identity(torch.nn.Module):
        name = "identity-16"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    metrics = SampleMetrics(Identity(), kid_subsets=5)
    real, fake = torch.from_numpy(_features(n=60, seed=0)), torch.from_numpy(_features(n=60, shift=0.5, seed=1))
    metrics.update(real.view(60, 1, 4, 4), fake.view(60, 1, 4, 4))
    with pytest.warns(UserWarning, match="using subsets of 60"):
        scores = metrics.compute()
    assert set(scores) == {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage"}
    line = metrics.protocol("val", "EMA generator")
    assert "identity-16" in line and "60 real (val split) / 60 generated" in line and "5 subsets of 60" in line


def test_inception_offline_names_the_file_folder_and_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        inception_weights_path()
    text = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in text and str(tmp_path / "hub" / "checkpoints") in text
    assert "curl -L -o" in text and "DigitFeatures" in text


def test_diffaugment_is_differentiable_and_same_seed_same_transform() -> None:
    x = torch.rand(4, 3, 16, 16, requires_grad=True) * 2 - 1
    x.retain_grad()
    out = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(7))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    real, fake = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    # the same parameters for real and fake: augmenting the stacked pair equals augmenting each alone
    a = diff_augment(real, "translation,cutout", torch.Generator().manual_seed(3))
    b = diff_augment(real, "translation,cutout", torch.Generator().manual_seed(3))
    c = diff_augment(real, "translation,cutout", torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    ones = torch.ones_like(fake)
    mask_real = diff_augment(ones, "cutout", torch.Generator().manual_seed(9))
    mask_fake = diff_augment(ones.clone(), "cutout", torch.Generator().manual_seed(9))
    assert torch.equal(mask_real, mask_fake) and (mask_real == 0).any()
    with pytest.raises(ValueError, match="unknown policy.*'colour'"):
        diff_augment(real, "colour")
