"""Returns/advantages across episode ends with gymnasium 1.x next-step autoreset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl.envs import make_vec_env
from rl.networks import ActorCritic
from rl.rollout import RolloutCollector, compute_gae


def test_gae_hand_made_boundary() -> None:
    # one env, 5 steps: an episode terminates at t=1 (t=2 is the autoreset step), the next runs on
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [2.0], [0.0], [3.0], [4.0]])
    values = torch.tensor([[10.0], [20.0], [99.0], [30.0], [40.0]])  # values[2] = V(final obs): must be unused
    last = torch.tensor([50.0])
    term = torch.tensor([[False], [True], [False], [False], [False]])
    trunc = torch.zeros_like(term)
    valid = torch.tensor([[True], [True], [False], [True], [True]])
    adv, ret = compute_gae(rewards, values, last, term, trunc, valid, gamma, lam)
    d4 = 4 + gamma * 50 - 40
    d3 = 3 + gamma * 40 - 30
    d1 = 2 - 20  # terminal: no bootstrap
    d0 = 1 + gamma * 20 - 10
    expected = torch.tensor([[d0 + gamma * lam * d1], [d1], [0.0], [d3 + gamma * lam * d4], [d4]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret[valid], (expected + values)[valid])
    assert ret[2, 0] == 0 and adv[2, 0] == 0

    # the same episode end as a truncation bootstraps from the final observation's value
    adv_t, _ = compute_gae(rewards, values, last, trunc, term, valid, gamma, lam)
    d1_t = 2 + gamma * 99 - 20
    torch.testing.assert_close(adv_t[1, 0], torch.tensor(d1_t))
    torch.testing.assert_close(adv_t[0, 0], torch.tensor(d0 + gamma * lam * d1_t))


class _Counter(gym.Env):
    """obs = steps taken; reward 1 per step; terminates after 3 steps unless ``endless``."""

    def __init__(self, endless: bool = False) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.endless, self.t = endless, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, (not self.endless) and self.t >= 3, False, {}


class _ConstValue(torch.nn.Module):
    """A policy whose value is 0.5 everywhere (actions are irrelevant to the counter env)."""

    def act(self, obs, deterministic=False):
        n = obs.shape[0]
        return torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.full((n,), 0.5)

    def value(self, obs):
        return torch.full((obs.shape[0],), 0.5)


gym.register("FusegenTest/Counter-v0", entry_point=_Counter)
gym.register("FusegenTest/Endless-v0", entry_point=_Counter, kwargs={"endless": True}, max_episode_steps=2)


@pytest.mark.parametrize("env_id, expected", [
    # terminated after 3 steps: Monte-Carlo returns 3, 2, 1; the reset step in between is dropped
    ("FusegenTest/Counter-v0", [3.0, 2.0, 1.0, 3.0, 2.0, 1.0]),
    # truncated after 2 steps (TimeLimit): bootstrap from V(final obs) = 0.5
    ("FusegenTest/Endless-v0", [2.5, 1.5, 2.5, 1.5, 2.5, 1.5]),
])
def test_collector_handles_next_step_autoreset(env_id: str, expected: list[float]) -> None:
    envs = make_vec_env(env_id, 1, seed=0)
    n_steps = 8 if "Counter" in env_id else 9
    collector = RolloutCollector(envs, n_steps=n_steps, gamma=1.0, gae_lambda=1.0, seed=0)
    batch = collector.collect(_ConstValue())
    obs = batch["obs"][:, 0].tolist()
    # the autoreset steps (obs = final obs, action ignored) are not in the batch
    assert obs[:6] == ([0.0, 1.0, 2.0] * 2 if "Counter" in env_id else [0.0, 1.0] * 3)
    assert batch["returns"][:6].tolist() == expected
    assert collector.episode_lengths[:2] == ([3, 3] if "Counter" in env_id else [2, 2])


def test_actor_critic_spaces_and_image_encoder() -> None:
    from fusion import SmallCNNImageEncoder

    box = gym.spaces.Box(-1, 1, (3,))
    net = ActorCritic(gym.spaces.Box(-1, 1, (4,)), box, log_std_init=-0.5)
    action, logp, value = net.act(torch.zeros(5, 4))
    assert action.shape == (5, 3) and logp.shape == (5,) and value.shape == (5,)
    torch.testing.assert_close(net.log_std.detach(), torch.full((3,), -0.5))
    img = gym.spaces.Box(0, 255, (28, 28, 1), np.uint8)
    net = ActorCritic(img, gym.spaces.Discrete(4), encoder=SmallCNNImageEncoder(in_chans=1, out_dim=32))
    action, logp, value = net.act(torch.randint(0, 255, (2, 28, 28, 1)).float())
    assert action.shape == (2,) and int(action.max()) < 4 and value.shape == (2,)


def test_async_envs_collect_like_sync() -> None:
    policy = _ConstValue()
    batches = []
    for asynchronous in (False, True):
        envs = make_vec_env("CartPole-v1", 2, seed=0, asynchronous=asynchronous)
        batches.append(RolloutCollector(envs, n_steps=30, gamma=0.99, gae_lambda=0.95, seed=0).collect(policy))
        envs.close()
    for key in ("obs", "returns"):
        torch.testing.assert_close(batches[0][key], batches[1][key])
