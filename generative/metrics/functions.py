"""Sample-quality metrics as pure functions of two feature matrices ``[N, D]`` (real, generated).

- ``frechet_distance``: FID (Heusel et al. 2017), the Fréchet distance between Gaussians fitted to
  the two sets, computed as torch-fidelity does (eigenvalues of ``sigma_r @ sigma_f``).
- ``kernel_inception_distance``: KID (Bińkowski et al. 2018), the unbiased MMD² with the cubic
  polynomial kernel ``(x.y / D + 1)^3``, averaged over random subsets (torch-fidelity's defaults:
  100 subsets of 1000, seed 2020). Unbiased, so it is fair at small sample counts where FID is not.
- ``precision_recall_density_coverage``: k-NN manifolds (Kynkäänniemi et al. 2019; Naeem et al.
  2020), as the ``prdc`` package: precision (fakes inside the real manifold), recall (reals inside
  the fake manifold), density and coverage.

Which network made the features matters as much as the formula: scores compare only under one
protocol (extractor, sample counts, split); ``generative.metrics.SampleMetrics`` prints it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

Features = torch.Tensor | np.ndarray


def _as_array(name: str, x: Features) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or len(arr) < 2:
        raise ValueError(f"{name}: expected a feature matrix [N >= 2, D], got shape {list(arr.shape)}")
    return arr


def _pair(real: Features, fake: Features) -> tuple[np.ndarray, np.ndarray]:
    r, f = _as_array("real", real), _as_array("fake", fake)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake features differ in width: {r.shape[1]} vs {f.shape[1]}")
    return r, f


def frechet_distance(real: Features, fake: Features) -> float:
    """``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` of the two feature sets."""
    r, f = _pair(real, fake)
    mu_r, mu_f = r.mean(0), f.mean(0)
    s_r, s_f = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    tr_covmean = np.sqrt(np.linalg.eigvals(s_r @ s_f).astype(np.complex128)).real.sum()
    diff = mu_r - mu_f
    return float(diff @ diff + np.trace(s_r) + np.trace(s_f) - 2 * tr_covmean)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, coef0: float) -> float:
    gamma = 1.0 / x.shape[1]
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    m = len(x)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kid_subset_size(n_real: int, n_fake: int, subset_size: int = 1000) -> int:
    """``subset_size``, shrunk (with a warning) to the smaller set when that has fewer samples."""
    n = min(n_real, n_fake)
    if n < subset_size:
        warnings.warn(f"KID: {n_real} real / {n_fake} generated samples are fewer than subset_size={subset_size}; "
                      f"using subsets of {n} (KID stays unbiased, but its variance grows)", stacklevel=3)
        return n
    return subset_size


def kernel_inception_distance(real: Features, fake: Features, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, coef0: float = 1.0, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² over ``subsets`` random subsets of ``subset_size`` per set
    (drawn without replacement, as torch-fidelity; shrunk with a warning for small sets)."""
    r, f = _pair(real, fake)
    size = kid_subset_size(len(r), len(f), subset_size)
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = r[rng.choice(len(r), size, replace=False)]
        y = f[rng.choice(len(f), size, replace=False)]
        mmds[i] = _mmd2_unbiased(x, y, degree, coef0)
    return float(mmds.mean()), float(mmds.std())


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def _kth_neighbour_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour in its own set (itself excluded)."""
    d = _distances(x, x)
    return np.partition(d, k, axis=1)[:, k]


def precision_recall_density_coverage(real: Features, fake: Features, k: int = 5) -> dict[str, float]:
    """``{"precision", "recall", "density", "coverage"}`` with k-NN balls of radius the k-th neighbour distance."""
    r, f = _pair(real, fake)
    if k >= min(len(r), len(f)):
        raise ValueError(f"precision/recall k={k} needs more than k samples per set (got {len(r)} real, {len(f)} fake)")
    r_radii, f_radii = _kth_neighbour_radii(r, k), _kth_neighbour_radii(f, k)
    d = _distances(r, f)  # [real, fake]
    inside_real = d < r_radii[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d < f_radii[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) < r_radii).mean()),
    }
