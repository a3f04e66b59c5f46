"""The agent as a user meets it after training: ``fusegen validate | test | predict`` on a
checkpoint, the episode CSV and video, ``agent.predict`` in a user's own loop, gymnasium wrappers
from the config, and (slow) metrics summed over two DDP ranks."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from experiments.cli import FusegenCLI, main
from rl import PPO
from rl.video import write_video

REPO = Path(__file__).resolve().parents[1]
PPO_CP = str(REPO / "experiments" / "rl" / "ppo-cartpole.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = ["--trainer.max_epochs", "1", "--model.init_args.eval_every_steps", "512", "--model.init_args.n_eval_episodes",
        "2"]


def test_validate_test_predict_through_the_cli(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    fitted = FusegenCLI(args=["fit", "--config", PPO_CP, *QUIET, *TINY]).model
    ckpt = "runs/ppo-cartpole/checkpoints/last.ckpt"

    validate = FusegenCLI(args=["validate", "--config", PPO_CP, *QUIET, "--ckpt_path", ckpt])
    metrics = validate.trainer.callback_metrics
    assert metrics["val/env_steps"] == fitted.env_steps == 512  # the checkpoint's counter
    assert metrics["val/return"] > 0 and metrics["val/episode_length"] > 0

    test = FusegenCLI(args=["test", "--config", PPO_CP, *QUIET, "--ckpt_path", ckpt,
                            "--model.init_args.test_episodes", "3"])
    metrics = test.trainer.callback_metrics
    assert {"test/return", "test/return_std", "test/episode_length"} <= set(metrics)
    # CartPole pays 1 per step: a return equals its episode's length
    assert float(metrics["test/return"]) == pytest.approx(float(metrics["test/episode_length"]))

    capsys.readouterr()
    main(["predict", "--config", PPO_CP, *QUIET, "--ckpt_path", ckpt, "--model.init_args.predict_episodes", "3"])
    out = capsys.readouterr().out
    predictions = in_tmp / "runs" / "ppo-cartpole" / "predictions"
    assert f"wrote {Path('runs/ppo-cartpole/predictions/episodes.csv')}" in out and "episode_0.mp4" in out

    with open(predictions / "episodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["episode"]) for r in rows] == [0, 1, 2]
    assert all(float(r["return"]) == int(r["length"]) > 0 for r in rows)

    # the first episode's video opens and has one frame per step plus the start
    reader = imageio.get_reader(predictions / "episode_0.mp4")
    frames = [frame for frame in reader]
    assert len(frames) == int(rows[0]["length"]) + 1
    assert frames[0].shape == (400, 600, 3) and frames[0].std() > 0  # a real picture, not a blank
    assert reader.get_meta_data()["fps"] == 50  # CartPole's render_fps

    # deterministic: the same checkpoint gives the same episodes again
    main(["predict", "--config", PPO_CP, *QUIET, "--ckpt_path", ckpt, "--model.init_args.predict_episodes", "3",
          "--model.init_args.predict_video", "false"])
    with open(predictions / "episodes.csv", newline="") as f:
        assert list(csv.DictReader(f)) == rows


def test_agent_predict_single_batch_and_normalisation() -> None:
    torch.manual_seed(0)
    agent = PPO(env_id="CartPole-v1")
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    actions = agent.predict(obs)
    greedy = agent.policy.act(torch.as_tensor(obs), deterministic=True)[0].numpy()
    assert isinstance(actions, np.ndarray) and actions.shape == (5,)
    np.testing.assert_array_equal(actions, greedy)
    assert agent.predict(obs[2]).shape == () and agent.predict(obs[2]) == greedy[2]  # one observation
    with pytest.raises(ValueError, match=r"observation shape \(3,\) does not match .* expected \(4,\)"):
        agent.predict(np.zeros(3))

    # frozen training statistics (as loaded from a checkpoint) are applied before the policy
    mean, var = np.array([1.0, -1.0, 0.5, 2.0]), np.array([4.0, 1.0, 0.25, 9.0])
    agent.runner.load_normalization_state({"obs_rms": {"mean": mean, "var": var, "count": 100.0}})
    normalised = ((obs - mean) / np.sqrt(var + 1e-8)).astype(np.float32)
    np.testing.assert_array_equal(agent.predict(obs),
                                  agent.policy.act(torch.as_tensor(normalised), deterministic=True)[0].numpy())


def test_agent_predict_clips_box_actions() -> None:
    agent = PPO(env_id="Pendulum-v1")
    with torch.no_grad():
        agent.policy.policy_head.bias.fill_(10.0)  # mean action far outside [-2, 2]
    action = agent.predict(np.zeros(3, dtype=np.float32))
    assert action.shape == (1,) and action[0] == pytest.approx(2.0)


def test_frozenlake_with_a_wrapper_from_the_config(in_tmp: Path) -> None:
    lake = ["--model.init_args.env_id", "FrozenLake-v1", "--model.init_args.env_kwargs", "{is_slippery: false}",
            "--model.init_args.target_return", "null"]
    with pytest.raises(ValueError, match=r"Discrete\(16\) is not supported.*model.init_args.wrappers"):
        PPO(env_id="FrozenLake-v1")  # its observations are state indices
    cli = FusegenCLI(args=["fit", "--config", PPO_CP, *QUIET, *lake, "--trainer.fast_dev_run", "1",
                           "--model.init_args.wrappers", "[{class_path: gymnasium.wrappers.FlattenObservation}]"])
    agent = cli.model
    assert agent.observation_space == gym.spaces.Box(0, 1, (16,), np.int64)  # one-hot states
    assert agent.num_updates == 1
    returns, lengths = agent.evaluate(2)
    assert returns.shape == (2,) and set(returns.tolist()) <= {0.0, 1.0}
    action = agent.predict(np.eye(16)[0])
    assert action.shape == () and 0 <= int(action) < 4
    ret, length, frames = agent.run_episode(seed=0, render=True)
    assert len(frames) == length + 1 and frames[0].ndim == 3


@pytest.mark.parametrize("size", [(64, 48), (33, 51)])  # odd sizes are padded to even for H.264
def test_write_video_mp4(tmp_path: Path, size: tuple[int, int]) -> None:
    frames = [np.full((*size, 3), 20 * i, np.uint8) for i in range(6)]
    path = write_video(frames, tmp_path / "clip.mp4", fps=12)
    assert path == tmp_path / "clip.mp4" and not list(tmp_path.glob(".*"))  # no temp file left
    reader = imageio.get_reader(path)
    read = [frame for frame in reader]
    assert len(read) == 6 and read[0].shape[:2] == (size[0] + size[0] % 2, size[1] + size[1] % 2)
    assert reader.get_meta_data()["fps"] == 12
    assert read[5].mean() > read[1].mean() + 50  # the frames are in order


def test_write_video_gif_without_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if it were not installed
    frames = [np.full((10, 12, 3), 40 * i, np.uint8) for i in range(4)]
    with pytest.warns(UserWarning, match="writing a GIF instead"):
        path = write_video(frames, tmp_path / "clip.mp4", fps=10)
    assert path == tmp_path / "clip.gif" and not (tmp_path / "clip.mp4").exists()
    read = imageio.mimread(path)
    assert len(read) == 4 and read[0].shape[:2] == (10, 12)
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "empty.mp4")


@pytest.mark.slow  # two processes start Lightning twice: ~30 s of CPU, 2 minutes on a loaded 2-core box
def test_ddp_two_ranks_sum_env_steps_and_gather_predictions(tmp_path: Path) -> None:
    ddp = ["--trainer.default_root_dir", str(tmp_path / "runs"), "--experiment", "ddp", "--trainer.strategy", "ddp",
           "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def fusegen(subcommand: str, *args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "experiments.cli", subcommand, "--config", PPO_CP, *QUIET, *ddp,
                               *args],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    fusegen("fit", *TINY, "--trainer.log_every_n_steps", "1")
    with open(tmp_path / "runs" / "ddp" / "csv" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [float(r["time/env_steps"]) for r in rows if r.get("time/env_steps")]
    val = [float(r["val/env_steps"]) for r in rows if r.get("val/env_steps")]
    # each rank: 8 envs x 32 steps per update, 2 updates; logged: both ranks' sum
    assert train == [512.0, 1024.0] and val == [1024.0]

    # predict: 5 episodes split 3 + 2 over the ranks, gathered into one CSV by rank 0
    fusegen("predict", "--ckpt_path", str(tmp_path / "runs" / "ddp" / "checkpoints" / "last.ckpt"),
            "--model.init_args.predict_episodes", "5", "--model.init_args.predict_video", "false")
    with open(tmp_path / "runs" / "ddp" / "predictions" / "episodes.csv", newline="") as f:
        assert [int(r["episode"]) for r in csv.DictReader(f)] == [0, 1, 2, 3, 4]
