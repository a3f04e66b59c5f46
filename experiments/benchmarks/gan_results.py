"""The generative results of generative/README.md, one part per invocation (run them side by side):

    python -m experiments.benchmarks.gan_results dcgan   --iters 2000 --score-at 1000 --seed S  # FID vs reference
    python -m experiments.benchmarks.gan_results dcgan-summary --iters 2000  # medians over the seeds run
    python -m experiments.benchmarks.gan_results dcgan   --iters 2000 --no-reference  # the README protocol only
    python -m experiments.benchmarks.gan_results cdcgan  --iters 2000   # conditional agreement
    python -m experiments.benchmarks.gan_results cdcgan  --iters 3000 --resume  # ... continued
    python -m experiments.benchmarks.gan_results speech  --iters 8000   # speech-to-digit, held-out speaker

Each trains through the fusegen CLI configs of experiments/gan/ (with the overrides printed in
its JSON line), copies its sample grid to generative/assets/ and prints one JSON line. CPU budget:
networks are narrowed to ngf=ndf=32 (``--width``); iterations are batches of 64.

The README's protocol (``score_test_split``, every part): the config's injected ``SampleMetrics`` on
``generative.metrics.DigitFeatures`` (the cached MNIST digit classifier), the whole test split
(MNIST: 10,000 images) against as many samples of the config's sampler (the EMA generator): FID,
KID, precision, recall, density, coverage (+ agreement if conditional), with its protocol line.
The dcgan part also compares fusegen with the pytorch/examples loop on a digit-feature FID of
5,000 validation images (``fid_fusegen`` vs ``fid_reference``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from datamodules import MNISTDataModule
from datamodules.files import atomic_write_json
from experiments.benchmarks.common import emit, log, parse, parser
from experiments.benchmarks.gan_reference import digit_scores, reference_dcgan
from experiments.cli import FusegenCLI
from fusion.artifacts import run_dir
from generative import DigitFeatures, Discriminator, Generator
from generative.module import get_ema_warmup_multi_avg_fn

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "generative" / "assets"
RUNS = REPO / "runs" / "gan-results"


def cli(config: str, experiment: str, iters: int, width: int, extra: list[str]) -> FusegenCLI:
    args = ["--config", str(REPO / "experiments" / "gan" / f"{config}.yaml"), "--experiment", experiment,
            "--trainer.default_root_dir", str(RUNS), "--trainer.max_steps", str(2 * iters),
            "--trainer.max_epochs", "-1", "--trainer.enable_progress_bar", "false",
            "--model.init_args.generator.init_args.ngf", str(width),
            "--model.init_args.discriminator.init_args.ndf", str(width), *extra]
    log("fusegen fit " + " ".join(args))
    return FusegenCLI(args=args, run=False)


def score_test_split(run: FusegenCLI) -> dict:
    """The config's ``SampleMetrics`` on the datamodule's test split against as many generated images:
    every score it logs, as ``test_<name>``, and its protocol line (extractor, counts, KID subsets, k, sampler)."""
    scores = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]
    sampler = "EMA generator" if run.model.generator_ema is not None else "generator"
    return {**{key.replace("/", "_"): value for key, value in scores.items() if key.startswith("test/")},
            "test_protocol": run.model.metrics.protocol("test", sampler)}


def copy_grid(run: FusegenCLI, name: str) -> str:
    pictures = run_dir(run.trainer) / "pictures"
    grids = sorted(pictures.glob("samples/epoch_*.png"), key=lambda p: p.stat().st_mtime)
    ASSETS.mkdir(parents=True, exist_ok=True)
    if not grids:
        return ""
    shutil.copy(grids[-1], ASSETS / f"{name}.png")
    interp = pictures / "interpolation.png"
    if interp.is_file():
        shutil.copy(interp, ASSETS / f"{name}-interpolation.png")
    return str((ASSETS / f"{name}.png").relative_to(REPO))


class FusegenScorer(pl.Callback):
    """Keeps a second EMA of G with the constant decay (no warm-up), so the module's warm-up EMA is
    compared with it on the same training run, and scores the three samplers (EMA, raw G, constant
    EMA) after each batch count in ``budgets``. Scoring restores the global RNG state, so the
    training stream is the one a run stopped at that budget would have had."""

    def __init__(self, decay: float, budgets: list[int], score) -> None:
        self.decay, self.budgets, self.score = decay, budgets, score
        self.ema, self.scores = None, {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ema is None:
            self.ema = torch.optim.swa_utils.AveragedModel(
                pl_module.generator, multi_avg_fn=get_ema_warmup_multi_avg_fn(self.decay, warmup=False),
                use_buffers=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "loss_g" in outputs:
            self.ema.update_parameters(pl_module.generator)
        if pl_module.iteration in self.budgets:
            rng = torch.get_rng_state()
            g, plain = pl_module.generator, self.ema.module
            g.eval(), plain.eval()
            self.scores[pl_module.iteration] = {
                "fid_fusegen": self.score(lambda z, c: pl_module.sample(z))["fid"],  # EMA, warm-up decay
                "fid_fusegen_no_ema": self.score(lambda z, c: g(z))["fid"],
                "fid_fusegen_ema_no_warmup": self.score(lambda z, c: plain(z))["fid"]}
            g.train(), plain.train()
            torch.set_rng_state(rng)


def part_dcgan(args: argparse.Namespace) -> dict:
    features = DigitFeatures()
    dm = MNISTDataModule(batch_size=64)
    dm.setup("fit")
    budgets = sorted({args.iters, *args.score_at})

    def score(generate) -> dict:
        return digit_scores(generate, dm.val_dataloader(), features)

    # fusegen: the dcgan-mnist config through the CLI (validation every 500 batches for the curve).
    start = time.time()
    run = cli("dcgan-mnist", f"results-dcgan-s{args.seed}", args.iters, args.width,
              ["--trainer.val_check_interval", "500", "--trainer.check_val_every_n_epoch", "null"])
    decay = run.model.hparams.ema_decay
    scorer = FusegenScorer(decay, budgets, score)
    run.trainer.callbacks.append(scorer)
    pl.seed_everything(args.seed)
    run.trainer.fit(run.model, datamodule=run.datamodule)
    fusegen_s = time.time() - start
    test = score_test_split(run)
    # Reference: pytorch/examples' loop, same networks/data/steps, samples from G (no EMA there).
    ref_scores, ref_s = {}, None

    def on_step(i: int, err_d: float, err_g: float) -> None:
        if i + 1 in budgets:
            rng = torch.get_rng_state()
            netG.eval()
            ref_scores[i + 1] = score(lambda z, c: netG(z))["fid"]
            netG.train()
            torch.set_rng_state(rng)

    if args.reference:
        pl.seed_everything(args.seed)
        netG, netD = Generator(ngf=args.width), Discriminator(ndf=args.width)
        ref_s = round(reference_dcgan(netG, netD, dm.train_dataloader(), args.iters, on_step=on_step))
    per_budget = [{"iters": b, **scorer.scores[b], **({"fid_reference": ref_scores[b]} if ref_scores else {})}
                  for b in budgets]
    return {"part": "dcgan", "seed": args.seed, "iters": args.iters, "width": args.width, "threads": args.threads,
            "ema_decay": decay, "ema_warmup": run.model.hparams.ema_warmup, **test,
            **{k: v for k, v in per_budget[-1].items() if k != "iters"},  # fid_fusegen = the module's EMA sampler
            "budgets": per_budget, "target": "fusegen <= reference" if args.reference else None,
            "seconds_fusegen": round(fusegen_s), "seconds_reference": ref_s,
            "picture": copy_grid(run, "dcgan-mnist"), "real_images": 5000}


def part_cdcgan(args: argparse.Namespace) -> dict:
    run = cli("cdcgan-mnist", "results-cdcgan", args.iters, args.width,
              ["--trainer.val_check_interval", "500", "--trainer.check_val_every_n_epoch", "null"])
    pl.seed_everything(args.seed)
    ckpt = str(RUNS / "results-cdcgan" / "checkpoints" / "last.ckpt") if args.resume else None
    run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=ckpt)
    val = run.trainer.validate(run.model, datamodule=run.datamodule, verbose=False)[0]
    return {"part": "cdcgan", "iters": args.iters, "width": args.width, "val_agreement": val["val/agreement"],
            "val_fid": val["val/fid"], **score_test_split(run),
            "target": "agreement >= 0.95", "picture": copy_grid(run, "cdcgan-mnist")}


def part_speech(args: argparse.Namespace) -> dict:
    run = cli("speech-to-digit", f"results-speech{args.tag}", args.iters, args.width,
              ["--trainer.val_check_interval", "1.0", *shlex.split(args.override)])
    pl.seed_everything(args.seed)
    ckpt = str(RUNS / f"results-speech{args.tag}" / "checkpoints" / "last.ckpt") if args.resume else None
    run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=ckpt)
    run.trainer.limit_val_batches = 1.0  # the whole val split (training validated on 16 batches)
    val = run.trainer.validate(run.model, datamodule=run.datamodule, verbose=False)[0]
    val_speaker = run.datamodule.hparams.get("val_speaker")
    test = score_test_split(run)
    # The encoder this run used: the speech-encoder experiment's checkpoint (a JSON with its
    # accuracy sits beside checkpoints that experiments/benchmarks/gan_speech_encoder.py wrote).
    enc_path = run.model.hparams.get("encoder_checkpoint")
    enc_json = Path(enc_path).with_suffix(".json") if enc_path else None
    enc_info = {"checkpoint": str(enc_path)}
    if enc_json is not None and enc_json.is_file():
        enc_info.update({k: v for k, v in json.loads(enc_json.read_text()).items() if k != "encoder"})
    return {"part": "speech", "iters": args.iters, "width": args.width, "threads": args.threads,
            "override": args.override, "lr_g": run.trainer.optimizers[0].param_groups[0]["lr"],
            "lr_d": run.trainer.optimizers[1].param_groups[0]["lr"], "val_agreement": val["val/agreement"],
            "val_speakers": f"held-out {val_speaker}" if val_speaker else "seen speakers (other takes)",
            "test_agreement_heldout_speaker": test["test_agreement"], **test,
            "audio_encoder": enc_info, "target": "agreement >= 0.85", "picture": copy_grid(run, "speech-to-digit")}


def bootstrap_ci(values: list[float], resamples: int = 10_000) -> list[float]:
    """95% percentile-bootstrap interval of the mean (seeded, so the summary is reproducible)."""
    rng = np.random.default_rng(0)
    means = rng.choice(np.asarray(values), size=(resamples, len(values))).mean(axis=1)
    return [round(float(q), 1) for q in np.percentile(means, [2.5, 97.5])]


def dcgan_summary(iters: int) -> dict:
    """Medians over the seeds' ``dcgan-s*-{iters}.json`` at every scored budget: fusegen's sampler
    (the config's EMA of G), its raw G and the reference, plus the paired per-seed gaps."""
    runs = [json.loads(p.read_text()) for p in sorted(RUNS.glob(f"dcgan-s*-{iters}.json"))]
    if not runs:
        raise SystemExit(f"no {RUNS}/dcgan-s*-{iters}.json yet: run the dcgan part with --iters {iters} first")
    rows = []
    for budget in sorted({b["iters"] for r in runs for b in r["budgets"]}):
        at = [b for r in runs for b in r["budgets"] if b["iters"] == budget]
        gaps = [b["fid_fusegen"] - b["fid_reference"] for b in at]
        rows.append({"iters": budget, "seeds": len(at),
                     "fid_fusegen_median": round(statistics.median(b["fid_fusegen"] for b in at), 1),
                     "fid_fusegen_no_ema_median": round(statistics.median(b["fid_fusegen_no_ema"] for b in at), 1),
                     "fid_reference_median": round(statistics.median(b["fid_reference"] for b in at), 1),
                     "gap_median": round(statistics.median(gaps), 1), "gap_mean": round(statistics.mean(gaps), 1),
                     "gap_mean_ci95": bootstrap_ci(gaps),
                     "seeds_fusegen_le_reference": sum(g <= 0 for g in gaps)})
    final = rows[-1]
    return {"part": "dcgan-summary", "iters": iters, "seeds": [r["seed"] for r in runs], "budgets": rows,
            "target": "fusegen <= reference (medians over seeds)",
            "met": final["fid_fusegen_median"] <= final["fid_reference_median"]}


def main() -> None:
    p = parser(__doc__, threads=0)
    p.add_argument("part", choices=["dcgan", "cdcgan", "speech", "dcgan-summary"])
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", default="", help="extra fusegen CLI arguments, one string: --override='--a 1 --b 2'")
    p.add_argument("--score-at", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                        help="dcgan: also score both runs after these batch counts, e.g. 1000 (comma-separated)")
    p.add_argument("--resume", action="store_true",
                   help="cdcgan/speech: continue the part's last checkpoint to --iters")
    p.add_argument("--tag", default="", help="suffix of the result file and run folder (keeps variants apart)")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="dcgan: skip the pytorch/examples loop (result file tagged -noref, not in the summary)")
    args = parse(p)
    if args.part == "dcgan" and not args.reference:
        args.tag += "-noref"
    if args.part == "dcgan-summary":  # aggregates the dcgan runs of every seed at --iters
        emit(dcgan_summary(args.iters))
        return
    start = time.time()
    result = {"dcgan": part_dcgan, "cdcgan": part_cdcgan, "speech": part_speech}[args.part](args)
    result["wall_s"] = round(time.time() - start)
    RUNS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RUNS / f"{args.part}-s{args.seed}-{args.iters}{args.tag}.json", result)
    emit(result)


if __name__ == "__main__":
    main()
