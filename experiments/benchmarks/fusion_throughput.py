"""FusionClassifier: Lightning Trainer vs a plain PyTorch loop (training throughput), and CPU
inference latency of concat vs attention fusion. Prints one JSON line.

Both training sides train the *same* model (same initial weights, same AdamW from the config's
``configure_optimizers``) on the *same* in-memory AV-MNIST-shaped batches (image [B, 1, 28, 28],
spectrogram [B, 1, 112, 112]; content does not change the cost), interleaved L, P, L, P ... so
machine load hits both alike; the figure is the median over repeats. The Lightning side runs
with the progress bar, loggers, checkpointing, model summary and validation switched off (what
one would do to measure); ``training_step``'s ``self.log`` still runs. The clock covers the
steady-state steps only (from the first step after ``--warmup`` to the last), not Trainer setup.

    .venv/bin/python -m experiments.benchmarks.fusion_throughput [--steps 30 --repeats 5 --batch-size 64]
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from experiments.benchmarks.common import emit, log, parse, parser
from experiments.cli import TRAINER_DEFAULTS, FusegenCLI

REPO = Path(__file__).resolve().parents[2]


def build_model(config: str) -> pl.LightningModule:
    """The model of a shipped config, built through the CLI parser (no data touched)."""
    cli = FusegenCLI(args=["--config", str(TRAINER_DEFAULTS), "--config", str(REPO / "experiments/fusion" / config),
                           "--data", "datamodules.SyntheticMultimodalDataModule"], run=False)
    return cli.model


def make_batches(n: int, batch_size: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(batch_size, 1, 28, 28, generator=g),
             "audio": torch.randn(batch_size, 1, 112, 112, generator=g),
             "label": torch.randint(10, (batch_size,), generator=g),
             "present": {"image": torch.ones(batch_size, dtype=torch.bool),
                         "audio": torch.ones(batch_size, dtype=torch.bool)}} for _ in range(n)]


class StepClock(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def lightning_throughput(model: pl.LightningModule, batches: list[dict], warmup: int) -> float:
    clock = StepClock(warmup)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[clock])
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(model, train_dataloaders=loader)
    steps = len(batches) - warmup
    return steps * len(batches[0]["label"]) / (clock.end - clock.start)


def plain_throughput(model: pl.LightningModule, batches: list[dict], warmup: int) -> float:
    schedule = None
    if getattr(model, "cosine_schedule", False):  # what configure_optimizers builds, sized without a Trainer
        optimizer, schedule = model.optimizer_and_cosine_schedule(len(batches))
    else:
        optimizer = model.configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    model.train()
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return (len(batches) - warmup) * len(batches[0]["label"]) / (time.perf_counter() - start)


def inference_latency_ms(model: pl.LightningModule, batch: dict, repeats: int) -> float:
    model.eval()
    times = []
    with torch.inference_mode():
        model(batch)
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    p = parser(__doc__, repeats=5, threads=1)
    p.add_argument("--config", default="avmnist-concat.yaml", help="model trained in the throughput comparison")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--latency-repeats", type=int, default=10)
    args = parse(p)
    warnings.filterwarnings("ignore")
    pl.seed_everything(0, verbose=False)

    base = build_model(args.config)
    batches = make_batches(args.warmup + args.steps, args.batch_size)
    lightning, plain = [], []
    for r in range(args.repeats):
        lightning.append(lightning_throughput(copy.deepcopy(base), batches, args.warmup))
        plain.append(plain_throughput(copy.deepcopy(base), batches, args.warmup))
        log(f"repeat {r}: lightning {lightning[-1]:.0f} samples/s, plain {plain[-1]:.0f} samples/s")
    ratios = [a / b for a, b in zip(lightning, plain)]

    latency_batch = make_batches(1, 256, seed=1)[0]
    latency = {}
    for name in ("concat", "attention"):
        model = build_model(f"avmnist-{name}.yaml")
        latency[name] = round(inference_latency_ms(model, latency_batch, args.latency_repeats), 1)
        log(f"{name}: {latency[name]} ms per batch of 256")

    emit({
        "benchmark": "fusion_throughput", "model": f"experiments/fusion/{args.config}", "device": "cpu",
        "torch_threads": args.threads, "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
        "lightning_samples_per_s": round(statistics.median(lightning), 1),
        "plain_samples_per_s": round(statistics.median(plain), 1),
        "ratio_lightning_over_plain_median": round(statistics.median(ratios), 3),
        "ratio_of_medians": round(statistics.median(lightning) / statistics.median(plain), 3),
        "ratio_target": 0.95,
        "inference_ms_per_batch_256": latency,
        "lightning_setup": "progress bar, loggers, checkpointing, model summary, validation off; "
                           "steady-state steps timed",
    })


if __name__ == "__main__":
    main()
