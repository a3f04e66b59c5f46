"""Atari from pixels, preprocessed as the field does (Mnih et al. 2015; Machado et al. 2018;
CleanRL's ``ppo_atari``), identically on the gymnasium and EnvPool backends:

* every env: no-op reset (up to 30), frame skip 4 with max-pooling, 84x84 greyscale, a stack of
  the last 4 frames -> ``uint8 [4, 84, 84]`` observations (gymnasium ``AtariPreprocessing`` +
  ``FrameStackObservation``; EnvPool's built-in equivalents);
* training envs only: a lost life ends the episode for the value targets (without resetting the
  game) and rewards are clipped to their sign. Episode statistics sit inside both, so the logged
  training returns are whole-game scores, as evaluation's are.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from typing import Any, Iterator

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import vector as vw

FRAME_SKIP, NOOP_MAX, SCREEN_SIZE, STACK = 4, 30, 84, 4


def have_opencv() -> bool:
    return importlib.util.find_spec("cv2") is not None


@contextlib.contextmanager
def _without_opencv_check() -> Iterator[None]:
    """gymnasium's wrapper imports OpenCV in ``__init__`` only to fail early; ``AtariPreprocessing``
    below never calls it, so an empty module stands in for the duration of that call."""
    saved = sys.modules.get("cv2")
    sys.modules["cv2"] = types.ModuleType("cv2")
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["cv2"]
        else:
            sys.modules["cv2"] = saved


class AtariPreprocessing(gym.wrappers.AtariPreprocessing):
    """gymnasium's ``AtariPreprocessing``; without OpenCV installed, frames are resized by
    Pillow's area filter (``BOX``, the same area averaging as OpenCV's ``INTER_AREA``)."""

    def __init__(self, env: gym.Env, **kwargs: Any) -> None:
        self._opencv = have_opencv()
        with contextlib.nullcontext() if self._opencv else _without_opencv_check():
            super().__init__(env, **kwargs)

    def _get_obs(self) -> np.ndarray:
        if self._opencv:
            return super()._get_obs()
        from PIL import Image

        if self.frame_skip > 1:  # max-pool the last two frames (flicker), as gymnasium does
            np.maximum(self.obs_buffer[0], self.obs_buffer[1], out=self.obs_buffer[0])
        obs = np.asarray(Image.fromarray(self.obs_buffer[0]).resize(self.screen_size, Image.Resampling.BOX))
        obs = obs.astype(np.float32) / 255.0 if self.scale_obs else obs.astype(np.uint8)
        return obs[..., None] if self.grayscale_obs and self.grayscale_newaxis else obs


def make_atari_env(env_id: str, max_episode_steps: int | None = None, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id, frameskip=1, **kwargs)`` -> ``AtariPreprocessing`` ->
    ``FrameStackObservation(4)``; ``max_episode_steps`` counts agent steps (4 frames each), as
    EnvPool's does (v5's own limit is 108,000 frames)."""
    env = gym.make(env_id, frameskip=1, **kwargs)  # AtariPreprocessing skips (and max-pools) the frames
    env = AtariPreprocessing(env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP, screen_size=SCREEN_SIZE,
                             terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    return gym.wrappers.FrameStackObservation(env, STACK)


def envpool_atari_kwargs(env_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """EnvPool's options for the same pipeline (life loss and reward clipping are applied as
    vector wrappers, as on gymnasium, so they are off here)."""
    kwargs = dict(env_kwargs or {})
    out = {"frame_skip": FRAME_SKIP, "noop_max": NOOP_MAX, "img_height": SCREEN_SIZE, "img_width": SCREEN_SIZE,
           "stack_num": STACK, "gray_scale": True, "episodic_life": False, "reward_clip": False,
           "use_fire_reset": False, "repeat_action_probability": kwargs.pop("repeat_action_probability", 0.25)}
    for key in ("full_action_space", "max_episode_steps"):
        if key in kwargs:
            out[key] = kwargs.pop(key)
    if kwargs:
        raise ValueError(f"env_kwargs {sorted(kwargs)} have no EnvPool equivalent; supported on envpool for Atari: "
                         f"repeat_action_probability, full_action_space, max_episode_steps")
    return out


class TerminalOnLifeLoss(gym.vector.VectorWrapper):
    """A lost life ends the episode for learning (``terminated``), but the game goes on: the
    sub-env is not reset, and ``info["autoreset"]`` tells the collector which sub-envs really
    reset on their next step (gymnasium's next-step autoreset)."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.lives = np.asarray(info["lives"]).copy()
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        lives = np.asarray(info["lives"])
        done = np.logical_or(terminated, truncated)
        life_lost = (lives < self.lives) & ~done
        self.lives = lives.copy()
        info["autoreset"] = done
        return obs, reward, terminated | life_lost, truncated, info


def atari_training_wrappers(envs: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """Life-loss terminals and sign-clipped rewards, outside the episode statistics."""
    return vw.TransformReward(TerminalOnLifeLoss(envs), np.sign)
