"""The generative results of generative/README.md, one part per invocation (run them side by side):

    .venv/bin/python experiments/benchmarks/gan_results.py dcgan   --iters 1000 --seed S  # fusegen vs reference FID
    .venv/bin/python experiments/benchmarks/gan_results.py cdcgan  --iters 2000   # conditional agreement
    .venv/bin/python experiments/benchmarks/gan_results.py cdcgan  --iters 3000 --resume  # ... continued
    .venv/bin/python experiments/benchmarks/gan_results.py speech  --iters 1200   # speech-to-digit agreement

Each trains through the fusegen CLI configs of experiments/gan/ (with the overrides printed in
its JSON line), scores with the cached MNIST digit classifier (generative/metrics.py), copies
its sample grid to generative/assets/ and prints one JSON line. CPU budget: networks are
narrowed to ngf=ndf=32 (``--width``); iterations are batches of 64.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gan_reference import classifier_scores, reference_dcgan  # noqa: E402

from datamodules import MNISTDataModule  # noqa: E402
from experiments.cli import FusegenCLI  # noqa: E402
from generative import Discriminator, Generator, load_digit_classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "generative" / "assets"
RUNS = REPO / "runs" / "gan-results"


def cli(config: str, experiment: str, iters: int, width: int, extra: list[str]) -> FusegenCLI:
    args = ["--config", str(REPO / "experiments" / "gan" / f"{config}.yaml"), "--experiment", experiment,
            "--trainer.default_root_dir", str(RUNS), "--trainer.max_steps", str(2 * iters),
            "--trainer.max_epochs", "-1", "--trainer.enable_progress_bar", "false",
            "--model.init_args.generator.init_args.ngf", str(width),
            "--model.init_args.discriminator.init_args.ndf", str(width), *extra]
    print("fusegen fit " + " ".join(args), file=sys.stderr)
    return FusegenCLI(args=args, run=False)


def copy_grid(run: FusegenCLI, name: str) -> str:
    grids = sorted(Path(run.trainer.log_dir).glob("samples/epoch_*.png"), key=lambda p: p.stat().st_mtime)
    ASSETS.mkdir(parents=True, exist_ok=True)
    if not grids:
        return ""
    shutil.copy(grids[-1], ASSETS / f"{name}.png")
    interp = Path(run.trainer.log_dir) / "samples" / "interpolation.png"
    if interp.is_file():
        shutil.copy(interp, ASSETS / f"{name}-interpolation.png")
    return str((ASSETS / f"{name}.png").relative_to(REPO))


def part_dcgan(args: argparse.Namespace) -> dict:
    classifier = load_digit_classifier()
    dm = MNISTDataModule(batch_size=64)
    dm.setup("fit")
    scores = {}
    # fusegen: the dcgan-mnist config through the CLI (validation every 500 batches for the curve).
    start = time.time()
    run = cli("dcgan-mnist", f"results-dcgan-s{args.seed}", args.iters, args.width,
              ["--trainer.val_check_interval", "500", "--trainer.check_val_every_n_epoch", "null"])
    pl.seed_everything(args.seed)
    run.trainer.fit(run.model, datamodule=run.datamodule)
    fusegen_s = time.time() - start
    scores["fusegen"] = classifier_scores(lambda z, c: run.model.sample(z), dm.val_dataloader(), classifier)
    # Reference: pytorch/examples' loop, same networks/data/steps, samples from G (no EMA there).
    pl.seed_everything(args.seed)
    netG, netD = Generator(ngf=args.width), Discriminator(ndf=args.width)
    ref_s = reference_dcgan(netG, netD, dm.train_dataloader(), args.iters)
    netG.eval()
    scores["reference"] = classifier_scores(lambda z, c: netG(z), dm.val_dataloader(), classifier)
    # Same fusegen run without EMA, to separate the harness from the EMA's contribution.
    run.model.generator.eval()
    scores["fusegen_no_ema"] = classifier_scores(lambda z, c: run.model.generator(z), dm.val_dataloader(), classifier)
    return {"part": "dcgan", "seed": args.seed, "iters": args.iters, "width": args.width, "fid_fusegen": scores["fusegen"]["fid"],
            "fid_fusegen_no_ema": scores["fusegen_no_ema"]["fid"], "fid_reference": scores["reference"]["fid"],
            "target": "fusegen <= reference", "seconds_fusegen": round(fusegen_s), "seconds_reference": round(ref_s),
            "picture": copy_grid(run, "dcgan-mnist"), "real_images": 5000}


def part_cdcgan(args: argparse.Namespace) -> dict:
    run = cli("cdcgan-mnist", "results-cdcgan", args.iters, args.width,
              ["--trainer.val_check_interval", "500", "--trainer.check_val_every_n_epoch", "null"])
    pl.seed_everything(args.seed)
    ckpt = str(RUNS / "results-cdcgan" / "checkpoints" / "last.ckpt") if args.resume else None
    run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=ckpt)
    val = run.trainer.validate(run.model, datamodule=run.datamodule, verbose=False)[0]
    test = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]
    return {"part": "cdcgan", "iters": args.iters, "width": args.width, "val_agreement": val["val/agreement"],
            "val_fid": val["val/fid"], "test_agreement": test["test/agreement"], "test_fid": test["test/fid"],
            "target": "agreement >= 0.95", "picture": copy_grid(run, "cdcgan-mnist")}


def part_speech(args: argparse.Namespace) -> dict:
    run = cli("speech-to-digit", "results-speech", args.iters, args.width,
              ["--trainer.val_check_interval", "1.0", *shlex.split(args.override)])
    pl.seed_everything(args.seed)
    ckpt = str(RUNS / "results-speech" / "checkpoints" / "last.ckpt") if args.resume else None
    run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=ckpt)
    test = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]
    from datamodules.paths import cache_dir

    enc_info = [json.loads(p.read_text()) for p in cache_dir("speech-encoder").glob("*.json")]
    return {"part": "speech", "iters": args.iters, "width": args.width,
            "test_agreement_heldout_speaker": test["test/agreement"], "test_fid": test["test/fid"],
            "audio_encoder": enc_info, "target": "agreement >= 0.85", "picture": copy_grid(run, "speech-to-digit")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["dcgan", "cdcgan", "speech"])
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", default="", help="extra fusegen CLI arguments, one string: --override='--a 1 --b 2'")
    parser.add_argument("--resume", action="store_true", help="cdcgan/speech: continue the part's last checkpoint to --iters")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    result = {"dcgan": part_dcgan, "cdcgan": part_cdcgan, "speech": part_speech}[args.part](args)
    result["wall_s"] = round(time.time() - start)
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{args.part}-s{args.seed}-{args.iters}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
