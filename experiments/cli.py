"""The ``fusegen`` command: one LightningCLI for fusion models, GANs and RL agents.

``experiments/trainer.yaml`` is loaded first for every subcommand, so all experiments share one
trainer / accelerator / logging setup; an experiment config (and any preset such as
``experiments/presets/gpu.yaml``) is stacked on top with further ``--config`` flags.

Run folders: the top-level ``experiment`` key names the run; ``{run_dir}`` in a logger or
callback argument (see trainer.yaml) becomes ``<trainer.default_root_dir>/<experiment>``, so
TensorBoard/CSV logs and checkpoints of one experiment live together in ``runs/<experiment>/``
and ``--ckpt_path last`` resumes its latest run.

Reliability (docs/reliability.md): bad YAML, bad keys and bad values fail before any work, naming
the file/key; ``--ckpt_path`` files are vetted as data; ``last`` is the readable checkpoint with the
highest global step; one live fit per run folder (``experiments/runlock.py``); a fit that fails
before its first step removes the empty run folders it made; a failed DDP rank is named.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Union

import torch
from jsonargparse import Namespace
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_warn

from datamodules.checks import DATA, check_int
from datamodules.files import atomic_write_text, remove_stale_temp_files
from experiments.callbacks import (
    FiniteGuard,
    Preemption,
    SafeCheckpointIO,
    StepSeed,
    checkpoint_safe_globals,
    load_checkpoint_as_data,
    readable,
)
from experiments.messages import (
    config_file_problem,
    config_files,
    constructor_errors,
    explain_parse_error,
    quiet_known_noise,
    unknown_key_hint,
)
from experiments.runlock import RunLock

CONFIG_DIR = Path(__file__).resolve().parent
TRAINER_DEFAULTS = CONFIG_DIR / "trainer.yaml"


class FusegenArgumentParser(LightningArgumentParser):
    """Prints a one-line usage on errors: the full synopsis is ~50 lines and buries the message; a
    mistyped key is named with the file and line it came from and the closest valid key."""

    config_files: list[str] = []  # the --config files of the command line being parsed

    def print_usage(self, file: Any = None) -> None:
        print(f"usage: {self.prog} [--config CONFIG.yaml ...] [--print_config] [--KEY VALUE ...]", file=file)

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if message.startswith("Unexpected config"):  # an empty or non-mapping --config file (Python use)
            message = config_file_problem(["--config=" + f for f in self.config_files]) or message
        message = explain_parse_error(message, self.config_files)
        valid = [a.dest for a in self._actions if getattr(a, "dest", None)]
        return super().error(unknown_key_hint(message, valid, self.config_files), ex)


class FusegenCLI(LightningCLI):
    """LightningCLI with fusegen's shared trainer defaults and run-folder convention."""

    run_dir: Path | None = None  # runs/<experiment>/, set once the config is parsed
    runs_root: Path | None = None  # trainer.default_root_dir as configured: runs/

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # LightningCLI itself reads a --ckpt_path file's hyperparameters with weights_only=True:
        # it must accept exactly what SafeCheckpointIO accepts.
        torch.serialization.add_safe_globals(checkpoint_safe_globals())
        quiet_known_noise()
        given = kwargs.get("args")
        FusegenArgumentParser.config_files = config_files(sys.argv[1:] if given is None else
                                                          given if isinstance(given, list) else [])
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
        _ints_stay_ints(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads the hyperparameters of a --ckpt_path file next; a torn or unsafe file
        # must be named, not fail deep inside torch.load with a bare EOFError.
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and "://" not in str(ckpt_path) and Path(ckpt_path).is_file():
            load_checkpoint_as_data(ckpt_path, map_location="cpu", mmap=True)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_learning_rates(config)
        check_batch_size(config)
        if config.trainer.max_epochs == -1 and config.trainer.max_steps in (None, -1) and not config.trainer.max_time:
            rank_zero_warn("trainer.max_epochs = -1 means no limit: training runs until stopped (Ctrl-C, "
                           "trainer.max_steps, trainer.max_time or an EarlyStopping callback)")
        root = Path(config.trainer.default_root_dir or "runs")
        self.runs_root = root
        # A config saved by an earlier run already names the run folder: do not nest it twice.
        run_dir = str(root if root.name == Path(config.experiment).name else root / config.experiment)
        self.run_dir = Path(run_dir)
        # The Trainer's own root is the run folder too, so whatever falls back to it (pictures
        # under fast_dev_run, whose loggers are dummies; profiler output) lands in the same place.
        config.trainer.default_root_dir = run_dir
        _keep_reliability_defaults(config.trainer)
        _fill_run_dir(config.trainer.logger, run_dir)
        _fill_run_dir(config.trainer.callbacks, run_dir)
        if config.trainer.enable_progress_bar is False and isinstance(config.trainer.callbacks, list):
            # trainer.yaml adds a RichProgressBar; honour `--trainer.enable_progress_bar false`
            # instead of letting Lightning reject the combination.
            config.trainer.callbacks = [c for c in config.trainer.callbacks
                                        if not str(getattr(c, "class_path", "")).endswith("ProgressBar")]
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")  # TF32 on Ampere+; bf16 comes from the gpu preset

    # ------------------------------------------------------------------ running a subcommand
    # LightningCLI calls a method named after the subcommand when the CLI defines one.
    def fit(self, **kwargs: Any) -> None:
        # Before the lock file exists: the run folders a failed start made are removed again.
        created = _Created(self.run_dir, self.trainer.loggers, self._checkpoint_dir())
        lock = RunLock(self.run_dir) if self.run_dir is not None and _is_first_process() else None
        if lock is not None:
            lock.acquire()
            if lock.took_over:
                rank_zero_warn(f"took over the stale lock {lock.path} of a run that is gone (PID "
                               f"{lock.took_over.get('pid')} on {lock.took_over.get('host')})")
        try:
            self._guarded(self.trainer.fit, kwargs, created=created, lock=lock)
        finally:
            if lock is not None:
                lock.release()

    def validate(self, **kwargs: Any) -> None:
        self._guarded(self.trainer.validate, kwargs)

    def test(self, **kwargs: Any) -> None:
        self._guarded(self.trainer.test, kwargs)

    def predict(self, **kwargs: Any) -> None:
        self._guarded(self.trainer.predict, kwargs)

    def _guarded(self, run: Callable[..., Any], kwargs: dict[str, Any], created: _Created | None = None,
                 lock: RunLock | None = None) -> None:
        """Run a Trainer entry point with crash-safe checkpoints around it: stale temp files removed,
        ``ckpt_path: last`` resolved to a readable checkpoint, and a fit that fails before its
        first step leaves no empty run folders behind."""
        ckpt_dir = self._checkpoint_dir()
        if ckpt_dir is not None:
            for stale in remove_stale_temp_files(ckpt_dir):
                rank_zero_warn(f"removed {stale}: a temporary file left by a checkpoint save that was killed")
            if kwargs.get("ckpt_path") == "last":
                kwargs["ckpt_path"] = resolve_last_checkpoint(ckpt_dir)
        if kwargs.get("ckpt_path") == "last":  # nothing to load
            if run.__name__ != "fit":
                raise FileNotFoundError(nothing_to_load(self.subcommand or run.__name__, ckpt_dir, self.runs_root))
            rank_zero_warn(f"--ckpt_path last: no checkpoint in {ckpt_dir or self.run_dir}; starting a new run")
            kwargs["ckpt_path"] = None  # (Lightning's own warning suggests save_last=True, which is set)
        started = time.time()
        try:
            run(**kwargs)
        except BaseException as err:
            if created is not None and self.trainer.global_step == 0 and self.trainer.is_global_zero:
                if lock is not None:
                    lock.release()
                created.remove_if_empty()
            changed = _changed_config(err, kwargs.get("ckpt_path"), self.model)
            if changed is not None:
                raise changed from err
            if self.trainer.world_size > 1 and not isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise _rank_error(err, self.trainer.global_rank, self.run_dir, started) from err
            raise

    def _checkpoint_dir(self) -> Path | None:
        callback = self.trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        return Path(dirpath) if dirpath and "://" not in str(dirpath) else None


def resolve_last_checkpoint(folder: Path) -> str:
    """``--ckpt_path last``: the readable checkpoint in ``folder`` with the highest ``global_step``
    (read from each file, not its name or modification time; ties go to the newest file), with one
    warning naming what was skipped (unreadable files, and a ``last*.ckpt`` behind a further one);
    ``"last"`` if the folder holds no checkpoint at all."""
    if not folder.is_dir():
        return "last"
    candidates = [p for p in folder.glob("*.ckpt") if p.is_file() or p.is_dir()]
    progress: list[tuple[int, float, Path]] = []
    unreadable: list[tuple[Path, str]] = []
    for path in candidates:
        step = _global_step(path)
        if isinstance(step, str):
            unreadable.append((path, step))
        else:
            progress.append((step, _mtime(path), path))
    skipped = [f"{p.name} ({why})" for p, why in sorted(unreadable)]
    if not progress:
        if skipped:
            raise RuntimeError(f"--ckpt_path last: no readable checkpoint in {folder} (skipped: {'; '.join(skipped)}). "
                               "Delete the unreadable files to start from scratch, or pass --ckpt_path FILE.")
        return "last"
    step, mtime, chosen = max(progress, key=lambda t: (t[0], t[1]))
    behind = [f"{p.name} (step {s}, behind)" for s, _, p in sorted(progress, key=lambda t: t[2].name)
              if p.stem.startswith("last") and s < step]
    if skipped or behind:
        moved = ""
        if _is_first_process() and unreadable:
            # Set aside so this run's ModelCheckpoint writes last.ckpt again (not last-v1.ckpt).
            for path, _ in unreadable:
                if path.is_file() and _mtime(path) > mtime:
                    path.replace(path.with_name(path.name + ".unreadable"))
            moved = "; unreadable files renamed to *.unreadable"
        rank_zero_warn(f"--ckpt_path last: resuming from {chosen} (global step {step}); skipped "
                       f"{'; '.join(skipped + behind)}{moved}")
    return str(chosen)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def _global_step(path: Path) -> int | str:
    """The ``global_step`` saved in a checkpoint (memory-mapped read), or why it cannot be read."""
    if path.is_dir():  # a sharded (FSDP) checkpoint folder: its step is in meta.pt
        why = readable(path)
        if why is not None:
            return why
        try:
            return int(load_checkpoint_as_data(path / "meta.pt", map_location="cpu").get("global_step", 0))
        except Exception:  # noqa: BLE001 - a meta.pt without the step still resumes
            return 0
    try:
        checkpoint = load_checkpoint_as_data(path, map_location="cpu", mmap=True)
    except Exception:  # noqa: BLE001 - readable() says why in the words the warning uses
        return readable(path) or "unreadable"
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return int(step) if isinstance(step, int) else "no global_step: not a Lightning checkpoint"


def nothing_to_load(subcommand: str, ckpt_dir: Path | None, root: Path | None) -> str:
    """The error for ``validate``/``test``/``predict --ckpt_path last`` with no checkpoint: the folder
    searched and the experiments under the same root that have checkpoints."""
    searched = ckpt_dir if ckpt_dir is not None else "(no ModelCheckpoint callback configured)"
    others = experiments_with_checkpoints(root) if root is not None else []
    shown = ", ".join(others[:10]) + (f" (+{len(others) - 10} more)" if len(others) > 10 else "")
    where = (f"experiments with checkpoints under {root}/: {shown}; pass one with --experiment NAME"
             if others else f"no experiment under {root}/ has checkpoints: train one first with `fusegen fit`")
    return (f"{subcommand} --ckpt_path last: no checkpoint to load in {searched}, so there is no trained model "
            f"to {subcommand} (it would run on untrained weights). {where}, or pass --ckpt_path FILE.")


def experiments_with_checkpoints(root: Path) -> list[str]:
    """Run folder names (``--experiment`` values) under ``root`` holding at least one ``*.ckpt``."""
    if not root.is_dir():
        return []
    names = set()
    for folder in root.glob("**/checkpoints"):
        if folder.is_dir() and any(folder.glob("*.ckpt")):
            names.add(folder.parent.relative_to(root).as_posix())
    return sorted(names)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) or isinstance(value, Namespace):
        items = value.items() if isinstance(value, dict) else vars(value).items()
        out: dict[str, Any] = {}
        for key, sub in items:
            if str(key).startswith("_"):
                continue
            out.update(_flat(sub, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _changed_config(err: BaseException, ckpt_path: Any, model: Any) -> RuntimeError | None:
    """A checkpoint whose weights do not fit the model: name the config keys whose values differ
    from the hyperparameters saved in the checkpoint (instead of torch's ``size mismatch``)."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not ckpt_path or "Error(s) in loading state_dict" not in text:
        return None
    try:
        saved = load_checkpoint_as_data(ckpt_path, map_location="cpu", mmap=True).get("hyper_parameters") or {}
    except Exception:  # noqa: BLE001 - keep the original error
        return None
    now = _flat(dict(getattr(model, "hparams", {}) or {}))
    before = _flat(dict(saved))
    keys = sorted(k for k in set(now) | set(before) if now.get(k, "<unset>") != before.get(k, "<unset>"))
    if not keys:
        return None
    shown = "; ".join(f"model.init_args.{k}: {before.get(k, '<unset>')!r} in the checkpoint, "
                      f"{now.get(k, '<unset>')!r} now"
                      for k in keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
    first = text.strip().splitlines()[1].strip() if len(text.strip().splitlines()) > 1 else text.strip()
    return RuntimeError(
        f"checkpoint {ckpt_path} was trained with a different model config, so its weights do not fit "
        f"({first}). Config keys that differ: {shown}. Resume with the config the checkpoint was trained with "
        "(its run folder keeps it as config.yaml), or start a new run with another --experiment.")


def _is_first_process() -> bool:
    """True on the launching process (before the Trainer knows its rank): rank 0 of node 0."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class _Created:
    """Remembers which run folders exist before a fit, to remove only the empty ones it creates."""

    KEEP_NOTHING_BUT = {"config.yaml", "hparams.yaml"}

    def __init__(self, run_dir: Path | None, loggers: list[Any], ckpt_dir: Path | None) -> None:
        self.roots = [Path(lg.root_dir) for lg in loggers if getattr(lg, "root_dir", None)]
        self.before = {root: set(root.iterdir()) if root.is_dir() else None for root in self.roots}
        above = [run_dir, *run_dir.parents] if run_dir is not None else []  # runs/ itself may be new too
        self.folders = [p for p in (ckpt_dir, *self.roots, *above) if p is not None and not p.exists()]

    def _only_metadata(self, folder: Path) -> bool:
        return all(p.is_file() and (p.name in self.KEEP_NOTHING_BUT or p.name.startswith("events.out.tfevents."))
                   for p in folder.iterdir())

    def remove_if_empty(self) -> None:
        for root, before in self.before.items():
            if not root.is_dir():
                continue
            for version in set(root.iterdir()) - (before or set()):
                if version.is_dir() and version.name.startswith("version_") and self._only_metadata(version):
                    shutil.rmtree(version, ignore_errors=True)
        for folder in self.folders:  # innermost first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _is_connection_error(err: BaseException) -> bool:
    text = str(err)
    return (isinstance(err, getattr(torch.distributed, "DistError", ())) or "Connection reset by peer" in text
            or "Connection closed by peer" in text or "gloo" in text.lower() or "NCCL" in text)


class RankError(RuntimeError):
    """A multi-process run failed on this rank; ``__cause__`` is the original error."""


def _rank_error(err: BaseException, rank: int, run_dir: Path | None, started: float) -> RankError:
    """Name the rank in a multi-process failure; a rank that lost its peers says which one died."""
    here = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    if not _is_connection_error(err):
        if run_dir is not None:
            try:
                atomic_write_text(run_dir / f"rank-{rank}.error", here + "\n")
            except OSError:
                pass
        return RankError(f"rank {rank} failed: {here}")
    dead: list[str] = []
    deadline = time.time() + 3.0  # the failed rank writes its note as it exits; give it a moment
    while run_dir is not None and not dead and time.time() < deadline:
        for p in sorted(run_dir.glob("rank-*.error")):
            if p.stat().st_mtime >= started - 1 and p.name != f"rank-{rank}.error":
                dead.append(f"{p.stem.replace('-', ' ')} failed first ({p.read_text().strip()}; saved in {p})")
        time.sleep(0.2)
    which = "; ".join(dead) if dead else ("another rank died without an error message (killed, or out of memory?)")
    logs = f"This run's logs: {run_dir}/" if run_dir is not None else ""
    return RankError(
        f"rank {rank} lost contact with the other ranks ({here[:200]}): {which}. Every rank's own error is "
        f"printed above when the ranks share this terminal (Lightning's launcher, torchrun without --log-dir); "
        f"under SLURM or torchrun --log-dir see that rank's log file. {logs}")


def check_learning_rates(config: Namespace) -> None:
    """Reject a negative or non-finite ``lr`` of any optimizer in the model config, naming its key."""
    model = getattr(config, "model", None)
    if not isinstance(model, Namespace):
        return
    for key, value in model.items():
        if (key == "lr" or key.endswith(".lr")) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"model.{key} = {value}: a learning rate must be a finite number >= 0 "
                                 "(typical: 1e-4 to 1e-2)")


def check_batch_size(config: Namespace) -> None:
    """``data.init_args.batch_size`` of any datamodule: an integer >= 1, checked before any model is
    built (a DataLoader would reject 0 only after the model summary, without naming the key)."""
    init_args = getattr(getattr(config, "data", None), "init_args", None)
    if isinstance(init_args, Namespace) and "batch_size" in init_args and init_args.batch_size is not None:
        check_int("batch_size", init_args.batch_size, minimum=1, prefix=DATA)


def _ints_stay_ints(parser: LightningArgumentParser) -> None:
    """Trainer arguments typed ``Union[int, float]`` (``limit_train_batches``, ``val_check_interval``, ...)
    reach jsonargparse as ``Union[float, int]`` (typing caches equal unions, so the order written in
    Lightning's source can be lost); float is then tried first and turns ``1`` (one batch) into ``1.0``
    (the whole epoch). Trying int first keeps an int the user typed an int; floats still parse."""
    for action in parser._actions:
        hint = getattr(action, "_typehint", None)
        args = getattr(hint, "__args__", ())
        if getattr(hint, "__origin__", None) is Union and float in args and int in args \
                and args.index(float) < args.index(int):
            action._typehint = Union[tuple(sorted(args, key=lambda t: t is not int))]


def _keep_reliability_defaults(trainer: Namespace) -> None:
    """A config that replaces trainer.yaml's ``callbacks`` or ``plugins`` list keeps the NaN stop, the
    per-step seeding, the preemption checkpoint and the safe checkpoint IO (with their defaults) unless it
    configures its own."""
    callbacks = trainer.callbacks if isinstance(trainer.callbacks, list) else [
        c for c in [trainer.callbacks] if c is not None]
    if not any(_class_of(c) is FiniteGuard for c in callbacks):
        callbacks.insert(0, Namespace(class_path=f"{FiniteGuard.__module__}.FiniteGuard",
                                      init_args=Namespace(check_gradients=True)))
    for cls in (StepSeed, Preemption):  # exact resume and the preemption checkpoint
        if not any(_class_of(c) is cls for c in callbacks):
            callbacks.insert(1, Namespace(class_path=f"{cls.__module__}.{cls.__name__}", init_args=Namespace()))
    trainer.callbacks = callbacks
    plugins = trainer.plugins if isinstance(trainer.plugins, list) else [
        p for p in [trainer.plugins] if p is not None]
    if not any(isinstance(_class_of(p), type) and issubclass(_class_of(p), CheckpointIO) for p in plugins):
        plugins.append(Namespace(class_path=f"{SafeCheckpointIO.__module__}.SafeCheckpointIO",
                                 init_args=Namespace(check_finite=True)))
    trainer.plugins = plugins


def _class_of(component: Any) -> Any:
    class_path = getattr(component, "class_path", None) if isinstance(component, Namespace) else None
    if not isinstance(class_path, str) or "." not in class_path:
        return type(component)
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


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
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["tune"]:  # Optuna sweeps over the same configs (experiments/tune.py)
        from experiments.tune import main as tune

        sys.exit(tune(argv[1:]))
    if argv[:1] in (["explain"], ["export"]):  # after training: experiments/explain.py, experiments/export.py
        module = importlib.import_module(f"experiments.{argv[0]}")
        sys.exit(module.main(argv[1:]))
    problem = config_file_problem(argv)
    if problem:
        print(f"fusegen: error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        FusegenCLI(args=args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the top level of a CLI
        if os.environ.get("FUSEGEN_DEBUG"):
            raise
        origin = err.__cause__ if isinstance(err, RankError) and err.__cause__ is not None else err
        frame = traceback.extract_tb(origin.__traceback__)[-1]
        failed = constructor_errors(str(err))
        if failed:  # a class's own check, wrapped by jsonargparse in a dump of the config
            print("fusegen: error: " + "\n".join(failed), file=sys.stderr)
            print("  (set FUSEGEN_DEBUG=1 for the full traceback)", file=sys.stderr)
        else:
            print(f"fusegen: error: {type(err).__name__}: {err}", file=sys.stderr)
            print(f"  (raised at {frame.filename}:{frame.lineno}; set FUSEGEN_DEBUG=1 for the full traceback)",
                  file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
