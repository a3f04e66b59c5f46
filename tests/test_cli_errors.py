"""What a user reads from ``fusegen``: bad input named before work starts (file, line, key, the closest
valid key), whole constructor messages, ``--ckpt_path last`` that never serves an untrained model
or a stale checkpoint, a changed config named on resume, one live fit per run folder, and no noise
on a normal run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from experiments.cli import CONFIG_DIR, FusegenCLI, resolve_last_checkpoint
from experiments.runlock import LOCK_NAME, RunFolderBusyError, RunLock

SYNTHETIC = CONFIG_DIR / "fusion" / "synthetic-concat.yaml"
QUICK = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]
TINY = ["--data.init_args.num_train", "128", "--data.init_args.num_val", "64", "--data.init_args.num_test", "64"]


def _short(code: int, err: str, lines: int = 6) -> str:
    assert code != 0, err
    assert "Traceback" not in err and "Given value" not in err and "Union subtypes" not in err, err
    assert len(err.strip().splitlines()) <= lines, err
    return err


# ---------------------------------------------------------------------------------- bad input
def test_batch_size_zero_fails_before_the_model_summary_naming_the_key(in_tmp: Path, cli_exit):
    code, out, err = cli_exit("fit", "--config", str(SYNTHETIC), *TINY, "--trainer.accelerator", "cpu",
                              "--data.init_args.batch_size", "0")
    assert code == 1
    assert "data.init_args.batch_size = 0 is not allowed: an integer >= 1" in err
    assert "Trainable params" not in out + err  # failed before the model summary
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize(("content", "said"), [("", "the config file is empty"),
                                               ("# only a comment\n", "the config file is empty"),
                                               ("- a\n- b\n", "not a list")])
def test_empty_or_list_config_file_is_named(content: str, said: str, in_tmp: Path, cli_exit):
    bad = in_tmp / "mine.yaml"
    bad.write_text(content)
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), "--config", str(bad))
    err = _short(code, err, lines=2)
    assert err.startswith(f"fusegen: error: {bad}: ") and said in err and "Unexpected config" not in err


def test_max_epochs_minus_one_says_no_limit_once(in_tmp: Path):
    with pytest.warns(UserWarning) as warned:
        cli = FusegenCLI(args=["--config", str(SYNTHETIC), *QUICK, "--trainer.max_epochs", "-1"], run=False)
    assert cli.trainer.max_epochs == -1
    said = [str(w.message) for w in warned if "-1 means no limit" in str(w.message)]
    assert len(said) == 1 and "trainer.max_epochs" in said[0]


def test_limit_train_batches_one_is_one_batch_and_fractions_stay_fractions(in_tmp: Path):
    cli = FusegenCLI(args=["fit", "--config", str(SYNTHETIC), *QUICK, *TINY, "--trainer.max_epochs", "1",
                           "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0.5",
                           "--data.init_args.num_val", "128"])
    assert cli.trainer.limit_train_batches == 1 and isinstance(cli.trainer.limit_train_batches, int)
    assert cli.trainer.global_step == 1  # one batch, not the whole epoch (2 batches of 64)
    assert cli.trainer.limit_val_batches == 0.5 and isinstance(cli.trainer.limit_val_batches, float)
    config = yaml.safe_load(next((in_tmp / "runs").rglob("config.yaml")).read_text())
    assert config["trainer"]["limit_train_batches"] == 1 and isinstance(config["trainer"]["limit_train_batches"], int)


def test_yaml_key_typo_names_file_line_and_the_closest_key(in_tmp: Path, cli_exit):
    bad = in_tmp / "mine.yaml"
    bad.write_text("trainer:\n  max_epochs: 2\ndata:\n  init_args:\n    num_train: 64\n    batch_sise: 3\n")
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), "--config", str(bad))
    err = _short(code, err)
    assert f"{bad}:6: data.init_args.batch_sise" in err and "did you mean 'batch_size'?" in err
    assert "datamodules.SyntheticMultimodalDataModule" in err
    # outside init_args (a trainer key) likewise
    bad.write_text("trainer:\n  max_epohcs: 2\n")
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), "--config", str(bad))
    err = _short(code, err)
    assert f"{bad}:2:" in err and "max_epohcs" in err and "did you mean 'trainer.max_epochs'?" in err


def test_nested_init_args_typo_is_one_short_line_not_the_union_dump(cli_exit):
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), "--model.init_args.fusion.init_args.dropuot", "0.1")
    err = _short(code, err, lines=3)
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert "model.init_args.fusion.init_args.dropuot" in line and "fusion.ConcatFusion" in line
    assert "did you mean 'dropout'?" in line and "Namespace(" not in err


MULTILINE = '''
from datamodules import SyntheticMultimodalDataModule


class NeedsWeights(SyntheticMultimodalDataModule):
    def __init__(self, **kwargs):
        raise ValueError("pretrained weights for 'x' are not in the local cache\\n"
                         "  caches searched: /cache/a, /cache/b\\n"
                         "  fixes:\\n    1. go online once\\n    2. pass a folder\\n    3. pretrained: false")
'''


def test_constructor_error_is_shown_whole(in_tmp: Path, cli_exit, monkeypatch: pytest.MonkeyPatch):
    (in_tmp / "needsweights.py").write_text(textwrap.dedent(MULTILINE))
    monkeypatch.syspath_prepend(str(in_tmp))
    code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), "--data", "needsweights.NeedsWeights")
    assert code == 1
    for line in ("pretrained weights for 'x' are not in the local cache", "caches searched: /cache/a, /cache/b",
                 "1. go online once", "2. pass a folder", "3. pretrained: false"):
        assert line in err, err
    assert "Given value" not in err


# ---------------------------------------------------------------------------------- --ckpt_path last
def _fake_checkpoint(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "epoch": step // 47, "state_dict": {"w": torch.zeros(2)}}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_last_is_the_highest_global_step_not_the_newest_file(tmp_path: Path):
    folder = tmp_path / "checkpoints"
    now = time.time()
    complete = _fake_checkpoint(folder / "epoch=1-step=94.ckpt", 94, now - 60)
    _fake_checkpoint(folder / "epoch=0-step=47.ckpt", 47, now - 120)
    _fake_checkpoint(folder / "last.ckpt", 47, now)  # rewritten later by a run that was then killed
    (folder / "torn.ckpt").write_bytes(b"PK\x03\x04 torn")
    with pytest.warns(UserWarning) as warned:
        assert resolve_last_checkpoint(folder) == str(complete)
    said = [str(w.message) for w in warned if "--ckpt_path last" in str(w.message)]
    assert len(said) == 1 and len(said[0].splitlines()) == 1
    assert "global step 94" in said[0] and "last.ckpt (step 47, behind)" in said[0] and "torn.ckpt" in said[0]


def test_last_ties_on_global_step_go_to_the_newest_file(tmp_path: Path, recwarn: pytest.WarningsRecorder):
    folder = tmp_path / "checkpoints"
    now = time.time()
    _fake_checkpoint(folder / "epoch=1-step=94.ckpt", 94, now - 60)
    last = _fake_checkpoint(folder / "last.ckpt", 94, now)
    assert resolve_last_checkpoint(folder) == str(last)
    assert not [w for w in recwarn if "--ckpt_path last" in str(w.message)]  # nothing was skipped
    os.utime(last, (now - 120, now - 120))
    assert resolve_last_checkpoint(folder) == str(folder / "epoch=1-step=94.ckpt")


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_last_with_nothing_to_load_names_the_folder_and_the_trained_experiments(subcommand: str, in_tmp: Path,
                                                                                 cli_exit):
    _fake_checkpoint(in_tmp / "runs" / "trained-one" / "checkpoints" / "last.ckpt", 4, time.time())
    _fake_checkpoint(in_tmp / "runs" / "sweep" / "trial_000" / "checkpoints" / "last.ckpt", 4, time.time())
    code, out, err = cli_exit(subcommand, "--config", str(SYNTHETIC), *QUICK, *TINY, "--experiment", "trained-on",
                              "--ckpt_path", "last")
    assert code == 1, err
    assert str(Path("runs") / "trained-on" / "checkpoints") in err
    assert "trained-one" in err and "sweep/trial_000" in err and "untrained" in err
    assert "save_last" not in err
    assert not (in_tmp / "runs" / "trained-on" / "predictions").exists()


def test_fit_with_last_and_nothing_starts_fresh_saying_so_once(in_tmp: Path):
    with pytest.warns(UserWarning) as warned:
        cli = FusegenCLI(args=["fit", "--config", str(SYNTHETIC), *QUICK, *TINY, "--trainer.max_epochs", "1",
                               "--trainer.limit_train_batches", "1", "--ckpt_path", "last"])
    assert cli.trainer.global_step == 1
    messages = [str(w.message) for w in warned]
    assert sum("no checkpoint in" in m and "starting a new run" in m for m in messages) == 1, messages
    assert not [m for m in messages if "save_last" in m]


def test_resume_with_a_changed_config_names_the_differing_keys(in_tmp: Path, cli_exit):
    args = ["fit", "--config", str(SYNTHETIC), *QUICK, *TINY, "--trainer.limit_train_batches", "1"]
    assert cli_exit(*args, "--trainer.max_epochs", "1")[0] == 0
    code, _, err = cli_exit(*args, "--trainer.max_epochs", "2", "--model.init_args.fusion.init_args.out_dim", "64",
                            "--model.init_args.dropout", "0.2", "--ckpt_path", "last")
    assert code == 1
    assert "model.init_args.fusion.init_args.out_dim: 128 in the checkpoint, 64 now" in err, err
    assert "model.init_args.dropout: 0.1 in the checkpoint, 0.2 now" in err, err
    assert "trained with a different model config" in err and "another --experiment" in err


# ---------------------------------------------------------------------------------- one fit per folder
HOLDER = "import sys, time; from experiments.runlock import RunLock; RunLock(sys.argv[1]).acquire(); " \
         "print('held', flush=True); time.sleep(120)"


def _hold(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_live_fit_on_a_run_folder_is_refused_naming_folder_and_pid(in_tmp: Path, cli_exit):
    run_dir = in_tmp / "runs" / "synthetic-concat"
    holder = _hold(run_dir)
    try:
        code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), *QUICK, *TINY, "--trainer.max_epochs", "1")
        assert code == 1
        assert f"run folder {Path('runs') / 'synthetic-concat'} is in use" in err and f"PID {holder.pid}" in err
        assert "--experiment" in err
        assert not (run_dir / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_benchmark_run_into_a_live_run_folder_is_refused_and_deletes_nothing(in_tmp: Path):
    """Benchmarks train through ``run_experiment``, which empties the run folder first: while another
    process trains there (a ``--train-only`` run of the same variant), it must refuse instead."""
    from experiments.demos import run_experiment

    run_dir = in_tmp / "runs" / "synthetic-concat"
    holder = _hold(run_dir)
    try:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_text("the other run's")
        with pytest.raises(RunFolderBusyError, match=f"PID {holder.pid}"):
            run_experiment(SYNTHETIC, [*QUICK, *TINY], in_tmp / "runs", "synthetic-concat", fit=False)
        assert (run_dir / "checkpoints" / "last.ckpt").read_text() == "the other run's"
    finally:
        holder.kill()
        holder.wait()
    run = run_experiment(SYNTHETIC, [*QUICK, *TINY], in_tmp / "runs", "synthetic-concat", fit=False)
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # free again: the rerun starts clean
    assert run.run_dir == run_dir and not (run_dir / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_one_line(in_tmp: Path, monkeypatch: pytest.MonkeyPatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cli = FusegenCLI(args=["--config", str(SYNTHETIC), *QUICK, *TINY], run=False)
    cli.run_dir.mkdir(parents=True)
    lock = cli.run_dir / LOCK_NAME
    lock.write_text(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}", "started": 0}}')
    held_by = []
    monkeypatch.setattr(cli, "_guarded", lambda *a, **k: held_by.append(yaml.safe_load(lock.read_text())["pid"]))
    with pytest.warns(UserWarning) as warned:
        cli.fit()
    assert held_by == [os.getpid()]  # the run went on, holding the lock itself
    said = [str(w.message) for w in warned if "stale lock" in str(w.message)]
    assert len(said) == 1 and f"PID {dead.pid}" in said[0] and len(said[0].splitlines()) == 1
    assert not lock.exists()  # released when the fit ended


def test_only_the_launching_process_holds_the_lock(in_tmp: Path, monkeypatch: pytest.MonkeyPatch):
    """DDP ranks > 0 (started by Lightning, torchrun or SLURM) run in the folder their rank 0 holds."""
    cli = FusegenCLI(args=["--config", str(SYNTHETIC), *QUICK, *TINY], run=False)
    cli.run_dir = in_tmp / "runs" / "held"
    ran = []
    monkeypatch.setattr(cli, "_guarded", lambda *a, **k: ran.append(True))
    holder = _hold(cli.run_dir)
    try:
        for env in ("LOCAL_RANK", "RANK", "SLURM_PROCID"):
            with monkeypatch.context() as m:
                m.setenv(env, "1")
                cli.fit()
        assert len(ran) == 3
        with pytest.raises(RunFolderBusyError, match=f"PID {holder.pid}"):
            cli.fit()  # rank 0 of a second run
    finally:
        holder.kill()
        holder.wait()
    with RunLock(cli.run_dir):  # the dead holder's lock is free again
        assert (cli.run_dir / LOCK_NAME).is_file()


# ---------------------------------------------------------------------------------- noise
NOISE = ("litlogger", "LeafSpec", "smaller than the logging interval", "Generating train split",
         "args parameter is intended")

FILES_CONFIG = """
experiment: quiet
trainer: {max_epochs: 1, accelerator: cpu, enable_progress_bar: false}
model:
  class_path: fusion.FusionClassifier
  init_args:
    num_classes: 2
    encoders: {image: {class_path: fusion.SmallCNNImageEncoder, init_args: {out_dim: 16, width: 8}}}
    fusion: {class_path: fusion.ConcatFusion, init_args: {out_dim: 16}}
