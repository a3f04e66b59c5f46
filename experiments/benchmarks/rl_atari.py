"""Atari Breakout from pixels and the rollout engine's throughput, fusegen vs Stable-Baselines3.

    .venv/bin/python -m experiments.benchmarks.rl_atari train --steps 1000000          # Breakout, EnvPool
    .venv/bin/python -m experiments.benchmarks.rl_atari throughput                     # steps/s table
    .venv/bin/python -m experiments.benchmarks.rl_atari throughput --envs breakout --procs 1 2

``train``: fusegen PPO with the shipped ``experiments/rl/ppo-breakout.yaml`` (CleanRL ``ppo_atari``
settings: 8 envs x 128 steps, 4 epochs x 4 minibatches, Nature CNN, lr 2.5e-4 annealed, clip
0.1, ent 0.01) for ``--steps`` env steps on ``--backend``; the figure is the mean training-game
score over the last 100 games (whole games: life-loss terminals only shape the targets), beside
random play's mean score over ``--random-episodes`` games (the issue's bar: >= 5x random). SB3's
PPO with the same settings and the same gymnasium Atari envs (``rl.atari``) runs ``--sb3-steps``
env steps (default: as many) for env steps/s side by side. Deterministic evaluation runs once, after
training: ``--eval-episodes`` greedy games capped at ``--eval-max-steps`` agent steps (default
4,500 = 18,000 frames, the "up to 5 minutes of play" of Mnih et al. 2015), because an agent that
never serves the ball plays the whole 108,000-frame v5 limit. Training runs without the config's
periodic evaluation, so steps/s is training time alone on both sides; on a shared machine the
CPU seconds of each side (``steps_per_cpu_s``: the process's CPU time, all its threads; fusegen's
includes the CLI's setup) give the load-independent ratio.

``throughput``: env steps/s of each backend (sync, async, envpool) on Breakout and
HalfCheetah: rollout only (the collector with the untrained policy, no update) and rollout +
update (``fusegen fit`` of the shipped config for ``--updates`` updates), with 1 and 2 DDP
processes on CPU (each rank its own envs; steps/s counts all ranks). The full budgets are flags.

Resumable: each finished measurement is one JSON line appended to ``--out/rl_atari.jsonl``; a rerun
skips those already there. The summary is ONE JSON line on stdout.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from experiments.benchmarks.common import emit, log, parse, parser

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"breakout": "ppo-breakout.yaml", "halfcheetah": "ppo-halfcheetah.yaml"}
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _load(lines: Path) -> dict[str, dict[str, Any]]:
    if not lines.exists():
        return {}
    rows = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def _append(lines: Path, row: dict[str, Any]) -> None:
    with lines.open("a") as f:
        f.write(json.dumps(row) + "\n")


def random_play(n_episodes: int, seed: int) -> float:
    """Mean game score of uniformly random actions (whole games, raw rewards)."""
    import numpy as np

    from rl.envs import make_vec_env

    envs = make_vec_env("ALE/Breakout-v5", min(n_episodes, 8), seed=seed, backend="envpool")
    envs.reset(seed=seed)
    rng, returns = np.random.default_rng(seed), []
    while len(returns) < n_episodes:
        _, _, _, _, info = envs.step(rng.integers(0, envs.single_action_space.n, envs.num_envs))
        if "episode" in info:
            returns += info["episode"]["r"][info["_episode"]].tolist()
    envs.close()
    return float(np.mean(returns[:n_episodes]))


def train_fusegen(steps: int, seed: int, backend: str, root: str, eval_episodes: int,
                  eval_max_steps: int) -> dict[str, Any]:
    import torch

    from experiments.cli import FusegenCLI
    from rl.envs import make_vec_env
    from rl.rollout import evaluate_policy

    cpu0 = time.process_time()
    agent = FusegenCLI(args=["fit", "--config", str(REPO / "experiments/rl/ppo-breakout.yaml"), *QUIET,
                             "--seed_everything", str(seed), "--model.init_args.total_timesteps", str(steps),
                             "--model.init_args.vector_backend", backend, "--model.init_args.num_threads", "1",
                             "--model.init_args.eval_every_steps", str(max(steps // 4, 1024)),
                             "--trainer.limit_val_batches", "0",
                             "--trainer.default_root_dir", root, "--experiment", f"bench-breakout-{seed}"]).model
    cpu = time.process_time() - cpu0
    recent = list(agent.recent_returns)
    row = {"last100_return": statistics.fmean(recent) if recent else None, "games": len(recent),
           "env_steps": agent.env_steps, "wall_s": agent.wall_time,
           "steps_per_s": agent.env_steps / max(agent.wall_time, 1e-9), "cpu_s": cpu,
           "steps_per_cpu_s": agent.env_steps / cpu, "learning_curve": agent.learning_curve_path}
    if eval_episodes:
        envs = make_vec_env("ALE/Breakout-v5", min(eval_episodes, 8), env_kwargs={"max_episode_steps": eval_max_steps},
                            record_stats=False, backend="envpool" if backend == "envpool" else "sync")
        returns, lengths = evaluate_policy(agent.policy.eval(), envs, eval_episodes, True, None, torch.device("cpu"),
                                           seed + 10_000)
        envs.close()
        row.update(eval_returns=returns.tolist(), eval_lengths=lengths.tolist(), eval_max_steps=eval_max_steps)
    return row


def train_sb3(steps: int, seed: int) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np
    import stable_baselines3 as sb3
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rl.atari import make_atari_env
    from rl.envs import register_known_envs

    register_known_envs()

    def make() -> gym.Env:  # the same preprocessing; scores recorded before the reward clipping
        return gym.wrappers.TransformReward(Monitor(make_atari_env("ALE/Breakout-v5")), np.sign)

    venv = DummyVecEnv([make for _ in range(8)])
    venv.seed(seed)
    model = sb3.PPO("CnnPolicy", venv, n_steps=128, batch_size=256, n_epochs=4, learning_rate=lambda p: 2.5e-4 * p,
                    gamma=0.99, gae_lambda=0.95, clip_range=0.1, clip_range_vf=0.1, ent_coef=0.01, vf_coef=0.5,
                    max_grad_norm=0.5, seed=seed, device="cpu", verbose=0)
    t0, cpu0 = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    recent = [ep["r"] for ep in model.ep_info_buffer]
    return {"last100_return": statistics.fmean(recent) if recent else None, "games": len(recent),
            "env_steps": model.num_timesteps, "wall_s": wall, "steps_per_s": model.num_timesteps / wall,
            "cpu_s": cpu, "steps_per_cpu_s": model.num_timesteps / cpu}


def rollout_only(env: str, backend: str, rollouts: int) -> float:
    """Env steps/s of the collector alone (untrained policy of the shipped config, no update)."""
    import torch

    from experiments.cli import FusegenCLI

    agent = FusegenCLI(args=["--config", str(REPO / "experiments/rl" / CONFIGS[env]),
                             "--model.init_args.vector_backend", backend], run=False).model
    collector = agent.runner.collector(0, torch.device("cpu"), 0)
    collector.collect(agent.policy)  # warm-up (env start, first allocations)
    t0 = time.perf_counter()
    for _ in range(rollouts):
        collector.collect(agent.policy)
    wall = time.perf_counter() - t0
    agent.runner.close()
    return rollouts * collector.n_steps * collector.num_envs / wall


def rollout_and_update(env: str, backend: str, updates: int, procs: int, root: Path) -> float:
    """Env steps/s (all ranks) of ``fusegen fit`` for ``updates`` updates per rank, evaluation off."""
    import yaml

    cfg = yaml.safe_load((REPO / "experiments/rl" / CONFIGS[env]).read_text())["model"]["init_args"]
    per_update = cfg["num_envs"] * cfg["n_steps"]
    name = f"tp-{env}-{backend}-{procs}"
    ddp = (["--trainer.strategy", "ddp", "--trainer.devices", str(procs), "--trainer.accelerator", "cpu"]
           if procs > 1 else ["--trainer.accelerator", "cpu", "--trainer.devices", "1"])
    cmd = [sys.executable, "-m", "experiments.cli", "fit", "--config", str(REPO / "experiments/rl" / CONFIGS[env]),
           *QUIET, *ddp, "--model.init_args.vector_backend", backend,
           "--model.init_args.total_timesteps", str(updates * per_update),
           "--model.init_args.eval_every_steps", str(updates * per_update + 1),
           "--model.init_args.env_kwargs", "{max_episode_steps: 1000}" if env == "breakout" else "null",
           "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(root), "--experiment", name]
    subprocess.run(cmd, check=True, cwd=root, stdout=subprocess.DEVNULL)
    metrics = sorted((root / name).glob("csv/version_*/metrics.csv"))[-1]
    with open(metrics, newline="") as f:
        fps = [float(r["time/fps"]) for r in csv.DictReader(f) if r.get("time/fps")]
    return fps[-1]


def main() -> None:
    p = parser(__doc__, seeds=[0], threads=None, out="runs/benchmarks")
    p.add_argument("mode", choices=["train", "throughput"])
    p.add_argument("--steps", type=int, default=1_000_000, help="train: env steps (10M = the field's budget)")
    p.add_argument("--sb3-steps", type=int, default=None, help="train: SB3's env steps (default --steps; 0 = skip)")
    p.add_argument("--libraries", nargs="+", choices=["fusegen", "sb3"], default=["fusegen", "sb3"],
                   help="train: the sides to run (one per process runs them at once; a run with both joins them)")
    p.add_argument("--backend", choices=["sync", "async", "envpool"], default="envpool")
    p.add_argument("--random-episodes", type=int, default=20)
    p.add_argument("--eval-episodes", type=int, default=10, help="train: greedy games after training (0 = none)")
    p.add_argument("--eval-max-steps", type=int, default=4500, help="train: agent steps per evaluation game at most")
    p.add_argument("--envs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    p.add_argument("--backends", nargs="+", choices=["sync", "async", "envpool"], default=["sync", "async", "envpool"])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="throughput: DDP processes on CPU")
    p.add_argument("--rollouts", type=int, default=5, help="throughput: rollouts timed (rollout only)")
    p.add_argument("--updates", type=int, default=5, help="throughput: updates per rank (rollout + update)")
    opts = parse(p)
    import torch

    torch.set_num_threads(1)
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lines = out / "rl_atari.jsonl"
    rows = _load(lines)

    def measure(key: str, fn: Any) -> dict[str, Any]:
        if key in rows:
            log(f"{key}: already in {lines}")
            return rows[key]
        log(f"{key} ...")
        row = {"key": key, "value": fn()}
        _append(lines, row)
        rows[key] = row
        log(f"{key}: {row['value']}")
        return row

    summary: dict[str, Any] = {"benchmark": f"rl_atari {opts.mode}", "torch_threads": 1}
    if opts.mode == "train":
        seed = opts.seeds[0]
        sb3_steps = opts.steps if opts.sb3_steps is None else opts.sb3_steps
        rnd = measure(f"random/{opts.random_episodes}/{seed}", lambda: random_play(opts.random_episodes, seed))
        summary.update(steps=opts.steps, backend=opts.backend, random_return=rnd["value"])
        fg = None
        if "fusegen" in opts.libraries:
            fg = measure(f"fusegen/{opts.backend}/{opts.steps}/{seed}",
                         lambda: train_fusegen(opts.steps, seed, opts.backend, str(out / "rl_atari_runs"),
                                               opts.eval_episodes, opts.eval_max_steps))["value"]
            summary.update(fusegen=fg, return_over_random=(fg["last100_return"] or 0) / max(rnd["value"], 1e-9))
        if sb3_steps and "sb3" in opts.libraries:
            sb = measure(f"sb3/{sb3_steps}/{seed}", lambda: train_sb3(sb3_steps, seed))["value"]
            summary["sb3"] = sb
        if fg is not None and "sb3" in summary:
            sb = summary["sb3"]
            summary.update(steps_per_s_ratio_fusegen_over_sb3=fg["steps_per_s"] / sb["steps_per_s"])
            if "steps_per_cpu_s" in fg and "steps_per_cpu_s" in sb:  # the load-independent twin (CPU seconds)
                summary["steps_per_cpu_s_ratio_fusegen_over_sb3"] = fg["steps_per_cpu_s"] / sb["steps_per_cpu_s"]
    else:
        table = {}
        for env in opts.envs:
            for backend in opts.backends:
                r = measure(f"rollout/{env}/{backend}/{opts.rollouts}",
                            lambda: rollout_only(env, backend, opts.rollouts))["value"]
                table[f"{env}/{backend}/rollout_only"] = round(r, 1)
                for procs in opts.procs:
                    u = measure(f"update/{env}/{backend}/{procs}/{opts.updates}",
                                lambda: rollout_and_update(env, backend, opts.updates, procs, out))["value"]
                    table[f"{env}/{backend}/rollout_update_{procs}proc"] = round(u, 1)
        summary["steps_per_s"] = table
    emit(summary)


if __name__ == "__main__":
    main()
