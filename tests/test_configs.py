"""Every shipped experiment config (fusion, GAN, RL): it parses, `--print_config` round-trips, and
it trains two steps (fast_dev_run). The one place for these checks; the shared AV-MNIST recipe
(experiments/fusion/base/) is checked to be what each head file stacks on."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml

from experiments.cli import CONFIG_DIR, FusegenCLI, main

SHIPPED = sorted(p for p in CONFIG_DIR.glob("*/*.yaml") if p.parent.name not in {"presets", "benchmarks", "search"})
QUICK = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]
# smaller networks and a smaller one-time metric classifier for the GANs: the wiring is under test here
SMALL = {"gan": ["--model.init_args.metrics.init_args.features.init_args.epochs", "1",
                 "--model.init_args.metrics.init_args.features.init_args.train_limit", "2048",
                 "--model.init_args.generator.init_args.ngf", "8",
                 "--model.init_args.discriminator.init_args.ndf", "8"]}
# per-config extras: speech-to-digit's and image-to-speech's condition encoders are other experiments'
# checkpoints (speech-encoder.yaml, image-encoder.yaml); the wiring test runs them with a random frozen encoder.
EXTRA = {"gan/speech-to-digit.yaml": ["--model.init_args.encoder_checkpoint", "null"],
         "gan/image-to-speech.yaml": ["--model.init_args.encoder_checkpoint", "null"],
         # the few-label configs start from avmnist-clip's checkpoint; wired here from random encoders
         "ssl/avmnist-finetune-1pct.yaml": ["--model.init_args.init_encoders_from", "null"],
         "ssl/avmnist-linear-probe-1pct.yaml": ["--model.init_args.init_encoders_from", "null"],
         # an untrained greedy Breakout agent may never serve: cap the evaluation episodes
         "rl/ppo-breakout.yaml": ["--model.init_args.env_kwargs", "{max_episode_steps: 100}",
                                  "--model.init_args.n_steps", "16"]}
# distillation students need their teacher's checkpoint: a one-step fit of the teacher config writes it
TEACHERS = {"ship/avmnist-attention-student.yaml": "fusion/avmnist-attention.yaml",
            "ship/sst2-minilm-student.yaml": "ship/sst2-minilm-finetune.yaml"}
ENCODER_CONFIGS = {"speech-encoder", "image-encoder"}  # fusion classifiers that make a GAN's condition encoder
HEADS = ["concat", "attention", "gated", "tensor", "lowrank"]


def name(config: Path) -> str:
    return config.relative_to(CONFIG_DIR).as_posix()


def print_config(config: Path, *extra: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *extra, "--print_config"])
    assert exit_info.value.code in (0, None), f"{name(config)} does not parse"
    return yaml.safe_load(out.getvalue())


def test_every_area_ships_configs():
    names = {name(p) for p in SHIPPED}
    assert {"fusion/synthetic-concat.yaml", "fusion/avmnist-attention.yaml", "gan/cdcgan-mnist.yaml",
            "rl/ppo-cartpole.yaml"} <= names
    assert not any(n.startswith("fusion/base/") for n in names), "base files are not experiments of their own"


@pytest.mark.parametrize("config", SHIPPED, ids=name)
def test_print_config_round_trips(config: Path, in_tmp: Path):
    first = print_config(config)
    assert first["experiment"] not in ("", "default")  # names the run folder runs/<experiment>/
    package = {"gan": "generative", "rl": "rl"}.get(config.parent.name, "fusion")  # fusion, ssl, ship
    if config.stem not in ENCODER_CONFIGS:  # the GAN's condition encoder is a fusion classifier
        assert first["model"]["class_path"].startswith(f"{package}.")
    # the shared trainer.yaml is underneath every experiment
    assert {c["class_path"].rsplit(".", 1)[-1] for c in first["trainer"]["logger"]} == {"TensorBoardLogger",
                                                                                      "CSVLogger"}
    printed = in_tmp / "printed.yaml"
    printed.write_text(yaml.safe_dump(first))
    assert print_config(printed) == first  # the printed file is itself a valid --config


def test_experiment_names_are_unique():
    """Two configs with one `experiment` would mix their checkpoints (and `--ckpt_path last`)."""
    names = [yaml.safe_load(c.read_text()).get("experiment") for c in SHIPPED]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


def _fast_dev_run(config: Path, request: pytest.FixtureRequest) -> None:
    resolved = print_config(config)
    data, model = str((resolved.get("data") or {}).get("class_path", "")), resolved["model"]["class_path"]
    if data and not data.endswith("SyntheticMultimodalDataModule"):
        request.getfixturevalue("data_root")  # skips, with the reason, only where the real data is absent
    tmp = request.getfixturevalue("in_tmp")
    if data.endswith("HFDataModule"):  # the files-example configs read what the README's first step writes
        from experiments.make_files_example import make_files_example

        make_files_example(tmp / "runs" / "files-example-data", n=200, root=str(request.getfixturevalue("data_root")))
    if name(config) == "gan/imagefolder-example.yaml":  # the RGB folder its header's first step writes
        from experiments.make_shapes_example import make_shapes_example

        make_shapes_example(tmp / "runs" / "shapes-data", n=150)
    extra = list(EXTRA.get(name(config), []))
    if name(config) in TEACHERS:
        FusegenCLI(args=["fit", "--config", str(CONFIG_DIR / TEACHERS[name(config)]), "--experiment", "teacher",
                         "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", *QUICK])
        extra += ["--model.init_args.teacher_checkpoint", str(tmp / "runs" / "teacher" / "checkpoints" / "last.ckpt")]
    small = SMALL["gan"] if model == "generative.GAN" else []
    if data.endswith("HFDataModule") and model == "generative.GAN":
        small = [*small[4:], "--model.init_args.metrics", "null"]  # a smoke test: no metrics
    cli = FusegenCLI(args=["fit", "--config", str(config), "--trainer.fast_dev_run", "2", *QUICK, *small,
                           *extra])
    assert cli.trainer.state.finished and not cli.trainer.interrupted
    if model.startswith("rl."):  # a step is an optimiser step: one PPO update makes many
        assert cli.model.num_updates >= 1 and cli.trainer.global_step >= 1
    else:
        assert cli.trainer.global_step == 2  # fast_dev_run 2: two training batches
    losses = {k: v for k, v in cli.trainer.callback_metrics.items() if "loss" in k}
    assert all(torch.isfinite(v).all() for v in losses.values()), losses


@pytest.mark.parametrize("config", SHIPPED, ids=name)
def test_fast_dev_run(config: Path, request: pytest.FixtureRequest):
    _fast_dev_run(config, request)


def test_head_files_add_only_their_head_to_the_shared_recipe():
    """avmnist-<head>.yaml = base/avmnist.yaml + its fusion head, each run alone with one --config."""
    resolved = {head: print_config(CONFIG_DIR / "fusion" / f"avmnist-{head}.yaml") for head in HEADS}
    heads = {head: cfg["model"]["init_args"].pop("fusion")["class_path"] for head, cfg in resolved.items()}
    assert heads == {"concat": "fusion.ConcatFusion", "attention": "fusion.AttentionFusion",
                     "gated": "fusion.GatedFusion", "tensor": "fusion.TensorFusion",
                     "lowrank": "fusion.LowRankTensorFusion"}
    for cfg in resolved.values():
        cfg.pop("experiment")
    reference = resolved["concat"]
    assert all(cfg == reference for cfg in resolved.values())
    recipe = reference["model"]["init_args"]
    assert recipe["unimodal_loss_weight"] == 0.5 and recipe["cosine_schedule"] is True
    assert recipe["encoders"]["image"]["class_path"] == "fusion.LeNetImageEncoder"
    assert recipe["encoders"]["audio"]["class_path"] == "fusion.AudioEncoder"
    assert reference["trainer"]["max_epochs"] == 10


def test_unimodal_baselines_use_the_fusion_encoders():
    recipe = print_config(CONFIG_DIR / "fusion" / "avmnist-concat.yaml")["model"]["init_args"]
    for modality in ("image", "audio"):
        baseline = print_config(CONFIG_DIR / "fusion" / f"avmnist-{modality}-only.yaml")["model"]["init_args"]
        assert baseline["modality"] == modality
        assert baseline["encoder"] == recipe["encoders"][modality]
        assert baseline["optimizer"] == recipe["optimizer"] and baseline["hidden_dims"] == recipe["hidden_dims"]


def test_stacked_override_changes_one_head_option_only():
    base = print_config(CONFIG_DIR / "fusion" / "avmnist-attention.yaml")
    changed = print_config(CONFIG_DIR / "fusion" / "avmnist-attention.yaml",
                           "--model.init_args.fusion.init_args.num_heads", "2")
    assert changed["model"]["init_args"]["fusion"]["init_args"]["num_heads"] == 2
    changed["model"]["init_args"]["fusion"]["init_args"]["num_heads"] = 4
    assert changed == base


@pytest.mark.slow
def test_gan_ddp_cpu_preset(data_root: Path, in_tmp: Path) -> None:
    """Two CPU processes (gloo): manual optimisation with toggled optimizers, EMA, grids, metrics."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "experiments.cli", "fit",
                          "--config", str(CONFIG_DIR / "gan" / "cdcgan-mnist.yaml"),
                          "--config", str(CONFIG_DIR / "presets" / "ddp-cpu.yaml"),
                          "--trainer.strategy.init_args.find_unused_parameters", "true",
                          "--trainer.max_steps", "8", "--trainer.limit_val_batches", "2",
                          "--data.init_args.train_limit", "512", "--trainer.enable_progress_bar", "false",
                          *SMALL["gan"]], cwd=in_tmp, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(in_tmp.glob("runs/cdcgan-mnist/pictures/samples/*.png"))


def test_every_family_puts_its_pictures_in_one_run_folder_layout(data_root: Path, in_tmp: Path):
    """fusion, GAN and RL runs (fast_dev_run, whose loggers are dummies) all write runs/<experiment>/pictures/."""
    runs = [("test", CONFIG_DIR / "fusion" / "synthetic-concat.yaml", ["--data.init_args.num_test", "64"],
             "confusion_matrix.png"),
            ("fit", CONFIG_DIR / "gan" / "cdcgan-mnist.yaml", [*SMALL["gan"][4:], "--model.init_args.metrics", "null"],
             "samples/epoch_000.png"),
            ("fit", CONFIG_DIR / "rl" / "ppo-cartpole.yaml", [], "learning_curve.png")]
    for subcommand, config, extra, picture in runs:
        FusegenCLI(args=[subcommand, "--config", str(config), "--trainer.fast_dev_run", "2", *QUICK, *extra])
        experiment = yaml.safe_load(config.read_text())["experiment"]
        assert (in_tmp / "runs" / experiment / "pictures" / picture).is_file(), sorted(in_tmp.rglob("*.png"))
