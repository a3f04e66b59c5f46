"""The `fusegen` CLI: every shipped config parses and fits, configs stack and round-trip,
DDP runs on 2 CPU processes, runs resume, and bad input gives a short, named error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.cli import CONFIG_DIR, FusegenCLI, main

SYNTHETIC = CONFIG_DIR / "fusion" / "synthetic-concat.yaml"
SHIPPED = sorted(
    p for p in CONFIG_DIR.glob("*/*.yaml") if p.parent.name not in {"presets", "benchmarks"}
)
QUICK = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
SMALL_DATA = ["--data.init_args.num_train", "256", "--data.init_args.num_val", "64",
              "--data.init_args.num_test", "64"]


def needs_real_data(config: Path) -> bool:
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    return bool(data) and not str(data.get("class_path", "")).endswith("SyntheticMultimodalDataModule")


def cli_exit(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run `fusegen ARGS` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_shipped_configs_exist():
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in SHIPPED}
    assert "fusion/synthetic-concat.yaml" in names
    assert (CONFIG_DIR / "trainer.yaml").is_file()


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_every_shipped_config_fits_fast_dev_run(config: Path, in_tmp: Path, capsys: pytest.CaptureFixture,
                                                 request: pytest.FixtureRequest):
    if needs_real_data(config):
        request.getfixturevalue("data_root")  # skips, with the reason, only where the data is absent
    code, _, err = cli_exit(capsys, "fit", "--config", str(config), "--trainer.fast_dev_run", "2", *QUICK)
    assert code == 0, err[-3000:]


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_print_config_round_trips(config: Path, in_tmp: Path, capsys: pytest.CaptureFixture):
    code, first, err = cli_exit(capsys, "fit", "--config", str(config), "--print_config")
    assert code == 0, err[-2000:]
    printed = in_tmp / "printed.yaml"
    printed.write_text(first)
    code, second, err = cli_exit(capsys, "fit", "--config", str(printed), "--print_config")
    assert code == 0, err[-2000:]
    assert yaml.safe_load(second) == yaml.safe_load(first)
    # the shared trainer setup is part of every experiment
    trainer = yaml.safe_load(first)["trainer"]
    assert {c["class_path"].rsplit(".", 1)[-1] for c in trainer["logger"]} == {"TensorBoardLogger", "CSVLogger"}


def test_printed_config_refits(in_tmp: Path):
    printed = in_tmp / "printed.yaml"
    out = run_cli("fit", "--config", str(SYNTHETIC), *SMALL_DATA, "--print_config", cwd=in_tmp)
    printed.write_text(out.stdout)
    refit = run_cli("fit", "--config", str(printed), "--trainer.max_epochs", "1", *QUICK, cwd=in_tmp)
    assert refit.returncode == 0, refit.stderr[-3000:]
    assert (in_tmp / "runs" / "synthetic-concat" / "checkpoints" / "last.ckpt").is_file()


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


def test_gpu_preset_is_only_a_config_change(capsys: pytest.CaptureFixture):
    code, out, err = cli_exit(capsys, "fit", "--config", str(SYNTHETIC),
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


def test_unknown_key_names_the_key(capsys: pytest.CaptureFixture):
    code, _, err = cli_exit(capsys, "fit", "--config", str(SYNTHETIC), "--trainer.max_epohcs", "2")
    assert "max_epohcs" in _error(code, err)


def test_unknown_key_in_a_config_file_names_the_key(in_tmp: Path, capsys: pytest.CaptureFixture):
    bad = in_tmp / "bad.yaml"
    bad.write_text("data:\n  init_args:\n    batch_sise: 3\n")
    code, _, err = cli_exit(capsys, "fit", "--config", str(SYNTHETIC), "--config", str(bad))
    err = _error(code, err)
    assert "batch_sise" in err and "is not accepted" in err


def test_wrong_type_names_the_key(capsys: pytest.CaptureFixture):
    code, _, err = cli_exit(capsys, "fit", "--config", str(SYNTHETIC), "--trainer.max_epochs", "abc")
    err = _error(code, err)
    assert "trainer.max_epochs" in err and "abc" in err


def test_missing_class_path_names_it(capsys: pytest.CaptureFixture):
    code, _, err = cli_exit(capsys, "fit", "--config", str(SYNTHETIC),
                            "--model.init_args.fusion.class_path", "fusion.NoSuchFusion")
    assert "NoSuchFusion" in _error(code, err)


def test_missing_data_root_names_path_and_fix(in_tmp: Path, capsys: pytest.CaptureFixture):
    missing = in_tmp / "no-such-data"
    code, _, err = cli_exit(capsys, "fit", "--config", str(CONFIG_DIR / "fusion" / "avmnist-concat.yaml"),
                            "--data.init_args.root", str(missing), "--trainer.fast_dev_run", "1", *QUICK)
    err = _error(code, err)
    assert str(missing) in err and "FUSEGEN_DATA" in err
