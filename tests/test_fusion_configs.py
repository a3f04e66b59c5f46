"""Every shipped fusion config parses (--print_config) and trains two steps (fast_dev_run 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.cli import FusegenCLI

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "fusion").glob("*.yaml"))
NEEDS_REAL_DATA = {c.name for c in CONFIGS if "synthetic" not in c.name}
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_print_config_round_trips(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        FusegenCLI(args=["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["experiment"] == yaml.safe_load(config.read_text())["experiment"]
    assert printed["model"]["class_path"].startswith("fusion.")
    assert printed["trainer"]["logger"]  # the shared trainer.yaml was loaded underneath


def _fast_dev_run(config: Path, request) -> None:
    if config.name in NEEDS_REAL_DATA:
        request.getfixturevalue("data_root")
    cli = FusegenCLI(args=["fit", "--config", str(config), "--trainer.fast_dev_run", "2", *QUIET])
    assert cli.trainer.global_step == 2


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.stem in ("avmnist-attention", "sst2-text")],
                         ids=lambda p: p.stem)
def test_fast_dev_run_default(config, request, in_tmp):
    _fast_dev_run(config, request)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_every_config(config, request, in_tmp):
    _fast_dev_run(config, request)