data:
  class_path: datamodules.HFDataModule
  init_args: {path: csv, data_files: data/all.csv, columns: {image: picture}, label_column: label, batch_size: 8}
"""


def _fit_log(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FUSEGEN_CACHE": str(cwd / "cache")}
    env.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "fit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


def test_a_small_fit_prints_none_of_the_known_noise(in_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture):
    """In-process (a subprocess costs a minute on a loaded 2-core machine): what Lightning logs and
    warns, as the console would show it. The CSV/`datasets` variant below runs the real command."""
    import logging
    import warnings

    monkeypatch.setattr(sys, "argv", ["fusegen"])
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("default")
        cli = FusegenCLI(args=["fit", "--config", str(SYNTHETIC), *QUICK, *TINY, "--trainer.max_epochs", "1"])
    assert cli.trainer.global_step == 2
    shown = caplog.text + "\n".join(str(w.message) for w in warned)
    assert "`Trainer.fit` stopped: `max_epochs=1` reached" in shown  # Lightning's own lines are still there
    for noise in NOISE:
        assert noise not in shown, f"{noise!r} printed:\n{shown[-3000:]}"


@pytest.mark.slow
def test_a_fit_on_csv_files_prints_none_of_the_known_noise(in_tmp: Path):
    (in_tmp / "data" / "img").mkdir(parents=True)
    rows = ["picture,label"]
    for i in range(40):
        Image.fromarray(np.full((28, 28), 60 + 150 * (i % 2), dtype=np.uint8), "L").save(in_tmp / f"data/img/{i}.png")
        rows.append(f"img/{i}.png,{'dark' if i % 2 == 0 else 'light'}")
    (in_tmp / "data" / "all.csv").write_text("\n".join(rows) + "\n")
    (in_tmp / "quiet.yaml").write_text(FILES_CONFIG)
    log = _fit_log(in_tmp, "--config", "quiet.yaml")
    assert (in_tmp / "runs" / "quiet" / "checkpoints" / "last.ckpt").is_file()
    for noise in NOISE:
        assert noise not in log, f"{noise!r} printed:\n{log[-3000:]}"
