"""EnvPool (C++ thread pool of envs) as a gymnasium ``VectorEnv``, so the same vector wrappers
(episode statistics, normalisation, action clipping) and the same collector run on it.

EnvPool steps all envs in parallel threads and autoresets on the *next* step, as gymnasium's
default; it is seeded when the pool is built, so ``reset(seed=s)`` with a new ``s`` rebuilds it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space

from rl.envs import is_atari, missing_extra

_KEEP_INFO = ("lives", "elapsed_step")


def envpool_task_id(env_id: str) -> str:
    """gymnasium id -> EnvPool task id (``ALE/Breakout-v5`` -> ``Breakout-v5``; MuJoCo ids are the same)."""
    return env_id.removeprefix("ALE/")


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, env_id: str, num_envs: int, seed: int | None = None,
                 env_kwargs: dict[str, Any] | None = None, num_threads: int = 0) -> None:
        try:
            import envpool
        except ImportError as err:
            raise missing_extra("envpool", "The envpool vector backend", err) from None
        task = envpool_task_id(env_id)
        if task not in envpool.list_all_envs():
            raise ValueError(f"vector_backend 'envpool' has no env {task!r} (from env_id {env_id!r}); EnvPool runs "
                             f"Atari (ALE/<Game>-v5) and MuJoCo (HalfCheetah-v5, Hopper-v5...) among others; "
                             f"use vector_backend 'sync' or 'async' for other ids")
        if is_atari(env_id):
            from rl.atari import envpool_atari_kwargs

            kwargs = envpool_atari_kwargs(env_kwargs)
        else:
            kwargs = dict(env_kwargs or {})
        self._make = lambda s: envpool.make_gymnasium(task, num_envs=num_envs, seed=s, num_threads=num_threads,
                                                      **kwargs)
        self._seed = 0 if seed is None else int(seed)
        self.pool = self._make(self._seed)
        self.num_envs = num_envs
        self.single_observation_space = self.pool.observation_space
        self.single_action_space = self.pool.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        if seed is not None:
            self.action_space.seed(seed)

    @staticmethod
    def _info(info: dict[str, Any]) -> dict[str, Any]:
        return {k: info[k] for k in _KEEP_INFO if k in info}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None and int(seed) != self._seed:
            self.pool.close()
            self._seed = int(seed)
            self.pool = self._make(self._seed)
        obs, info = self.pool.reset()
        return obs, self._info(info)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.pool.step(np.asarray(actions))
        return obs, reward.astype(np.float64), terminated.astype(bool), truncated.astype(bool), self._info(info)

    def close_extras(self, **kwargs: Any) -> None:
        self.pool.close()
