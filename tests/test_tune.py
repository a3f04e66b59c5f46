"""`fusegen tune`: Optuna sweeps over the shipped configs, shared RDB studies, killed workers."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from experiments.cli import CONFIG_DIR, main
from experiments.tune import SearchSpaceError, as_overrides, load_search_space, nested, redact

SYNTHETIC = CONFIG_DIR / "fusion" / "synthetic-concat.yaml"
TINY = ["--", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--data.init_args.num_train=128", "--data.init_args.num_val=64", "--data.init_args.num_test=64",
        "--trainer.limit_val_batches=1"]


def write_search(tmp: Path, **extra) -> Path:
    spec = {"metric": "val/acc", "direction": "maximize", "pruner": "none",
            "params": {"model.init_args.optimizer.init_args.lr": {"type": "float", "low": 1e-4, "high": 1e-2,
                                                                  "log": True},
                       "model.init_args.hidden_dims": {"type": "categorical", "choices": [[], [32]]}}, **extra}
    path = tmp / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tune(*args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", "tune", *args], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def study(tmp: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / 'runs' / name / 'study.db'}")


def running_trials(db: Path) -> int:
    """RUNNING trials in a study database, read-only: opening it through Optuna would create its
    tables, racing the worker that is creating them."""
    import sqlite3

    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:  # the tables are not there yet
        return 0


def test_search_space_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"metric": "val/acc", "params": {"model.init_args.dropout":
                                                                   {"type": "float", "low": 0.5, "high": 0.1}}}))
    with pytest.raises(SearchSpaceError, match=r"params\.model\.init_args\.dropout: low \(0\.5\) must be < high"):
        load_search_space(bad)
    bad.write_text(yaml.safe_dump({"metric": "val/acc", "params": {"x": {"type": "uniform"}}}))
    with pytest.raises(SearchSpaceError, match="params.x: `type` must be one of"):
        load_search_space(bad)
    bad.write_text("params: {a: [1, 2}")
    with pytest.raises(SearchSpaceError, match="bad.yaml: not valid YAML"):
        load_search_space(bad)


def test_overrides_and_best_config_are_valid_cli_input() -> None:
    values = {"model.init_args.hidden_dims": [32, 16], "model.init_args.optimizer.init_args.lr": 0.001,
              "trainer.max_epochs": 3}
    assert as_overrides(values) == ["--model.init_args.hidden_dims=[32, 16]",
                                    "--model.init_args.optimizer.init_args.lr=0.001", "--trainer.max_epochs=3"]
    assert nested(values) == {
        "model": {"init_args": {"hidden_dims": [32, 16], "optimizer": {"init_args": {"lr": 0.001}}}},
        "trainer": {"max_epochs": 3}}


def test_redact_hides_passwords() -> None:
    assert "s3cret" not in redact("postgresql://alice:s3cret@db.example:5432/optuna")
    assert redact("postgresql://alice:s3cret@db.example:5432/optuna").startswith("postgresql://alice:***@")


def test_four_trials_two_workers_one_sqlite_study(in_tmp: Path) -> None:
    search = write_search(in_tmp)
    proc = tune("--config", str(SYNTHETIC), "--search", str(search), "--n-trials", "4", "--workers", "2",
                "--study-name", "sweep", "--seed", "0", *TINY, cwd=in_tmp)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    import optuna

    trials = study(in_tmp, "sweep").get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 4, [t.state for t in trials]
    assert len({t.params["model.init_args.optimizer.init_args.lr"] for t in complete}) == len(complete)
    # Each trial is an ordinary run folder with its own checkpoint and metrics.
    for t in complete:
        assert (in_tmp / "runs" / "sweep" / f"trial_{t.number:03d}" / "checkpoints" / "last.ckpt").is_file()
    best = yaml.safe_load((in_tmp / "runs" / "sweep" / "best.yaml").read_text())
    lr = best["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    assert lr == study(in_tmp, "sweep").best_trial.params["model.init_args.optimizer.init_args.lr"]
    # The best config stacks onto the experiment config.
    shown = io.StringIO()
    with redirect_stdout(shown), pytest.raises(SystemExit):
        main(["fit", "--config", str(SYNTHETIC), "--config", str(in_tmp / "runs" / "sweep" / "best.yaml"),
              "--print_config"])
    assert yaml.safe_load(shown.getvalue())["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(lr)


@pytest.mark.slow  # ~40 s: a real worker killed -9 mid-trial; the default suite names a dead worker by a stub Popen
def test_killed_worker_trial_is_marked_failed_and_study_continues(in_tmp: Path) -> None:
    import optuna

    search = write_search(in_tmp)
    common = ["--config", str(SYNTHETIC), "--search", str(search), "--study-name", "kill", "--heartbeat", "1",
              "--grace-period", "3"]
    # A worker whose trial trains for a long time, killed -9 while the trial is running.
    slow = tune(*common, "--n-trials", "1", *TINY, "--trainer.max_epochs=1000", cwd=in_tmp, start_new_session=True)
    db = in_tmp / "runs" / "kill" / "study.db"
    deadline = time.time() + 240
    while time.time() < deadline:
        if running_trials(db):
            break
        time.sleep(1)
    else:
        slow.kill()
        pytest.fail("the slow worker never started a trial: " + (slow.communicate()[0] or "")[-2000:])
    time.sleep(5)  # it trains for a while, then dies without a word
    os.killpg(slow.pid, signal.SIGKILL)
    slow.wait(timeout=30)
    time.sleep(4)  # past the grace period: its heartbeat has stopped
    proc = tune(*common, "--n-trials", "2", *TINY, cwd=in_tmp)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    states = [t.state for t in study(in_tmp, "kill").get_trials()]
    assert states[0] == optuna.trial.TrialState.FAIL, states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2, states
    assert "lost its worker" in out


def test_storage_url_comes_from_the_environment_and_is_never_written(in_tmp: Path) -> None:
    # SQLite URLs carry no password, so the URL's own (unusual) folder name stands for the secret:
    # the trials' saved configs, hparams and metrics must not contain any of the URL.
    secret_dir = in_tmp / "s3cret-store"
    secret_dir.mkdir()
    url = f"sqlite:///{secret_dir / 'shared.db'}"
    search = write_search(in_tmp)
    proc = tune("--config", str(SYNTHETIC), "--search", str(search), "--n-trials", "1", "--study-name", "env",
                *TINY, cwd=in_tmp, env={"FUSEGEN_TUNE_STORAGE": url})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert (secret_dir / "shared.db").is_file() and not (in_tmp / "runs" / "env" / "study.db").exists()
    written = [p for p in (in_tmp / "runs").rglob("*") if p.is_file() and p.suffix in {".yaml", ".csv", ".json"}]
    assert any(p.name == "config.yaml" for p in written)
    for path in written:
        assert "s3cret" not in path.read_text(errors="ignore"), path


def test_storage_url_with_password_is_printed_redacted(in_tmp: Path) -> None:
    proc = tune("--config", str(SYNTHETIC), "--search", str(write_search(in_tmp)), "--n-trials", "1",
                cwd=in_tmp, env={"FUSEGEN_TUNE_STORAGE": "postgresql+psycopg2://alice:s3cret@127.0.0.1:1/optuna"})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0  # nothing listens there (or no driver): the study cannot open
    assert "s3cret" not in out


def test_a_dead_worker_is_named_and_a_completed_study_exits_0_with_a_table(in_tmp: Path, capsys,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker 1 is killed (SIGKILL) at once; worker 0 finishes the study in-process."""
    import warnings

    import optuna

    import experiments.tune as tune_module

    real_popen = subprocess.Popen

    def killed_worker(cmd, *args, **kwargs):
        return real_popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])

    monkeypatch.setattr(tune_module.subprocess, "Popen", killed_worker)
    search = write_search(in_tmp)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        code = tune_module.main(["--config", str(SYNTHETIC), "--search", str(search), "--n-trials", "2",
                                 "--workers", "2", "--study-name", "dead", "--seed", "0", *TINY,
                                 "--trainer.max_epochs=1", "--trainer.limit_train_batches=1"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert "worker 1 (PID " in err and "was killed by SIGKILL" in err
    assert "study 'dead' completed: 2 complete (2 of 2 finished trials); 1 worker(s) died" in err
    assert not [w for w in warned if "args parameter is intended" in str(w.message)]  # once per trial before
    # the table: a header and one row per trial, with its state, metric value and values
    trials = study(in_tmp, "dead").get_trials()
    header = next(line for line in err.splitlines() if line.startswith("trial "))
    assert "state" in header and "val/acc" in header
    for t in trials:
        row = next(line for line in err.splitlines() if line.split()[:2] == [str(t.number), "complete"])
        assert f"{t.value:.4g}" in row and "lr=" in row and "hidden_dims=" in row
    # best.yaml records the best value in its header comment and still stacks as a config
    best = study(in_tmp, "dead").best_trial
    text = (in_tmp / "runs" / "dead" / "best.yaml").read_text()
    assert text.startswith(f"# fusegen tune: best trial {best.number} of study 'dead': val/acc = {best.value!r}")
    assert yaml.safe_load(text)["model"]["init_args"]["optimizer"]["init_args"]["lr"] == \
        best.params["model.init_args.optimizer.init_args.lr"]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_the_shipped_search_space_is_valid_and_the_readme_points_at_it(in_tmp: Path) -> None:
    import re

    from experiments.cli import FusegenCLI

    root = CONFIG_DIR.parent
    commands = re.findall(r"fusegen tune .*--search (\S+)", (root / "README.md").read_text())
    assert commands and all((root / path).is_file() for path in commands), commands
    space = load_search_space(root / "experiments" / "search" / "synthetic-concat.yaml")
    for pick in (0, -1):  # every key exists in the config it is meant for, at both ends of its range
        values = {k: p["choices"][pick] if p["type"] == "categorical" else (p["low"], p["high"])[pick]
                  for k, p in space["params"].items()}
        cli = FusegenCLI(args=["--config", str(SYNTHETIC), "--trainer.accelerator", "cpu", *as_overrides(values)],
                         run=False)
        assert cli.trainer.max_epochs == values["trainer.max_epochs"]
