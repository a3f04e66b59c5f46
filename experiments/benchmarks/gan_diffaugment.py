"""DiffAugment on 5% of MNIST: FID and KID with and without it, at equal steps, per seed.

    python -m experiments.benchmarks.gan_diffaugment                       # 3 seeds, the full protocol
    python -m experiments.benchmarks.gan_diffaugment --seeds 0 --steps 600 --num-samples 2000  # reduced
    python -m experiments.benchmarks.gan_diffaugment --arms plain &  # two processes, one arm each,
    python -m experiments.benchmarks.gan_diffaugment --arms diffaugment  # then once more without --arms

Both arms train ``experiments/gan/dcgan-mnist-5pct-diffaugment.yaml`` (DCGAN, BCE, 3,000 MNIST
training images) through the fusegen CLI for the same number of batches (= generator updates), the
baseline with ``--model.init_args.diffaugment null``; nothing else differs (same seed, data order
and initial weights). Protocol of every score: ``SampleMetrics`` on ``generative.metrics.DigitFeatures``
(fusegen's cached MNIST digit classifier, 128-d), ``--num-samples`` real images of the MNIST
validation split (never trained on) against as many samples of the EMA generator; KID 100 subsets
of up to 1000. Target (Zhao et al. 2020's claim at small data): FID and KID with DiffAugment <= without,
on every seed.

Resumable: each (seed, arm) writes ``<out>/s<seed>-<arm>-<steps>-n<num_samples>-w<width>.json`` once scored, skipped
when it exists (``--arms`` splits the runs between processes). Prints one JSON line: per seed and the medians.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from datamodules.files import atomic_write_json
from experiments.benchmarks.common import emit, log, parse, parser
from experiments.cli import FusegenCLI
from generative.metrics import DigitFeatures, SampleMetrics

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "experiments" / "gan" / "dcgan-mnist-5pct-diffaugment.yaml"
ARMS = {"diffaugment": [], "plain": ["--model.init_args.diffaugment", "null"]}


def train_and_score(arm: str, seed: int, steps: int, num_samples: int, width: int, out: Path) -> dict:
    args = ["--config", str(CONFIG), "--experiment", f"s{seed}-{arm}-{steps}", "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(out), "--trainer.max_steps", str(2 * steps),  # a D and a G step each
            "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar",
            "false", "--model.init_args.metrics", "null",
            "--model.init_args.generator.init_args.ngf", str(width),
            "--model.init_args.discriminator.init_args.ndf", str(width), *ARMS[arm]]
    log("fusegen fit " + " ".join(args))
    run = FusegenCLI(args=args, run=False)
    start = time.time()
    run.trainer.fit(run.model, datamodule=run.datamodule)
    train_s = time.time() - start
    metrics = SampleMetrics(DigitFeatures(), metrics=["fid", "kid"], num_samples=num_samples)
    run.model.metrics = metrics
    run.trainer.limit_val_batches = math.ceil(num_samples / run.datamodule.hparams.batch_size)
    scores = run.trainer.validate(run.model, datamodule=run.datamodule, verbose=False)[0]
    return {"seed": seed, "arm": arm, "steps": run.model.iteration, "fid": scores["val/fid"],
            "kid": scores["val/kid"], "kid_std": scores["val/kid_std"],
            "protocol": metrics.protocol("val", "EMA generator"), "train_s": round(train_s)}


def main() -> None:
    p = parser(__doc__, seeds=[0, 1, 2], out=str(REPO / "runs" / "gan-diffaugment"))
    p.add_argument("--steps", type=int, default=2800, help="batches (generator updates) per run")
    p.add_argument("--num-samples", type=int, default=5000, help="real (validation split) and generated images")
    p.add_argument("--width", type=int, default=32, help="ngf = ndf (the config's 64 halved for CPU)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                   help="run only these arms (e.g. one process per arm); the table needs both")
    args = parse(p)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        for arm in args.arms:
            path = out / f"s{seed}-{arm}-{args.steps}-n{args.num_samples}-w{args.width}.json"
            if path.is_file():
                result = json.loads(path.read_text())
                log(f"reusing {path}")
            else:
                result = train_and_score(arm, seed, args.steps, args.num_samples, args.width, out)
                atomic_write_json(path, result)
            row[arm] = {k: result[k] for k in ("fid", "kid", "kid_std", "train_s")}
            row["protocol"] = result["protocol"]
        if len(args.arms) == len(ARMS):
            row["met"] = (row["diffaugment"]["fid"] <= row["plain"]["fid"]
                          and row["diffaugment"]["kid"] <= row["plain"]["kid"])
        rows.append(row)
    result = {"benchmark": "gan_diffaugment", "data": "MNIST train_limit 3000 (5%)", "steps": args.steps,
              "width": args.width, "num_samples": args.num_samples, "seeds": args.seeds,
              "protocol": rows[0]["protocol"],
              "per_seed": [{k: v for k, v in r.items() if k != "protocol"} for r in rows],
              "median": {arm: {m: statistics.median(r[arm][m] for r in rows) for m in ("fid", "kid")}
                         for arm in args.arms},
              "target": "FID and KID with DiffAugment <= without, on every seed"}
    if len(args.arms) == len(ARMS):
        result["met"] = all(r["met"] for r in rows)
        result["seeds_met"] = sum(r["met"] for r in rows)
    else:
        result["note"] = f"arms {args.arms} only: rerun with both arms (their runs are reused) for the comparison"
    emit({**result, "wall_s": round(time.time() - start)})


if __name__ == "__main__":
    main()
