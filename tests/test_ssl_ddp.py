"""ContrastivePretrainer under the 2-process CPU DDP preset, through `fusegen fit` (slow: two
processes start Lightning). The exact loss/gradient equivalence of the gather is checked in
tests/test_ssl_contrastive.py::test_ddp_gather_matches_the_global_batch_on_one_process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import CONFIG_DIR

MODEL = {"class_path": "fusion.ContrastivePretrainer", "init_args": {
    "encoders": {"image": {"class_path": "fusion.SmallCNNImageEncoder", "init_args": {"width": 8, "out_dim": 16}},
                 "audio": {"class_path": "fusion.MelCNNAudioEncoder", "init_args": {"width": 8, "out_dim": 16}}},
    "embed_dim": 16}}
DATA = {"class_path": "datamodules.SyntheticMultimodalDataModule",
        "init_args": {"num_train": 256, "num_val": 64, "num_test": 64, "batch_size": 32}}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pretrainer_trains_and_evaluates_retrieval_under_ddp_cpu(in_tmp: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "fit", "--config", str(CONFIG_DIR / "presets" / "ddp-cpu.yaml"),
         "--model", json.dumps(MODEL), "--data", json.dumps(DATA), "--experiment", "ssl-ddp",
         "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"],
        cwd=in_tmp, capture_output=True, text=True, timeout=540, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = in_tmp / "runs" / "ssl-ddp"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader(next(run.glob("csv/*/metrics.csv")).open()))
    key = "val/retrieval/image2audio/"
    r1 = [float(r[key + "R@1"]) for r in rows if r.get(key + "R@1")]
    chance = [float(r[key + "chance@1"]) for r in rows if r.get(key + "chance@1")]
    assert r1 and chance[-1] == pytest.approx(1 / 64)  # the whole val split, gathered from both processes
    assert (run / "pictures" / "embeddings_val.png").is_file()
