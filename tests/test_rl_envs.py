"""Vector env backends (gymnasium sync/async, EnvPool), the Atari pipeline, the Nature CNN as an
encoder of agents and fusion models, env ids that need an extra, and MuJoCo/Atari through the CLI."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

import rl.runner
from experiments.cli import FusegenCLI
from fusion import ConcatFusion, FusionClassifier, ImageEncoder, NatureCNNEncoder
from rl import PPO, ActorCritic
from rl.envs import check_env_id, make_vec_env, normalization_state
from rl.rollout import RolloutCollector

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class _PolePolicy:
    """A fixed deterministic policy: push toward the side the pole leans to (obs-dependent)."""

    def act(self, obs, deterministic=False):
        action = (obs[:, 2] > 0).long() if obs.shape[-1] == 4 else torch.zeros(obs.shape[0], 1)
        return action, torch.zeros(obs.shape[0]), torch.zeros(obs.shape[0])

    def value(self, obs):
        return torch.zeros(obs.shape[0])


def _episodes(backend: str, env_id: str, n_steps: int, num_envs: int = 3) -> tuple[list[float], list[int], dict]:
    envs = make_vec_env(env_id, num_envs, seed=7, backend=backend)
    collector = RolloutCollector(envs, n_steps=n_steps, gamma=0.99, gae_lambda=0.95, seed=7)
    batch = collector.collect(_PolePolicy())
    envs.close()
    return collector.episode_returns, collector.episode_lengths, batch


def test_sync_and_async_backends_give_the_same_episodes() -> None:
    sync_returns, sync_lengths, sync_batch = _episodes("sync", "CartPole-v1", 200)
    async_returns, async_lengths, async_batch = _episodes("async", "CartPole-v1", 200)
    assert len(sync_returns) >= 3  # several episodes ended, so autoreset happened on every sub-env
    assert sync_returns == async_returns and sync_lengths == async_lengths
    torch.testing.assert_close(sync_batch["obs"], async_batch["obs"])
    # CartPole pays 1 per step: the statistics count exactly the steps of each episode, no reset step
    assert sync_returns == [float(n) for n in sync_lengths]


def test_envpool_backend_has_gymnasium_episode_semantics() -> None:
    """EnvPool seeds its envs with its own RNG, so start states differ from gymnasium's; what must
    agree is how episodes are counted: lengths at the time limit, next-step autoreset (the reset
    step is not part of an episode) and returns equal to the rewards of the episode's steps."""
    results = {}
    for backend in ("sync", "envpool"):
        envs = make_vec_env("Pendulum-v1", 2, seed=3, backend=backend)
        obs, _ = envs.reset(seed=3)
        rewards, returns, lengths = np.zeros(2), [], []
        reset_next = np.zeros(2, dtype=bool)
        for _ in range(2 * 200 + 1):
            obs, reward, term, trunc, info = envs.step(np.zeros((2, 1), dtype=np.float32))
            assert obs.shape == (2, 3) and obs.dtype.kind == "f"
            assert (reward[reset_next] == 0).all()  # the autoreset step pays nothing
            rewards[~reset_next] += reward[~reset_next]
            if "episode" in info:
                done = info["_episode"]
                np.testing.assert_allclose(info["episode"]["r"][done], rewards[done], rtol=1e-5)
                returns += info["episode"]["r"][done].tolist()
                lengths += info["episode"]["l"][done].tolist()
                rewards[done] = 0
            reset_next = term | trunc
        envs.close()
        results[backend] = (returns, lengths)
    assert results["sync"][1] == results["envpool"][1] == [200] * 4  # 2 envs x 2 episodes
    assert all(r < 0 for r in results["envpool"][0])


@pytest.mark.parametrize("backend", ["sync", "envpool"])
def test_atari_observation_pipeline(backend: str) -> None:
    envs = make_vec_env("ALE/Breakout-v5", 2, seed=0, backend=backend, training=True)
    assert envs.single_observation_space.shape == (4, 84, 84) and envs.single_observation_space.dtype == np.uint8
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8 and obs.max() > 0
    rng = np.random.default_rng(0)
    life_losses = 0
    for _ in range(600):
        obs, reward, term, trunc, info = envs.step(rng.integers(0, 4, 2))
        assert set(np.unique(reward)) <= {-1.0, 0.0, 1.0}  # training rewards are clipped to their sign
        lost = term & ~info["autoreset"]  # a life lost: terminal for the targets, but no reset
        life_losses += int(lost.sum())
        if lost.any():
            assert "episode" not in info or not info["_episode"][lost].any()  # the game goes on
    assert life_losses >= 2  # random play loses lives in 600 steps
    envs.close()


