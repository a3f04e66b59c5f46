"""``fusegen export``: a trained model to ONNX or a ``torch.export`` program, checked against PyTorch.

    fusegen export --config experiments/fusion/avmnist-attention.yaml --ckpt_path last
    fusegen export --config experiments/fusion/avmnist-attention.yaml --ckpt_path last --part encoder:audio
    fusegen export --config experiments/rl/ppo-cartpole.yaml --ckpt_path last            # the policy
    fusegen export --config experiments/gan/cdcgan-mnist.yaml --ckpt_path last --format torch-export

``--part``: ``model`` (a fusion model; the default for one), ``encoder:<modality>``, ``policy``
(the default for an RL agent) or ``generator`` (the default for a GAN; its EMA copy when it has
one). Writes ``runs/<experiment>/export/<part>.onnx`` (or ``.pt2``), then runs it on a real
batch (test data; environment observations for a policy; latents and conditions for a
generator) and prints the largest absolute difference from PyTorch (must be <= 1e-4). Input
names and shapes: ``fusion/export.py``. Any other ``--key value`` is a config override.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion import export as fe


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="fusegen export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True,
                        help="a checkpoint file, or 'last' (the newest in runs/<experiment>/checkpoints)")
    parser.add_argument("--format", default="onnx", choices=fe.FORMATS)
    parser.add_argument("--part", default=None, help="model | encoder:<modality> | policy | generator")
    parser.add_argument("--batch_size", type=int, default=8, help="rows of the check batch")
    parser.add_argument("--out", default=None, help="output file (default runs/<experiment>/export/<part>.<ext>)")
    return parser.parse_known_args(argv)


def default_part(model: Any) -> str:
    if hasattr(model, "encoders"):
        return "model"
    if hasattr(model, "policy"):
        return "policy"
    if hasattr(model, "generator"):
        return "generator"
    raise TypeError(f"fusegen export knows fusion models, RL agents and GANs; {type(model).__name__} is none of them")


def first_batch(datamodule: Any, rows: int) -> dict:
    from fusion.explain import select_first

    if datamodule is None:
        raise ValueError("this config has no data: section, and the export check needs a real batch")
    datamodule.prepare_data()
    datamodule.setup("test")
    return select_first(next(iter(datamodule.test_dataloader())), rows)


def observations(agent: Any, rows: int) -> torch.Tensor:
    """``rows`` real observations: the agent's env after seeded resets and a few random steps."""
    from rl import make_env

    env = make_env(agent.hparams.env_id, agent.hparams.get("env_kwargs"), agent.hparams.get("wrappers"))
    obs, _ = env.reset(seed=0)
    seen = []
    for i in range(rows):
        seen.append(np.asarray(obs, dtype=np.float32))
        obs, _, done, truncated, _ = env.step(env.action_space.sample())
        if done or truncated:
            obs, _ = env.reset(seed=i + 1)
    env.close()
    return torch.as_tensor(agent.normalize_observation(np.stack(seen)), dtype=torch.float32)


def exportable(model: Any, part: str, datamodule: Any, rows: int) -> fe.Exportable:
    if part == "model":
        if not hasattr(model, "encoders"):
            raise ValueError(f"--part model exports fusion models; this is {type(model).__name__}: use --part "
                             f"{default_part(model)}")
        from fusion.explain import check_data_modalities

        check_data_modalities(model, datamodule)
        return fe.fusion_exportable(model, first_batch(datamodule, rows))
    if part.startswith("encoder:"):
        return fe.encoder_exportable(model, first_batch(datamodule, rows), part.split(":", 1)[1])
    if part == "policy":
        if not hasattr(model, "policy"):
            raise ValueError(f"--part policy needs an RL agent; this is {type(model).__name__}")
        return fe.policy_exportable(model.policy, observations(model, rows))
    if part == "generator":
        if not hasattr(model, "sampling_generator"):
            raise ValueError(f"--part generator needs a GAN; this is {type(model).__name__}")
        torch.manual_seed(0)
        z = torch.randn(rows, model.nz)
        cond = None
        if model.hparams.condition == "label":
            cond = torch.nn.functional.one_hot(torch.arange(rows) % model.hparams.num_classes,
                                               model.hparams.num_classes).float()
        elif model.hparams.condition is not None:
            with torch.no_grad():
                cond = model.condition_of(first_batch(datamodule, rows))
        return fe.generator_exportable(model.sampling_generator, z, cond)
    raise ValueError(f"--part {part!r}: choose model, encoder:<modality>, policy or generator")


def export(argv: list[str]) -> tuple[Path, float]:
    from experiments.explain import load_trained

    opts, rest = parse(argv)
    model, dm, run_dir = load_trained(rest, opts.ckpt_path, "fusegen export")
    part = opts.part or default_part(model)
    ex = exportable(model, part, dm, opts.batch_size)
    suffix = ".onnx" if opts.format == "onnx" else ".pt2"
    out = Path(opts.out) if opts.out else run_dir / "export" / (part.replace(":", "-") + suffix)
    path, diff = fe.export_and_check(ex, out, opts.format)
    rows = ex.inputs[0].shape[0]
    runtime = "onnxruntime" if opts.format == "onnx" else "the torch.export program"
    print(f"exported {ex.what} to {path} (inputs {', '.join(ex.input_names)}; outputs {', '.join(ex.output_names)})")
    print(f"check: max abs difference from PyTorch on a real batch of {rows}: {diff:.3g} with {runtime} "
          f"(tolerance {fe.TOLERANCE:g})")
    return path, diff


def main(argv: list[str] | None = None) -> int:
    try:
        export(list(sys.argv[1:] if argv is None else argv))
    except (ValueError, TypeError, FileNotFoundError, KeyError, fe.ExportError) as err:
        if os.environ.get("FUSEGEN_DEBUG"):
            raise
        print(f"fusegen export: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
