"""Speech you can listen to: does a classifier of real speech hear the digit a GAN was asked to say?

Four stages, each cached under ``--out`` so an interrupted run resumes where it stopped:

1. scorer: an audio-only fusion classifier (``fusion.AudioEncoder`` on waveforms) trained on
   FSDD's training takes (recording split); its accuracy on the 300 real test takes is reported;
2. spectrogram GAN: ``experiments/gan/spectrogram-fsdd.yaml`` through the fusegen CLI for
   ``--gan-epochs``; ``--clips`` clips (digits 0-9 cycled) are inverted to waveforms (Griffin-Lim)
   and the scorer listens: ``agreement`` (share heard as the requested digit) and the Fréchet
   distance on its features (generated vs the real test takes);
3. image encoder: ``experiments/gan/image-encoder.yaml``'s classifier, for ``--encoder-steps``;
4. image -> speech: ``experiments/gan/image-to-speech.yaml`` for ``--i2s-batches``; one clip per
   MNIST *test* image (the first ``--clips``), scored against the image's label.

Targets (issue 24): agreement >= 0.80 (spectrogram GAN), >= 0.70 (image -> speech). One JSON line.
``--assets`` copies two clips and the spectrogram grid to generative/assets/.

    python -m experiments.benchmarks.gan_speech --gan-epochs 60 --i2s-batches 3000 --threads 2
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from datamodules import AVMNISTDataModule, FSDDDataModule
from experiments.benchmarks.common import emit, log, parse, parser
from experiments.benchmarks.gan_speech_encoder import train_condition_encoder
from experiments.cli import FusegenCLI
from fusion import AudioEncoder, ConcatFusion, FusionClassifier, LeNetImageEncoder, SpecAugment
from generative.audio import to_waveform
from generative.callbacks import image_grid
from generative.conditioning import pooled_unit_norm, read_checkpoint
from generative.speech import score_clips, write_wav

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "generative" / "assets"


def scorer_encoder(train: bool) -> AudioEncoder:
    """The scorer's audio encoder: log-mel of the waveform (its own front end) + a 4-block CNN."""
    augment = SpecAugment(freq_mask=6, time_mask=8, num_masks=2) if train else None
    return AudioEncoder(width=16, blocks=4, out_dim=64, spec_augment=augment)


def load_classifier(path: Path, modality: str, encoder: torch.nn.Module) -> FusionClassifier:
    model = FusionClassifier(encoders={modality: encoder}, fusion=lambda dims: ConcatFusion(dims, out_dim=128),
                             num_classes=10, dropout=0.2)
    model.load_state_dict(read_checkpoint(path)["state_dict"])
    return model.eval()


def trained_classifier(path: Path, modality: str, make, datamodule, steps: int, seed: int) -> tuple[Path, float]:
    """Train (or reuse, if ``path`` exists for the same steps) a one-encoder fusion classifier."""
    info = path.with_suffix(".json")
    if path.is_file() and info.is_file() and json.loads(info.read_text())["max_steps"] == steps:
        log(f"reusing {path}")
    else:
        log(f"training {path.name}: {steps} steps")
        train_condition_encoder(make(True), datamodule, modality, path, max_steps=steps, seed=seed)
    return path, json.loads(info.read_text())["test_acc"]


def fit_gan(config: str, out: Path, extra: list[str]) -> pl.LightningModule:
    """Train ``experiments/gan/<config>.yaml`` through the CLI into ``out/<config>`` (reused when its
    ``last.ckpt`` already holds the same budget)."""
    args = ["--config", str(REPO / "experiments" / "gan" / f"{config}.yaml"), "--trainer.default_root_dir",
            str(out), "--experiment", config, "--trainer.enable_progress_bar", "false", *extra]
    run = FusegenCLI(args=args, run=False)
    budget = out / config / "budget.json"
    ckpt = out / config / "checkpoints" / "last.ckpt"
    if ckpt.is_file() and budget.is_file() and json.loads(budget.read_text()) == extra:
        log(f"reusing {ckpt}")
        run.model.load_state_dict(read_checkpoint(ckpt)["state_dict"])
    else:
        log("fusegen fit " + " ".join(args))
        run.trainer.fit(run.model, datamodule=run.datamodule)
        budget.write_text(json.dumps(extra))
    return run.model.eval()


@torch.no_grad()
def generate(model, cond: torch.Tensor | None, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.nz, generator=g)
    return model.sample(z, cond).cpu()


