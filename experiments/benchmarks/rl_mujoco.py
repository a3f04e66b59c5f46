"""fusegen PPO vs Stable-Baselines3 PPO on MuJoCo locomotion, side by side, same settings and seeds.

    .venv/bin/python -m experiments.benchmarks.rl_mujoco                       # HalfCheetah + Hopper, 1M, seed 0
    .venv/bin/python -m experiments.benchmarks.rl_mujoco --envs halfcheetah --steps 200000
    .venv/bin/python -m experiments.benchmarks.rl_mujoco --seeds 0 1 2 --envs halfcheetah hopper walker2d
    .venv/bin/python -m experiments.benchmarks.rl_mujoco --libraries sb3 &   # the SB3 side on the second core

Settings: CleanRL's ``ppo_continuous_action`` (the shipped ``experiments/rl/ppo-<env>.yaml``:
1 env x 2048 steps, 10 epochs x 32 minibatches, Adam 3e-4 annealed, gamma 0.99, GAE 0.95, clip
0.2 for policy and value, obs/reward normalisation clipped at 10, 64-64 tanh, state-independent
log-std). SB3 gets the same through ``PPO(..., clip_range_vf=0.2)`` and ``VecNormalize``. Figure:
the mean training-episode return over the last 100 episodes at the end of the budget (CleanRL's
and SB3's ``ep_info_buffer``), and training wall seconds (evaluation excluded: fusegen's
evaluation runs are turned off here, ``eval_every_steps`` > budget). One torch thread each; runs
alternate fusegen/SB3 per seed so machine load hits both alike.

Resumable: every finished run is one JSON line appended to ``--out/rl_mujoco.jsonl``; a rerun
skips the (env, library, seed, steps) already there. The summary is ONE JSON line on stdout.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from experiments.benchmarks.common import emit, log, parse, parser

REPO = Path(__file__).resolve().parents[2]
ENVS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
CLEANRL = {"halfcheetah": (1442, 46), "hopper": (2383, 272), "walker2d": (2288, 572)}  # v4, 1M steps, 3 seeds


def run_fusegen(env: str, seed: int, steps: int, root: str, backend: str) -> dict[str, Any]:
    from experiments.cli import FusegenCLI

    args = ["fit", "--config", str(REPO / "experiments" / "rl" / f"ppo-{env}.yaml"), "--seed_everything", str(seed),
            "--model.init_args.total_timesteps", str(steps), "--model.init_args.eval_every_steps", str(steps + 1),
            "--model.init_args.num_threads", "1", "--model.init_args.vector_backend", backend,
            "--trainer.default_root_dir", root, "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--experiment", f"bench-{env}-{seed}-{backend}"]
    agent = FusegenCLI(args=args).model
    recent = list(agent.recent_returns)
    return {"last100_return": statistics.fmean(recent) if recent else None, "episodes": len(recent),
            "env_steps": agent.env_steps, "wall_s": agent.wall_time,
            "steps_per_s": agent.env_steps / max(agent.wall_time, 1e-9)}


def run_sb3(env: str, seed: int, steps: int) -> dict[str, Any]:
    import stable_baselines3 as sb3
    import torch
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env(ENVS[env], n_envs=1, seed=seed), gamma=0.99, clip_obs=10.0, clip_reward=10.0)
    model = sb3.PPO("MlpPolicy", venv, n_steps=2048, batch_size=64, n_epochs=10, learning_rate=lambda p: 3e-4 * p,
                    gamma=0.99, gae_lambda=0.95, clip_range=0.2, clip_range_vf=0.2, ent_coef=0.0, vf_coef=0.5,
                    max_grad_norm=0.5, seed=seed, device="cpu", verbose=0,
                    policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh,
                                       log_std_init=0.0, ortho_init=True))
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - t0
    recent = [ep["r"] for ep in model.ep_info_buffer]
    return {"last100_return": statistics.fmean(recent) if recent else None, "episodes": len(recent),
            "env_steps": model.num_timesteps, "wall_s": wall, "steps_per_s": model.num_timesteps / wall}


def main() -> None:
    p = parser(__doc__, seeds=[0], threads=None, out="runs/benchmarks")
    p.add_argument("--envs", nargs="+", choices=sorted(ENVS), default=["halfcheetah", "hopper"])
    p.add_argument("--steps", type=int, default=1_000_000, help="env steps per run (the field's budget: 1M)")
    p.add_argument("--backend", choices=["sync", "async", "envpool"], default="sync", help="fusegen's vector backend")
    p.add_argument("--libraries", nargs="+", choices=["fusegen", "sb3"], default=["fusegen", "sb3"],
                   help="which sides to run (two processes, one library each, use two cores; the JSONL joins them)")
    opts = parse(p)
    import torch

    torch.set_num_threads(1)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = out / "rl_mujoco.jsonl"
    done = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()] if lines.exists() else []
    runs = {(r["env"], r["library"], r["seed"], r["steps"]): r for r in done}
    for env in opts.envs:
        for seed in opts.seeds:
            for library in opts.libraries:
                key = (env, library, seed, opts.steps)
                if key in runs:
                    log(f"[{env}] {library} seed {seed}: already in {lines}")
                    continue
                log(f"[{env}] {library} seed {seed}: {opts.steps} steps ...")
                res = (run_fusegen(env, seed, opts.steps, str(out / "rl_mujoco_runs"), opts.backend)
                       if library == "fusegen" else run_sb3(env, seed, opts.steps))
                row = {"env": env, "library": library, "seed": seed, "steps": opts.steps,
                       "backend": opts.backend if library == "fusegen" else "sb3-dummyvecenv", **res}
                with lines.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                runs[key] = row
                log(f"[{env}] {library} seed {seed}: {row}")
    summary: dict[str, Any] = {"benchmark": "rl_mujoco", "steps": opts.steps, "seeds": opts.seeds, "torch_threads": 1}
    for env in opts.envs:
        per = {lib: [runs[(env, lib, s, opts.steps)] for s in opts.seeds if (env, lib, s, opts.steps) in runs]
               for lib in ("fusegen", "sb3")}
        entry: dict[str, Any] = {"cleanrl_1M_v4": CLEANRL[env]}
        for lib, rows in per.items():
            if rows:
                entry[lib] = {"last100_return": statistics.fmean(r["last100_return"] for r in rows),
                              "wall_s": statistics.fmean(r["wall_s"] for r in rows),
                              "steps_per_s": statistics.fmean(r["steps_per_s"] for r in rows)}
        if "fusegen" in entry and "sb3" in entry:
            entry["return_fusegen_minus_sb3"] = entry["fusegen"]["last100_return"] - entry["sb3"]["last100_return"]
            entry["wall_ratio_fusegen_over_sb3"] = entry["fusegen"]["wall_s"] / entry["sb3"]["wall_s"]
        summary[env] = entry
    emit(summary)


if __name__ == "__main__":
    main()