def test_nature_cnn_serves_an_agent_and_a_fusion_classifier() -> None:
    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    agent_net = ActorCritic(frames, gym.spaces.Discrete(4), hidden=[], shared=True, encoder=NatureCNNEncoder())
    action, logp, value = agent_net.act(torch.randint(0, 256, (3, 4, 84, 84)).float())
    assert action.shape == (3,) and logp.shape == (3,) and value.shape == (3,)
    assert NatureCNNEncoder()(torch.rand(2, 4, 84, 84)).shape == (2, 1, 512)

    # the same encoder class as one modality of a fusion model, which learns a batch by heart
    torch.manual_seed(0)
    model = FusionClassifier({"image": NatureCNNEncoder(in_chans=1, image_size=36, out_dim=32)}, ConcatFusion,
                             num_classes=3, dropout=0.0)
    batch = {"image": torch.rand(12, 1, 36, 36), "label": torch.arange(12) % 3}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses

    # any timm backbone can replace it for the agent (a config's class_path: fusion.ImageEncoder)
    timm_net = ActorCritic(frames, gym.spaces.Discrete(4), hidden=[64], encoder=ImageEncoder("resnet10t", in_chans=4))
    assert timm_net.act(torch.zeros(2, 4, 84, 84))[0].shape == (2,)


def test_ale_ids_are_registered_when_ale_py_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = {k: v for k, v in gym.registry.items() if not k.startswith("ALE/")}
    monkeypatch.setattr(gym.envs.registration, "registry", registry)
    monkeypatch.setattr(gym, "registry", registry)
    check_env_id("ALE/Breakout-v5")  # registers ale_py's namespace on demand
    assert "ALE/Breakout-v5" in registry and "ALE/Pong-v5" in registry


def test_missing_packages_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = {k: v for k, v in gym.registry.items() if not k.startswith("ALE/")}
    monkeypatch.setattr(gym, "registry", registry)
    monkeypatch.setitem(sys.modules, "ale_py", None)  # import ale_py now raises ImportError
    with pytest.raises(ImportError, match=r"Atari \(ALE\) environments need the 'ale-py' package.*fusegen\[rl\]"):
        check_env_id("ALE/Breakout-v5")
    monkeypatch.setitem(sys.modules, "envpool", None)
    with pytest.raises(ImportError, match=r"envpool vector backend.*'envpool' package.*fusegen\[rl\]"):
        make_vec_env("CartPole-v1", 1, backend="envpool")
    with pytest.raises(ValueError, match=r"model.init_args.vector_backend = 'threads' is not allowed: one of 'sync'"):
        PPO(env_id="CartPole-v1", vector_backend="threads")


def test_halfcheetah_config_trains_and_checkpoints_its_statistics(in_tmp: Path) -> None:
    pytest.importorskip("mujoco")
    cli = FusegenCLI(args=["fit", "--config", str(REPO / "experiments/rl/ppo-halfcheetah.yaml"), *QUIET,
                           "--model.init_args.n_steps", "256", "--model.init_args.n_epochs", "2",
                           "--model.init_args.eval_every_steps", "512", "--model.init_args.n_eval_episodes", "1",
                           "--trainer.max_epochs", "1", "--seed_everything", "0"])
    agent = cli.model
    assert agent.num_updates == 2 and agent.env_steps == 512
    state = torch.load(in_tmp / "runs/ppo-halfcheetah/checkpoints/last.ckpt", weights_only=False)
    saved = state["rl"]["normalization"]
    assert set(saved) == {"obs_rms", "return_rms"} and saved["obs_rms"]["mean"].shape == (17,)
    live = normalization_state(agent.collector.envs)
    np.testing.assert_allclose(saved["obs_rms"]["mean"].numpy(), live["obs_rms"]["mean"])
    assert len(agent.history["eval"]) == 1
    loaded = PPO.load_from_checkpoint(in_tmp / "runs/ppo-halfcheetah/checkpoints/last.ckpt")
    obs = np.ones(17) * 3.0
    assert loaded.predict(obs).shape == (6,) and np.abs(loaded.predict(obs)).max() <= 1.0
    np.testing.assert_allclose(loaded.runner.normalize_observation(obs), agent.runner.normalize_observation(obs))


