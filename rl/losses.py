"""The policy-gradient loss terms as pure functions, named as in the papers (CleanRL's loss block).

Every function takes per-sample tensors of one minibatch and returns a scalar (a mean over the
minibatch); the agents in ``rl.module`` only pick which ones to combine and with what weight:

* REINFORCE (Williams 1992) / A2C (Mnih et al. 2016):
  ``policy_gradient_loss + vf_coef * value_loss - ent_coef * entropy_bonus``
* PPO (Schulman et al. 2017):
  ``clipped_surrogate_loss + vf_coef * (clipped_)value_loss - ent_coef * entropy_bonus``
"""

from __future__ import annotations

import torch


def normalize_advantages(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Standardise to mean 0, std 1 (sample std) per minibatch; a single sample is left as is."""
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE / A2C: ``-mean(A * log pi(a|s))`` (the advantages carry no gradient)."""
    return -(advantages.detach() * logp).mean()


def clipped_surrogate_loss(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's clipped surrogate objective, negated: ``mean(max(-A r, -A clip(r, 1-eps, 1+eps)))``
    with ``r = pi(a|s) / pi_old(a|s)``."""
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.max(unclipped, clipped).mean()


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the critic against the (GAE / Monte-Carlo) returns."""
    return ((values - returns.detach()) ** 2).mean()


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip_range_vf: float) -> torch.Tensor:
    """PPO's clipped value loss: the value may move at most ``clip_range_vf`` from the value at
    collection time; the larger of the clipped and unclipped squared errors is taken."""
    returns, old_values = returns.detach(), old_values.detach()
    clipped = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
    return torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()


def entropy_bonus(entropy: torch.Tensor) -> torch.Tensor:
    """Mean policy entropy; subtracted (times ``ent_coef``) from the loss to keep exploring."""
    return entropy.mean()


def actor_critic_loss(policy_loss: torch.Tensor, value_loss: torch.Tensor, entropy: torch.Tensor,
                      vf_coef: float, ent_coef: float) -> torch.Tensor:
    """The one combined objective: ``policy_loss + vf_coef * value_loss - ent_coef * entropy``."""
    return policy_loss + vf_coef * value_loss - ent_coef * entropy


def approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """KL(pi_old || pi) estimated from ``log r = log pi - log pi_old`` with the unbiased,
    non-negative estimator ``mean((r - 1) - log r)`` (Schulman's "k3")."""
    return (log_ratio.exp() - 1 - log_ratio).mean()


def clip_fraction(ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Share of samples whose ratio lies outside ``[1 - clip_range, 1 + clip_range]``."""
    return ((ratio - 1).abs() > clip_range).float().mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns]: 1 is a perfect critic, <= 0 no better than a constant."""
    var = returns.var()
    return torch.where(var > 0, 1 - (returns - values).var() / var, torch.zeros_like(var))


def linear_schedule(initial: float, progress_remaining: float) -> float:
    """Linear annealing: ``initial`` at the start (progress 1), 0 at the end of the budget (progress 0)."""
    return initial * progress_remaining
