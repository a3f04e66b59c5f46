"""Videos a user can watch: a MuJoCo agent stays in the picture however far it runs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")

from rl.envs import make_env  # noqa: E402
from rl.runner import follow_the_agent  # noqa: E402


def body_pixels(frame: np.ndarray) -> int:
    """Pixels of the robot's orange/pink capsules; the floor is black and pale-green checkers."""
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return int(((r > g + 40) & (r > b + 40)).sum())


def frame_after_running(env_id: str, follow: bool) -> np.ndarray:
    env = make_env(env_id, render_mode="rgb_array")
    try:
        if follow:
            follow_the_agent(env)
        env.reset(seed=0)
        env.render()  # the first frame of a video, where the free camera takes its place
        qpos = env.unwrapped.data.qpos.copy()
        qpos[0] += 30.0  # thirty metres down the track, as a trained HalfCheetah runs in ~3 s
        env.unwrapped.set_state(qpos, env.unwrapped.data.qvel.copy())
        return env.render()
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5"])
def test_mujoco_video_frames_follow_the_agent(env_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")
    tracked = frame_after_running(env_id, follow=True)
    assert body_pixels(tracked) > 500, "the track camera lost the robot"
    assert body_pixels(frame_after_running(env_id, follow=False)) < 50, "the default camera should have lost it"
