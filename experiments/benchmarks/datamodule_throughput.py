"""AV-MNIST datamodule: first build, cached reload, and loader speed vs. a training step.

    .venv/bin/python -m experiments.benchmarks.datamodule_throughput [--builds 3 --reloads 5]

Measured side by side in one run on the same machine (times are noisy on shared cores, so
each figure is a median over repeats and the headline is the ratio loader / training step):

- ``first_build_s``: AV-MNIST from the raw files (MNIST .gz verify + gunzip, 3,000 wavs read,
  3,000 spectrograms, PCA fit, pairing) into an empty cache;
- ``reload_s``: the same datamodule's ``setup()`` again from the cache (new process state);
- ``loader_samples_per_s``: iterating the train DataLoader alone (batch 64), for
  ``num_workers`` 0 and 2, clean and with ``audio_noise`` (spectrograms recomputed per batch);
- ``train_step_samples_per_s``: forward + backward + AdamW step of a small fusion model
  (``fusion.FusionClassifier`` with ``SmallCNNImageEncoder`` + ``MelCNNAudioEncoder`` +
  ``ConcatFusion``) on the same batches.

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from experiments.benchmarks.common import emit, log, parse, parser


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def loader_rate(dm, batches: int) -> float:
    """Samples/s of the train loader alone (worker start-up excluded: first batch not timed)."""
    it = iter(dm.train_dataloader())
    next(it)
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        n += len(next(it)["label"])
    return n / (time.perf_counter() - start)


def train_step_rate(dm, steps: int) -> float:
    from fusion import ConcatFusion, FusionClassifier, MelCNNAudioEncoder, SmallCNNImageEncoder

    torch.manual_seed(0)
    model = FusionClassifier(
        encoders={"image": SmallCNNImageEncoder(out_dim=64), "audio": MelCNNAudioEncoder(out_dim=64)},
        fusion=lambda in_dims: ConcatFusion(in_dims, out_dim=128), num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    batches = [b for _, b in zip(range(steps + 1), dm.train_dataloader())]  # data time excluded

    def step(batch: dict) -> None:
        loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    start = time.perf_counter()
    for b in batches[1:]:
        step(b)
    return steps * len(batches[1]["label"]) / (time.perf_counter() - start)


def main() -> None:
    p = parser(__doc__, repeats=3, threads=2)
    p.add_argument("--builds", type=int, default=3, help="first builds into fresh caches (median)")
    p.add_argument("--reloads", type=int, default=5)
    p.add_argument("--loader-batches", type=int, default=200)
    p.add_argument("--train-steps", type=int, default=10)
    args = parse(p)

    with tempfile.TemporaryDirectory(prefix="fusegen-bench-") as tmp:
        os.environ["FUSEGEN_CACHE"] = tmp  # empty cache: the first build includes the MNIST gunzip
        from datamodules import AVMNISTDataModule, resolve_data_root

        root = str(resolve_data_root())
        builds = []
        for i in range(args.builds):
            os.environ["FUSEGEN_CACHE"] = str(Path(tmp, f"build{i}"))
            dm = AVMNISTDataModule(root=root)
            builds.append(timed(dm.setup))
            assert dm.cache_hit is False
            log(f"first build {i}: {builds[-1]:.1f} s")
        reloads = []
        for i in range(args.reloads):
            dm = AVMNISTDataModule(root=root)
            reloads.append(timed(dm.setup))
            assert dm.cache_hit is True
            log(f"reload {i}: {reloads[-1]:.2f} s")

        rates: dict[str, list[float]] = {}
        settings = {"workers0": dict(num_workers=0), "workers2": dict(num_workers=2),
                    "workers0_noise": dict(num_workers=0, audio_noise=0.5),
                    "workers2_noise": dict(num_workers=2, audio_noise=0.5)}
        modules = {k: AVMNISTDataModule(root=root, batch_size=64, **kw) for k, kw in settings.items()}
        for m in modules.values():
            m.setup()
        for r in range(args.repeats):
            for name, m in modules.items():
                batches = args.loader_batches if "noise" not in name else args.loader_batches // 4
                rates.setdefault(name, []).append(loader_rate(m, batches))
            rates.setdefault("train_step", []).append(train_step_rate(modules["workers0"], args.train_steps))
            log(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))

    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "benchmark": "datamodule_throughput",
        "dataset": "AVMNIST (speaker split, PCA 25% energy, 112x112 spectrograms)",
        "threads": args.threads,
        "first_build_s": round(statistics.median(builds), 2),
        "first_build_runs_s": [round(b, 2) for b in builds],
        "reload_s": round(statistics.median(reloads), 2),
        "loader_samples_per_s": {k: round(v) for k, v in med.items() if k != "train_step"},
        "train_step_samples_per_s": round(med["train_step"]),
        "loader_over_train_step": round(med["workers0"] / med["train_step"], 1),
        "loader_noise_over_train_step": round(med["workers0_noise"] / med["train_step"], 1),
        "repeats": args.repeats,
    }
    emit(result)


if __name__ == "__main__":
    main()
