"""The env side of an agent: its training vector env and rollout collector, evaluation episodes,
single episodes (with frames for a video) and ``predict(obs)`` for a user's own loop.

The learner (``rl.module``) never touches an env: it asks the runner for a rollout, for
evaluation returns, or for an action. The runner owns the observation/reward normalisation
statistics (running while training, frozen for evaluation and ``predict``), which the learner
saves in and loads from checkpoints.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
import torch

from rl.envs import load_normalization_state, make_env, make_vec_env, normalization_state, obs_normalizer
from rl.rollout import RolloutCollector, evaluate_policy

OBS_NORM_EPS = 1e-8  # gymnasium NormalizeObservation's default epsilon
MAX_EVAL_ENVS = 16


CAMERA_KEYS = {"camera_id", "camera_name", "default_camera_config"}


def follow_the_agent(env: gym.Env) -> None:
    """Render a MuJoCo env through its model's ``track`` camera where it has one.

    gymnasium's v5 locomotion envs render from a free camera that stays where the episode began,
    so a running HalfCheetah leaves the picture within a second; their models ship a ``track``
    camera that follows the body's centre of mass. A user's own camera choice (``env_kwargs``)
    is left alone by the caller.
    """
    renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    if renderer is None or renderer.camera_id not in (None, -1):
        return
    import mujoco

    camera = mujoco.mj_name2id(env.unwrapped.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    if camera != -1:
        renderer.camera_id = camera


class EnvRunner:
    """Envs for one agent on one rank, built lazily from the agent's hyperparameters ``h``
    (``env_id``, ``env_kwargs``, ``wrappers``, ``num_envs``, ``n_steps``, ``gamma``,
    ``gae_lambda``, ``normalize_obs``, ``normalize_reward``, ``vector_backend``)."""

    def __init__(self, h: Mapping[str, Any], observation_space: gym.Space, action_space: gym.Space) -> None:
        self.h = h
        self.observation_space, self.action_space = observation_space, action_space
        self._collector: RolloutCollector | None = None
        self._eval_envs: gym.vector.VectorEnv | None = None
        self._pending_norm: dict[str, Any] | None = None  # statistics loaded before the envs exist
        self.render_fps = 30.0

    # ---- training envs -----------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self._collector is not None

    def collector(self, seed: int, device: torch.device, env_steps: int) -> RolloutCollector:
        """The training collector, built on first use with ``seed`` (later calls return it)."""
        if self._collector is None:
            h = self.h
            envs = make_vec_env(h["env_id"], h["num_envs"], seed=seed, normalize_obs=h["normalize_obs"],
                                normalize_reward=h["normalize_reward"], gamma=h["gamma"], env_kwargs=h["env_kwargs"],
                                backend=self.backend, wrappers=h["wrappers"], training=True,
                                norm_clip=h.get("norm_clip"))
            if self._pending_norm:
                load_normalization_state(envs, self._pending_norm)
                self._pending_norm = None
            self._collector = RolloutCollector(envs, h["n_steps"], h["gamma"], h["gae_lambda"], device, seed)
            self._collector.env_steps = env_steps
        return self._collector

    @property
    def backend(self) -> str:
        return "async" if self.h.get("async_envs") else self.h.get("vector_backend", "sync")

    def close(self) -> None:
        """Stop worker processes/threads (the statistics stay readable)."""
        if self._collector is not None and self.backend != "sync":
            self._collector.envs.close()

    # ---- normalisation statistics ----------------------------------------------------------------
    def normalization_state(self) -> dict[str, dict[str, Any]]:
        if self._collector is not None:
            return normalization_state(self._collector.envs)
        return dict(self._pending_norm or {})

    def load_normalization_state(self, state: dict[str, dict[str, Any]], env_steps: int | None = None) -> None:
        if self._collector is not None:
            load_normalization_state(self._collector.envs, state)
            if env_steps is not None:
                self._collector.env_steps = env_steps
        else:
            self._pending_norm = state

    def obs_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The training observation statistics (mean, var), if the agent normalises observations."""
        if self._collector is not None:
            norm = obs_normalizer(self._collector.envs)
            return None if norm is None else (norm.obs_rms.mean, norm.obs_rms.var)
        if self._pending_norm and "obs_rms" in self._pending_norm:  # loaded from a checkpoint
            state = self._pending_norm["obs_rms"]
            return np.asarray(state["mean"]), np.asarray(state["var"])
        return None  # untrained: NormalizeObservation starts at mean 0, var 1, i.e. (almost) the identity

    def normalize_observation(self, obs: np.ndarray) -> np.ndarray:
        """Apply the frozen training observation normalisation (evaluation never updates it)."""
        stats = self.obs_stats()
        if stats is None:
            return obs
        mean, var = stats
        obs = (obs - mean) / np.sqrt(var + OBS_NORM_EPS)
        clip = self.h.get("norm_clip")
        return obs if clip is None else np.clip(obs, -clip, clip)

    # ---- evaluation, predict, single episodes ----------------------------------------------------
    def evaluate(self, policy: torch.nn.Module, n_episodes: int, seed: int, device: torch.device,
                 deterministic: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of ``n_episodes`` episodes on a separate env (no training-only
        wrappers such as terminal-on-life-loss; raw rewards). ``seed`` seeds the env when it is
        (re)built; later evaluations continue its RNG, so each sees fresh start states."""
        h = self.h
        if self._eval_envs is None or self._eval_envs.num_envs != min(n_episodes, MAX_EVAL_ENVS):
            self._eval_envs = make_vec_env(h["env_id"], min(n_episodes, MAX_EVAL_ENVS), env_kwargs=h["env_kwargs"],
                                           wrappers=h["wrappers"], record_stats=False, backend=self.eval_backend)
            reset_seed: int | None = seed
        else:
            reset_seed = None
        policy.eval()
        return evaluate_policy(policy, self._eval_envs, n_episodes, deterministic, self.normalize_observation,
                               device, reset_seed)

    @property
    def eval_backend(self) -> str:
        return "envpool" if self.backend == "envpool" else "sync"

    @torch.no_grad()
    def predict(self, policy: torch.nn.Module, obs: np.ndarray, device: torch.device,
                deterministic: bool = True) -> np.ndarray:
        """The policy's action for ``obs`` (one observation or a batch) as numpy: the frozen
        observation normalisation is applied and Box actions are clipped to the bounds."""
        obs = np.asarray(obs)
        single = obs.shape == self.observation_space.shape
        batch = obs[None] if single else obs
        if batch.shape[1:] != self.observation_space.shape:
            shape = self.observation_space.shape
            raise ValueError(f"observation shape {obs.shape} does not match the env's observation space: expected "
                             f"{shape} (one observation) or [B, *{shape}] (a batch)")
        was_training = policy.training
        policy.eval()
        x = torch.as_tensor(self.normalize_observation(batch), dtype=torch.float32, device=device)
        action = policy.act(x, deterministic=deterministic)[0].cpu().numpy()
        policy.train(was_training)
        if isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self.action_space.low, self.action_space.high)
        return action[0] if single else action

    def run_episode(self, act: Callable[[np.ndarray], np.ndarray], seed: int | None = None, render: bool = False,
                    fps: float | None = None) -> tuple[float, int, list[np.ndarray]]:
        """One episode on a fresh single gymnasium env: ``(return, length, frames)`` (frames only
        if ``render``); ``act(obs) -> action``. Sets ``render_fps`` (``fps``, else the env's)."""
        h = self.h
        if render:
            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame's greeting is noise in a CLI
            if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
                os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # headless: rgb_array needs no window
        env = make_env(h["env_id"], h["env_kwargs"], h["wrappers"], render_mode="rgb_array" if render else None)
        if render and not CAMERA_KEYS & set(h["env_kwargs"] or {}):
            follow_the_agent(env)
        self.render_fps = float(fps or env.metadata.get("render_fps") or 30)
        if isinstance(env.action_space, gym.spaces.Box):
            env = gym.wrappers.ClipAction(env)
        frames: list[np.ndarray] = []
        try:
            obs, _ = env.reset(seed=seed)
            if render:
                frames.append(env.render())
            total, length, done = 0.0, 0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                total, length, done = total + float(reward), length + 1, terminated or truncated
                if render:
                    frames.append(env.render())
        finally:
            env.close()
        return total, length, frames
