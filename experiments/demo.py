"""`make demo`: a short real run of each capability, one results table, pictures.

Data: the real datasets at the data root (``$FUSEGEN_DATA``, else ``../shared/data``); if they
are not there, the datamodules' download (MNIST, FSDD) into the cache; if that fails too
(offline), the fusion and GAN demos run on the built-in synthetic data and the table says so.
The RL demo needs no data. Each area (``experiments/demos/{fusion,generative,rl}.py``) runs in
turn; one that fails is reported and the others carry on (exit code 1 at the end). The table is
printed and written as ``results.md`` / ``results.json`` in ``--out``, beside the run folders
(``<out>/<experiment>/pictures/`` holds each run's pictures).

    python -m experiments.demo [--only fusion generative rl] [--out runs/demo] [--data auto]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

from experiments.demos import DataSource, quiet_lightning, say, step

AREAS = ("fusion", "generative", "rl")
COLUMNS = ("capability", "experiment", "data", "metric", "value", "target", "picture")
REAL = DataSource("real", "real (MNIST+FSDD)")
DOWNLOADED = DataSource("downloaded", "real (MNIST+FSDD, downloaded)")
SYNTHETIC = DataSource("synthetic", "synthetic (offline, no data found)")


def find_data(mode: str = "auto") -> DataSource:
    """Real data at the data root, else a download into the cache, else synthetic (and say why)."""
    from datamodules.paths import default_data_root
    from datamodules.sources import ensure_datasets

    if mode == "synthetic":
        say("data: synthetic, as asked (--data synthetic)")
        return DataSource("synthetic", "synthetic (--data synthetic)")
    root, needed = default_data_root(), ("mnist", "fsdd")
    try:
        with step(f"data: looking for MNIST and FSDD under {root} and in the download cache"):
            ensure_datasets(download=False, datasets=needed)
        return REAL
    except FileNotFoundError:
        say("data: MNIST/FSDD not found (set FUSEGEN_DATA to use a copy you have)")
    if mode == "real":
        raise SystemExit("demo: --data real, but MNIST/FSDD are not at the data root; see the message above")
    try:
        with step("data: downloading MNIST (~11 MB) and FSDD (~10 MB) into the cache, checksummed"):
            ensure_datasets(download=True, datasets=needed)
        return DOWNLOADED
    except Exception as err:  # noqa: BLE001 - any failure to fetch means: run offline
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        say(f"data: download failed ({type(err).__name__}: {first.rstrip(':')[:160]}); running fusion and GAN on "
            "SYNTHETIC data instead -- their figures say nothing about MNIST")
        return SYNTHETIC


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_results(rows: list[dict], out_dir: Path) -> Path:
    from datamodules.files import atomic_write_text

    atomic_write_text(out_dir / "results.json", json.dumps(rows, indent=2, default=str))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    path = out_dir / "results.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=AREAS, default=list(AREAS))
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--data", choices=["auto", "real", "synthetic"], default="auto",
                   help="auto: real data, else download, else synthetic")
    budget = p.add_argument_group("budgets (the defaults: a few minutes on 2 CPU cores)")
    budget.add_argument("--fusion-train-limit", type=int, default=4000, help="training pairs (synthetic: samples)")
    budget.add_argument("--fusion-epochs", type=int, default=2)
    budget.add_argument("--gan-batches", type=int, default=1920)
    budget.add_argument("--gan-epochs", type=int, default=3)
    budget.add_argument("--gan-width", type=int, default=32, help="ngf = ndf")
    budget.add_argument("--rl-max-epochs", type=int, default=20, help="evaluations of 2,048 env steps at most")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)  # logs and CI are not 80 columns
    args.out.mkdir(parents=True, exist_ok=True)
    budgets = {
        "fusion": {"train_limit": args.fusion_train_limit, "epochs": args.fusion_epochs},
        "generative": {"batches": args.gan_batches, "epochs": args.gan_epochs, "width": args.gan_width},
        "rl": {"max_epochs": args.rl_max_epochs},
    }
    rows: list[dict] = []
    failed: list[str] = []
    start = time.perf_counter()
    with quiet_lightning():
        needs_data = any(area != "rl" for area in args.only)
        data = find_data(args.data) if needs_data else DataSource("none", "none needed")
        for area in args.only:
            console.rule(f"[bold]{area}")
            try:
                area_rows = importlib.import_module(f"experiments.demos.{area}").run(args.out, data, **budgets[area])
            except Exception:  # noqa: BLE001 - report and carry on with the other areas
                console.print(f"[red]{area} demo failed:[/red]\n{traceback.format_exc()}")
                failed.append(area)
                continue
            rows += area_rows

    shown = [c for c in COLUMNS if c != "experiment"]  # listed below the table: it is long
    table = Table(title=f"fusegen demo results ({time.perf_counter() - start:.0f} s; data: {data.label})")
    for column in shown:
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(*(_fmt(r.get(c, "")) for c in shown))
    console.print(table)
    for capability, experiment in dict.fromkeys((r["capability"], r["experiment"]) for r in rows):
        console.print(f"  {capability}: {experiment}", soft_wrap=True)
    console.print(f"results: {write_results(rows, args.out)}  (pictures: {args.out}/<experiment>/pictures/; "
                  "TensorBoard: tensorboard --logdir runs)")
    if data.synthetic:
        console.print("[yellow]note: no MNIST/FSDD found and no download possible: fusion and GAN ran on "
                      "synthetic data. Set FUSEGEN_DATA or go online for the real figures.")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
