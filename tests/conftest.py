"""Shared test fixtures.

- Derived-data caches go to a per-session temp dir (FUSEGEN_CACHE), so tests never depend on
  or pollute ~/.cache/fusegen; a build done by one test is reused by the next in the session.
- ``data_root`` is the real-data root (../shared/data or FUSEGEN_DATA); tests that need it skip,
  with the reason, only when it is absent (CI has it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from datamodules.paths import default_data_root

# One intra-op thread: the test models are tiny, and two threads on a busy 2-core machine made
# single tests tens of times slower (thread contention), never faster.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not os.environ.get("FUSEGEN_CACHE_KEEP"):
        os.environ["FUSEGEN_CACHE"] = str(tmp_path_factory.mktemp("fusegen-cache"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = default_data_root()
    if not (root / "MNIST").is_dir():
        pytest.skip(f"real data not found at {root} (set FUSEGEN_DATA); CI has ../shared/data")
    return root


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run inside a temp dir so runs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli_exit(capsys: pytest.CaptureFixture):
    """``cli_exit(*args)`` runs ``fusegen ARGS`` in-process and returns (exit code, stdout, stderr)."""
    from experiments.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
            raise SystemExit(0)
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run
