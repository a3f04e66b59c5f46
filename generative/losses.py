"""GAN objectives as pure functions of discriminator outputs (logits / critic scores ``[B]``).

- ``bce``: the non-saturating GAN (Goodfellow et al. 2014). D minimises
  ``BCE(D(x), 1) + BCE(D(G(z)), 0) = E[softplus(-D(x))] + E[softplus(D(G(z)))]``; G minimises
  ``BCE(D(G(z)), 1) = E[softplus(-D(G(z)))]`` (maximises log D(G(z)) instead of minimising
  log(1 - D(G(z))), which saturates early in training).
- ``hinge``: the hinge loss (Lim & Ye 2017; Miyato et al. 2018, SN-GAN). D minimises
  ``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]``; G minimises ``-E[D(G(z))]``.
- ``wgan-gp``: the Wasserstein critic (Arjovsky et al. 2017) with gradient penalty (Gulrajani et
  al. 2017). The critic minimises ``E[D(G(z))] - E[D(x)] + gp_weight * gradient_penalty``; G
  minimises ``-E[D(G(z))]``. The penalty is added by the caller, who owns ``gp_weight``.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

LossName = Literal["bce", "hinge", "wgan-gp"]
LOSSES = ("bce", "hinge", "wgan-gp")


def _check(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"loss={kind!r}: choose one of {', '.join(map(repr, LOSSES))}")


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor, kind: LossName) -> torch.Tensor:
    """The discriminator's (critic's) adversarial loss; for ``wgan-gp`` without the penalty."""
    _check(kind)
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    if kind == "hinge":
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    return d_fake.mean() - d_real.mean()


def generator_loss(d_fake: torch.Tensor, kind: LossName) -> torch.Tensor:
    """The generator's loss on the discriminator's outputs for its samples."""
    _check(kind)
    if kind == "bce":  # non-saturating
        return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
    return -d_fake.mean()


def gradient_penalty(critic: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, cond: torch.Tensor | None = None,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP's two-sided penalty ``E[(||grad_x critic(x_hat, cond)||_2 - 1)^2]`` at random points
    ``x_hat = eps * real + (1 - eps) * fake`` on the lines between real and generated samples,
    ``eps ~ U[0, 1]`` per sample (``eps`` of shape ``[B]`` may be given, e.g. in tests). The graph
    is kept (``create_graph``), so the penalty's gradient reaches the critic's weights."""
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
    eps = eps.to(real).view(-1, *([1] * (real.dim() - 1)))
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed, cond).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
