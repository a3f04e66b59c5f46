"""What every benchmark shares: its argument parser base, torch thread setup, progress on stderr
and exactly one JSON line on stdout (the figure), so ``python -m experiments.benchmarks.NAME``
can be piped and collected alike."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def parser(doc: str | None, *, seeds: list[int] | None = None, repeats: int | None = None,
           threads: int | None = 1, out: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with the module docstring as its help and the shared options a
    benchmark asks for (``None`` leaves one out): ``--seeds``, ``--repeats``, ``--threads``
    (torch threads; 0 leaves torch's default) and ``--out`` (a folder for its files)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if seeds is not None:
        p.add_argument("--seeds", type=int, nargs="+", default=seeds, help=f"seeds to run (default {seeds})")
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=repeats, help="repeats of each timing (the median is reported)")
    if threads is not None:
        p.add_argument("--threads", type=int, default=threads, help="torch threads (0: torch's default)")
    if out is not None:
        p.add_argument("--out", default=out, help="folder for the benchmark's runs and files")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and apply ``--threads`` before any work starts."""
    args = p.parse_args(argv)
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)
    return args


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds the result line only."""
    print(message, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The benchmark's one JSON line on stdout."""
    print(json.dumps(result, default=str), flush=True)
