"""Few-label AV-MNIST: what contrastive pretraining on the pairing buys (one JSON line).

Protocol, per seed (fusegen's AV-MNIST encoders as in experiments/fusion/base/*.yaml, the speaker
split: test audio from the held-out speaker):

1. pretrain ``ContrastivePretrainer`` (CLIP: InfoNCE, image anchor) on the training pairs without
   labels; test-split retrieval, both directions: instance R@1 and class-consistent R@1 vs chance;
2. for each label budget (``--fractions``; 0.01 = 550 pairs, 55 a digit, seeded): the concat-fusion
   classifier from scratch, the same fine-tuned from the pretrained encoders, and a linear probe on
   the frozen pretrained encoders; test accuracy (the last step's model, no selection on val);
   ``scratch`` at fraction 1.0 is the fully supervised reference;
3. multi-task digit + speaker (``split: recording``, every speaker in training) with fixed and with
   learned (Kendall et al. 2018) weighting vs a single-task model per label, on ``--mt-fraction``.

Targets of the issue (3 seeds, all of it in <= 30 min on 2 cores): fine-tuned beats scratch at 1%
by >= 10 points; the probe reaches >= 90% of the fully supervised accuracy. No published few-label
AV-MNIST figure exists to compare with. Budgets are flags so the full protocol and a reduced run
are the same code: ``--pretrain-limit/--pretrain-epochs`` (pretraining pairs, passes),
``--steps`` (optimiser steps per classifier), ``--test-limit`` (test pairs evaluated; 0 = all
10,000). Resumable: each finished piece is a JSON file in ``--out``; rerunning skips them (so a
new budget needs a new ``--out``). The summary holds the medians over the seeds (``summary_mean``
the means), the per-seed gains and the retrieval medians; ``per_seed`` every figure.

    python -m experiments.benchmarks.ssl_avmnist                                   # full protocol
    python -m experiments.benchmarks.ssl_avmnist --seeds 0 --pretrain-limit 20000 --pretrain-epochs 3 \\
        --steps 300 --test-limit 2000 --fractions 0.01 0.1 1.0                    # reduced
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from datamodules import AVMNISTDataModule, collate
from datamodules.files import atomic_write_json
from experiments.benchmarks.common import emit, log, parse, parser
from fusion import (
    AudioEncoder,
    ConcatFusion,
    ContrastivePretrainer,
    FusionClassifier,
    LeNetImageEncoder,
    MultiTaskClassifier,
    SpecAugment,
)

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False,
             num_sanity_val_steps=0, accelerator="cpu", devices=1)


def encoders() -> dict[str, torch.nn.Module]:
    """base/image-encoder.yaml and base/audio-encoder.yaml."""
    return {"image": LeNetImageEncoder(channels=16, out_dim=64),
            "audio": AudioEncoder(width=8, blocks=5, spec_pool=2, out_dim=64,
                                  spec_augment=SpecAugment(freq_mask=8, time_mask=8, num_masks=2, freq_warp=0.1,
                                                           time_warp=0.1))}


def optimizer(lr: float = 0.002):
    import functools

    return functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.01)


def test_loader(dm: AVMNISTDataModule, limit: int, batch_size: int = 256) -> DataLoader:
    dm.setup()
    test = dm.splits["test"]
    if limit:  # a seeded random subset, so every digit is represented
        g = torch.Generator().manual_seed(1234)
        test = Subset(test, torch.randperm(len(test), generator=g)[:limit].sort().values.tolist())
    return DataLoader(test, batch_size=batch_size, collate_fn=collate)


_DATAMODULES: dict[tuple, AVMNISTDataModule] = {}


def avmnist(args, seed: int, batch_size: int, **kwargs: Any) -> AVMNISTDataModule:
    """One datamodule per setting, set up once and shared by the runs that use it."""
    key = (seed, batch_size, *sorted(kwargs.items()))
    if key not in _DATAMODULES:
        _DATAMODULES[key] = AVMNISTDataModule(root=args.root, seed=seed, batch_size=batch_size,
                                              audio_noise=args.audio_noise, **kwargs)
        _DATAMODULES[key].setup()
    return _DATAMODULES[key]


def cached(out: Path, name: str, run) -> dict[str, Any]:
    """The JSON result of ``run()`` in ``out/name.json``, computed once (resumable)."""
    path = out / f"{name}.json"
    if path.is_file():
        log(f"[ssl_avmnist] {name}: done before, read from {path}")
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = run()
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(path, result)
    log(f"[ssl_avmnist] {name}: {result}")
    return result


def pretrain(args, seed: int, folder: Path) -> dict[str, Any]:
    pl.seed_everything(seed, workers=True)
    dm = avmnist(args, seed, args.pretrain_batch, train_limit=args.pretrain_limit or None)
    model = ContrastivePretrainer(encoders(), embed_dim=64, anchor="image", optimizer=optimizer(),
                                  cosine_schedule=True, warmup_fraction=0.05, picture_points=0)
    trainer = pl.Trainer(max_epochs=args.pretrain_epochs, limit_val_batches=0, default_root_dir=folder, **QUIET)
    trainer.fit(model, datamodule=dm)
    model.save_pretrained(folder)
    trainer.test(model, dataloaders=test_loader(dm, args.test_limit), verbose=False)
    m = model.last_metrics
    return {k.replace("test/retrieval/", ""): round(v, 4) for k, v in m.items()
            if k.startswith("test/retrieval/") and not k.endswith(("R@5", "R@10"))} | {
        "pairs": len(dm.splits["train"]), "epochs": args.pretrain_epochs}


def classifier(args, seed: int, fraction: float, mode: str, pretrained: Path | None) -> dict[str, Any]:
    """``mode``: scratch | finetune | probe."""
    pl.seed_everything(seed, workers=True)
    dm = avmnist(args, seed, 64, label_fraction=None if fraction >= 1 else fraction)
    probe = mode == "probe"
    model = FusionClassifier(
        encoders(), ConcatFusion if probe else lambda d: ConcatFusion(d, out_dim=128, dropout=0.1), num_classes=10,
        hidden_dims=[] if probe else [128], dropout=0.0 if probe else 0.1,
        unimodal_loss_weight=0.0 if probe else 0.5, optimizer=optimizer(0.01 if probe else 0.002),
        cosine_schedule=True, warmup_fraction=0.05,
        init_encoders_from=str(pretrained) if mode != "scratch" else None, freeze_encoders=probe)
    trainer = pl.Trainer(max_steps=args.steps, max_epochs=-1, limit_val_batches=0,
                         default_root_dir=Path(args.out) / f"{mode}-{fraction:g}-s{seed}", **QUIET)
    trainer.fit(model, datamodule=dm)
    acc = trainer.test(model, dataloaders=test_loader(dm, args.test_limit), verbose=False)[0]["test/acc"]
    return {"acc": round(float(acc), 4), "labels": len(dm.splits["train"]), "steps": args.steps}


def multitask(args, seed: int, tasks: list[dict], weighting: str) -> dict[str, Any]:
    pl.seed_everything(seed, workers=True)
    dm = avmnist(args, seed, 64, split="recording", label_fraction=None if args.mt_fraction >= 1 else args.mt_fraction)
    model = MultiTaskClassifier(encoders(), lambda d: ConcatFusion(d, out_dim=128, dropout=0.1), tasks,
                                weighting=weighting, hidden_dims=[128], optimizer=optimizer(),
                                cosine_schedule=True, warmup_fraction=0.05)
    trainer = pl.Trainer(max_steps=args.steps, max_epochs=-1, limit_val_batches=0,
                         default_root_dir=Path(args.out) / f"mt-{'+'.join(t['name'] for t in tasks)}-{weighting}",
                         **QUIET)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, dataloaders=test_loader(dm, args.test_limit), verbose=False)[0]
    out = {t["name"]: round(float(metrics[f"test/{t['name']}/acc"]), 4) for t in tasks}
    if model.log_vars is not None:
        out["weights"] = [round(w, 3) for w in torch.exp(-model.log_vars.detach()).tolist()]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, seeds=[0, 1, 2], threads=1, out="runs/ssl-avmnist")
    p.add_argument("--root", default=None, help="data root (default FUSEGEN_DATA or ../shared/data)")
    p.add_argument("--audio-noise", type=float, default=0.0,
                   help="AV-MNIST audio noise (0: the datamodule's default; 3: MultiBench's difficulty)")
    p.add_argument("--pretrain-limit", type=int, default=0, help="pretraining pairs (0: all 55,000)")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--pretrain-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps of every classifier")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--mt-fraction", type=float, default=0.1, help="label fraction of the multi-task runs")
    p.add_argument("--test-limit", type=int, default=0, help="test pairs evaluated (0: all 10,000)")
    p.add_argument("--skip-multitask", action="store_true")
    args = parse(p, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = {k: getattr(args, k) for k in ("audio_noise", "pretrain_limit", "pretrain_epochs", "pretrain_batch",
                                            "steps", "mt_fraction", "test_limit")}
    saved = out / "budget.json"
    if saved.is_file() and json.loads(saved.read_text()) != budget:
        raise SystemExit(f"--out {out} holds runs of another budget ({json.loads(saved.read_text())}, now {budget}): "
                         "its finished pieces would be reused; give a new --out")
    atomic_write_json(saved, budget)
    start = time.perf_counter()
    digit = {"name": "digit", "num_classes": 10, "label_key": "label"}
    speaker = {"name": "speaker", "num_classes": 6, "label_key": "speaker"}
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:
        folder = out / f"pretrained-s{seed}"
        row: dict[str, Any] = {"retrieval": cached(out, f"pretrain-s{seed}", lambda: pretrain(args, seed, folder))}
        for f in args.fractions:
            for mode in ("scratch", "finetune", "probe"):
                row[f"{mode}@{f:g}"] = cached(out, f"{mode}-{f:g}-s{seed}",
                                              lambda: classifier(args, seed, f, mode, folder))["acc"]
        if not args.skip_multitask:
            row["single_digit"] = cached(out, f"mt-digit-s{seed}", lambda: multitask(args, seed, [digit], "fixed"))
            row["single_speaker"] = cached(out, f"mt-speaker-s{seed}",
                                           lambda: multitask(args, seed, [speaker], "fixed"))
            for w in ("fixed", "uncertainty"):
                row[f"multitask_{w}"] = cached(out, f"mt-{w}-s{seed}",
                                               lambda: multitask(args, seed, [digit, speaker], w))
        per_seed[str(seed)] = row

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 4)

    def over_seeds(key: str) -> list[float]:
        return [r[key] for r in per_seed.values()]

    # Medians over the seeds (robust with 3), and the means beside them.
    keys = [f"{m}@{f:g}" for f in args.fractions for m in ("scratch", "finetune", "probe")]
    summary: dict[str, Any] = {k: median(over_seeds(k)) for k in keys}
    means = {k: round(statistics.fmean(over_seeds(k)), 4) for k in keys}
    low = min(args.fractions)
    if f"scratch@{low:g}" in summary:
        gains = [100 * (r[f"finetune@{low:g}"] - r[f"scratch@{low:g}"]) for r in per_seed.values()]
        summary["finetune_minus_scratch_points"] = round(statistics.median(gains), 1)
        summary["finetune_minus_scratch_points_per_seed"] = [round(g, 1) for g in gains]
    if 1.0 in args.fractions:
        summary["probe_over_supervised"] = round(summary[f"probe@{low:g}"] / summary["scratch@1"], 3)
    retrieval_keys = sorted({k for r in per_seed.values() for k, v in r["retrieval"].items()
                             if isinstance(v, (int, float)) and k not in ("pairs", "epochs", "seconds")})
    summary["retrieval"] = {k: median([r["retrieval"][k] for r in per_seed.values() if k in r["retrieval"]])
                            for k in retrieval_keys}
    result = {"benchmark": "ssl_avmnist", "summary": summary, "summary_mean": means, "per_seed": per_seed,
              "targets": {"finetune_minus_scratch_points": ">= 10 at 1%", "probe_over_supervised": ">= 0.9"},
              "published_reference": "none: no few-label AV-MNIST figure has been published",
              "budget": {k: getattr(args, k) for k in ("seeds", "audio_noise", "pretrain_limit", "pretrain_epochs",
                                                       "pretrain_batch", "steps", "fractions", "mt_fraction",
                                                       "test_limit")},
              "wall_seconds": round(time.perf_counter() - start, 1)}
    emit(result)
    return result


if __name__ == "__main__":
    main()
