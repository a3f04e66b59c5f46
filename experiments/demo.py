"""`make demo`: a short real run of each capability on real data, one results table, pictures.

Each area exposes ``<package>.demo.run(out_dir) -> list[dict]`` (rows with capability,
experiment, metric, value, target, picture). This driver runs them in turn, keeps going if
one fails (and exits non-zero at the end), prints the table and writes ``results.md`` /
``results.json`` beside the pictures in ``runs/demo/``.

    python -m experiments.demo [--only fusion generative rl] [--out runs/demo]
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

AREAS = ("fusion", "generative", "rl")
COLUMNS = ("capability", "experiment", "metric", "value", "target", "picture")


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_results(rows: list[dict], out_dir: Path) -> Path:
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    path = out_dir / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=AREAS, default=list(AREAS))
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)  # logs and CI are not 80 columns
    args.out.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    failed: list[str] = []
    for area in args.only:
        console.rule(f"[bold]{area}")
        start = time.perf_counter()
        try:
            area_rows = importlib.import_module(f"{area}.demo").run(args.out / area)
        except Exception:  # noqa: BLE001 - report and carry on with the other areas
            console.print(f"[red]{area} demo failed:[/red]\n{traceback.format_exc()}")
            failed.append(area)
            continue
        for row in area_rows:
            row.setdefault("capability", area)
        rows += area_rows
        console.print(f"{area}: done in {time.perf_counter() - start:.0f} s")

    table = Table(title="fusegen demo results")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row.get(c, "")) for c in COLUMNS))
    console.print(table)
    console.print(f"results: {write_results(rows, args.out)}  (pictures beside it; TensorBoard: "
                  f"tensorboard --logdir runs)")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
