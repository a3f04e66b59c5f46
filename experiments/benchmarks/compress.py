"""Compression table: teacher, distilled student, int8 and 50% / 80% pruned models, side by side.

    python -m experiments.benchmarks.compress                      # both models, the budgets below
    python -m experiments.benchmarks.compress --models minilm --minilm-train-limit 2000 --threads 1

Prints one JSON line per model (``avmnist``: AV-MNIST attention fusion; ``minilm``: MiniLM fine-tuned on
SST-2) with, per variant: parameters (non-zero ones for pruned models), size on disk (``torch.save`` of
the state dict; pruned also as sparse tensors), CPU latency per batch of 32 and of 1 (medians over
``--repeats``, the variants timed in alternation so machine load hits them alike), and test accuracy
(SST-2: the dev set). Variants:

* ``teacher``: the config trained for the budget (``experiments/fusion/avmnist-attention.yaml``,
  ``experiments/ship/sst2-minilm-finetune.yaml``);
* ``student``: distilled from it (``experiments/ship/*-student.yaml``);
* ``int8_ao`` / ``int8_torchao``: the teacher after dynamic int8 quantisation of its Linear layers
  (``torch.ao.quantization.quantize_dynamic`` / torchao ``Int8DynamicActivationInt8WeightConfig``);
* ``pruned50`` / ``pruned80``: trained with ``experiments/presets/pruning.yaml`` (global L1, cubic schedule)
  for the teacher's budget, pruning in the window of ``pruning_window`` so the last epoch(s) recover from
  the final pruning step.

Targets checked: student <= 1/4 of the teacher's parameters within 1.5 points; int8 MiniLM within
1 point of fp32 and >= 1.5x faster per batch of 32. Trained runs are kept under ``--out`` and reused when
they finished with the same overrides (``--retrain`` to redo), so an interrupted benchmark resumes where it
stopped and a changed budget trains afresh; ``--train-only`` trains runs without measuring, e.g. the two
pruned runs in parallel processes while the teacher trains.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fusion.compress import parameter_count, quantize_int8, size_on_disk, sparsity
from fusion.explain import select_first

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    "avmnist": {"teacher": REPO / "experiments/fusion/avmnist-attention.yaml",
                "student": REPO / "experiments/ship/avmnist-attention-student.yaml"},
    "minilm": {"teacher": REPO / "experiments/ship/sst2-minilm-finetune.yaml",
               "student": REPO / "experiments/ship/sst2-minilm-student.yaml"},
}
PRUNING = REPO / "experiments/presets/pruning.yaml"
VARIANTS = ("teacher", "student", "int8_ao", "int8_torchao", "pruned50", "pruned80")


def epochs(name: str, args: argparse.Namespace) -> int:
    return args.avmnist_epochs if name == "avmnist" else args.minilm_epochs


def budget_overrides(name: str, args: argparse.Namespace, max_epochs: int | None = None) -> list[str]:
    limit = args.avmnist_train_limit if name == "avmnist" else args.minilm_train_limit
    return ["--data.init_args.train_limit", str(limit), "--trainer.max_epochs", str(max_epochs or epochs(name, args)),
            "--trainer.limit_val_batches", "4" if name == "avmnist" else "2"]


def pruning_window(max_epochs: int) -> tuple[int, int]:
    """``(start_epoch, end_epoch)`` of the sparsity schedule for a run of ``max_epochs``: dense for the
    first quarter, the last pruning step before the final quarter (at least one epoch), which then
    recovers from it. Pruning at the very end leaves the last cut's damage untrained (Zhu & Gupta
    prune over a window and keep training after it)."""
    if max_epochs < 2:
        return 0, 0
    start = max_epochs // 4
    return start, max(start, max_epochs - 1 - max(1, max_epochs // 4))


def reusable(done: Path, overrides: list[str]) -> bool:
    """A kept run is reused only if it finished (``finished.json``) with exactly these overrides."""
    try:
        return json.loads(done.read_text()).get("overrides") == overrides
    except (OSError, ValueError):
        return False


def train(config: Path, overrides: list[str], out: Path, experiment: str, retrain: bool) -> tuple[Any, Any]:
    """The trained model of ``experiment`` (fitted now, or its kept checkpoint) and its datamodule."""
    from experiments.callbacks import load_checkpoint_as_data
    from experiments.demos import run_experiment

    ckpt = out / experiment / "checkpoints" / "last.ckpt"
    done = out / experiment / "finished.json"  # a fit that was killed or failed leaves none: it is redone
    fit = retrain or not ckpt.is_file() or not reusable(done, overrides)
    started = time.time()
    if fit:
        run = run_experiment(config, overrides, out, experiment, fit=True)
        done.write_text(json.dumps({"overrides": overrides, "seconds": round(time.time() - started)}))
    else:
        from experiments.cli import FusegenCLI

        run = type("Run", (), {})()
        run.cli = FusegenCLI(args=["--config", str(config), *overrides, "--experiment", experiment,
                                   "--trainer.default_root_dir", str(out), "--trainer.logger", "false",
                                   "--trainer.enable_progress_bar", "false"], run=False)
    model = run.cli.model
    model.load_state_dict(load_checkpoint_as_data(ckpt, map_location="cpu")["state_dict"])
    print(f"[compress] {experiment}: {'trained' if fit else 'reused'} ({time.time() - started:.0f} s)", flush=True)
    return model.eval(), run.cli.datamodule


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches: list[dict]) -> float:
    right = total = 0
    for b in batches:
        right += int((model(b).argmax(-1) == b["label"]).sum())
        total += len(b["label"])
    return right / total


def paired_latency(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation (warm-up call first)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for k, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def test_batches(dm: Any, limit: int) -> list[dict]:
    dm.prepare_data()
    dm.setup("test")
    out, seen = [], 0
    for b in dm.test_dataloader():
        if seen >= limit:
            break
        b = select_first(b, limit - seen)
        out.append(b)
        seen += len(b["label"])
    return out


def rebatch(batches: list[dict], rows: int) -> dict:
    """The first ``rows`` test samples as one batch."""
    def cat(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {k: cat([v[k] for v in values]) for k in values[0]}
        if values[0].dim() == 2 and values[0].dtype == torch.long:  # token ids / masks: pad to one length
            width = max(v.shape[1] for v in values)
            values = [torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in values]
        return torch.cat(values)

    return select_first(cat(batches), rows)


def bench_model(name: str, args: argparse.Namespace) -> dict:
    out = Path(args.out)
    base = budget_overrides(name, args)
    models: dict[str, torch.nn.Module] = {}
    variants = [v for v in args.variants.split(",") if v]
    if args.train_only and "teacher" not in variants and "student" not in variants:
        teacher = dm = None  # the pruned runs train from scratch: they need no teacher
    else:
        teacher, dm = train(CONFIGS[name]["teacher"], base, out, f"{name}-teacher", args.retrain)
        models["teacher"] = teacher
    if "student" in variants:
        models["student"], _ = train(CONFIGS[name]["student"], [
            *budget_overrides(name, args, args.student_epochs),
            "--model.init_args.teacher_checkpoint", str(out / f"{name}-teacher/checkpoints/last.ckpt")],
            out, f"{name}-student", args.retrain)
    for backend in ("ao", "torchao"):
        if f"int8_{backend}" in variants and not args.train_only:
            models[f"int8_{backend}"] = quantize_int8(teacher, backend)
    start_epoch, end_epoch = pruning_window(epochs(name, args))
    for pct in (50, 80):
        if f"pruned{pct}" in variants:
            models[f"pruned{pct}"], _ = train(CONFIGS[name]["teacher"], [
                "--config", str(PRUNING), *base, "--trainer.callbacks.final_sparsity", str(pct / 100),
                "--trainer.callbacks.start_epoch", str(start_epoch), "--trainer.callbacks.end_epoch", str(end_epoch)],
                out, f"{name}-pruned{pct}", args.retrain)
    if args.train_only:
        return {"benchmark": "compress", "model": name, "trained": sorted(models), "budget": " ".join(base)}
    torch.set_num_threads(args.threads)
    batches = test_batches(dm, args.eval_limit)
    result: dict[str, Any] = {"benchmark": "compress", "model": name, "threads": args.threads,
                              "repeats": args.repeats, "eval_samples": sum(len(b["label"]) for b in batches),
                              "budget": " ".join(base), "variants": {}}
    if "student" in models:
        result["student_budget"] = " ".join(budget_overrides(name, args, args.student_epochs))
    if any(k.startswith("pruned") for k in models):
        result["pruning_window"] = [start_epoch, end_epoch]
    b32, b1 = rebatch(batches, 32), rebatch(batches, 1)
    lat32 = paired_latency({k: (lambda m=m: m(b32)) for k, m in models.items()}, args.repeats)
    lat1 = paired_latency({k: (lambda m=m: m(b1)) for k, m in models.items()}, args.repeats)
    fp32_params = parameter_count(teacher)
    for k, m in models.items():
        row = {"params": parameter_count(m) if not k.startswith("int8") else fp32_params,
               "size_bytes": size_on_disk(m), "latency_ms_b32": round(1000 * lat32[k], 2),
               "latency_ms_b1": round(1000 * lat1[k], 2), "accuracy": round(accuracy(m, batches), 4)}
        if k.startswith("pruned"):
            row.update(nonzero_params=parameter_count(m, nonzero=True), sparsity=round(sparsity(m), 3),
                       sparse_size_bytes=size_on_disk(m, sparse=True))
        result["variants"][k] = row
        print(f"[compress] {name} {k}: {row}", flush=True)
    v = result["variants"]
    targets: dict[str, Any] = {}
    if "student" in v:
        ratio = v["student"]["params"] / v["teacher"]["params"]
        gap = 100 * (v["teacher"]["accuracy"] - v["student"]["accuracy"])
        targets["student"] = {"param_ratio": round(ratio, 3), "accuracy_gap_points": round(gap, 2),
                              "met": ratio <= 0.25 and gap <= 1.5}
    for backend in ("ao", "torchao"):
        k = f"int8_{backend}"
        if k in v:
            speedup = v["teacher"]["latency_ms_b32"] / v[k]["latency_ms_b32"]
            gap = 100 * (v["teacher"]["accuracy"] - v[k]["accuracy"])
            targets[k] = {"speedup_b32": round(speedup, 2), "accuracy_gap_points": round(gap, 2),
                          "met": gap <= 1.0 and speedup >= 1.5}
    result["targets"] = targets
    result["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__,
                         "note": "shared machine: 2 cores for 8 engineers; latencies are medians of alternated runs"}
    result["load_average"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="avmnist,minilm")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="runs/bench-compress", help="run folders (kept and reused)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the latency figures")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--eval-limit", type=int, default=2000, help="test samples for the accuracy column")
    parser.add_argument("--avmnist-train-limit", type=int, default=5000)
    parser.add_argument("--avmnist-epochs", type=int, default=3)
    parser.add_argument("--minilm-train-limit", type=int, default=2000)
    parser.add_argument("--minilm-epochs", type=int, default=2)
    parser.add_argument("--student-epochs", type=int, default=None,
                        help="epochs of the distilled student (default: the teacher's)")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or reuse) the runs of --variants and stop: independent runs can train in "
                             "parallel processes, then one run without this flag measures them side by side")
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        if name not in CONFIGS:
            parser.error(f"--models: unknown {name!r}; choose from {sorted(CONFIGS)}")
        print(json.dumps(bench_model(name, args)), flush=True)


if __name__ == "__main__":
    main()
