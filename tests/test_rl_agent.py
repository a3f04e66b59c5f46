"""The agents through the ``fusegen`` CLI: learning, resume, determinism, configs and errors."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
import torch

from experiments.cli import FusegenCLI, main
from rl.envs import normalization_state

REPO = Path(__file__).resolve().parents[1]
PPO_CP = str(REPO / "experiments" / "rl" / "ppo-cartpole.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def fit(config: str, *args: str) -> FusegenCLI:
    return FusegenCLI(args=["fit", "--config", config, *QUIET, *args])


def test_ppo_cartpole_learns(in_tmp: Path) -> None:
    cli = fit(PPO_CP, "--model.init_args.total_timesteps", "16384", "--model.init_args.target_return", "150",
              "--model.init_args.eval_every_steps", "4096")
    agent = cli.model
    evals = [ret for _, ret, _ in agent.history["eval"]]
    assert evals[-1] >= 150, f"PPO did not learn CartPole: eval returns {evals}"  # random policy: ~20
    untrained, _ = type(agent)(env_id="CartPole-v1").evaluate(10)
    assert untrained.mean() < 60, untrained  # the greedy untrained policy falls over quickly
    expected = in_tmp / "runs" / "ppo-cartpole" / "pictures" / "learning_curve.png"
    assert Path(agent.learning_curve_path).resolve() == expected
    assert Path(agent.learning_curve_path).is_file()
    metrics = cli.trainer.logged_metrics
    for key in ("train/policy_loss", "train/value_loss", "train/entropy", "train/approx_kl",
                "train/clip_fraction", "train/explained_variance", "time/fps", "val/return"):
        assert key in metrics, f"{key} not logged: {sorted(metrics)}"


def _short(tag: str, *args: str) -> list[str]:
    # 2 updates per epoch of 8 envs x 32 steps
    return ["--model.init_args.eval_every_steps", "512", "--model.init_args.n_eval_episodes", "2",
            "--experiment", tag, *args]


def test_same_seed_same_first_two_updates(in_tmp: Path) -> None:
    runs = [fit(PPO_CP, *_short(f"det{i}", "--trainer.max_epochs", "1", "--seed_everything", str(seed))).model
            for i, seed in enumerate([3, 3, 4])]
    a, b, c = (r.policy.state_dict() for r in runs)
    assert runs[0].num_updates == 2 and runs[0].env_steps == 512
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs between identical seeds")
    assert any(not torch.equal(a[k], c[k]) for k in a), "a different seed gave identical weights"


def test_resume_continues(in_tmp: Path) -> None:
    norm = ["--model.init_args.normalize_obs", "true", "--model.init_args.normalize_reward", "true"]
    first = fit(PPO_CP, *_short("resume", "--trainer.max_epochs", "2", *norm))
    ckpt = in_tmp / "runs" / "resume" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["rl"]["env_steps"] == 1024 == first.model.env_steps
    saved = state["rl"]["normalization"]
    assert set(saved) == {"obs_rms", "return_rms"} and saved["obs_rms"]["count"] > 1000
    saved_opt_step = float(state["optimizer_states"][0]["state"][0]["step"])
    assert saved_opt_step == 4 * 20  # 4 updates x 20 epochs x 1 minibatch

    resumed = fit(PPO_CP, *_short("resume", "--trainer.max_epochs", "3", "--ckpt_path", str(ckpt), *norm))
    agent = resumed.model
    # continued, not restarted: the counters go on from the checkpoint...
    assert agent.env_steps == 1536 and agent.num_updates == 6
    # ... so do Adam's moments (a fresh optimiser would be at step 40)...
    opt_state = resumed.trainer.optimizers[0].state[next(iter(agent.policy.parameters()))]
    assert float(opt_state["step"]) == saved_opt_step + 40
    # ... and the normalisation statistics go on from the saved ones (+ 512 steps and the 8
    # reset observations of the new start), not from scratch
    stats = normalization_state(agent.collector.envs)
    assert stats["obs_rms"]["count"] == pytest.approx(saved["obs_rms"]["count"] + 512 + 8, abs=0.01)
    assert stats["return_rms"]["count"] > saved["return_rms"]["count"] + 400
    assert len(agent.history["eval"]) == 3


# Parsing and a fast_dev_run of every shipped config are in tests/test_configs.py; these two add
# what only an agent has: one fast_dev_run step is one optimiser step, not one update.
@pytest.mark.parametrize("config", ["ppo-cartpole", "reinforce-cartpole"])
def test_fast_dev_run_counts_updates_and_env_steps(config: str, in_tmp: Path) -> None:
    cli = fit(str(Path(PPO_CP).parent / f"{config}.yaml"), "--trainer.fast_dev_run", "2")
    agent = cli.model
    # fast_dev_run also sets max_steps=2, and a step is an optimiser step: PPO stops after one update
    assert agent.num_updates == (1 if agent.hparams.n_epochs > 1 else 2)
    assert agent.env_steps == agent.num_updates * agent.hparams.num_envs * agent.hparams.n_steps
    returns, lengths = agent.evaluate(3)
    assert returns.shape == (3,) and (lengths > 0).all()
    assert "train/policy_loss" in cli.trainer.logged_metrics  # fast_dev_run logs every update


def test_logs_only_every_log_every_n_steps_updates(in_tmp: Path) -> None:
    import csv

    cli = fit(PPO_CP, *_short("gate", "--trainer.max_epochs", "3", "--trainer.log_every_n_steps", "2"))
    assert cli.model.num_updates == 6
    with open(in_tmp / "runs" / "gate" / "csv" / "version_0" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["train/policy_loss"]]
    # updates 2, 4 and 6 (Lightning's steps 1, 3, 5), each with the env steps of all ranks so far
    assert [int(r["step"]) for r in rows] == [1, 3, 5]
    assert [float(r["time/env_steps"]) for r in rows] == [512.0, 1024.0, 1536.0]


def test_bad_env_id_names_it(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", PPO_CP, *QUIET, "--model.init_args.env_id", "CartPol-v1"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "'CartPol-v1' is not a registered gymnasium environment" in err and "CartPole-v1" in err


def test_unsupported_action_space_names_it() -> None:
    from rl import PPO

    class MultiDiscreteEnv(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,))
        action_space = gym.spaces.MultiDiscrete([2, 3])

    gym.register("FusegenTest/MultiDiscrete-v0", entry_point=MultiDiscreteEnv)
    with pytest.raises(ValueError, match=r"MultiDiscrete\(\[2 3\]\).*FusegenTest/MultiDiscrete-v0.*supported "
                                         r"action spaces: Discrete, or a 1-D Box"):
        PPO(env_id="FusegenTest/MultiDiscrete-v0")


@pytest.mark.slow
@pytest.mark.parametrize("config, target, budget", [
    ("ppo-cartpole", 475, 50_000),     # issue targets (rl/README.md has the measured figures)
    ("a2c-cartpole", 475, 200_000),
    ("ppo-pendulum", -250, 200_000),
    ("reinforce-cartpole", 475, 500_000),
])
def test_reaches_target(config: str, target: float, budget: int, in_tmp: Path) -> None:
    cli = fit(str(REPO / "experiments" / "rl" / f"{config}.yaml"), "--model.init_args.target_return", str(target),
              "--trainer.max_epochs", "1000")
    evals = cli.model.history["eval"]
    reached = [steps for steps, ret, _ in evals if ret >= target]
    assert reached and reached[0] <= budget, f"{config}: eval returns {[(s, round(r)) for s, r, _ in evals]}"
