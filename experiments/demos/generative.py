"""The generative part of ``make demo``: a short class-conditional DCGAN run.

``experiments/gan/cdcgan-mnist.yaml`` through the CLI with narrower nets and ~2,000 batches
(fewer, at a higher learning rate, let D win and G collapse), then the validation FID and KID on
``generative.metrics.DigitFeatures`` (the config's ``SampleMetrics``), the digit classifier's
agreement with the requested digits, and the last sample grid (10 columns = digits 0-9). Without
data it trains on the synthetic images instead, with ``metrics: null`` (the digit features need MNIST).
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.demos import CONFIGS, SYNTHETIC_DATA, DataSource, row, run_experiment, step

CONFIG = CONFIGS / "gan" / "cdcgan-mnist.yaml"


def run(out_dir: Path, data: DataSource, batches: int = 1920, epochs: int = 3, width: int = 32) -> list[dict]:
    samples = 64 * batches // epochs
    overrides = ["--trainer.max_epochs", str(epochs),
                 "--model.init_args.generator.init_args.ngf", str(width),
                 "--model.init_args.discriminator.init_args.ndf", str(width)]
    if data.synthetic:
        synthetic = {"class_path": SYNTHETIC_DATA,
                     "init_args": {"num_train": samples, "num_val": 256, "num_test": 256, "batch_size": 64}}
        overrides += ["--data", json.dumps(synthetic), "--model.init_args.metrics", "null"]
        what = f"synthetic images, {batches} batches"
    else:
        overrides += ["--data.init_args.train_limit", str(samples)]
        what = f"MNIST, {batches} batches; the first run also trains the FID digit classifier once"
    experiment = "demo-gan-cdcgan"
    with step(f"GAN: training the conditional DCGAN ({what})"):
        run = run_experiment(CONFIG, overrides, out_dir, experiment)
    pictures = run.pictures()[-1:]  # the newest grid (samples/epoch_XXX.png sort by epoch)
    name = f"{CONFIG.relative_to(CONFIGS.parent)} ({batches} batches, ngf=ndf={width})"
    capability = f"conditional GAN ({'synthetic' if data.synthetic else 'MNIST'})"
    if data.synthetic:
        return [row(capability, name, data, "final D / G loss",
                    f"{run.last('train/loss_d'):.3g} / {run.last('train/loss_g'):.3g}",
                    "finite (no digit classifier offline)", pictures)]
    return [
        row(capability, name, data, "classifier agreement", round(run.last("val/agreement"), 4),
            ">= 0.95 (full run, see generative/README.md)", pictures),
        row(capability, name, data, "FID (digit-classifier features)", round(run.last("val/fid"), 3),
            "lower is better"),
        row(capability, name, data, "KID (digit-classifier features)", round(run.last("val/kid"), 4),
            "lower is better"),
    ]
