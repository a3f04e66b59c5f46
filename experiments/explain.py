"""``fusegen explain``: why a trained fusion model decides, on its test split.

    fusegen explain --config experiments/fusion/avmnist-attention.yaml --ckpt_path last
    fusegen explain --config experiments/ship/sst2-minilm-finetune.yaml --ckpt_path runs/.../last.ckpt --limit 512

Writes to ``runs/<experiment>/explanations/``:

* ``modality_contributions.csv`` / ``.png``: exact Shapley values and leave-one-out accuracy
  drops per modality, one row per class plus ``all`` (``fusion.explain``);
* ``attention_by_class.png`` / ``attention_samples.png``: ``AttentionFusion`` heads only;
* ``attributions.png``: Integrated Gradients, Grad-CAM and token attributions for a few right
  and wrong test samples.

Any other ``--key value`` is a config override, as for ``fusegen fit``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from fusion import explain as ex


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="fusegen explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True,
                        help="a checkpoint file, or 'last' (the newest in runs/<experiment>/checkpoints)")
    parser.add_argument("--limit", type=int, default=None, help="explain only the first N test samples")
    parser.add_argument("--num_correct", type=int, default=2, help="right test samples to attribute")
    parser.add_argument("--num_wrong", type=int, default=2, help="wrong test samples to attribute")
    parser.add_argument("--no_attributions", action="store_true", help="skip the Captum pictures (slowest part)")
    return parser.parse_known_args(argv)


def load_trained(cli_args: list[str], ckpt_path: str, stage_note: str) -> tuple[Any, Any, Path]:
    """The config's model with the checkpoint's weights (read as data), its datamodule and run folder."""
    from experiments.callbacks import load_checkpoint_as_data
    from experiments.cli import FusegenCLI, resolve_last_checkpoint

    with warnings.catch_warnings():  # "args and sys.argv both given": sys.argv is `fusegen explain ...` itself
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
        cli = FusegenCLI(args=[*cli_args, "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"],
                         run=False)
    path = ckpt_path
    if ckpt_path == "last":
        path = resolve_last_checkpoint(cli.run_dir / "checkpoints")
        if path == "last":
            raise FileNotFoundError(f"--ckpt_path last: no checkpoint in {cli.run_dir / 'checkpoints'}; train first "
                                    f"(fusegen fit with the same --config), or pass --ckpt_path FILE")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--ckpt_path {path}: no such file; {stage_note} needs the checkpoint of a trained run "
                                f"(fusegen fit writes runs/<experiment>/checkpoints/last.ckpt), or 'last'")
    state = load_checkpoint_as_data(path, map_location="cpu")["state_dict"]
    model = cli.model
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model of this config ({type(model).__name__}): "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}; pass the --config it was trained with")
    model.eval()
    return model, cli.datamodule, cli.run_dir


def explain(argv: list[str]) -> dict[str, Path]:
    opts, rest = parse(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    model, dm, run_dir = load_trained(rest, opts.ckpt_path, "fusegen explain")
    if not hasattr(model, "encoders"):
        raise TypeError(f"fusegen explain works on fusion models (FusionClassifier and subclasses); this config's "
                        f"model is {type(model).__name__}")
    ex.check_data_modalities(model, dm)
    dm.prepare_data()
    dm.setup("test")
    batches = []
    seen = 0
    for batch in dm.test_dataloader():
        if opts.limit is not None and seen >= opts.limit:
            break
        if opts.limit is not None:
            batch = ex.select_first(batch, opts.limit - seen)
        ex.check_data_modalities(model, None, batch)
        batches.append(batch)
        seen += len(batch["label"])
    names = getattr(dm, "class_names", None)
    out_dir = run_dir / ex.EXPLANATIONS
    written: dict[str, Path] = {}
    modalities = list(model.encoders)
    preds, label = ex.subset_predictions(model, batches, modalities)
    contrib = ex.modality_contributions(preds, label, modalities, names)
    written["csv"], written["chart"] = ex.write_contributions(contrib, out_dir)
    full = frozenset(modalities)
    print(f"test accuracy {contrib.accuracy['all'][full]:.4f} on {contrib.count['all']} samples; "
          f"with no modality {contrib.accuracy['all'][frozenset()]:.4f}")
    for m in modalities:
        print(f"  {m:>10}: Shapley {100 * contrib.shapley['all'][m]:+.2f} points, "
              f"leave-one-out drop {100 * contrib.loo['all'][m]:+.2f} points")
    if hasattr(model.fusion, "modality_attention"):
        by_class, samples = ex.attention_figures(model, batches, names)
        written["attention_by_class"] = ex.save_png(by_class, out_dir / "attention_by_class.png")
        written["attention_samples"] = ex.save_png(samples, out_dir / "attention_samples.png")
    if not opts.no_attributions:
        fig, gaps = ex.attribution_figure(model, batches[0], dm, names, opts.num_correct, opts.num_wrong)
        written["attributions"] = ex.save_png(fig, out_dir / "attributions.png")
        if gaps:
            print(f"  Integrated Gradients completeness gap (max over samples): {max(gaps):.2e}")
    for key, path in written.items():
        print(f"  {key}: {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    import os

    try:
        explain(list(sys.argv[1:] if argv is None else argv))
    except (ValueError, TypeError, FileNotFoundError, KeyError) as err:
        if os.environ.get("FUSEGEN_DEBUG"):
            raise
        print(f"fusegen explain: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
