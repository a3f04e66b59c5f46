"""The `fusegen` CLI: every subcommand on a trained model, configs stack, presets are only config,
DDP runs on 2 CPU processes, runs resume, a user's own module loads by class_path, and bad input
gives a short, named error. (Every shipped config's parse + fast_dev_run: tests/test_configs.py.)"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from experiments.cli import CONFIG_DIR, FusegenCLI, main

SYNTHETIC = CONFIG_DIR / "fusion" / "synthetic-concat.yaml"
QUICK = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
SMALL_DATA = ["--data.init_args.num_train", "256", "--data.init_args.num_val", "64",
              "--data.init_args.num_test", "64"]


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_printed_config_refits(in_tmp: Path):
    printed = in_tmp / "printed.yaml"
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", "--config", str(SYNTHETIC), *SMALL_DATA, "--print_config"])
    printed.write_text(out.getvalue())
    FusegenCLI(args=["fit", "--config", str(printed), "--trainer.max_epochs", "1", *QUICK])
    assert (in_tmp / "runs" / "synthetic-concat" / "checkpoints" / "last.ckpt").is_file()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, float]]:
    """One short fit of the synthetic config: (run folder, its CLI args, the last val metrics)."""
    root = tmp_path_factory.mktemp("subcommands")
    args = ["--config", str(SYNTHETIC), *SMALL_DATA, *QUICK, "--trainer.default_root_dir", str(root / "runs")]
    cli = FusegenCLI(args=["fit", *args, "--trainer.max_epochs", "1"])
    val = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    return root / "runs" / "synthetic-concat", args, val


def test_validate_subcommand_reproduces_the_fit_validation(trained):
    run_dir, args, val = trained
    cli = FusegenCLI(args=["validate", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    again = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    assert {"val/acc", "val/loss"} <= set(again)
    assert again["val/acc"] == pytest.approx(val["val/acc"]) and again["val/loss"] == pytest.approx(val["val/loss"])


def test_test_subcommand_scores_the_checkpoint_and_writes_its_picture(trained):
    run_dir, args, _ = trained
    cli = FusegenCLI(args=["test", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    acc = float(cli.trainer.callback_metrics["test/acc"])
    assert 0.0 <= acc <= 1.0
    logged = [row for path in run_dir.glob("csv/version_*/metrics.csv") for row in csv.DictReader(path.open())
              if row.get("test/acc")]
    assert logged and float(logged[-1]["test/acc"]) == pytest.approx(acc)
    assert (run_dir / "pictures" / "confusion_matrix.png").stat().st_size > 0


def test_predict_subcommand_writes_one_row_per_input(trained):
    run_dir, args, _ = trained
    cli = FusegenCLI(args=["predict", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    predictions = run_dir / "predictions" / "predictions.csv"
    rows = list(csv.DictReader(predictions.open()))
    assert len(rows) == len(cli.datamodule.predict_dataloader().dataset) == 64
    assert sorted(int(r["index"]) for r in rows) == list(range(64))
    for r in rows:
        probs = {k: float(v) for k, v in r.items() if k.startswith("p_")}
        assert len(probs) == 10 and sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
        assert r["predicted_name"] == max(probs, key=probs.get)[2:]


def test_a_users_module_in_the_working_folder_loads_by_class_path(tmp_path: Path):
    """`fusegen` as installed (the console script), run where the user keeps `mydm.py`."""
    (tmp_path / "mydm.py").write_text(
        "from datamodules import SyntheticMultimodalDataModule\n\n\n"
        "class MyDM(SyntheticMultimodalDataModule):\n"
        "    def setup(self, stage=None):\n"
        "        print('MyDM.setup ran')\n"
        "        super().setup(stage)\n")
    fusegen = Path(sys.executable).parent / "fusegen"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(fusegen), "fit", "--config", str(SYNTHETIC), "--data", "mydm.MyDM", *SMALL_DATA,
                           "--data.init_args.batch_size", "32", "--trainer.fast_dev_run", "1", *QUICK],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MyDM.setup ran" in proc.stdout


def test_stacked_configs_merge_in_order(in_tmp: Path):
    override = in_tmp / "override.yaml"
    override.write_text(yaml.safe_dump({
        "experiment": "stacked",
        "trainer": {"max_epochs": 3, "precision": "bf16-mixed"},
        "model": {"init_args": {"dropout": 0.3}},
    }))
    cli = FusegenCLI(args=["--config", str(SYNTHETIC), "--config", str(override), *QUICK], run=False)
    assert cli.config.experiment == "stacked"
    assert cli.trainer.max_epochs == 3
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.model.hparams.dropout == 0.3
    assert cli.model.hparams.num_classes == 10  # from the experiment config underneath
    # run folder follows the experiment name; the shared trainer.yaml loggers are kept
    assert {Path(lg.save_dir).as_posix() for lg in cli.trainer.loggers} == {"runs/stacked"}


def test_gpu_preset_is_only_a_config_change(cli_exit):
    code, out, err = cli_exit("fit", "--config", str(SYNTHETIC),
                              "--config", str(CONFIG_DIR / "presets" / "gpu.yaml"), "--print_config")
    assert code == 0, err[-2000:]
    trainer = yaml.safe_load(out)["trainer"]
    assert (trainer["accelerator"], trainer["devices"], trainer["precision"]) == ("gpu", 1, "bf16-mixed")


def test_ddp_cpu_preset_runs_two_processes(in_tmp: Path):
    proc = run_cli("fit", "--config", str(SYNTHETIC), "--config", str(CONFIG_DIR / "presets" / "ddp-cpu.yaml"),
                   *SMALL_DATA, "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                   "--experiment", "ddp", cwd=in_tmp, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in log
    assert "All distributed processes registered. Starting with 2 processes" in log
    assert (in_tmp / "runs" / "ddp" / "checkpoints" / "last.ckpt").is_file()


def test_second_run_into_same_folder_and_resume_from_last(in_tmp: Path):
    args = ["--config", str(SYNTHETIC), *SMALL_DATA, *QUICK]
    first = FusegenCLI(args=["fit", *args, "--trainer.max_epochs", "1"])
    steps_per_epoch = first.trainer.global_step
    assert steps_per_epoch == 4  # 256 samples / batch 64
    # same experiment folder again: config saving must not abort, and `last` resumes
    second = FusegenCLI(args=["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert second.trainer.current_epoch == 2
    assert second.trainer.global_step == 2 * steps_per_epoch  # continued, not restarted
    configs = list((in_tmp / "runs" / "synthetic-concat" / "tensorboard").glob("version_*/config.yaml"))
    assert len(configs) == 2


def _error(code: int, err: str) -> str:
    assert code != 0
    assert len(err.splitlines()) < 30, "error output should fit on one screen"
    assert "Traceback" not in err
    return err


def test_unknown_key_names_the_key(cli_exit):
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), "--trainer.max_epohcs", "2")
    assert "max_epohcs" in _error(code, err)


def test_unknown_key_in_a_config_file_names_the_key(in_tmp: Path, cli_exit):
    bad = in_tmp / "bad.yaml"
    bad.write_text("data:\n  init_args:\n    batch_sise: 3\n")
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), "--config", str(bad))
    err = _error(code, err)
    assert "batch_sise" in err and "is not accepted" in err


def test_wrong_type_names_the_key(cli_exit):
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), "--trainer.max_epochs", "abc")
    err = _error(code, err)
    assert "trainer.max_epochs" in err and "abc" in err


def test_missing_class_path_names_it(cli_exit):
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC),
                            "--model.init_args.fusion.class_path", "fusion.NoSuchFusion")
    assert "NoSuchFusion" in _error(code, err)


def test_missing_data_root_names_path_and_fix(in_tmp: Path, cli_exit):
    missing = in_tmp / "no-such-data"
    code, _, err = cli_exit("fit", "--config", str(CONFIG_DIR / "fusion" / "avmnist-concat.yaml"),
                            "--data.init_args.root", str(missing), "--trainer.fast_dev_run", "1", *QUICK)
    err = _error(code, err)
    assert str(missing) in err and "FUSEGEN_DATA" in err
