"""The AV-MNIST results sweep pauses at a deadline and resumes from last.ckpt.

Budgets longer than a session (MultiBench's full one on 2 CPU cores) run in segments.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "benchmarks" / "fusion_avmnist_results.py"


def _run_single(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--single", "avmnist-concat", "--single-seed", "0", "--out", str(out),
           "--epochs", "2", "--train-limit", "256", "--val-fraction", "0.02", "--threads", "1", "--best-val", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def _epochs_validated(csv_dir: Path) -> set[int]:
    with (csv_dir / "metrics.csv").open() as f:
        return {int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/acc")}


def test_paused_run_resumes_from_last_checkpoint(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "sweep"
    # A deadline already past: the run fits its first epoch, then pauses (exit 3) instead of starting epoch 2.
    first = _run_single(out, "--deadline-ts", str(time.time()))
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]
    assert "paused after epoch 1 of 2" in first.stderr
    assert not (out / "results").exists(), "a paused run must not report a half-trained model"
    run_dir = out / "runs" / "avmnist-concat-s0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    second = _run_single(out)  # the same command, no deadline: resumes and finishes
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    row = json.loads((out / "results" / "avmnist-concat-s0.json").read_text())
    assert row["epochs"] == 2 and row["segments"] == 2
    assert 0.0 <= row["acc_full"] <= 1.0 and "acc_best" in row
    segments = json.loads((out / "logs" / "avmnist-concat-s0.segments.json").read_text())
    assert [s["to_epoch"] for s in segments] == [1, 2]
    assert row["fit_s"] == round(sum(s["fit_s"] for s in segments), 1)
    # The second segment trained epoch 2 only: it continued, it did not start over.
    assert _epochs_validated(run_dir / "csv" / "version_0") == {0}
    assert _epochs_validated(run_dir / "csv" / "version_1") == {1}
