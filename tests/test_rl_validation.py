"""Bad agent arguments are refused at construction, naming the config key, the value and the range."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments.cli import main
from rl import A2C, PPO, REINFORCE

PPO_CP = str(Path(__file__).resolve().parents[1] / "experiments" / "rl" / "ppo-cartpole.yaml")


@pytest.mark.parametrize("cls, key, value, allowed", [
    (PPO, "batch_size", 0, "an integer >= 1, or null"),
    (PPO, "batch_size", -64, "an integer >= 1, or null"),
    (PPO, "n_steps", 0, "an integer >= 1"),
    (A2C, "num_envs", 0, "an integer >= 1"),
    (PPO, "total_timesteps", 0, "an integer >= 1"),
    (PPO, "n_epochs", 0, "an integer >= 1"),
    (REINFORCE, "eval_every_steps", 0, "an integer >= 1"),
    (PPO, "n_eval_episodes", 0, "an integer >= 1"),
    (PPO, "num_threads", 0, "an integer >= 1, or null"),
    (PPO, "seed", -1, "an integer >= 0, or null"),
    (PPO, "gamma", 1.5, "a number in [0.0, 1.0]"),
    (A2C, "gamma", -0.1, "a number in [0.0, 1.0]"),
    (PPO, "gae_lambda", 1.01, "a number in [0.0, 1.0]"),
    (PPO, "gae_lambda", float("nan"), "a number in [0.0, 1.0]"),
    (PPO, "ent_coef", -0.01, "a finite number >= 0.0"),
    (REINFORCE, "vf_coef", float("inf"), "a finite number >= 0.0"),
    (PPO, "max_grad_norm", 0.0, "a finite number > 0.0, or null"),
    (PPO, "clip_range", 0.0, "a finite number > 0.0"),
    (PPO, "clip_range", -0.2, "a finite number > 0.0"),
    (PPO, "clip_range_vf", 0.0, "a finite number > 0.0, or null"),
    (PPO, "target_kl", -0.01, "a finite number > 0.0, or null"),
    (PPO, "target_return", float("nan"), "a finite number, or null"),
    (PPO, "predict_episodes", 0, "an integer >= 1"),
    (PPO, "test_episodes", 0, "an integer >= 1, or null"),
    (PPO, "video_fps", 0, "a finite number > 0.0, or null"),
    (PPO, "n_steps", 2.5, "an integer >= 1"),
    (PPO, "n_epochs", True, "an integer >= 1"),
])
def test_bad_value_names_key_value_and_range(cls: type, key: str, value: object, allowed: str) -> None:
    with pytest.raises(ValueError) as err:
        cls(**{key: value})
    message = str(err.value)
    assert message.startswith(f"model.init_args.{key} = {value!r} is not allowed: {allowed}"), message


def test_good_edge_values_are_accepted() -> None:
    PPO(gamma=0.0, gae_lambda=1.0, batch_size=None, max_grad_norm=None, ent_coef=0.0, vf_coef=0.0, seed=0,
        clip_range_vf=None, target_kl=None, num_threads=None, n_steps=1, num_envs=1)


def test_bad_wrapper_names_the_key() -> None:
    with pytest.raises(ValueError, match=re.escape("model.init_args.wrappers[0].class_path = "
                                                   "'gymnasium.wrappers.NoSuchWrapper' is not an importable")):
        PPO(wrappers=[{"class_path": "gymnasium.wrappers.NoSuchWrapper"}])
    with pytest.raises(ValueError, match=re.escape("model.init_args.wrappers[1] has unknown keys ['args']")):
        PPO(wrappers=["gymnasium.wrappers.RecordEpisodeStatistics", {"class_path": "x.Y", "args": {}}])


def test_batch_size_zero_through_the_cli(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", PPO_CP, "--model.init_args.batch_size", "0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "model.init_args.batch_size = 0 is not allowed: an integer >= 1" in err
    assert "range() arg 3" not in err
    assert not (in_tmp / "runs" / "ppo-cartpole").exists()  # refused before any run folder is made


def test_run_options_stay_out_of_checkpoint_hyperparameters() -> None:
    # LightningCLI replaces command-line model arguments with a checkpoint's hyperparameters, so
    # what `fusegen test/predict --ckpt_path` must be able to change may not be one of them
    agent = PPO(test_episodes=3, predict_episodes=4, predict_deterministic=False, predict_video=False, video_fps=5)
    for key in ("test_episodes", "predict_episodes", "predict_deterministic", "predict_video", "video_fps"):
        assert key not in agent.hparams
    assert agent.run_options == {"test_episodes": 3, "predict_episodes": 4, "predict_deterministic": False,
                                 "predict_video": False, "video_fps": 5}
    assert "n_eval_episodes" in agent.hparams and "wrappers" in agent.hparams


def test_env_id_with_module_prefix_imports_it() -> None:
    agent = PPO(env_id="gymnasium.envs.classic_control:CartPole-v1")  # gymnasium's module:id syntax
    assert agent.observation_space.shape == (4,)
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_module'"):
        PPO(env_id="no_such_module:MyEnv-v0")
