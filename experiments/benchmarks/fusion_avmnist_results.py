"""AV-MNIST (and SST-2) results of fusegen's fusion models: every config x seed through the CLI.

Each run is ``fusegen fit`` of a shipped config into ``<out>/runs/<key>-s<seed>/`` with a common,
reduced budget (``--epochs`` / ``--train-limit``; ``--epochs config --train-limit 0`` is each
config's own full budget), then ``fusegen test`` of its last checkpoint, also with each modality
removed through the presence mask, and (``--best-val``) of the checkpoint with the best val
accuracy, MultiBench's protocol. Every evaluation writes its own folder
``<run>/<evaluation>/`` (CSV metrics, confusion matrix), which
``python -m experiments.benchmarks.fusion_avmnist_report`` turns into the tables and one JSON line.

Resumable: a run whose evaluations exist is skipped; an interrupted fit continues from its
``last.ckpt`` (Lightning's own ``--ckpt_path last``), so the same command finishes the sweep.

    python -m experiments.benchmarks.fusion_avmnist_results --jobs 2 --threads 1        # every run
    python -m experiments.benchmarks.fusion_avmnist_results --only avmnist-concat --seeds 0
    python -m experiments.benchmarks.fusion_avmnist_report                              # the tables

Choosing a recipe without the test set: ``--validate-only`` evaluates the whole val split instead
of testing; with ``--override="--data.init_args.val_speaker theo"`` the val audio is a second
unseen voice (docs/fusion.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.benchmarks.common import emit, log, parser

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "fusion"

# key -> (config, its own extra CLI overrides, modalities removed at test time for robustness)
AVMNIST_RUNS: dict[str, tuple[str, list[str], list[str]]] = {
    "avmnist-image-only": ("avmnist-image-only.yaml", [], []),
    "avmnist-audio-only": ("avmnist-audio-only.yaml", [], []),
    "avmnist-multibench-lf": ("avmnist-multibench-lf.yaml", [], []),
    "avmnist-concat": ("avmnist-concat.yaml", [], ["audio", "image"]),
    "avmnist-attention": ("avmnist-attention.yaml", [], ["audio", "image"]),
    "avmnist-lowrank": ("avmnist-lowrank.yaml", [], ["audio", "image"]),
    "avmnist-concat+moddrop": ("avmnist-concat.yaml", ["--model.init_args.modality_dropout", "0.3"],
                               ["audio", "image"]),
    # the LF recipe with only the head swapped (not in the default sweep: --only avmnist-multibench-attention)
    "avmnist-multibench-attention": ("avmnist-multibench-attention.yaml", [], ["audio", "image"]),
}
OPTIONAL = ("avmnist-multibench-attention", "synthetic-concat")
SST2_RUNS: dict[str, tuple[str, list[str], list[str]]] = {
    # the from-scratch model needs more passes; the frozen MiniLM only trains its MLP head
    "sst2-text": ("sst2-text.yaml", ["--trainer.max_epochs", "3"], []),
    "sst2-text-minilm": ("sst2-text-minilm.yaml", ["--trainer.max_epochs", "1"], []),
}
# no data files needed: a quick check of the launcher and the report
OTHER_RUNS: dict[str, tuple[str, list[str], list[str]]] = {
    "synthetic-concat": ("synthetic-concat.yaml", [], ["audio"]),
}
RUNS = {**AVMNIST_RUNS, **SST2_RUNS, **OTHER_RUNS}


def budget(key: str, args: argparse.Namespace) -> list[str]:
    """The common budget's CLI overrides for one run key (AV-MNIST data flags only where they apply)."""
    flags = [] if args.epochs == "config" else ["--trainer.max_epochs", str(args.epochs)]
    flags += ["--trainer.limit_val_batches", str(args.val_fraction)]
    if key in AVMNIST_RUNS:
        flags += ["--data.init_args.train_limit", str(args.train_limit or "null"),
                  "--data.init_args.audio_noise", str(args.audio_noise)]
    elif key in SST2_RUNS:
        flags += ["--data.init_args.train_limit", str(args.sst2_train_limit)]
    return flags


def evaluations(key: str, args: argparse.Namespace) -> dict[str, list[str]]:
    """Evaluation folder name -> its extra overrides (``validate`` or ``test`` subcommand)."""
    if args.validate_only:
        return {"validate": ["--trainer.limit_val_batches", "1.0"]}
    evals = {"test": []}
    for modality in RUNS[key][2]:
        evals[f"test-no-{modality}"] = ["--model.init_args.drop_at_test", f"[{modality}]"]
    if args.best_val:
        evals["test-best-val"] = []
    return evals


