"""The ``fusegen`` command: one LightningCLI for fusion models, GANs and RL agents.

``experiments/trainer.yaml`` is loaded first for every subcommand, so all experiments share one
trainer / accelerator / logging setup; an experiment config (and any preset such as
``experiments/presets/gpu.yaml``) is stacked on top with further ``--config`` flags.

Run folders: the top-level ``experiment`` key names the run; ``{run_dir}`` in a logger or
callback argument (see trainer.yaml) becomes ``<trainer.default_root_dir>/<experiment>``, so
TensorBoard/CSV logs and checkpoints of one experiment live together in ``runs/<experiment>/``
and ``--ckpt_path last`` resumes its latest run.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

CONFIG_DIR = Path(__file__).resolve().parent
TRAINER_DEFAULTS = CONFIG_DIR / "trainer.yaml"


class FusegenArgumentParser(LightningArgumentParser):
    """Prints a one-line usage on errors: the full synopsis is ~50 lines and buries the message."""

    def print_usage(self, file: Any = None) -> None:
        print(f"usage: {self.prog} [--config CONFIG.yaml ...] [--print_config] [--KEY VALUE ...]", file=file)


class FusegenCLI(LightningCLI):
    """LightningCLI with fusegen's shared trainer defaults and run-folder convention."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        defaults = {"default_config_files": [str(TRAINER_DEFAULTS)]}
        # With subcommands (the command line) each subcommand parser loads trainer.yaml;
        # with run=False (Python use, no subcommand) the single parser does.
        kwargs.setdefault("parser_kwargs", {sub: dict(defaults) for sub in self.subcommands()}
                          if kwargs.get("run", True) else dict(defaults))
        # A second run into the same folder must not abort on an existing config.yaml.
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_class", FusegenArgumentParser)
        # datamodule_class=None: `data` accepts any LightningDataModule by class_path but is
        # optional, since an RL agent collects its own rollouts (its train_dataloader).
        super().__init__(LightningModule, None, *args,
                         subclass_mode_model=True, subclass_mode_data=True, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str, default="default",
                            help="Run name: logs and checkpoints go to <trainer.default_root_dir>/<experiment>/.")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = str(Path(config.trainer.default_root_dir or "runs") / config.experiment)
        _fill_run_dir(config.trainer.logger, run_dir)
        _fill_run_dir(config.trainer.callbacks, run_dir)
        if config.trainer.enable_progress_bar is False and isinstance(config.trainer.callbacks, list):
            # trainer.yaml adds a RichProgressBar; honour `--trainer.enable_progress_bar false`
            # instead of letting Lightning reject the combination.
            config.trainer.callbacks = [c for c in config.trainer.callbacks
                                        if not str(getattr(c, "class_path", "")).endswith("ProgressBar")]
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")  # TF32 on Ampere+; bf16 comes from the gpu preset


def _fill_run_dir(components: Any, run_dir: str) -> None:
    """Replace ``{run_dir}`` in the string init_args of configured loggers/callbacks."""
    if not isinstance(components, list):
        components = [components]
    for component in components:
        init_args = getattr(component, "init_args", None)
        if not isinstance(init_args, Namespace):
            continue
        for key, value in vars(init_args).items():
            if isinstance(value, str) and "{run_dir}" in value:
                setattr(init_args, key, value.replace("{run_dir}", run_dir))


def main(args: list[str] | None = None) -> None:
    """Console entry point. User errors print one screen, not a deep traceback
    (``FUSEGEN_DEBUG=1`` shows the full one)."""
    # `class_path: mymodule.MyDataModule` must find modules in the user's working folder, as
    # `python -m` would; the console script's sys.path[0] is its bin/ folder instead.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        FusegenCLI(args=args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the top level of a CLI
        if os.environ.get("FUSEGEN_DEBUG"):
            raise
        frame = traceback.extract_tb(err.__traceback__)[-1]
        print(f"fusegen: error: {type(err).__name__}: {err}", file=sys.stderr)
        print(f"  (raised at {frame.filename}:{frame.lineno}; set FUSEGEN_DEBUG=1 for the full traceback)",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
