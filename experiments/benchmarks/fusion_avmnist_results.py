"""AV-MNIST (and SST-2) results of fusegen's fusion models: mean ± std over seeds, robustness.

Every run goes through the shipped configs in ``experiments/fusion/`` and the one CLI
(``FusegenCLI``, in a child process per run), with a reduced, common compute budget set by
``--epochs`` / ``--train-limit`` (the configs' own budgets -- 30 epochs on 55,000 pairs for the
MultiBench recipe -- do not fit a shared 2-core machine; ``--epochs config`` keeps each config's
own epoch count and cuts only the data). Each run writes
``<out>/results/<key>.json`` as soon as it ends, so an interrupted sweep resumes where it stopped.
The parent writes ``<out>/results.md`` (the tables for fusion/README.md) and prints one JSON line.

    .venv/bin/python experiments/benchmarks/fusion_avmnist_results.py --jobs 2          # everything
    .venv/bin/python experiments/benchmarks/fusion_avmnist_results.py --only avmnist-concat --seeds 0
    .venv/bin/python experiments/benchmarks/fusion_avmnist_results.py --report           # tables only

Budgets longer than a session (MultiBench's full one: ``--epochs config --train-limit 0``): with
``--deadline-min M`` every run stops at the last epoch boundary that ends within M minutes of the
start and exits "paused"; running the same command again resumes each paused (or crashed) run from
its ``last.ckpt``. The resumed epochs reshuffle from the seed, so a paused run matches an
uninterrupted one in distribution, not bit for bit; ``fit_s`` adds up every segment.

Choosing a recipe without the test set: ``--validate-only`` reports the last epoch's accuracy on
the whole val split and never tests; with ``--override="--data.init_args.val_speaker theo"`` the
val audio is a second unseen voice, so it measures what the test measures (a new speaker).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "fusion"

# key -> (config, extra CLI overrides, modalities removed at test time for robustness)
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
OPTIONAL = ("avmnist-multibench-attention",)
SST2_RUNS: dict[str, tuple[str, list[str], list[str]]] = {
    # the from-scratch model needs more passes; the frozen MiniLM only trains its MLP head
    "sst2-text": ("sst2-text.yaml", ["--trainer.max_epochs", "3"], []),
    "sst2-text-minilm": ("sst2-text-minilm.yaml", ["--trainer.max_epochs", "1"], []),
}
UNIMODAL = ("avmnist-image-only", "avmnist-audio-only")
PAUSED = 3  # a child's exit code: stopped at the deadline, resumable
FUSION = ("avmnist-concat", "avmnist-attention", "avmnist-lowrank")  # the fusegen heads the targets are about


def _stop_before_deadline(deadline: float, margin: float = 1.25):
    """A callback that stops at an epoch boundary when the next epoch would end after ``deadline``.

    Lightning's own ``Timer`` (``max_time``) stops mid-epoch; stopping between epochs keeps
    ``last.ckpt`` a whole epoch, so the resumed run sees every batch of every epoch.
    """
    from pytorch_lightning.callbacks import Callback

    class StopBeforeDeadline(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.epoch_start = time.time()

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # after this epoch's val + checkpoint
            took = time.time() - self.epoch_start
            if time.time() + margin * took > deadline:
                trainer.should_stop = True

    return StopBeforeDeadline()


def run_one(key: str, seed: int, args: argparse.Namespace) -> dict | None:
    """Fit one config with the reduced budget, then test it (also with modalities removed).

    Returns None when the run paused at ``--deadline-min`` before its last epoch.
    """
    import torch

    from experiments.cli import TRAINER_DEFAULTS, FusegenCLI

    torch.set_num_threads(args.threads)
    table = {**AVMNIST_RUNS, **SST2_RUNS}
    config, overrides, drops = table[key]
    sst2 = key in SST2_RUNS
    cli_args = [
        "--config", str(TRAINER_DEFAULTS),  # explicit (the CLI also loads it for run=False now)
        "--config", str(CONFIGS / config),
        "--experiment", f"{key}-s{seed}",
        "--seed_everything", str(seed),
        "--trainer.default_root_dir", str(Path(args.out) / "runs"),
        # --epochs config: each config's own max_epochs
        *(["--trainer.max_epochs", str(args.sst2_epochs)] if sst2 else
          [] if args.epochs == "config" else ["--trainer.max_epochs", str(args.epochs)]),
        "--trainer.limit_val_batches", str(args.val_fraction),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        # --train-limit 0: every training pair
        "--data.init_args.train_limit", str(args.sst2_train_limit if sst2 else (args.train_limit or "null")),
        *([] if sst2 else ["--data.init_args.audio_noise", str(args.audio_noise)]),
        *overrides,
        *([] if sst2 else shlex.split(args.override)),
    ]
    cli = FusegenCLI(args=cli_args, run=False)
    best = None
    if args.best_val:  # MultiBench's protocol: keep the epoch with the best val accuracy, test that too
        from pytorch_lightning.callbacks import ModelCheckpoint

        best = ModelCheckpoint(dirpath=cli.trainer.checkpoint_callback.dirpath, filename="best-val-{epoch}",
                               monitor="val/acc", mode="max")
        cli.trainer.callbacks.append(best)
    if args.deadline_ts:
        cli.trainer.callbacks.append(_stop_before_deadline(args.deadline_ts))
    # An earlier segment of this run (paused at a deadline, or crashed) left a whole-epoch last.ckpt.
    last = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    segments_file = Path(args.out) / "logs" / f"{key}-s{seed}.segments.json"
    segments = json.loads(segments_file.read_text()) if last.is_file() and segments_file.is_file() else []
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(last) if last.is_file() else None)
    segments.append({"to_epoch": cli.trainer.current_epoch, "fit_s": round(time.perf_counter() - start, 1)})
    segments_file.parent.mkdir(parents=True, exist_ok=True)
    segments_file.write_text(json.dumps(segments))
    if cli.trainer.current_epoch < cli.trainer.max_epochs:
        print(f"{key} seed {seed}: paused after epoch {cli.trainer.current_epoch} of {cli.trainer.max_epochs} "
              f"(deadline); {last} resumes it", file=sys.stderr)
        return None
    row = {"key": key, "seed": seed, "config": f"experiments/fusion/{config}", "overrides": overrides,
           "epochs": cli.trainer.current_epoch, "train_samples": len(cli.datamodule.splits["train"])
           if hasattr(cli.datamodule, "splits") else None,
           "fit_s": round(sum(seg["fit_s"] for seg in segments), 1), "segments": len(segments)}
    if args.validate_only:  # recipe selection: the whole val split, the test set untouched
        cli.trainer.limit_val_batches = 1.0
        metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        return {**row, "val_acc": float(metrics["val/acc"]), "val_f1": float(metrics["val/f1"]),
                "override": args.override}
    for drop in [[], *[[m] for m in drops]]:
        cli.model.drop_at_test = drop
        metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        name = "full" if not drop else f"no-{drop[0]}"
        row[f"acc_{name}"] = float(metrics["test/acc"])
        row[f"f1_{name}"] = float(metrics["test/f1"])
    row["confusion_png"] = str(cli.model.run_dir() / "confusion_matrix.png")
    if best is not None:
        cli.model.drop_at_test = []
        metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best.best_model_path,
                                   verbose=False)[0]
        row.update(acc_best=float(metrics["test/acc"]), f1_best=float(metrics["test/f1"]),
                   best_val_acc=float(best.best_model_score), best_ckpt=best.best_model_path)
    return row


def _child(key: str, seed: int, args: argparse.Namespace) -> tuple[str, int, str]:
    out = Path(args.out) / "results" / f"{key}-s{seed}.json"
    if out.is_file():
        return key, seed, "cached"
    log = Path(args.out) / "logs" / f"{key}-s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--single", key, "--single-seed", str(seed), *args.passthrough]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if args.deadline_ts and time.time() > args.deadline_ts - 60:  # too late to start a run
        return key, seed, "not started (deadline); the same command starts it"
    with log.open("a") as f:  # append: a resumed run keeps the log of its earlier segments
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if code == PAUSED:
        return key, seed, "paused (deadline); the same command resumes it from last.ckpt"
    return key, seed, "ok" if code == 0 else f"failed (exit {code}, see {log})"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    pct = [100 * v for v in values]
    sd = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.mean(pct):.1f} ± {sd:.1f} (n={len(pct)})"


def report(args: argparse.Namespace) -> dict:
    rows: dict[str, list[dict]] = {}
    for p in sorted((Path(args.out) / "results").glob("*.json")):
        r = json.loads(p.read_text())
        rows.setdefault(r["key"], []).append(r)

    def accs(key: str, col: str = "acc_full") -> list[float]:
        return [r[col] for r in rows.get(key, []) if col in r]

    def mean(key: str, col: str = "acc_full") -> float | None:
        a = accs(key, col)
        return 100 * statistics.mean(a) if a else None

    if args.validate_only:
        return report_validation(rows, args)
    noise = f"audio noise {args.audio_noise:g}x the clip RMS" if args.audio_noise else "clean audio"
    pairs = f"the first {args.train_limit}" if args.train_limit else "all 55,000"
    epochs = "each config's own epochs (the epochs column)" if args.epochs == "config" \
        else f"{args.epochs} epochs"
    budget = (f"{noise}; {epochs} on {pairs} AV-MNIST training pairs, val on "
              f"{args.val_fraction:.0%} of the 5,000 val pairs, test on all 10,000 test pairs, last-epoch weights"
              f"{' and the best-val checkpoint' if args.best_val else ''}")
    lines = ["| model | config | epochs | test accuracy % (mean ± std) | macro-F1 % | best-val checkpoint: test % | "
             "fit s/run |", "|---|---|---|---|---|---|---|"]
    for key in AVMNIST_RUNS:
        if key in rows:
            fit = statistics.mean(r["fit_s"] for r in rows[key])
            per_seed = " / ".join(f"{100 * a:.1f}" for a in accs(key))
            lines.append(f"| {key} | `{rows[key][0]['config']}` {' '.join(rows[key][0]['overrides'])} | "
                         f"{rows[key][0]['epochs']} | {_mean_std(accs(key))} ({per_seed}) | {_mean_std(accs(key, 'f1_full'))} | "
                         f"{_mean_std(accs(key, 'acc_best'))} | {fit:.0f} |")
    lines += ["", "Robustness (test accuracy %, modality removed at test time through the presence mask):", "",
              "| model | both | audio removed | image removed |", "|---|---|---|---|"]
    for key, (_, _, drops) in AVMNIST_RUNS.items():
        if key in rows and drops:
            lines.append(f"| {key} | {_mean_std(accs(key))} | {_mean_std(accs(key, 'acc_no-audio'))} | "
                         f"{_mean_std(accs(key, 'acc_no-image'))} |")
    if any(k in rows for k in SST2_RUNS):
        lines += ["", f"SST-2 dev accuracy % (first {args.sst2_train_limit} training sentences):", "",
                  "| model | config | epochs | dev accuracy % |", "|---|---|---|---|"]
        for key in SST2_RUNS:
            if key in rows:
                lines.append(f"| {key} | `{rows[key][0]['config']}` | {rows[key][0]['epochs']} | "
                             f"{_mean_std(accs(key))} |")

    best_uni = max((mean(k) for k in UNIMODAL if mean(k) is not None), default=None)
    fusion_means = {k: mean(k) for k in FUSION if mean(k) is not None}
    lf = mean("avmnist-multibench-lf")
    targets = {}
    if best_uni is not None and fusion_means:
        targets["every_fusion_beats_best_unimodal_by_5"] = all(v - best_uni >= 5 for v in fusion_means.values())
    if lf is not None and fusion_means:
        targets["best_fusion_beats_multibench_lf_by_3"] = max(fusion_means.values()) - lf >= 3
    best_means = {k: mean(k, "acc_best") for k in FUSION if mean(k, "acc_best") is not None}
    lf_best = accs("avmnist-multibench-lf", "acc_best")
    if lf_best and best_means:  # best-val checkpoints; also against LF's median seed (robust to one bad seed)
        gap = max(best_means.values()) - mean("avmnist-multibench-lf", "acc_best")
        gap_median = max(best_means.values()) - 100 * statistics.median(lf_best)
        targets["best_val_gap_to_lf_mean"], targets["best_val_gap_to_lf_median"] = round(gap, 2), round(gap_median, 2)
        targets["best_val_fusion_beats_multibench_lf_by_3"] = gap >= 3 and gap_median >= 3
    lines += ["", f"Budget: {budget}. Targets: {json.dumps(targets)}"]
    md = "\n".join(lines) + "\n"
    (Path(args.out) / "results.md").write_text(md)
    print(md, file=sys.stderr)
    summary = {"benchmark": "fusion_avmnist_results", "budget": budget,
               "acc_best_val_mean": {k: round(mean(k, "acc_best"), 2) for k in AVMNIST_RUNS
                                     if mean(k, "acc_best") is not None},
               "acc_mean": {k: round(mean(k), 2) for k in {**AVMNIST_RUNS, **SST2_RUNS} if mean(k) is not None},
               "acc_no_audio_mean": {k: round(mean(k, "acc_no-audio"), 2) for k in AVMNIST_RUNS
                                     if mean(k, "acc_no-audio") is not None},
               "acc_no_image_mean": {k: round(mean(k, "acc_no-image"), 2) for k in AVMNIST_RUNS
                                     if mean(k, "acc_no-image") is not None},
               "best_unimodal": best_uni, "multibench_lf": lf, "targets": targets,
               "markdown": str(Path(args.out) / "results.md")}
    return summary


def report_validation(rows: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    """The --validate-only table: last-epoch accuracy on the whole val split per run key."""
    lines = [f"Validation only ({args.override or 'default val split'}; {args.epochs} epochs on "
             f"{args.train_limit} pairs, audio noise {args.audio_noise:g}):", "",
             "| model | val accuracy % (mean ± std) | per seed |", "|---|---|---|"]
    summary = {}
    for key, rs in rows.items():
        accs = [r["val_acc"] for r in rs if "val_acc" in r]
        lines.append(f"| {key} | {_mean_std(accs)} | {' / '.join(f'{100 * a:.1f}' for a in accs)} |")
        summary[key] = round(100 * statistics.mean(accs), 2) if accs else None
    md = "\n".join(lines) + "\n"
    (Path(args.out) / "results.md").write_text(md)
    print(md, file=sys.stderr)
    return {"benchmark": "fusion_avmnist_results", "validate_only": True, "override": args.override,
            "val_acc_mean": summary, "markdown": str(Path(args.out) / "results.md")}


def _epochs(value: str) -> str:
    if value != "config" and not (value.isdigit() and int(value) > 0):
        raise argparse.ArgumentTypeError(f"--epochs takes a positive integer or 'config', got {value!r}")
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/fusion-results", help="results, logs and run folders go here")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", default=None, help="run keys to run (default: all AV-MNIST + SST-2)")
    p.add_argument("--skip-sst2", action="store_true")
    p.add_argument("--epochs", type=_epochs, default="3",
                   help="epochs for every AV-MNIST run, or 'config' for each config's own max_epochs")
    p.add_argument("--train-limit", type=int, default=8000, help="first N AV-MNIST training pairs; 0 = all")
    p.add_argument("--best-val", action="store_true",
                   help="also test the checkpoint with the best val accuracy (MultiBench's protocol)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--audio-noise", type=float, default=0.0,
                   help="AV-MNIST audio noise (RMS relative to the clip's); 0 = clean audio")
    p.add_argument("--override", default="", help="extra CLI arguments for every AV-MNIST run (one string)")
    p.add_argument("--sst2-epochs", type=int, default=1, help="(the SST-2 runs set their own epochs)")
    p.add_argument("--sst2-train-limit", type=int, default=4000)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (child processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--report", action="store_true", help="only aggregate existing results")
    p.add_argument("--validate-only", action="store_true",
                   help="record the last epoch's accuracy on the whole val split; never touch the test set")
    p.add_argument("--deadline-min", type=float, default=None,
                   help="pause every run at the last epoch boundary within this many minutes (resumable)")
    p.add_argument("--deadline-ts", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--single", help=argparse.SUPPRESS)
    p.add_argument("--single-seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.deadline_min is not None:
        if args.deadline_min <= 0:
            p.error(f"--deadline-min takes a positive number of minutes, got {args.deadline_min:g}")
        args.deadline_ts = time.time() + 60 * args.deadline_min
    budget_flags = ["--out", args.out, "--epochs", str(args.epochs), "--train-limit", str(args.train_limit),
                    "--val-fraction", str(args.val_fraction),
                    "--audio-noise", str(args.audio_noise), f"--override={args.override}", "--sst2-epochs", str(args.sst2_epochs),
                    "--sst2-train-limit", str(args.sst2_train_limit), "--threads", str(args.threads),
                    *(["--validate-only"] if args.validate_only else []), *(["--best-val"] if args.best_val else []),
                    *(["--deadline-ts", repr(args.deadline_ts)] if args.deadline_ts else [])]
    args.passthrough = budget_flags

    if args.single:
        row = run_one(args.single, args.single_seed, args)
        if row is None:
            sys.exit(PAUSED)
        out = Path(args.out) / "results" / f"{args.single}-s{args.single_seed}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(row, indent=1))
        return

    if not args.report:
        keys = args.only or [*(k for k in AVMNIST_RUNS if k not in OPTIONAL), *([] if args.skip_sst2 else SST2_RUNS)]
        unknown = [k for k in keys if k not in {**AVMNIST_RUNS, **SST2_RUNS}]
        if unknown:
            raise SystemExit(f"unknown run keys {unknown}; valid: {[*AVMNIST_RUNS, *SST2_RUNS]}")
        # Longest runs first so the parallel jobs finish together.
        order = sorted(((k, s) for k in keys for s in args.seeds),
                       key=lambda ks: (ks[0] != "avmnist-multibench-lf", ks[1]))
        start = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            for key, seed, status in pool.map(lambda ks: _child(ks[0], ks[1], args), order):
                print(f"[{time.perf_counter() - start:6.0f}s] {key} seed {seed}: {status}", file=sys.stderr, flush=True)
    print(json.dumps(report(args)))


if __name__ == "__main__":
    main()
