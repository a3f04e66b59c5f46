"""Actor-critic networks: ``ActorCritic(observation_space, action_space, **options)``.

A config names the class and its options; the agent calls it with the env's spaces (as fusion
heads are called with ``in_dims``). The policy head is a Categorical for ``Discrete`` actions and
a diagonal Gaussian with a state-independent, learned log-std for ``Box`` actions.
"""

from __future__ import annotations

import math
from typing import Sequence

import gymnasium as gym
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Normal

from rl.envs import check_action_space

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def mlp(in_dim: int, hidden: Sequence[int], activation: str) -> nn.Sequential:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not supported; use one of {sorted(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), _ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*layers)


def _ortho_init(module: nn.Module, gain: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain)
            nn.init.zeros_(m.bias)


class ActorCritic(nn.Module):
    """Separate (default) or shared MLP torsos for the policy and the value function.

    Args:
        observation_space / action_space: the env's single (not batched) spaces.
        hidden: torso widths; ``shared=True`` uses one torso for both heads.
        activation: ``tanh`` (the PPO/A2C default), ``relu``, ``gelu``, ``silu``.
        encoder: optional feature extractor run before the torsos, e.g. a ``fusion`` image encoder
            (``forward(x) -> [B, T, D]`` with ``out_dim``) for pixel observations; its tokens are
            mean-pooled. Image observations in 0..255 are scaled to 0..1, and channels-last ones
            (``[H, W, C]``, gymnasium's images) moved to ``[C, H, W]``; channels-first ones (Atari
            frame stacks ``[4, 84, 84]``) stay as they are. ``fusion.NatureCNNEncoder`` is the
            Atari torso; any ``fusion.ImageEncoder`` (timm) can replace it.
        log_std_init: initial log-std of the Gaussian policy (continuous actions only).
        ortho_init: orthogonal init with the usual gains (sqrt 2 torso, 0.01 policy, 1 value).
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, hidden: Sequence[int] = (64, 64),
                 activation: str = "tanh", shared: bool = False, encoder: nn.Module | None = None,
                 log_std_init: float = 0.0, ortho_init: bool = True) -> None:
        super().__init__()
        check_action_space(action_space)
        if not isinstance(observation_space, gym.spaces.Box):
            raise ValueError(f"observation space {observation_space} is not supported; supported: Box "
                             f"(vectors, or images with an encoder). Wrap Dict/Tuple/Discrete observations with "
                             f"gymnasium.wrappers.FlattenObservation (in a config: model.init_args.wrappers: "
                             f"[{{class_path: gymnasium.wrappers.FlattenObservation}}])")
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.encoder = encoder
        shape = observation_space.shape
        self.image_obs = len(shape) == 3
        self.channels_last = self.image_obs and shape[-1] <= 4 < shape[0]
        if encoder is not None:
            in_dim = encoder.out_dim
        elif len(observation_space.shape) == 1:
            in_dim = observation_space.shape[0]
        else:
            raise ValueError(f"observation shape {observation_space.shape} needs an encoder (e.g. "
                             f"fusion.SmallCNNImageEncoder for images) or FlattenObservation")
        act_dim = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.actor_torso = mlp(in_dim, hidden, activation)
        self.critic_torso = self.actor_torso if shared else mlp(in_dim, hidden, activation)
        width = hidden[-1] if hidden else in_dim
        self.policy_head = nn.Linear(width, act_dim)
        self.value_head = nn.Linear(width, 1)
        self.log_std = None if self.discrete else nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        if ortho_init:
            _ortho_init(self.actor_torso, math.sqrt(2))
            _ortho_init(self.critic_torso, math.sqrt(2))
            _ortho_init(self.policy_head, 0.01)
            _ortho_init(self.value_head, 1.0)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            return obs
        if self.image_obs:  # pixels 0..255 -> [B, C, H, W] in 0..1
            obs = (obs.permute(0, 3, 1, 2) if self.channels_last else obs) / 255.0
        return self.encoder(obs).mean(dim=1)

    def distribution(self, x: torch.Tensor) -> Distribution:
        out = self.policy_head(self.actor_torso(x))
        if self.discrete:
            return Categorical(logits=out, validate_args=False)
        return Normal(out, self.log_std.exp().expand_as(out), validate_args=False)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_head(self.critic_torso(self.features(obs))).squeeze(-1)

    def log_prob(self, dist: Distribution, actions: torch.Tensor) -> torch.Tensor:
        lp = dist.log_prob(actions)
        return lp if self.discrete else lp.sum(-1)

    def entropy(self, dist: Distribution) -> torch.Tensor:
        ent = dist.entropy()
        return ent if self.discrete else ent.sum(-1)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or take the mode of) the policy: ``(action, log_prob, value)``."""
        x = self.features(obs)
        dist = self.distribution(x)
        if deterministic:
            action = dist.logits.argmax(-1) if self.discrete else dist.mean
        else:
            action = dist.sample()
        value = self.value_head(self.critic_torso(x)).squeeze(-1)
        return action, self.log_prob(dist, action), value

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_prob, entropy, value)`` of given actions under the current policy (for the losses)."""
        x = self.features(obs)
        dist = self.distribution(x)
        value = self.value_head(self.critic_torso(x)).squeeze(-1)
        return self.log_prob(dist, actions), self.entropy(dist), value

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Greedy action (for deployment / export)."""
        return self.act(obs, deterministic=True)[0]
