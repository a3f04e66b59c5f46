"""Policy-gradient agents as LightningModules (the learners): ``REINFORCE``, ``A2C`` and ``PPO``.

A learner reads as CleanRL's ``ppo.py``: rollout -> advantages -> ``n_epochs`` of minibatches
-> the paper-named losses of ``rl.losses`` (manual optimisation, one update per rollout). The
envs are the runner's (``rl.runner.EnvRunner``: vector env and collector, evaluation episodes,
``predict(obs)``); rollouts reach the Trainer through a ``RolloutDataset`` (``rl.data``);
evaluation episodes are the validation and test steps; the learning-curve PNG and the predict
episodes' CSV and video are callbacks (``rl.callbacks``).

Checkpoints carry the env-step counter, the observation/reward normalisation statistics and
the learning-curve history next to the weights and optimiser state, so ``--ckpt_path last``
continues a run where it stopped.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from typing import Any, Callable, NamedTuple

import gymnasium as gym
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torch.utils.data import DataLoader

from datamodules.checks import MODEL as KEY
from datamodules.checks import check_choice, check_int, check_real, check_value
from rl.callbacks import EpisodeWriter, LearningCurve
from rl.data import RolloutDataset
from rl.envs import BACKENDS, check_action_space, check_env_id, make_env, resolve_wrappers
from rl.losses import (
    actor_critic_loss,
    approx_kl,
    clip_fraction,
    clipped_surrogate_loss,
    clipped_value_loss,
    entropy_bonus,
    explained_variance,
    linear_schedule,
    normalize_advantages,
    policy_gradient_loss,
    value_loss,
)
from rl.networks import ActorCritic
from rl.rollout import RolloutCollector
from rl.runner import EnvRunner

PolicyFactory = Callable[[gym.Space, gym.Space], nn.Module]
RECENT = 100  # training episodes in the field's "mean return over the last 100 episodes"
RUN_OPTIONS = ("test_episodes", "predict_episodes", "predict_deterministic", "predict_video", "video_fps")

__all__ = ["A2C", "PPO", "REINFORCE", "PolicyGradient", "CurvePoint", "explained_variance"]


class CurvePoint(NamedTuple):
    """One point of the learning curve: env steps (all ranks), mean episode return, training seconds."""

    env_steps: int
    mean_return: float
    wall_time: float


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-4, eps=1e-5)


class PolicyGradient(pl.LightningModule):
    """Actor-critic policy-gradient agent on a gymnasium env (the base of REINFORCE/A2C/PPO).

    Args:
        env_id: any registered gymnasium id (``CartPole-v1``, ``Pendulum-v1``...); ``env_kwargs``
            go to ``gymnasium.make``; ``wrappers`` (``[{class_path: ..., init_args: {...}}]``,
            innermost first) wrap each env, e.g. ``gymnasium.wrappers.FlattenObservation``.
        policy: the actor-critic, called as ``policy(observation_space, action_space)``; a config
            gives ``class_path: rl.ActorCritic`` and its options (``hidden``, ``encoder``...).
        optimizer: injected optimiser (default Adam lr 3e-4, eps 1e-5).
        num_envs / n_steps: a rollout is ``n_steps`` steps of ``num_envs`` envs (per rank).
        total_timesteps: the training budget in env steps of one rank; training stops there, and
            the linear LR/clip annealing reaches 0 there.
        gamma / gae_lambda: discount and GAE lambda (1.0 = Monte-Carlo returns).
        n_epochs / batch_size: passes over each rollout and minibatch size (None = whole rollout).
        ent_coef / vf_coef: entropy bonus and value-loss weights.
        max_grad_norm: gradient-norm clipping (None = off).
        normalize_advantage: standardise advantages per minibatch.
        anneal_lr: decay every param group's LR linearly to 0 over ``total_timesteps``.
        normalize_obs / normalize_reward: gymnasium running-mean/std wrappers (saved in checkpoints).
        norm_clip: clip normalised observations and rewards to ``[-norm_clip, norm_clip]`` (None = off).
        eval_every_steps: env steps per Lightning epoch; each epoch ends with ``n_eval_episodes``
            deterministic (greedy / mean-action) evaluation episodes on a separate env (also what
            ``fusegen validate`` and ``fusegen test`` run).
        target_return: stop once the mean evaluation return reaches it (None = never).
        seed: env seed (None = the torch seed set by ``seed_everything``).
        num_threads: torch CPU threads while fitting (tiny MLPs run fastest on 1); None = leave.
        vector_backend: how the training envs are stepped: ``sync`` (in turn), ``async``
            (subprocesses, ``AsyncVectorEnv``) or ``envpool`` (C++ threads; Atari and MuJoCo ids).
            Episode statistics and autoreset are the same on all three (``rl.envs``).
        async_envs: shorthand for ``vector_backend: async``.
        test_episodes: episodes per rank of ``fusegen test`` (None = ``n_eval_episodes``).
        predict_episodes / predict_deterministic / predict_video / video_fps: ``fusegen predict``
            runs this many episodes (greedy by default), writes their returns to
            ``<run_dir>/predictions/episodes.csv`` and the first one as ``episode_0.mp4`` (GIF
            without FFmpeg) at ``video_fps`` (None = the env's ``render_fps``, else 30). These
            run options are no hyperparameters (not in checkpoints), so the command line sets them.
    """

    def __init__(self, env_id: str = "CartPole-v1", policy: PolicyFactory | None = None,
                 optimizer: OptimizerCallable | None = None, num_envs: int = 8, n_steps: int = 128,
                 total_timesteps: int = 100_000, gamma: float = 0.99, gae_lambda: float = 0.95, n_epochs: int = 1,
                 batch_size: int | None = None, ent_coef: float = 0.0, vf_coef: float = 0.5,
                 max_grad_norm: float | None = 0.5, normalize_advantage: bool = True, anneal_lr: bool = False,
                 normalize_obs: bool = False, normalize_reward: bool = False, eval_every_steps: int = 5000,
                 n_eval_episodes: int = 10, target_return: float | None = None, seed: int | None = None,
                 num_threads: int | None = 1, env_kwargs: dict[str, Any] | None = None,
                 wrappers: list[dict[str, Any]] | None = None, async_envs: bool = False,
                 vector_backend: str = "sync", norm_clip: float | None = None,
                 test_episodes: int | None = None, predict_episodes: int = 10, predict_deterministic: bool = True,
                 predict_video: bool = True, video_fps: float | None = None) -> None:
        super().__init__()
        # test/predict options are no hyperparameters: LightningCLI overrides the command line with a
        # checkpoint's hyperparameters, and `fusegen predict --ckpt_path ...` must honour them
        self.save_hyperparameters(ignore=["policy", "optimizer", *RUN_OPTIONS])
        self.run_options = {"test_episodes": test_episodes, "predict_episodes": predict_episodes,
                            "predict_deterministic": predict_deterministic, "predict_video": predict_video,
                            "video_fps": video_fps}
        self.check_hparams()
        self.automatic_optimization = False  # one update = several minibatch steps over one rollout
        self.optimizer_factory = optimizer or _default_optimizer
        env = make_env(env_id, env_kwargs, wrappers)  # the spaces before ClipAction unbounds the actions
        self.observation_space, self.action_space = env.observation_space, env.action_space
        env.close()
        check_action_space(self.action_space, env_id)
        self.policy = (policy or ActorCritic)(self.observation_space, self.action_space)
        self.env_steps = 0  # this rank's env steps (drives the budget, the annealing and the env seeds)
        self.total_env_steps = 0  # all ranks' env steps (what is logged and plotted)
        self.num_updates = 0
        # train: mean return of the episodes of each update; last100: of the last RECENT episodes
        # per rank (CleanRL's figure); eval: deterministic evaluation rounds
        self.history: dict[str, list[CurvePoint]] = {"train": [], "last100": [], "eval": []}
        self.recent_returns: deque[float] = deque(maxlen=RECENT)
        self.wall_time = 0.0  # training seconds, evaluation excluded (the learning-curve x-axis twin)
        self.learning_curve_path: str | None = None
        self.predictions_path: str | None = None  # set by rl.callbacks.EpisodeWriter
        self.video_path: str | None = None
        self.runner = EnvRunner(self.hparams, self.observation_space, self.action_space)
        self._saved_threads: int | None = None
        self._fitting = False
        self._eval_time = 0.0
        self._window = [0.0, 0, 0.0]  # episodes since the last log: sum of returns, count, sum of lengths

    def check_hparams(self) -> None:
        """Every argument checked before any env is built; errors name the config key."""
        h = self.hparams
        if not isinstance(h.env_id, str):
            check_value("env_id", h.env_id, False, "a gymnasium id string, e.g. CartPole-v1")
        resolve_wrappers(h.wrappers, key=f"{KEY}wrappers")  # first: a wrapper's module may register the env
        check_env_id(h.env_id)
        for name in ("num_envs", "n_steps", "total_timesteps", "n_epochs", "eval_every_steps", "n_eval_episodes"):
            check_int(name, h[name])
        check_int("test_episodes", self.run_options["test_episodes"], optional=True, none_means="n_eval_episodes")
        check_int("predict_episodes", self.run_options["predict_episodes"])
        check_int("batch_size", h.batch_size, optional=True, none_means="the whole rollout in one minibatch")
        check_int("num_threads", h.num_threads, optional=True, none_means="leave torch's thread count")
        check_int("seed", h.seed, minimum=0, optional=True, none_means="the seed_everything seed")
        check_real("gamma", h.gamma, 0.0, 1.0)
        check_real("gae_lambda", h.gae_lambda, 0.0, 1.0)
        check_real("ent_coef", h.ent_coef, 0.0)
        check_real("vf_coef", h.vf_coef, 0.0)
        check_real("max_grad_norm", h.max_grad_norm, 0.0, low_open=True, optional=True, none_means="no clipping")
        check_real("target_return", h.target_return, optional=True, none_means="never stop early")
        check_real("video_fps", self.run_options["video_fps"], 0.0, low_open=True, optional=True,
                   none_means="the env's render_fps")
        check_choice("vector_backend", h.vector_backend, BACKENDS)
        check_real("norm_clip", h.norm_clip, 0.0, low_open=True, optional=True, none_means="no clipping")
        if h.env_kwargs is not None and not isinstance(h.env_kwargs, dict):
            check_value("env_kwargs", h.env_kwargs, False, "a mapping of gymnasium.make keyword arguments")

    # ---- the science: losses (rl.losses) ----------------------------------------------------
    def loss(self, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """REINFORCE / A2C: ``policy_gradient_loss + vf_coef * value_loss - ent_coef * entropy``."""
        logp, entropy, value = self.policy.evaluate_actions(mb["obs"], mb["actions"])
        pg_loss = policy_gradient_loss(logp, self.advantages(mb))
        v_loss = value_loss(value, mb["returns"])
        ent = entropy_bonus(entropy)
        loss = actor_critic_loss(pg_loss, v_loss, ent, self.hparams.vf_coef, self.hparams.ent_coef)
        return loss, {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": ent}

    def advantages(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        adv = mb["advantages"]
        return normalize_advantages(adv) if self.hparams.normalize_advantage else adv

    def progress_remaining(self) -> float:
        """1 at the start of training, 0 at ``total_timesteps`` (drives linear annealing)."""
        return max(0.0, 1.0 - self.env_steps / self.hparams.total_timesteps)

    def update_schedule(self, optimizer: torch.optim.Optimizer) -> None:
        """Linear LR annealing (subclasses add their own schedules, e.g. PPO's clip range)."""
        if self.hparams.anneal_lr:
            for group in optimizer.param_groups:
                group["lr"] = linear_schedule(group["initial_lr"], self.progress_remaining())

    def stop_early(self, stats: dict[str, list[torch.Tensor]]) -> bool:
        """Whether to stop this update's epochs early (PPO's target_kl)."""
        return False

    def extra_metrics(self) -> dict[str, float]:
        return {}

    # ---- envs (rl.runner) ----------------------------------------------------------------------
    def _seed(self) -> int:
        seed = self.hparams.seed if self.hparams.seed is not None else torch.initial_seed() % 2**31
        # a resumed run must not replay the episodes it has already seen
        return int(seed + 1000 * self.global_rank + self.env_steps) % 2**31

    @property
    def collector(self) -> RolloutCollector:
        return self.runner.collector(self._seed(), self.device, self.env_steps)

    def collect_rollout(self) -> dict[str, torch.Tensor]:
        self.policy.eval()
        batch = self.collector.collect(self.policy)
        self.env_steps = self.collector.env_steps
        batch["update"] = torch.tensor(self.num_updates)  # guards against collecting with a stale policy
        return batch

    def evaluate(self, n_episodes: int | None = None, deterministic: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of ``n_episodes`` evaluation episodes on a separate env (this rank)."""
        return self.runner.evaluate(self.policy, n_episodes or self.hparams.n_eval_episodes, self._seed() + 10_000,
                                    self.device, deterministic)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """The policy's action for ``obs`` (one observation or a batch), as numpy, for a user's own
        loop: the frozen observation normalisation is applied and Box actions are clipped to the bounds."""
        return self.runner.predict(self.policy, obs, self.device, deterministic)

    def run_episode(self, seed: int | None = None, deterministic: bool = True, render: bool = False
                    ) -> tuple[float, int, list[np.ndarray]]:
        """One episode on a fresh single env: ``(return, length, frames)`` (frames only if ``render``)."""
        return self.runner.run_episode(lambda obs: self.predict(obs, deterministic), seed, render,
                                       self.run_options["video_fps"])

    # ---- across ranks ------------------------------------------------------------------------
    def _sum_over_ranks(self, *values: float) -> list[float]:
        """Sum scalars over all ranks (identity on one process); every rank must call it alike."""
        if self.trainer.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(t, reduce_op="sum").tolist()

    # ---- Lightning hooks ---------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        per_rollout = h.num_envs * h.n_steps
        per_epoch = max(1, math.ceil(h.eval_every_steps / per_rollout))
        remaining = lambda: max(0, math.ceil((h.total_timesteps - self.env_steps) / per_rollout))  # noqa: E731
        return DataLoader(RolloutDataset(self.collect_rollout, per_epoch, remaining), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)  # one "batch" = one round of evaluation episodes

    def test_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)

    def predict_dataloader(self) -> DataLoader:
        episodes = list(range(self.run_options["predict_episodes"]))
        return DataLoader(episodes, batch_size=None)  # one item = one episode

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.optimizer_factory(self.policy.parameters())
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return optimizer

    def configure_callbacks(self) -> list[pl.Callback]:
        return [LearningCurve(), EpisodeWriter()]

    def setup(self, stage: str) -> None:
        on_cpu = isinstance(self.trainer.accelerator, CPUAccelerator)  # the module is not on its device yet
        if self.hparams.num_threads and on_cpu and self._saved_threads is None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.hparams.num_threads)

    def teardown(self, stage: str) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def on_fit_start(self) -> None:
        self._fitting = True
        self._t0 = time.perf_counter()
        self._t0_steps = self.total_env_steps
        self._wall0 = self.wall_time
        self._eval_time = 0.0
        self._window = [0.0, 0, 0.0]

    def on_fit_end(self) -> None:
        self._fitting = False
        self.runner.close()

    def _update_wall_time(self) -> None:
        self.wall_time = self._wall0 + time.perf_counter() - self._t0 - self._eval_time

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if int(batch.pop("update")) != self.num_updates:
            raise RuntimeError("rollout was collected before the previous update (prefetching?); "
                               "use the agent's own train_dataloader")
        h = self.hparams
        optimizer = self.optimizers()
        self.update_schedule(optimizer.optimizer)
        self.policy.train()
        n = batch["obs"].shape[0]
        size = n if h.batch_size is None else min(h.batch_size, n)
        stats: dict[str, list[torch.Tensor]] = {}
        for _ in range(h.n_epochs):
            perm = torch.randperm(n, device=self.device) if size < n else None  # one minibatch: order is moot
            for start in range(0, n, size):
                mb = batch if perm is None else {k: v[perm[start:start + size]] for k, v in batch.items()}
                loss, mb_stats = self.loss(mb)
                optimizer.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                if h.max_grad_norm:
                    self.clip_gradients(optimizer, gradient_clip_val=h.max_grad_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                for k, v in mb_stats.items():
                    stats.setdefault(k, []).append(v.detach())
            if self.stop_early(stats):
                break
        self.num_updates += 1
        self._log_update(batch, stats)

    def should_log(self) -> bool:
        """Whether the loggers write this update: ``self.log`` costs ~1 ms per key on CPU, so it is
        only called then. One update is one batch, and the loggers write every
        ``log_every_n_steps`` batches (``trainer.global_step`` counts optimiser steps here, many per
        update), at the stop, and on every step of a fast_dev_run."""
        trainer = self.trainer
        if trainer.fast_dev_run:
            return True
        if trainer.log_every_n_steps == 0:
            return False
        return self.num_updates % trainer.log_every_n_steps == 0 or trainer.should_stop

    def _log_update(self, batch: dict[str, torch.Tensor], stats: dict[str, list[torch.Tensor]]) -> None:
        self._update_wall_time()
        returns, lengths = self.collector.pop_episodes()
        self.recent_returns.extend(returns)
        recent = self.recent_returns
        steps, ret_sum, n_eps, len_sum, recent_sum, n_recent = self._sum_over_ranks(
            self.env_steps, sum(returns), len(returns), sum(lengths), sum(recent), len(recent))
        self.total_env_steps = int(steps)
        if n_eps:
            self.history["train"].append(CurvePoint(self.total_env_steps, ret_sum / n_eps, self.wall_time))
            self.history["last100"].append(CurvePoint(self.total_env_steps, recent_sum / n_recent, self.wall_time))
            self._window = [self._window[0] + ret_sum, self._window[1] + int(n_eps), self._window[2] + len_sum]
        if not self.should_log():
            return
        elapsed = max(1e-9, self.wall_time - self._wall0)
        metrics = {f"train/{k}": torch.stack(v).mean() for k, v in stats.items()}
        metrics["train/explained_variance"] = explained_variance(batch["values"], batch["returns"])
        metrics["time/env_steps"] = float(self.total_env_steps)
        metrics["time/fps"] = (self.total_env_steps - self._t0_steps) / elapsed
        metrics.update(self.extra_metrics())
        if self._window[1]:  # episodes finished (on any rank) since the last log
            metrics["train/episode_return"] = self._window[0] / self._window[1]
            metrics["train/episode_length"] = self._window[2] / self._window[1]
            self.log("return", metrics["train/episode_return"], prog_bar=True, on_step=True, on_epoch=False,
                     batch_size=1, logger=False)
            self._window = [0.0, 0, 0.0]
        if n_recent:
            metrics[f"train/episode_return_last{RECENT}"] = recent_sum / n_recent
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def _evaluate_all_ranks(self, n_episodes: int | None = None) -> tuple[float, float, float]:
        """``n_episodes`` per rank -> mean return, its std and the mean length over all ranks."""
        t = time.perf_counter()
        returns, lengths = self.evaluate(n_episodes)
        self._eval_time += time.perf_counter() - t
        total, squares, count, len_sum = self._sum_over_ranks(returns.sum(), (returns ** 2).sum(), len(returns),
                                                              lengths.sum())
        mean = total / count
        return mean, math.sqrt(max(0.0, squares / count - mean ** 2)), len_sum / count

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.trainer.sanity_checking:
            return  # an untrained policy's evaluation says nothing; save the time
        mean, std, length = self._evaluate_all_ranks()
        if self._fitting:
            self._update_wall_time()
            self.total_env_steps = int(self._sum_over_ranks(self.env_steps)[0])
            self.history["eval"].append(CurvePoint(self.total_env_steps, mean, self.wall_time))
        # the values are already reduced over ranks; sync_dist keeps Lightning's DDP check quiet
        self.log_dict({"val/return": mean, "val/return_std": std, "val/episode_length": length,
                       "val/env_steps": float(self.total_env_steps)}, batch_size=1, sync_dist=True)
        self.log("val_return", mean, prog_bar=True, logger=False, batch_size=1, sync_dist=True)
        target = self.hparams.target_return
        if self._fitting and target is not None and mean >= target and not self.trainer.should_stop:
            self.trainer.should_stop = True  # the same decision on every rank: the mean is global
            if self.trainer.is_global_zero:
                print(f"{type(self).__name__}: stopping at {self.total_env_steps} env steps: the mean evaluation "
                      f"return {mean:.1f} reached target_return {target:g} (model.init_args.target_return; "
                      f"null trains the whole total_timesteps)")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        mean, std, length = self._evaluate_all_ranks(self.run_options["test_episodes"])
        self.log_dict({"test/return": mean, "test/return_std": std, "test/episode_length": length},
                      batch_size=1, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        if self.env_steps >= self.hparams.total_timesteps:
            self.trainer.should_stop = True

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs)

    # ---- predict: one item = one episode; rl.callbacks.EpisodeWriter writes the files -------------
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Episode ``batch`` (greedy unless ``predict_deterministic`` is false): its return, length
        and, for episode 0 when ``predict_video``, its frames."""
        h, options = self.hparams, self.run_options
        episode = int(batch)
        record = episode == 0 and options["predict_video"]
        seed = (h.seed if h.seed is not None else 0) + 20_000 + episode
        deterministic = options["predict_deterministic"]
        try:
            ret, length, frames = self.run_episode(seed, deterministic, render=record)
        except gym.error.DependencyNotInstalled as err:  # rendering needs e.g. pygame
            warnings.warn(f"no video of episode 0: rendering {h.env_id} failed ({err}); writing returns only",
                          stacklevel=2)
            ret, length, frames = self.run_episode(seed, deterministic, render=False)
        return {"episode": episode, "return": ret, "length": length, "frames": frames,
                "fps": self.runner.render_fps}

    # ---- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        norm = self.runner.normalization_state()
        checkpoint["rl"] = {
            "env_steps": self.env_steps, "total_env_steps": self.total_env_steps, "num_updates": self.num_updates,
            "wall_time": self.wall_time,
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
            "recent_returns": list(self.recent_returns),
            "normalization": {k: {"mean": torch.as_tensor(s["mean"]), "var": torch.as_tensor(s["var"]),
                                  "count": float(s["count"])} for k, s in norm.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("rl")
        if state is None:
            raise KeyError("checkpoint has no 'rl' state (env steps, normalisation statistics); "
                           "it was not written by an rl agent")
        self.env_steps, self.num_updates = int(state["env_steps"]), int(state["num_updates"])
        self.total_env_steps = int(state.get("total_env_steps", self.env_steps))
        self.wall_time = float(state["wall_time"])
        self.history = {"train": [], "last100": [], "eval": []}
        self.history.update({k: [CurvePoint(int(p[0]), float(p[1]), float(p[2])) for p in v]
                             for k, v in state["history"].items()})
        self.recent_returns = deque(state.get("recent_returns", []), maxlen=RECENT)
        norm = {k: {"mean": s["mean"].numpy(), "var": s["var"].numpy(), "count": s["count"]}
                for k, s in state["normalization"].items()}
        self.runner.load_normalization_state(norm, self.env_steps)


class REINFORCE(PolicyGradient):
    """REINFORCE (Williams 1992) with a learned value baseline: Monte-Carlo returns
    (``gae_lambda=1``), one gradient step per batch of episodes. Long rollouts (``n_steps`` >=
    episode length) keep the returns Monte-Carlo; only truncations and the unfinished tail at a
    rollout's end bootstrap."""

    def __init__(self, gae_lambda: float = 1.0, n_steps: int = 512, **kwargs: Any) -> None:
        super().__init__(gae_lambda=gae_lambda, n_steps=n_steps, **kwargs)


class A2C(PolicyGradient):
    """Advantage actor-critic (Mnih et al. 2016): short rollouts, n-step/GAE advantages, one
    gradient step each (RL-Zoo/SB3 defaults: 5 steps, RMSprop lr 7e-4, no advantage normalisation)."""

    def __init__(self, n_steps: int = 5, gae_lambda: float = 1.0, normalize_advantage: bool = False,
                 optimizer: OptimizerCallable | None = None, **kwargs: Any) -> None:
        optimizer = optimizer or (lambda p: torch.optim.RMSprop(p, lr=7e-4, alpha=0.99, eps=1e-5))
        super().__init__(n_steps=n_steps, gae_lambda=gae_lambda, normalize_advantage=normalize_advantage,
                         optimizer=optimizer, **kwargs)


class PPO(PolicyGradient):
    """Proximal policy optimisation (Schulman et al. 2017): clipped surrogate objective over
    ``n_epochs`` of minibatches.

    Args (besides ``PolicyGradient``'s):
        clip_range: the ratio clip epsilon; ``anneal_clip`` decays it linearly like the LR.
        clip_range_vf: clip the value change per update (None = unclipped value loss).
        target_kl: stop the epochs of an update early once approx-KL exceeds 1.5x this.
    """

    def __init__(self, clip_range: float = 0.2, anneal_clip: bool = False,
                 clip_range_vf: float | None = None, target_kl: float | None = None, n_epochs: int = 10,
                 batch_size: int | None = 64, n_steps: int = 2048 // 8, **kwargs: Any) -> None:
        check_real("clip_range", clip_range, 0.0, low_open=True)
        check_real("clip_range_vf", clip_range_vf, 0.0, low_open=True, optional=True, none_means="no value clipping")
        check_real("target_kl", target_kl, 0.0, low_open=True, optional=True, none_means="no early stop")
        super().__init__(n_epochs=n_epochs, batch_size=batch_size, n_steps=n_steps, **kwargs)
        self.clip = clip_range

    def update_schedule(self, optimizer: torch.optim.Optimizer) -> None:
        super().update_schedule(optimizer)
        h = self.hparams
        self.clip = linear_schedule(h.clip_range, self.progress_remaining()) if h.anneal_clip else h.clip_range

    def loss(self, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``clipped_surrogate_loss + vf_coef * (clipped_)value_loss - ent_coef * entropy``."""
        h = self.hparams
        logp, entropy, value = self.policy.evaluate_actions(mb["obs"], mb["actions"])
        log_ratio = logp - mb["logprobs"]
        ratio = log_ratio.exp()
        pg_loss = clipped_surrogate_loss(ratio, self.advantages(mb), self.clip)
        if h.clip_range_vf is None:
            v_loss = value_loss(value, mb["returns"])
        else:
            v_loss = clipped_value_loss(value, mb["values"], mb["returns"], h.clip_range_vf)
        ent = entropy_bonus(entropy)
        loss = actor_critic_loss(pg_loss, v_loss, ent, h.vf_coef, h.ent_coef)
        with torch.no_grad():
            kl, clipped = approx_kl(log_ratio), clip_fraction(ratio, self.clip)
        return loss, {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": ent, "approx_kl": kl,
                      "clip_fraction": clipped}

    def stop_early(self, stats: dict[str, list[torch.Tensor]]) -> bool:
        target = self.hparams.target_kl
        return target is not None and float(stats["approx_kl"][-1]) > 1.5 * target

    def extra_metrics(self) -> dict[str, float]:
        return {"train/clip_range": self.clip}

