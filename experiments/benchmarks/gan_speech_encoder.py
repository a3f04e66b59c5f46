"""Candidate audio encoders for speech-to-digit, scored on the held-out speaker.

Trains an audio-only ``fusion.FusionClassifier`` with ``train_condition_encoder`` (below) on
AV-MNIST's speaker split and prints one JSON line with its accuracy on the seen speakers' unseen
recordings (val) and on the held-out speaker (test, yweweler).
The checkpoint can be passed to speech-to-digit.yaml's ``encoder_checkpoint``.

    .venv/bin/python -m experiments.benchmarks.gan_speech_encoder --freq-mask 16 --time-mask 16 --steps 1500
    .venv/bin/python -m experiments.benchmarks.gan_speech_encoder --encoder lenet --steps 1500
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from datamodules import AVMNISTDataModule
from datamodules.files import atomic_path, atomic_write_json
from experiments.benchmarks.common import emit, log, parse, parser
from fusion import AudioEncoder, ConcatFusion, FusionClassifier, LeNetAudioEncoder, SpecAugment

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "runs" / "gan-results" / "encoders"


def train_condition_encoder(encoder: nn.Module, datamodule, modality: str, path: Path | None,
                            max_steps: int = 1500, lr: float = 2e-3, weight_decay: float = 1e-2,
                            dropout: float = 0.2, seed: int = 0, schedule: str = "cosine") -> float:
    """Fit ``FusionClassifier({modality: encoder}, ConcatFusion)`` on ``datamodule`` and return its test
    accuracy (held-out speaker for AV-MNIST); with ``path``, save the checkpoint there (a JSON of test
    and val accuracy beside it). For comparing encoder recipes in a script; a GAN never calls it.
    ``gan_speech`` also trains its speech scorer and image encoder with it.

    AdamW for ``max_steps`` batches; ``schedule="cosine"`` anneals the lr to 0 per step, ``"constant"``
    keeps it. A step budget, not epochs: AV-MNIST pairs 55,000 images with ~2,250 recordings, so 600
    batches already show every recording ~17 times; with SpecAugment each showing is a different
    masked view, which is what generalises to an unseen speaker."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule={schedule!r}: choose 'cosine' or 'constant'")
    pl.seed_everything(seed)
    enc = copy.deepcopy(encoder).requires_grad_(True).train()
    model = FusionClassifier(encoders={modality: enc}, fusion=lambda dims: ConcatFusion(dims, out_dim=128),
                             num_classes=10, dropout=dropout, cosine_schedule=schedule == "cosine",
                             optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay))
    root = path.parent if path is not None else Path.cwd()
    trainer = pl.Trainer(max_steps=max_steps, max_epochs=-1, limit_val_batches=0, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root)
    trainer.fit(model, datamodule=datamodule)
    acc = float(trainer.test(model, datamodule=datamodule, verbose=False)[0]["test/acc"])
    trainer.limit_val_batches = 1.0  # validate() after a fit without validation
    val_acc = float(trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/acc"])
    if path is not None:
        with atomic_path(path) as tmp:
            trainer.save_checkpoint(tmp)
        atomic_write_json(path.with_suffix(".json"), {
            "test_acc": acc, "val_acc": val_acc, "max_steps": max_steps, "lr": lr, "weight_decay": weight_decay,
            "dropout": dropout, "seed": seed, "schedule": schedule, "encoder": repr(encoder)})
    return acc


def main() -> None:
    parser_ = parser(__doc__, threads=0)
    parser_.add_argument("--encoder", choices=["audio", "lenet"], default="audio")
    parser_.add_argument("--width", type=int, default=8)
    parser_.add_argument("--blocks", type=int, default=5)
    parser_.add_argument("--spec-pool", type=int, default=2)
    parser_.add_argument("--freq-mask", type=int, default=0)
    parser_.add_argument("--time-mask", type=int, default=0)
    parser_.add_argument("--num-masks", type=int, default=2)
    parser_.add_argument("--steps", type=int, default=1500)
    parser_.add_argument("--lr", type=float, default=2e-3)
    parser_.add_argument("--dropout", type=float, default=0.2)
    parser_.add_argument("--seed", type=int, default=0)
    parser_.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    args = parse(parser_)
    if args.encoder == "audio":
        encoder = AudioEncoder(width=args.width, blocks=args.blocks, spec_pool=args.spec_pool, out_dim=64,
                               spec_augment=SpecAugment(freq_mask=args.freq_mask, time_mask=args.time_mask,
                                                        num_masks=args.num_masks))
        name = (f"audio-w{args.width}b{args.blocks}p{args.spec_pool}-f{args.freq_mask}t{args.time_mask}"
                f"m{args.num_masks}")
    else:
        encoder = LeNetAudioEncoder(out_dim=64)
        name = "lenet"
    name += f"-{args.steps}s-lr{args.lr:g}-{args.schedule}-d{args.dropout:g}-s{args.seed}"
    dm = AVMNISTDataModule(split="speaker", reduce_image=False, audio_format="spectrogram", batch_size=64)
    start = time.time()
    path = OUT / f"{name}.ckpt"
    log(f"training {name}")
    test_acc = train_condition_encoder(encoder, dm, "audio", path, max_steps=args.steps, lr=args.lr,
                                       dropout=args.dropout, seed=args.seed, schedule=args.schedule)
    info = json.loads(path.with_suffix(".json").read_text())
    result = {"encoder": name, "steps": args.steps, "schedule": args.schedule,
              "test_acc_heldout_speaker": round(test_acc, 4),
              "val_acc_seen_speakers": round(info["val_acc"], 4), "seconds": round(time.time() - start),
              "checkpoint": str(path.relative_to(REPO))}
    emit(result)


if __name__ == "__main__":
    main()
