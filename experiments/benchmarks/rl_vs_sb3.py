"""fusegen's policy-gradient agents vs Stable-Baselines3, side by side, matched settings and seeds.

    .venv/bin/python -m experiments.benchmarks.rl_vs_sb3            # PPO CartPole-v1, 3 seeds
    .venv/bin/python -m experiments.benchmarks.rl_vs_sb3 --all      # + A2C, REINFORCE, PPO Pendulum-v1

Protocol (the same for both libraries): train with the RL-Zoo settings of the shipped config
(``experiments/rl/*.yaml``); every ``eval_every`` env steps, after an update, run 10
deterministic (greedy / mean-action) evaluation episodes on a separate env; stop at the first
evaluation whose mean return reaches the target. Wall seconds are training time from the start
of learning, evaluation time excluded; env steps/s = env steps / those seconds. fusegen runs
through the ``fusegen fit`` CLI with the shared trainer config (TensorBoard + CSV loggers,
checkpointing, progress bar off); both use one torch thread. Runs alternate fusegen/SB3 per
seed so machine load hits both alike; figures are medians over seeds. Progress goes to stderr,
ONE JSON line to stdout.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.benchmarks.common import emit, log, parse, parser

REPO = Path(__file__).resolve().parents[2]


def first_reach(history: list[tuple[float, float, float]], target: float) -> tuple[float | None, float | None]:
    for steps, ret, wall in history:
        if ret >= target:
            return steps, wall
    return None, None


def run_fusegen(config: str, seed: int, target: float, eval_every: int, root: str) -> dict[str, Any]:
    """One ``fusegen fit`` of a shipped config; its ``total_timesteps`` is the budget (and the
    annealing horizon, as SB3's ``learn(total_timesteps)``)."""
    from experiments.cli import FusegenCLI

    budget = _config_total(config)

    args = ["fit", "--config", str(REPO / "experiments" / "rl" / config), "--seed_everything", str(seed),
            "--model.init_args.target_return", str(target), "--model.init_args.eval_every_steps", str(eval_every),
            "--model.init_args.n_eval_episodes", "10", "--model.init_args.num_threads", "1",
            "--trainer.max_epochs", str(budget // eval_every + 2), "--trainer.default_root_dir", root,
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--experiment", f"{Path(config).stem}-{seed}"]
    agent = FusegenCLI(args=args).model
    history = agent.history["eval"]
    steps, wall = first_reach(history, target)
    return {"steps_to_target": steps, "wall_s_to_target": wall, "final_eval": history[-1][1] if history else None,
            "best_eval": max((r for _, r, _ in history), default=None), "env_steps": agent.env_steps,
            "steps_per_s": agent.env_steps / max(agent.wall_time, 1e-9)}


def _config_total(config: str) -> int:
    import yaml

    return int(yaml.safe_load((REPO / "experiments" / "rl" / config).read_text())["model"]["init_args"]
               ["total_timesteps"])


def run_sb3(algo: str, env_id: str, seed: int, target: float, budget: int, eval_every: int,
            kwargs: dict[str, Any], n_envs: int, total: int) -> dict[str, Any]:
    import stable_baselines3 as sb3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    class EvalAfterUpdate(BaseCallback):
        """Evaluates when a rollout starts, i.e. right after the previous update (as fusegen does)."""

        def __init__(self) -> None:
            super().__init__()
            self.history: list[tuple[float, float, float]] = []
            self.next_eval, self.eval_time, self.stop = eval_every, 0.0, False
            self.eval_env = make_vec_env(env_id, n_envs=10, seed=seed + 10_000)

        def _on_training_start(self) -> None:
            self.t0 = time.perf_counter()

        def _on_rollout_start(self) -> None:
            if self.num_timesteps < self.next_eval:
                return
            self.next_eval += eval_every
            t = time.perf_counter()
            returns, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=10, deterministic=True,
                                         return_episode_rewards=True)
            self.eval_time += time.perf_counter() - t
            wall = time.perf_counter() - self.t0 - self.eval_time
            mean = float(sum(returns) / len(returns))
            self.history.append((self.num_timesteps, mean, wall))
            self.stop = mean >= target or self.num_timesteps >= budget

        def _on_step(self) -> bool:
            return not self.stop

    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = getattr(sb3, algo)("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
    cb = EvalAfterUpdate()
    model.learn(total_timesteps=total, callback=cb)
    wall = time.perf_counter() - cb.t0 - cb.eval_time
    steps, wall_t = first_reach(cb.history, target)
    return {"steps_to_target": steps, "wall_s_to_target": wall_t,
            "final_eval": cb.history[-1][1] if cb.history else None,
            "best_eval": max((r for _, r, _ in cb.history), default=None), "env_steps": model.num_timesteps,
            "steps_per_s": model.num_timesteps / max(wall, 1e-9)}


def linear(start: float):
    return lambda progress_remaining: progress_remaining * start


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r[key] is not None]
    return statistics.median(vals) if len(vals) == len(rows) and vals else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"steps_to_target": median(rows, "steps_to_target"), "wall_s_to_target": median(rows, "wall_s_to_target"),
            "steps_per_s": median(rows, "steps_per_s"), "solved": sum(r["steps_to_target"] is not None for r in rows),
            "per_seed": rows}


TASKS = ["ppo_cartpole", "a2c_cartpole", "reinforce_cartpole", "ppo_pendulum"]


def main() -> None:
    p = parser(__doc__, seeds=[0, 1, 2], threads=None)  # one torch thread for both libraries, fixed
    p.add_argument("--all", action="store_true", help="also A2C, REINFORCE (CartPole) and PPO Pendulum-v1")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=None,
                        help=f"run only these (default: ppo_cartpole; --all: {' '.join(TASKS)})")
    p.add_argument("--no-sb3-extra", action="store_true", help="with --all: skip SB3 runs beyond PPO CartPole")
    opts = parse(p)
    tasks = opts.tasks or (TASKS if opts.all else ["ppo_cartpole"])
    import torch

    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="rl_vs_sb3-")
    result: dict[str, Any] = {"benchmark": "rl_vs_sb3", "seeds": opts.seeds, "torch_threads": 1}

    # PPO CartPole-v1, RL-Zoo settings (experiments/rl/ppo-cartpole.yaml)
    ppo_cp = dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                  learning_rate=linear(1e-3), clip_range=linear(0.2))
    fg, sb = [], []
    for seed in opts.seeds if "ppo_cartpole" in tasks else []:
        fg.append(run_fusegen("ppo-cartpole.yaml", seed, 475, 2048, root))
        log(f"[ppo-cartpole] fusegen seed {seed}: {fg[-1]}")
        sb.append(run_sb3("PPO", "CartPole-v1", seed, 475, 100_000, 2048, ppo_cp, 8, 100_000))
        log(f"[ppo-cartpole] sb3     seed {seed}: {sb[-1]}")
    f, s = summarize(fg), summarize(sb)
    result["ppo_cartpole"] = None if not fg else {
        "target": 475, "fusegen": f, "sb3": s,
        "wall_ratio_fusegen_over_sb3": (f["wall_s_to_target"] / s["wall_s_to_target"]
                                        if f["wall_s_to_target"] and s["wall_s_to_target"] else None),
        "steps_ratio_fusegen_over_sb3": (f["steps_to_target"] / s["steps_to_target"]
                                         if f["steps_to_target"] and s["steps_to_target"] else None),
        "fusegen_solved_all_within_50k": all(r["steps_to_target"] is not None and r["steps_to_target"] <= 50_000
                                             for r in fg),
    }

    if "a2c_cartpole" in tasks:
        a2c = [run_fusegen("a2c-cartpole.yaml", seed, 475, 5000, root) for seed in opts.seeds]
        log(f"[a2c-cartpole] fusegen: {a2c}")
        result["a2c_cartpole"] = {"target": 475, "budget": 200_000, "fusegen": summarize(a2c),
                                  "flag_reached_within_200k": all(r["steps_to_target"] is not None for r in a2c)}
        if not opts.no_sb3_extra:
            sb_a2c = [run_sb3("A2C", "CartPole-v1", seed, 475, 200_000, 5000, dict(ent_coef=0.0), 8, 500_000)
                      for seed in opts.seeds]
            log(f"[a2c-cartpole] sb3: {sb_a2c}")
            result["a2c_cartpole"]["sb3"] = summarize(sb_a2c)
    if "reinforce_cartpole" in tasks:
        rf = [run_fusegen("reinforce-cartpole.yaml", seed, 475, 10_000, root) for seed in opts.seeds]
        log(f"[reinforce-cartpole] fusegen: {rf}")
        result["reinforce_cartpole"] = {"target": 475, "budget": 500_000, "fusegen": summarize(rf)}
    if "ppo_pendulum" in tasks:
        pend = [run_fusegen("ppo-pendulum.yaml", seed, -250, 8192, root) for seed in opts.seeds]
        log(f"[ppo-pendulum] fusegen: {pend}")
        result["ppo_pendulum"] = {"target": -250, "budget": 200_000, "fusegen": summarize(pend),
                                  "flag_reached_within_200k": all(r["steps_to_target"] is not None for r in pend)}
    emit(result)


if __name__ == "__main__":
    main()