def test_breakout_config_runs_updates_on_envpool(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    cli = FusegenCLI(args=["fit", "--config", str(REPO / "experiments/rl/ppo-breakout.yaml"), *QUIET,
                           "--model.init_args.num_envs", "4", "--model.init_args.n_steps", "32",
                           "--model.init_args.batch_size", "64", "--model.init_args.n_epochs", "1",
                           "--model.init_args.eval_every_steps", "256", "--model.init_args.n_eval_episodes", "1",
                           "--model.init_args.target_return", "-1", "--trainer.max_epochs", "3",
                           # a greedy untrained agent may never serve the ball: cap the evaluation episode
                           "--model.init_args.env_kwargs", "{max_episode_steps: 100}"])
    agent = cli.model
    assert isinstance(agent.policy.encoder, NatureCNNEncoder)
    # stopped after the first evaluation (any return reaches -1), and said why
    assert agent.num_updates == 2 and agent.env_steps == 256
    assert "stopping at 256 env steps: the mean evaluation return" in capsys.readouterr().out


class _InterruptAt(pl.Callback):
    """Ctrl+C at the start of training step ``step``: the shared Preemption callback finishes that
    update, writes ``last.ckpt`` mid-epoch and exits 130."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class _RecordSteps(gym.vector.VectorWrapper):
    """Records what the training vector env hands the collector: the reset observation, then each
    step's observation and which sub-envs really reset on their next step."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.record: list[tuple[np.ndarray, np.ndarray | None]] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.record.append((obs.copy(), None))
        return obs, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        resets = info["autoreset"] if "autoreset" in info else terminated | truncated
        self.record.append((obs.copy(), np.array(resets, dtype=bool)))
        return obs, reward, terminated, truncated, info


def _check_frame_stacks(record: list[tuple[np.ndarray, np.ndarray | None]], num_envs: int) -> int:
    """Every observation is a ``uint8 [N, 4, 84, 84]`` stack of non-blank frames that belongs to
    its episode: a fresh episode starts with its first frame repeated 4 times (gymnasium's
    ``FrameStackObservation`` padding; EnvPool's too), and every other step shifts one new frame
    in (oldest first), so no frame of an earlier episode survives a reset. Returns the number of
    fresh stacks after autoresets."""
    (first, flags), *steps = record
    assert flags is None, "the recording does not start at a reset"
    assert first.shape == (num_envs, 4, 84, 84) and first.dtype == np.uint8
    assert (first == first[:, -1:]).all(), "a new episode's stack is not its first frame repeated"
    prev, reset_next, fresh = first, np.zeros(num_envs, dtype=bool), 0
    for step, (obs, resets) in enumerate(steps):
        assert obs.shape == (num_envs, 4, 84, 84) and obs.dtype == np.uint8
        assert (obs.reshape(num_envs, 4, -1).max(-1) > 0).all(), f"step {step}: a blank (zero) frame in a stack"
        for n in range(num_envs):
            if reset_next[n]:
                assert (obs[n] == obs[n, -1]).all(), f"step {step}, env {n}: stale frames after the reset"
                fresh += 1
            else:
                assert (obs[n, :-1] == prev[n, 1:]).all(), f"step {step}, env {n}: the stack did not shift by one"
        prev, reset_next = obs, resets
    return fresh


@pytest.mark.parametrize("backend", ["envpool", "sync"])
def test_breakout_resumed_mid_epoch_continues_steps_and_frame_stacks(
        backend: str, in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorders: list[_RecordSteps] = []
    make_vec_env_ = rl.runner.make_vec_env

    def recording_make_vec_env(*args, **kwargs):
        envs = make_vec_env_(*args, **kwargs)
        if kwargs.get("training"):  # the collector's envs, not the evaluation envs
            recorders.append(_RecordSteps(envs))
            return recorders[-1]
        return envs

    monkeypatch.setattr(rl.runner, "make_vec_env", recording_make_vec_env)
    # 2 envs x 16 steps per update, 4 updates per epoch; episodes capped at 12 agent steps, so
    # every sub-env autoresets several times after the restart
    args = ["fit", "--config", str(REPO / "experiments/rl/ppo-breakout.yaml"), *QUIET,
            "--model.init_args.vector_backend", backend, "--model.init_args.num_envs", "2",
            "--model.init_args.n_steps", "16", "--model.init_args.batch_size", "32", "--model.init_args.n_epochs", "1",
            "--model.init_args.eval_every_steps", "128", "--model.init_args.n_eval_episodes", "1",
            "--model.init_args.env_kwargs", "{max_episode_steps: 12}", "--trainer.max_epochs", "2"]
    interrupt = json.dumps({"class_path": f"{__name__}._InterruptAt", "init_args": {"step": 2}})
    with pytest.raises(SystemExit) as stopped:
        FusegenCLI(args=[*args, "--trainer.callbacks+", interrupt])
    assert stopped.value.code == 128 + signal.SIGINT
    state = torch.load(in_tmp / "runs/ppo-breakout/checkpoints/last.ckpt", weights_only=False)
    assert state["rl"]["env_steps"] == 3 * 32 and state["rl"]["num_updates"] == 3  # mid-epoch: update 3 of 4
    assert len(recorders) == 1 and _check_frame_stacks(recorders[0].record, 2) >= 2

    agent = FusegenCLI(args=[*args, "--ckpt_path", "last"]).model
    # the counters go on from the checkpoint: the rest of epoch 1 and epoch 2, 8 updates in all
    assert agent.num_updates == 8 and agent.env_steps == 8 * 32 and agent.total_env_steps == 8 * 32
    assert len(recorders) == 2
    record = recorders[1].record
    assert len(record) - 1 == (8 - 3) * 16  # exactly the steps of the 5 updates after the restart
    # the restart begins fresh episodes (full stacks of their first frame, nothing from before
    # it), and every autoreset after it does too
    assert _check_frame_stacks(record, 2) >= 2 * 5
