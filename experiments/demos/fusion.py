"""The fusion part of ``make demo``: a short AV-MNIST run through the shipped config.

Real data: ``experiments/fusion/avmnist-concat.yaml`` with modality dropout 0.3, trained for a
couple of epochs on the first few thousand AV-MNIST pairs, tested on all 10,000 test pairs and on
the first 2,048 with the audio removed through the presence mask. Without data (offline, nothing
found): ``experiments/fusion/synthetic-concat.yaml`` on the built-in synthetic image+audio+text data.
"""

from __future__ import annotations

from pathlib import Path

from experiments.demos import CONFIGS, DataSource, row, run_experiment, step

AVMNIST = CONFIGS / "fusion" / "avmnist-concat.yaml"
SYNTHETIC = CONFIGS / "fusion" / "synthetic-concat.yaml"


def run(out_dir: Path, data: DataSource, train_limit: int = 4000, epochs: int = 2) -> list[dict]:
    if data.synthetic:
        return _run_synthetic(out_dir, data, train_limit, epochs)
    experiment = "demo-fusion-avmnist-concat"
    overrides = ["--trainer.max_epochs", str(epochs), "--trainer.limit_val_batches", "0.2",
                 "--data.init_args.train_limit", str(train_limit),
                 "--model.init_args.modality_dropout", "0.3"]  # steadier, and robust to a missing input
    with step(f"fusion: training AV-MNIST concat ({epochs} epochs on {train_limit} pairs; "
              "the first run also builds the AV-MNIST cache, ~15 s)"):
        run = run_experiment(AVMNIST, overrides, out_dir, experiment)
    name = (f"{AVMNIST.relative_to(CONFIGS.parent)} --model.init_args.modality_dropout 0.3 "
            f"({epochs} ep., {train_limit} pairs)")
    batch_size = run.cli.datamodule.hparams.batch_size
    with step("fusion: testing with the audio removed (2,048 pairs)"):
        run.cli.trainer.limit_test_batches = max(1, 2048 // batch_size)
        no_audio, _ = run.test(drop_at_test=["audio"])
    with step("fusion: testing on the 10,000 AV-MNIST test pairs"):
        run.cli.trainer.limit_test_batches = 1.0
        both, pictures = run.test()
    return [
        row("fusion: image+audio concat (AV-MNIST)", name, data, "test accuracy (10,000 pairs)",
            round(both["test/acc"], 4), "> 0.902 (audio-only, README budget)", pictures),
        row("fusion: robustness, audio removed at test", name, data,
            "test accuracy, audio masked absent (2,048 pairs)", round(no_audio["test/acc"], 4),
            "> 0.10 chance (image-only model: 0.645)"),
    ]


def _run_synthetic(out_dir: Path, data: DataSource, num_train: int, epochs: int) -> list[dict]:
    experiment = "demo-fusion-synthetic"
    held_out = str(max(64, num_train // 4))  # val and test sized to the budget
    overrides = ["--trainer.max_epochs", str(epochs), "--data.init_args.num_train", str(num_train),
                 "--data.init_args.num_val", held_out, "--data.init_args.num_test", held_out]
    with step(f"fusion: training concat fusion on synthetic image+audio+text ({epochs} epochs, {num_train} samples)"):
        run = run_experiment(SYNTHETIC, overrides, out_dir, experiment)
    with step("fusion: testing"):
        both, pictures = run.test()
    name = f"{SYNTHETIC.relative_to(CONFIGS.parent)} ({epochs} ep., {num_train} samples)"
    return [row("fusion: image+audio+text concat (synthetic)", name, data, "test accuracy",
                round(both["test/acc"], 4), "> 0.10 chance", pictures)]
