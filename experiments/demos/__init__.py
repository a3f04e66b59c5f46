"""What the three demos share: one way to run a config through the CLI, read its metrics and
collect its pictures, visible progress, and Lightning's chatter kept out of the user's way.

A demo area is a module here with ``run(out_dir, data, **budget) -> list[dict]`` (rows with
capability, experiment, data, metric, value, target, picture); ``experiments/demo.py`` drives them.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl

from fusion.artifacts import PICTURES

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments"
_START = time.perf_counter()


def say(message: str) -> None:
    """One progress line, stamped with the seconds since the demo started."""
    print(f"[{time.perf_counter() - _START:6.1f} s] {message}", flush=True)


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    """``message ...`` before a long step and ``done in N s`` after it."""
    say(f"{message} ...")
    start = time.perf_counter()
    yield
    say(f"  done in {time.perf_counter() - start:.0f} s")


@dataclass(frozen=True)
class DataSource:
    """Which data the demo trains on (decided once by ``experiments/demo.py``): ``kind`` is
    ``real`` (found at the data root), ``downloaded`` (fetched into the cache, where the
    datamodules find it) or ``synthetic`` (no data, offline); ``label`` goes in the table."""

    kind: str
    label: str

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"


SYNTHETIC_DATA = "datamodules.SyntheticMultimodalDataModule"


class EpochLine(pl.Callback):
    """A compact line per training epoch: its number, the logged metrics that matter, seconds."""

    KEYS = ("train/loss", "train/loss_d", "train/loss_g", "val/loss", "val/acc", "val/agreement", "val/fid",
            "val/return", "val/env_steps")

    def __init__(self, name: str) -> None:
        self.name, self.start = name, time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        shown = "  ".join(f"{k} {_number(float(metrics[k]))}" for k in self.KEYS if k in metrics)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        say(f"  {self.name}: epoch {trainer.current_epoch + 1}{total}  {shown}  "
            f"({time.perf_counter() - self.start:.0f} s)")


def _number(value: float) -> str:
    """4 significant digits, but counts (env steps) in full."""
    return str(int(value)) if value.is_integer() and abs(value) >= 1000 else f"{value:.4g}"


@dataclass
class Run:
    """One experiment run through the ``fusegen`` CLI, its folder and what it wrote."""

    cli: Any
    run_dir: Path
    fit_seconds: float = 0.0
    results: dict[str, float] = field(default_factory=dict)

    @property
    def model(self) -> pl.LightningModule:
        return self.cli.model

    def pictures(self) -> list[Path]:
        """Every picture of the run (``<run_dir>/pictures/**/*.png``, see fusion/artifacts.py)."""
        return sorted((self.run_dir / PICTURES).rglob("*.png"))

    def metrics(self) -> list[dict[str, float]]:
        """The rows of the run's CSV log (``<run_dir>/csv/version_N/metrics.csv``), empty cells dropped."""
        rows: list[dict[str, float]] = []
        for path in sorted((self.run_dir / "csv").glob("version_*/metrics.csv")):
            with path.open() as f:
                for row in csv.DictReader(f):
                    rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
        return rows

    def last(self, key: str, default: float = float("nan")) -> float:
        """The last logged value of ``key`` (the CSV log, else the trainer's callback metrics)."""
        values = [row[key] for row in self.metrics() if key in row]
        if values:
            return values[-1]
        value = self.cli.trainer.callback_metrics.get(key)
        return float(value) if value is not None else default

    def test(self, **model_attributes: Any) -> tuple[dict[str, float], list[Path]]:
        """``trainer.test`` with the given model attributes set for this pass only; returns the
        test metrics and the pictures the pass wrote (new or rewritten)."""
        before = {p: p.stat().st_mtime_ns for p in self.pictures()}
        saved = {name: getattr(self.model, name) for name in model_attributes}
        for name, value in model_attributes.items():
            setattr(self.model, name, value)
        try:
            results = self.cli.trainer.test(self.model, datamodule=self.cli.datamodule, verbose=False)[0]
        finally:
            for name, value in saved.items():
                setattr(self.model, name, value)
        written = [p for p in self.pictures() if before.get(p) != p.stat().st_mtime_ns]
        return {k: float(v) for k, v in results.items()}, written


def run_experiment(config: str | Path, overrides: list[str], out_dir: Path, experiment: str,
                   fit: bool = True) -> Run:
    """``fusegen fit --config CONFIG OVERRIDES`` into ``<out_dir>/<experiment>/`` (a fresh folder).

    Built with ``FusegenCLI(run=False)`` so the caller can test afterwards on the same trainer;
    progress is the per-epoch line of :class:`EpochLine` (Lightning's bar is off: it does not
    survive logs and pipes)."""
    from experiments.cli import FusegenCLI
    from experiments.runlock import LOCK_NAME, RunLock

    run_dir = Path(out_dir) / experiment
    # The folder lock first (as `fusegen fit` takes it): a folder another live run trains into is
    # refused before anything in it is deleted.
    with RunLock(run_dir):
        for child in list(run_dir.iterdir()):  # a rerun starts clean
            if child.name != LOCK_NAME:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        args = ["--config", str(config), *overrides, "--experiment", experiment,
                "--trainer.default_root_dir", str(out_dir),
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
        cli = FusegenCLI(args=args, run=False)
        cli.trainer.callbacks.append(EpochLine(experiment))
        run = Run(cli=cli, run_dir=run_dir)
        if fit:
            start = time.perf_counter()
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            run.fit_seconds = time.perf_counter() - start
    return run


def row(capability: str, experiment: str, data: DataSource, metric: str, value: Any, target: str = "",
        pictures: list[Path] | None = None) -> dict:
    return {"capability": capability, "experiment": experiment, "data": data.label, "metric": metric,
            "value": value, "target": target, "picture": ", ".join(_short(p) for p in pictures or [])}


def _short(path: Path) -> str:
    """``path`` relative to the working folder when it is below it (the table is narrow)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Keep Lightning's tips, banner lines ("GPU available", "Seed set") and warnings that say
    nothing to a demo user (few DataLoader workers, deprecations) out of the output; restored after."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        with contextlib.suppress(ImportError):
            from lightning_fabric.utilities.warnings import PossibleUserWarning

            warnings.filterwarnings("ignore", category=PossibleUserWarning)
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
