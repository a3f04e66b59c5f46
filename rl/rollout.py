"""Rollout collection and returns/advantages (GAE), CleanRL-style but aware of gymnasium 1.x's
next-step autoreset.

With next-step autoreset, ``envs.step`` at the end of an episode returns the episode's *final*
observation; the following step of that sub-env ignores the action and returns the reset
observation (reward 0, not done). So in a rollout:

* step ``t`` with ``terminated[t] or truncated[t]`` ends an episode, and ``obs[t + 1]`` is its
  final observation: a truncated episode bootstraps from ``V(obs[t + 1])``, a terminated one
  does not, and the advantage recursion never crosses from ``t + 1`` back into ``t``;
* step ``t + 1`` is a reset step: ``valid[t + 1] = False``, it gets no advantage and is dropped
  from the batch (its value is still computed because ``t`` needs it).
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
import torch


@torch.no_grad()
def compute_gae(rewards: torch.Tensor, values: torch.Tensor, last_value: torch.Tensor, terminated: torch.Tensor,
                truncated: torch.Tensor, valid: torch.Tensor, gamma: float, gae_lambda: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a ``[T, N]`` rollout (see the module docstring).

    Args:
        rewards, values: per step; ``values[t]`` is ``V(obs[t])``.
        last_value: ``V(obs[T])`` for the observation after the last step (a final observation
            if the last step ended an episode).
        terminated, truncated: flags returned by the step at ``t``.
        valid: ``False`` for next-step autoreset steps (their action was ignored).

    Returns ``(advantages, returns)``; both are 0 at invalid steps. ``gae_lambda=1`` gives
    Monte-Carlo returns (REINFORCE), bootstrapped only at truncations and at the rollout's end.
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    next_values = torch.cat([values[1:], last_value.unsqueeze(0)])
    not_terminal = 1.0 - terminated.float()
    not_done = 1.0 - (terminated | truncated).float()
    valid_f = valid.float()
    deltas = rewards + gamma * next_values * not_terminal - values
    last = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        last = (deltas[t] + gamma * gae_lambda * not_done[t] * last) * valid_f[t]
        advantages[t] = last
    returns = (advantages + values) * valid_f
    return advantages, returns


class RolloutCollector:
    """Steps a vector env with a policy and returns flat, on-policy training batches.

    ``policy.act(obs) -> (action, log_prob, value)`` and ``policy.value(obs)`` are all it needs.
    Completed episodes' returns/lengths (from ``RecordEpisodeStatistics``) accumulate in
    ``episode_returns`` / ``episode_lengths`` until ``pop_episodes()``.
    """

    def __init__(self, envs: gym.vector.VectorEnv, n_steps: int, gamma: float, gae_lambda: float,
                 device: torch.device | str = "cpu", seed: int | None = None) -> None:
        self.envs, self.n_steps, self.gamma, self.gae_lambda = envs, n_steps, gamma, gae_lambda
        self.device = torch.device(device)
        self.num_envs = envs.num_envs
        self.next_obs, _ = envs.reset(seed=seed)
        self.next_is_reset = np.zeros(self.num_envs, dtype=bool)  # next step is an autoreset step
        self.env_steps = 0
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def collect(self, policy: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``n_steps`` steps of every sub-env -> a flat batch of valid transitions with GAE."""
        T, N = self.n_steps, self.num_envs
        obs_l, act_l, logp_l, val_l = [], [], [], []
        rewards = np.zeros((T, N), dtype=np.float32)
        terminated = np.zeros((T, N), dtype=bool)
        truncated = np.zeros((T, N), dtype=bool)
        valid = np.zeros((T, N), dtype=bool)
        for t in range(T):
            obs = self._tensor(self.next_obs)
            action, logp, value = policy.act(obs)
            self.next_obs, rewards[t], terminated[t], truncated[t], info = self.envs.step(action.cpu().numpy())
            valid[t] = ~self.next_is_reset
            # life-loss terminals (rl.atari) end an episode for the targets but reset nothing
            self.next_is_reset = info["autoreset"] if "autoreset" in info else terminated[t] | truncated[t]
            obs_l.append(obs), act_l.append(action), logp_l.append(logp), val_l.append(value)
            if "episode" in info:
                done = info["_episode"]
                self.episode_returns += info["episode"]["r"][done].tolist()
                self.episode_lengths += info["episode"]["l"][done].tolist()
        self.env_steps += T * N
        values = torch.stack(val_l)
        last_value = policy.value(self._tensor(self.next_obs))
        valid_t = torch.as_tensor(valid, device=self.device)
        advantages, returns = compute_gae(
            self._tensor(rewards), values, last_value, torch.as_tensor(terminated, device=self.device),
            torch.as_tensor(truncated, device=self.device), valid_t, self.gamma, self.gae_lambda)
        keep = valid_t.reshape(-1)
        batch = {"obs": torch.stack(obs_l), "actions": torch.stack(act_l), "logprobs": torch.stack(logp_l),
                 "values": values, "advantages": advantages, "returns": returns}
        return {k: v.reshape(T * N, *v.shape[2:])[keep] for k, v in batch.items()}

    def pop_episodes(self) -> tuple[list[float], list[int]]:
        out = self.episode_returns, self.episode_lengths
        self.episode_returns, self.episode_lengths = [], []
        return out


@torch.no_grad()
def evaluate_policy(policy: torch.nn.Module, envs: gym.vector.VectorEnv, n_episodes: int,
                    deterministic: bool = True, obs_transform: Callable[[np.ndarray], np.ndarray] | None = None,
                    device: torch.device | str = "cpu", seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run ``n_episodes`` episodes (spread over the vector env's sub-envs) and return their
    undiscounted returns and lengths. Rewards are the env's own (no reward normalisation)."""
    N = envs.num_envs
    targets = np.array([(n_episodes + i) // N for i in range(N)])  # episodes per sub-env
    counts = np.zeros(N, dtype=int)
    ep_ret, ep_len = np.zeros(N), np.zeros(N, dtype=int)
    returns, lengths = [], []
    obs, _ = envs.reset(seed=seed)
    skip = np.zeros(N, dtype=bool)  # next-step autoreset: the step after a done is a reset
    while (counts < targets).any():
        x = obs_transform(obs) if obs_transform is not None else obs
        action = policy.act(torch.as_tensor(x, dtype=torch.float32, device=device), deterministic=deterministic)[0]
        obs, reward, term, trunc, _ = envs.step(action.cpu().numpy())
        live = ~skip & (counts < targets)
        ep_ret[live] += reward[live]
        ep_len[live] += 1
        done = (term | trunc) & live
        for i in np.flatnonzero(done):
            returns.append(ep_ret[i]), lengths.append(ep_len[i])
            counts[i] += 1
            ep_ret[i], ep_len[i] = 0.0, 0
        skip = term | trunc
    return np.array(returns), np.array(lengths)
