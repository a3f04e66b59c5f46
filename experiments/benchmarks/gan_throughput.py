"""Training throughput: fusegen's Lightning ``GAN`` vs the plain pytorch/examples dcgan loop.

Same networks (DCGAN 28x28, ngf/ndf 64 unless told), same MNIST batches (MNISTDataModule,
batch 64), same losses and optimisers; the Lightning side runs through ``pl.Trainer`` with
manual optimisation (loggers/checkpoints/progress bar off, EMA off so the algorithms match).
Repeats alternate the two (reference first, then Lightning), each timed after a warm-up;
the figure is the median over repeats of steps/s and of the per-repeat ratio.

    .venv/bin/python -m experiments.benchmarks.gan_throughput [--iters 30 --warmup 5 --repeats 3]
"""

from __future__ import annotations

import statistics
import time

import pytorch_lightning as pl
import torch

from datamodules import MNISTDataModule
from experiments.benchmarks.common import emit, log, parse, parser
from experiments.benchmarks.gan_reference import reference_dcgan
from generative import GAN, Discriminator, Generator


class _Timer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.iteration == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def lightning_steps_per_s(dm: MNISTDataModule, ngf: int, iters: int, warmup: int, seed: int) -> float:
    pl.seed_everything(seed, verbose=False)
    model = GAN(Generator(ngf=ngf), Discriminator(ndf=ngf), loss="bce", ema_decay=None, metrics=None,
                grid_every_n_epochs=0)
    timer = _Timer(warmup)
    trainer = pl.Trainer(max_steps=2 * iters, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[timer])
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    return (iters - warmup) / (timer.end - timer.start)


def reference_steps_per_s(dm: MNISTDataModule, ngf: int, iters: int, warmup: int, seed: int) -> float:
    pl.seed_everything(seed, verbose=False)
    netG, netD = Generator(ngf=ngf), Discriminator(ndf=ngf)
    marks: dict[int, float] = {}

    def on_step(i: int, *_: float) -> None:
        marks[i] = time.perf_counter()

    reference_dcgan(netG, netD, dm.train_dataloader(), iters, on_step=on_step)
    return (iters - warmup) / (marks[iters - 1] - marks[warmup - 1])


def main() -> None:
    p = parser(__doc__, repeats=3, threads=0)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--ngf", type=int, default=64)
    args = parse(p)
    dm = MNISTDataModule(batch_size=64)
    dm.setup("fit")
    ref, lit, ratios = [], [], []
    for r in range(args.repeats):
        ref.append(reference_steps_per_s(dm, args.ngf, args.iters, args.warmup, seed=r))
        lit.append(lightning_steps_per_s(dm, args.ngf, args.iters, args.warmup, seed=r))
        ratios.append(lit[-1] / ref[-1])
        log(f"repeat {r}: reference {ref[-1]:.3f} it/s, lightning {lit[-1]:.3f} it/s, ratio {ratios[-1]:.3f}")
    emit({
        "benchmark": "gan_throughput", "device": "cpu", "torch_threads": torch.get_num_threads(),
        "model": f"DCGAN 28x28 ngf=ndf={args.ngf}", "batch_size": 64, "iters_timed": args.iters - args.warmup,
        "repeats": args.repeats, "reference_it_per_s": round(statistics.median(ref), 4),
        "lightning_it_per_s": round(statistics.median(lit), 4), "ratio_median": round(statistics.median(ratios), 4),
        "ratios": [round(x, 4) for x in ratios], "target": ">= 0.95",
    })


if __name__ == "__main__":
    main()