def main() -> None:
    p = parser(__doc__, threads=1, out=str(REPO / "runs" / "gan-speech"))
    p.add_argument("--gan-epochs", type=int, default=60, help="spectrogram GAN epochs (~38 batches each)")
    p.add_argument("--i2s-batches", type=int, default=3000, help="image -> speech training batches")
    p.add_argument("--scorer-steps", type=int, default=400)
    p.add_argument("--encoder-steps", type=int, default=600)
    p.add_argument("--width", type=int, default=64, help="ngf = ndf")
    p.add_argument("--clips", type=int, default=300, help="generated clips scored per GAN")
    p.add_argument("--parts", nargs="+", choices=["spectrogram", "image"], default=["spectrogram", "image"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--assets", action="store_true", help="copy two clips and the grid to generative/assets/")
    args = parse(p)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    width = ["--model.init_args.generator.init_args.ngf", str(args.width),
             "--model.init_args.discriminator.init_args.ndf", str(args.width), "--seed_everything", str(args.seed)]

    fsdd = FSDDDataModule(split="recording", audio_format="waveform", batch_size=64)
    scorer_path, scorer_acc = trained_classifier(out / "scorer.ckpt", "audio", scorer_encoder, fsdd,
                                                 args.scorer_steps, args.seed)
    scorer = load_classifier(scorer_path, "audio", scorer_encoder(False))
    fsdd.setup("test")
    real = fsdd.splits["test"].get_batch(torch.arange(len(fsdd.splits["test"])))
    result: dict = {"scorer": {"checkpoint": str(scorer_path), "real_test_accuracy": round(scorer_acc, 4),
                               "steps": args.scorer_steps, "test_clips": len(real["label"])},
                    "width": args.width, "seed": args.seed, "threads": args.threads}

    if "spectrogram" in args.parts:
        t = time.time()
        model = fit_gan("spectrogram-fsdd", out, [*width, "--trainer.max_epochs", str(args.gan_epochs)])
        wanted = torch.arange(args.clips) % 10
        specs = generate(model, torch.nn.functional.one_hot(wanted, 10).float(), args.clips, args.seed)
        waves = to_waveform(specs, model.mel)
        score = score_clips(scorer, waves, wanted, real["audio"], real["label"])
        result["spectrogram_gan"] = {**{k: round(v, 4) for k, v in score.items()}, "epochs": args.gan_epochs,
                                     "target_agreement": 0.8, "met": score["agreement"] >= 0.8,
                                     "seconds": round(time.time() - t)}
        if args.assets:
            ASSETS.mkdir(parents=True, exist_ok=True)
            from torchvision.utils import save_image

            save_image(image_grid(specs[:100].flip(-2), nrow=10), ASSETS / "spectrogram-fsdd.png")
            for i in (3, 7):
                write_wav(ASSETS / f"spectrogram-fsdd-{i}.wav", waves[i], model.mel.sample_rate)

    if "image" in args.parts:
        t = time.time()
        avmnist = AVMNISTDataModule(split="recording", reduce_image=False, audio_format="waveform", batch_size=64)
        encoder_path, encoder_acc = trained_classifier(
            out / "image-encoder.ckpt", "image", lambda train: LeNetImageEncoder(channels=16, out_dim=64), avmnist,
            args.encoder_steps, args.seed)
        model = fit_gan("image-to-speech", out, [*width, "--model.init_args.encoder_checkpoint", str(encoder_path),
                                                 "--trainer.max_steps", str(2 * args.i2s_batches)])
        avmnist.setup("test")
        test = avmnist.splits["test"].get_batch(torch.arange(args.clips))
        cond = pooled_unit_norm(model.condition_encoder(test["image"]))
        waves = to_waveform(generate(model, cond, args.clips, args.seed), model.mel)
        score = score_clips(scorer, waves, test["label"], real["audio"], real["label"])
        result["image_to_speech"] = {**{k: round(v, 4) for k, v in score.items()}, "batches": args.i2s_batches,
                                     "image_encoder_test_accuracy": round(encoder_acc, 4),
                                     "encoder_steps": args.encoder_steps, "target_agreement": 0.7,
                                     "met": score["agreement"] >= 0.7, "seconds": round(time.time() - t)}
        if args.assets:
            interpolation = out / "image-to-speech" / "pictures" / "interpolation.png"
            if interpolation.is_file():
                shutil.copy(interpolation, ASSETS / "image-to-speech-interpolation.png")
            write_wav(ASSETS / f"image-to-speech-{int(test['label'][0])}.wav", waves[0], model.mel.sample_rate)
    result["seconds"] = round(time.time() - start)
    emit(result)


if __name__ == "__main__":
    main()
