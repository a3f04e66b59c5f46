"""The RL part of ``make demo``: a short PPO run on CartPole-v1 through the shipped config.

``experiments/rl/ppo-cartpole.yaml`` (RL-Zoo settings) until the greedy evaluation return reaches
500 or ``max_epochs`` evaluations of 2,048 env steps pass (~20 s of training on 2 idle cores, plus
start-up). Needs no data; the learning curve lands in the run's pictures.
"""

from __future__ import annotations

from pathlib import Path

from experiments.demos import CONFIGS, DataSource, row, run_experiment, step

CONFIG = CONFIGS / "rl" / "ppo-cartpole.yaml"


def run(out_dir: Path, data: DataSource, max_epochs: int = 20) -> list[dict]:
    experiment = "demo-rl-ppo-cartpole"
    with step(f"RL: training PPO on CartPole-v1 (up to {max_epochs} x 2,048 env steps, stops at return 500)"):
        run = run_experiment(CONFIG, ["--trainer.max_epochs", str(max_epochs)], out_dir, experiment)
    evals = [(r["val/env_steps"], r["val/return"]) for r in run.metrics() if "val/return" in r]
    reached = next((steps for steps, ret in evals if ret >= 475), None)
    name = "RL: PPO on CartPole-v1 (gymnasium, Lightning trainer)"
    source = DataSource("none", "none needed (gymnasium)")
    experiment_name = f"{CONFIG.relative_to(CONFIGS.parent)} (max {max_epochs} evaluations)"
    return [
        row(name, experiment_name, source, "greedy eval return (10 episodes)",
            round(evals[-1][1], 1) if evals else "n/a", ">= 475 (max 500)", run.pictures()),
        row(name, experiment_name, source, "env steps to eval return >= 475",
            int(reached) if reached is not None else f"not reached in {int(evals[-1][0]) if evals else 0}",
            "<= 50000"),
        row(name, experiment_name, source, "env steps / s (rollout + update)", round(run.last("time/fps")), ""),
        row(name, experiment_name, source, "fit seconds (incl. evaluation)", round(run.fit_seconds, 1), ""),
    ]
