"""Policy-gradient agents as LightningModules: ``REINFORCE``, ``A2C`` and ``PPO``.

They share everything but the loss: a vector env and a ``RolloutCollector`` (``rl.rollout``),
rollouts fed to the Trainer by a ``RolloutDataset`` (``rl.data``), one update per rollout
(``n_epochs`` passes of minibatches, manual optimisation), deterministic evaluation episodes as
the validation step, and a learning-curve PNG at the end of fit (``rl.callbacks``).

Checkpoints carry the env-step counter, the observation/reward normalisation statistics and
the learning-curve history next to the weights and optimiser state, so ``--ckpt_path last``
continues a run where it stopped.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torch.utils.data import DataLoader

from rl.callbacks import LearningCurve
from rl.data import RolloutDataset
from rl.envs import load_normalization_state, make_vec_env, normalization_state, obs_normalizer
from rl.networks import ActorCritic
from rl.rollout import RolloutCollector, evaluate_policy

PolicyFactory = Callable[[gym.Space, gym.Space], nn.Module]


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-4, eps=1e-5)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns]: 1 is a perfect critic, <= 0 no better than a constant."""
    var = returns.var()
    return torch.where(var > 0, 1 - (returns - values).var() / var, torch.zeros_like(var))


class PolicyGradient(pl.LightningModule):
    """Actor-critic policy-gradient agent on a gymnasium env (the base of REINFORCE/A2C/PPO).

    Args:
        env_id: any registered gymnasium id (``CartPole-v1``, ``Pendulum-v1``...); ``env_kwargs``
            go to ``gymnasium.make``.
        policy: the actor-critic, called as ``policy(observation_space, action_space)``; a config
            gives ``class_path: rl.ActorCritic`` and its options (``hidden``, ``encoder``...).
        optimizer: injected optimiser (default Adam lr 3e-4, eps 1e-5).
        num_envs / n_steps: a rollout is ``n_steps`` steps of ``num_envs`` envs.
        total_timesteps: the training budget in env steps; training stops there, and the linear
            LR/clip annealing reaches 0 there.
        gamma / gae_lambda: discount and GAE lambda (1.0 = Monte-Carlo returns).
        n_epochs / batch_size: passes over each rollout and minibatch size (None = whole rollout).
        ent_coef / vf_coef: entropy bonus and value-loss weights.
        max_grad_norm: gradient-norm clipping (None = off).
        normalize_advantage: standardise advantages per minibatch.
        anneal_lr: decay every param group's LR linearly to 0 over ``total_timesteps``.
        normalize_obs / normalize_reward: gymnasium running-mean/std wrappers (saved in checkpoints).
        eval_every_steps: env steps per Lightning epoch; each epoch ends with ``n_eval_episodes``
            deterministic (greedy / mean-action) evaluation episodes on a separate env.
        target_return: stop once the mean evaluation return reaches it (None = never).
        seed: env seed (None = the torch seed set by ``seed_everything``).
        num_threads: torch CPU threads while fitting (tiny MLPs run fastest on 1); None = leave.
        async_envs: step the training envs in subprocesses (``AsyncVectorEnv``) instead of in turn.
    """

    def __init__(self, env_id: str = "CartPole-v1", policy: PolicyFactory | None = None,
                 optimizer: OptimizerCallable | None = None, num_envs: int = 8, n_steps: int = 128,
                 total_timesteps: int = 100_000, gamma: float = 0.99, gae_lambda: float = 0.95, n_epochs: int = 1,
                 batch_size: int | None = None, ent_coef: float = 0.0, vf_coef: float = 0.5,
                 max_grad_norm: float | None = 0.5, normalize_advantage: bool = True, anneal_lr: bool = False,
                 normalize_obs: bool = False, normalize_reward: bool = False, eval_every_steps: int = 5000,
                 n_eval_episodes: int = 10, target_return: float | None = None, seed: int | None = None,
                 num_threads: int | None = 1, env_kwargs: dict[str, Any] | None = None,
                 async_envs: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["policy", "optimizer"])
        self.automatic_optimization = False  # one update = several minibatch steps over one rollout
        self.optimizer_factory = optimizer or _default_optimizer
        envs = make_vec_env(env_id, 1, env_kwargs=env_kwargs, record_stats=False)
        self.observation_space, self.action_space = envs.single_observation_space, envs.single_action_space
        envs.close()
        self.policy = (policy or ActorCritic)(self.observation_space, self.action_space)
        self.env_steps = 0
        self.num_updates = 0
        self.history: dict[str, list[tuple[float, ...]]] = {"train": [], "eval": []}
        self.wall_time = 0.0  # training seconds, evaluation excluded (the learning-curve x-axis twin)
        self.learning_curve_path: str | None = None
        self._collector: RolloutCollector | None = None
        self._eval_envs: gym.vector.VectorEnv | None = None
        self._pending_norm: dict[str, Any] | None = None
        self._saved_threads: int | None = None

    # ---- the science: losses (subclasses) ---------------------------------------------------
    def loss(self, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Actor-critic loss: -A log pi + vf_coef * (V - R)^2 - ent_coef * H (REINFORCE, A2C)."""
        logp, entropy, value = self.policy.evaluate_actions(mb["obs"], mb["actions"])
        adv = self._advantages(mb)
        pg_loss = -(adv * logp).mean()
        v_loss = nn.functional.mse_loss(value, mb["returns"])
        ent = entropy.mean()
        loss = pg_loss + self.hparams.vf_coef * v_loss - self.hparams.ent_coef * ent
        return loss, {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": ent}

    def _advantages(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        adv = mb["advantages"]
        if self.hparams.normalize_advantage and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return adv

    def progress_remaining(self) -> float:
        """1 at the start of training, 0 at ``total_timesteps`` (drives linear annealing)."""
        return max(0.0, 1.0 - self.env_steps / self.hparams.total_timesteps)

    # ---- envs ----------------------------------------------------------------------------
    def _seed(self) -> int:
        seed = self.hparams.seed if self.hparams.seed is not None else torch.initial_seed() % 2**31
        rank = self.trainer.global_rank if self._trainer is not None else 0
        # a resumed run must not replay the episodes it has already seen
        return int(seed + 1000 * rank + self.env_steps) % 2**31

    @property
    def collector(self) -> RolloutCollector:
        if self._collector is None:
            h = self.hparams
            envs = make_vec_env(h.env_id, h.num_envs, seed=self._seed(), normalize_obs=h.normalize_obs,
                                normalize_reward=h.normalize_reward, gamma=h.gamma, env_kwargs=h.env_kwargs,
                                asynchronous=h.async_envs)
            if self._pending_norm:
                load_normalization_state(envs, self._pending_norm)
                self._pending_norm = None
            self._collector = RolloutCollector(envs, h.n_steps, h.gamma, h.gae_lambda, self.device, self._seed())
            self._collector.env_steps = self.env_steps
        return self._collector

    def collect_rollout(self) -> dict[str, torch.Tensor]:
        self.policy.eval()
        batch = self.collector.collect(self.policy)
        self.env_steps = self.collector.env_steps
        batch["update"] = torch.tensor(self.num_updates)  # guards against collecting with a stale policy
        return batch

    def _normalize_eval_obs(self, obs: np.ndarray) -> np.ndarray:
        norm = obs_normalizer(self.collector.envs)
        if norm is None:
            return obs
        rms = norm.obs_rms  # frozen training statistics; evaluation never updates them
        return (obs - rms.mean) / np.sqrt(rms.var + norm.epsilon)

    def evaluate(self, n_episodes: int | None = None, deterministic: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of ``n_episodes`` evaluation episodes on a separate env."""
        h = self.hparams
        n = n_episodes or h.n_eval_episodes
        if self._eval_envs is None or self._eval_envs.num_envs != min(n, 16):
            self._eval_envs = make_vec_env(h.env_id, min(n, 16), env_kwargs=h.env_kwargs, record_stats=False)
            seed = self._seed() + 10_000
        else:
            seed = None  # continue the eval env's RNG: fresh start states every evaluation
        self.policy.eval()
        return evaluate_policy(self.policy, self._eval_envs, n, deterministic, self._normalize_eval_obs,
                               self.device, seed)

    # ---- Lightning hooks ---------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        per_rollout = h.num_envs * h.n_steps
        per_epoch = max(1, math.ceil(h.eval_every_steps / per_rollout))
        remaining = lambda: max(0, math.ceil((h.total_timesteps - self.env_steps) / per_rollout))  # noqa: E731
        return DataLoader(RolloutDataset(self.collect_rollout, per_epoch, remaining), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)  # one "batch" = one round of evaluation episodes

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.optimizer_factory(self.policy.parameters())
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return optimizer

    def configure_callbacks(self) -> list[pl.Callback]:
        return [LearningCurve()]

    def on_fit_start(self) -> None:
        if self.hparams.num_threads and self.device.type == "cpu":
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.hparams.num_threads)
        self._t0 = time.perf_counter()
        self._t0_steps = self.env_steps
        self._wall0 = self.wall_time
        self._eval_time = 0.0
        self._episodes: tuple[list[float], list[int]] = ([], [])

    def on_fit_end(self) -> None:
        if self.hparams.async_envs and self._collector is not None:
            self._collector.envs.close()  # stop the worker processes (statistics stay readable)
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def _update_wall_time(self) -> None:
        self.wall_time = self._wall0 + time.perf_counter() - self._t0 - self._eval_time

    def update_schedule(self, optimizer: torch.optim.Optimizer) -> None:
        """Linear LR annealing (subclasses add their own schedules, e.g. PPO's clip range)."""
        if self.hparams.anneal_lr:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * self.progress_remaining()

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

    def stop_early(self, stats: dict[str, list[torch.Tensor]]) -> bool:
        return False

    def _should_log(self) -> bool:
        # self.log costs ~1 ms per key on CPU; only call it on the steps the loggers will write
        connector = getattr(self.trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs or bool(self.trainer.fast_dev_run)

    def _log_update(self, batch: dict[str, torch.Tensor], stats: dict[str, list[torch.Tensor]]) -> None:
        self._update_wall_time()
        returns, lengths = self.collector.pop_episodes()
        if returns:
            self.history["train"].append((self.env_steps, float(np.mean(returns)), self.wall_time))
            self._episodes[0].extend(returns), self._episodes[1].extend(lengths)
        if not self._should_log():
            return
        elapsed = max(1e-9, self.wall_time - self._wall0)
        metrics = {f"train/{k}": torch.stack(v).mean() for k, v in stats.items()}
        metrics["train/explained_variance"] = explained_variance(batch["values"], batch["returns"])
        metrics["time/env_steps"] = float(self.env_steps)
        metrics["time/fps"] = (self.env_steps - self._t0_steps) / elapsed
        metrics.update(self.extra_metrics())
        if self._episodes[0]:  # episodes finished since the last log
            metrics["train/episode_return"] = float(np.mean(self._episodes[0]))
            metrics["train/episode_length"] = float(np.mean(self._episodes[1]))
            self.log("return", metrics["train/episode_return"], prog_bar=True, on_step=True, on_epoch=False,
                     batch_size=1, logger=False)
            self._episodes = ([], [])
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def extra_metrics(self) -> dict[str, float]:
        return {}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.trainer.sanity_checking:
            return  # an untrained policy's evaluation says nothing; save the time
        t = time.perf_counter()
        returns, lengths = self.evaluate()
        self._eval_time += time.perf_counter() - t
        self._update_wall_time()
        mean = float(returns.mean())
        self.history["eval"].append((self.env_steps, mean, self.wall_time))
        self.log_dict({"val/return": mean, "val/return_std": float(returns.std()),
                       "val/episode_length": float(lengths.mean()), "val/env_steps": float(self.env_steps)},
                      batch_size=1, sync_dist=True)
        self.log("val_return", mean, prog_bar=True, logger=False, batch_size=1, sync_dist=True)
        if self.hparams.target_return is not None:
            # under DDP every rank must take the same decision (as EarlyStopping does)
            reached = self.trainer.strategy.reduce_boolean_decision(mean >= self.hparams.target_return, all=False)
            self.trainer.should_stop = self.trainer.should_stop or reached

    def on_train_epoch_end(self) -> None:
        if self.env_steps >= self.hparams.total_timesteps:
            self.trainer.should_stop = True

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs)

    # ---- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        norm = normalization_state(self._collector.envs) if self._collector is not None else (self._pending_norm or {})
        checkpoint["rl"] = {
            "env_steps": self.env_steps, "num_updates": self.num_updates, "wall_time": self.wall_time,
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
            "normalization": {k: {"mean": torch.as_tensor(s["mean"]), "var": torch.as_tensor(s["var"]),
                                  "count": float(s["count"])} for k, s in norm.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("rl")
        if state is None:
            raise KeyError("checkpoint has no 'rl' state (env steps, normalisation statistics); "
                           "it was not written by an rl agent")
        self.env_steps, self.num_updates = int(state["env_steps"]), int(state["num_updates"])
        self.wall_time = float(state["wall_time"])
        self.history = {k: [tuple(p) for p in v] for k, v in state["history"].items()}
        norm = {k: {"mean": s["mean"].numpy(), "var": s["var"].numpy(), "count": s["count"]}
                for k, s in state["normalization"].items()}
        if self._collector is not None:
            load_normalization_state(self._collector.envs, norm)
            self._collector.env_steps = self.env_steps
        else:
            self._pending_norm = norm


class REINFORCE(PolicyGradient):
    """REINFORCE with a learned value baseline: Monte-Carlo returns (``gae_lambda=1``), one
    gradient step per batch of episodes. Long rollouts (``n_steps`` >= episode length) keep the
    returns Monte-Carlo; only truncations and the unfinished tail at a rollout's end bootstrap."""

    def __init__(self, gae_lambda: float = 1.0, n_steps: int = 512, **kwargs: Any) -> None:
        super().__init__(gae_lambda=gae_lambda, n_steps=n_steps, **kwargs)


class A2C(PolicyGradient):
    """Advantage actor-critic: short rollouts, n-step/GAE advantages, one gradient step each
    (RL-Zoo/SB3 defaults: 5 steps, RMSprop lr 7e-4, no advantage normalisation)."""

    def __init__(self, n_steps: int = 5, gae_lambda: float = 1.0, normalize_advantage: bool = False,
                 optimizer: OptimizerCallable | None = None, **kwargs: Any) -> None:
        optimizer = optimizer or (lambda p: torch.optim.RMSprop(p, lr=7e-4, alpha=0.99, eps=1e-5))
        super().__init__(n_steps=n_steps, gae_lambda=gae_lambda, normalize_advantage=normalize_advantage,
                         optimizer=optimizer, **kwargs)


class PPO(PolicyGradient):
    """Proximal policy optimisation: clipped surrogate objective over ``n_epochs`` of minibatches.

    Args (besides ``PolicyGradient``'s):
        clip_range: the ratio clip epsilon; ``anneal_clip`` decays it linearly like the LR.
        clip_range_vf: clip the value change per update (None = unclipped value loss).
        target_kl: stop the epochs of an update early once approx-KL exceeds 1.5x this.
    """

    def __init__(self, clip_range: float = 0.2, anneal_clip: bool = False,
                 clip_range_vf: float | None = None, target_kl: float | None = None, n_epochs: int = 10,
                 batch_size: int | None = 64, n_steps: int = 2048 // 8, **kwargs: Any) -> None:
        super().__init__(n_epochs=n_epochs, batch_size=batch_size, n_steps=n_steps, **kwargs)
        self.clip = clip_range

    def update_schedule(self, optimizer: torch.optim.Optimizer) -> None:
        super().update_schedule(optimizer)
        self.clip = self.hparams.clip_range * (self.progress_remaining() if self.hparams.anneal_clip else 1.0)

    def loss(self, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp, entropy, value = self.policy.evaluate_actions(mb["obs"], mb["actions"])
        adv = self._advantages(mb)
        log_ratio = logp - mb["logprobs"]
        ratio = log_ratio.exp()
        pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.clip, 1 + self.clip)).mean()
        vf_clip = self.hparams.clip_range_vf
        if vf_clip is None:
            v_loss = nn.functional.mse_loss(value, mb["returns"])
        else:
            v_clipped = mb["values"] + (value - mb["values"]).clamp(-vf_clip, vf_clip)
            v_loss = torch.max((value - mb["returns"]) ** 2, (v_clipped - mb["returns"]) ** 2).mean()
        ent = entropy.mean()
        loss = pg_loss + self.hparams.vf_coef * v_loss - self.hparams.ent_coef * ent
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()
            clip_fraction = ((ratio - 1).abs() > self.clip).float().mean()
        return loss, {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": ent, "approx_kl": approx_kl,
                      "clip_fraction": clip_fraction}

    def stop_early(self, stats: dict[str, list[torch.Tensor]]) -> bool:
        target = self.hparams.target_kl
        return target is not None and float(stats["approx_kl"][-1]) > 1.5 * target

    def extra_metrics(self) -> dict[str, float]:
        return {"train/clip_range": self.clip}
