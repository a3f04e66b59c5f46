"""Candidate audio encoders for speech-to-digit, scored on the held-out speaker.

Trains an audio-only ``fusion.FusionClassifier`` with ``generative.conditioning.train_condition_encoder``
(the recipe ``encoder_checkpoint: auto`` uses) on AV-MNIST's speaker split and prints one JSON
line with its accuracy on the seen speakers' unseen recordings (val) and on the held-out speaker
(test, yweweler). The checkpoint can be passed to speech-to-digit.yaml's ``encoder_checkpoint``.

    .venv/bin/python -m experiments.benchmarks.gan_speech_encoder --freq-mask 16 --time-mask 16 --steps 1500
    .venv/bin/python -m experiments.benchmarks.gan_speech_encoder --encoder lenet --steps 1500
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from datamodules import AVMNISTDataModule
from experiments.benchmarks.common import emit, log, parse, parser
from fusion import AudioEncoder, LeNetAudioEncoder, SpecAugment
from generative.conditioning import train_condition_encoder

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "runs" / "gan-results" / "encoders"


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