def fusegen(*cli_args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.cli", *cli_args]


def run_one(key: str, seed: int, args: argparse.Namespace) -> str:
    """Fit (resuming from last.ckpt) and evaluate one config x seed; returns a status line."""
    config, own, _ = RUNS[key]
    name = f"{key}-s{seed}"
    run_dir = Path(args.out) / "runs" / name
    evals = evaluations(key, args)
    if all(list((run_dir / e).glob("csv/version_*/metrics.csv")) for e in evals):
        return "done already"
    common = ["--config", str(CONFIGS / config), "--seed_everything", str(seed),
              "--trainer.default_root_dir", str(Path(args.out) / "runs"),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              *budget(key, args), *own, *shlex.split(args.override)]
    best_val = ["--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
                f"--trainer.callbacks.dirpath={run_dir / 'checkpoints'}", "--trainer.callbacks.monitor=val/acc",
                "--trainer.callbacks.mode=max", "--trainer.callbacks.filename=best-val-{epoch}"]
    steps = [("fit", fusegen("fit", *common, "--experiment", name, "--ckpt_path", "last",
                             *(best_val if args.best_val else [])))]
    for evaluation, extra in evals.items():
        subcommand = "validate" if evaluation == "validate" else "test"
        ckpt = run_dir / "checkpoints" / "last.ckpt"  # test-best-val: replaced once fit has run
        steps.append((evaluation, [*fusegen(subcommand, *common, *extra, "--experiment", f"{name}/{evaluation}"),
                                   "--ckpt_path", str(ckpt)]))
    log_path = Path(args.out) / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    timings = {}
    for label, cmd in steps:
        if label == "test-best-val":
            found = sorted((run_dir / "checkpoints").glob("best-val-*.ckpt"), key=lambda q: q.stat().st_mtime)
            if not found:
                return f"no best-val checkpoint in {run_dir / 'checkpoints'} (was it fitted with --best-val?)"
            cmd[-1] = str(found[-1])
        start = time.perf_counter()
        with log_path.open("a") as f:  # append: a resumed run keeps the log of its earlier attempts
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        timings[label] = round(time.perf_counter() - start, 1)
        if code != 0:
            return f"{label} failed (exit {code}, see {log_path}); the same command resumes it"
    (run_dir / "launcher.json").write_text(json.dumps({"key": key, "seed": seed, "config": config,
                                                       "overrides": own, "seconds": timings}, indent=1))
    return f"ok ({sum(timings.values()):.0f} s)"


def _epochs(value: str) -> str:
    if value != "config" and not (value.isdigit() and int(value) > 0):
        raise argparse.ArgumentTypeError(f"--epochs takes a positive integer or 'config', got {value!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, seeds=[0, 1, 2], threads=1, out="runs/fusion-results")
    p.add_argument("--only", nargs="+", choices=sorted(RUNS), default=None,
                   help="run keys (default: every AV-MNIST and SST-2 run except "
                        f"{', '.join(OPTIONAL)})")
    p.add_argument("--skip-sst2", action="store_true")
    p.add_argument("--epochs", type=_epochs, default="3",
                   help="epochs for every run, or 'config' for each config's own max_epochs")
    p.add_argument("--train-limit", type=int, default=8000, help="first N AV-MNIST training pairs; 0 = all")
    p.add_argument("--best-val", action="store_true",
                   help="also test the checkpoint with the best val accuracy (MultiBench's protocol)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of the val split checked every epoch")
    p.add_argument("--audio-noise", type=float, default=0.0,
                   help="AV-MNIST audio noise (RMS relative to the clip's); 0 = clean audio")
    p.add_argument("--override", default="", help="extra fusegen CLI arguments for every run (one string)")
    p.add_argument("--sst2-train-limit", type=int, default=4000)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one process each)")
    p.add_argument("--validate-only", action="store_true",
                   help="evaluate the whole val split after training; never touch the test set")
    args = p.parse_args(argv)  # --threads goes to each run's OMP_NUM_THREADS, not to this process

    keys = args.only or [k for k in (*AVMNIST_RUNS, *([] if args.skip_sst2 else SST2_RUNS)) if k not in OPTIONAL]
    # Longest runs first so the parallel jobs finish together.
    order = sorted(((k, s) for k in keys for s in args.seeds),
                   key=lambda ks: (ks[0] != "avmnist-multibench-lf", ks[1]))
    start = time.perf_counter()
    statuses = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for (key, seed), status in zip(order, pool.map(lambda ks: run_one(*ks, args), order)):
            log(f"[{time.perf_counter() - start:6.0f} s] {key} seed {seed}: {status}")
            statuses[f"{key}-s{seed}"] = status
    failed = [k for k, s in statuses.items() if "failed" in s]
    emit({"benchmark": "fusion_avmnist_results", "out": args.out, "runs": statuses, "failed": failed,
          "report": f"python -m experiments.benchmarks.fusion_avmnist_report --out {args.out}"})
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
