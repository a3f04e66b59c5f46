"""The RL part of ``make demo``: a short real PPO run on CartPole-v1 through the CLI config.

``run(out_dir)`` trains ``experiments/rl/ppo-cartpole.yaml`` (RL-Zoo settings) until the greedy
evaluation return reaches 500 or 40k env steps pass (~20 s of training on 2 idle cores, plus
start-up), and returns the figures with the learning-curve PNG written under ``out_dir``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "rl" / "ppo-cartpole.yaml"


def run(out_dir: Path) -> list[dict]:
    from experiments.cli import FusegenCLI

    out_dir = Path(out_dir)
    cli = FusegenCLI(args=["fit", "--config", str(CONFIG), "--trainer.default_root_dir", str(out_dir),
                           "--trainer.max_epochs", "20", "--trainer.enable_progress_bar", "false",
                           "--trainer.enable_model_summary", "false"])
    agent = cli.model
    evals = agent.history["eval"]
    final_return = evals[-1][1] if evals else float("nan")
    reached = next(((steps, wall) for steps, ret, wall in evals if ret >= 475), None)
    picture = ""
    if agent.learning_curve_path:
        picture = str(out_dir / "rl-ppo-cartpole-learning-curve.png")
        shutil.copyfile(agent.learning_curve_path, picture)
    name = "RL: PPO on CartPole-v1 (gymnasium, Lightning trainer)"
    return [
        {"capability": name, "experiment": "ppo-cartpole", "metric": "greedy eval return (10 episodes)",
         "value": round(final_return, 1), "target": ">= 475 (max 500)", "picture": picture},
        {"capability": name, "experiment": "ppo-cartpole", "metric": "env steps to eval return >= 475",
         "value": int(reached[0]) if reached else f"not reached in {agent.env_steps}", "target": "<= 50000",
         "picture": ""},
        {"capability": name, "experiment": "ppo-cartpole", "metric": "training seconds to >= 475 (eval excluded)",
         "value": round(reached[1], 1) if reached else "n/a", "target": "SB3 PPO: ~15 s (50k steps)",
         "picture": ""},
        {"capability": name, "experiment": "ppo-cartpole", "metric": "env steps / s (rollout + update)",
         "value": round(agent.env_steps / max(agent.wall_time, 1e-9)), "target": "", "picture": ""},
    ]


if __name__ == "__main__":
    import json
    import sys

    for row in run(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")):
        print(json.dumps(row))
