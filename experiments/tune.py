"""``fusegen tune``: Optuna hyperparameter sweeps over the same configs ``fusegen fit`` runs.

    fusegen tune --config experiments/fusion/synthetic-concat.yaml --search experiments/search/synthetic-concat.yaml \
        --n-trials 20
    fusegen tune ... --workers 4                       # 4 worker processes on one study
    FUSEGEN_TUNE_STORAGE=postgresql://user:pw@db/optuna fusegen tune ...   # workers on many machines

The search file (``experiments/search/synthetic-concat.yaml`` is one) names the metric and a
search space over any config key (dotted, as on the command line)::

    metric: val/acc
    direction: maximize            # or minimize
    pruner: median                 # median | hyperband | none
    params:
      model.init_args.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.init_args.dropout: {type: float, low: 0.0, high: 0.5}
      model.init_args.hidden_dims: {type: categorical, choices: [[64], [128, 64]]}
      trainer.max_epochs: {type: int, low: 1, high: 4}

Each trial is one ``fit`` through the fusegen CLI with the sampled values as ``--key=value``
overrides, logged to ``<default_root_dir>/<study>/trial_<n>/`` like any run; the metric is read
after the last validation, and every validation reports it to Optuna so an unpromising trial is
pruned early. The study lives in an RDB: a SQLite file (``runs/<study>/study.db``) by default,
which worker processes on one machine share; a PostgreSQL/MySQL URL (from
``$FUSEGEN_TUNE_STORAGE``, never from the command line, so credentials stay out of shell
history, saved configs and logs) serves workers on many machines with the same command.
Heartbeats mark the trial of a killed worker as failed, and the study carries on. ``--n-trials``
is the study's total of finished (complete or pruned) trials across all workers.
At the end every trial is listed (state, metric, values); the best values are written to
``runs/<study>/best.yaml`` (its header comment records the trial and the metric), a config to stack
with ``--config``. A worker that died is named; the exit code is 0 when the study reached its
``--n-trials`` finished trials, whatever happened to single workers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

STORAGE_ENV = "FUSEGEN_TUNE_STORAGE"
KINDS = ("float", "int", "categorical")


class SearchSpaceError(ValueError):
    pass


def load_search_space(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``search.yaml``; every problem names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"--search {str(path)!r}: no such file")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SearchSpaceError(f"{path}: not valid YAML: {err}") from err
    params = spec.get("params")
    if not isinstance(params, dict) or not params:
        raise SearchSpaceError(f"{path}: needs a non-empty `params:` mapping of config keys to "
                               "{type: float|int|categorical, ...}")
    for key, p in params.items():
        where = f"{path}: params.{key}"
        if not isinstance(p, dict) or p.get("type") not in KINDS:
            raise SearchSpaceError(f"{where}: `type` must be one of {KINDS}, got {p!r}")
        if p["type"] == "categorical":
            if not isinstance(p.get("choices"), list) or not p["choices"]:
                raise SearchSpaceError(f"{where}: categorical needs a non-empty `choices` list")
        else:
            if "low" not in p or "high" not in p:
                raise SearchSpaceError(f"{where}: {p['type']} needs `low` and `high`")
            if not float(p["low"]) < float(p["high"]):
                raise SearchSpaceError(f"{where}: low ({p['low']}) must be < high ({p['high']})")
            if p.get("log") and float(p["low"]) <= 0:
                raise SearchSpaceError(f"{where}: log scale needs low > 0, got {p['low']}")
    direction = spec.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise SearchSpaceError(f"{path}: direction must be maximize or minimize, got {direction!r}")
    pruner = spec.get("pruner", "median")
    if pruner not in ("median", "hyperband", "none"):
        raise SearchSpaceError(f"{path}: pruner must be median, hyperband or none, got {pruner!r}")
    if not spec.get("metric"):
        raise SearchSpaceError(f"{path}: needs `metric:` (a logged metric such as val/acc or val/loss)")
    return {"metric": spec["metric"], "direction": direction, "pruner": pruner, "params": params}


def suggest(trial: Any, params: dict[str, Any]) -> dict[str, Any]:
    """One value per search-space key."""
    values = {}
    for key, p in params.items():
        if p["type"] == "float":
            values[key] = trial.suggest_float(key, float(p["low"]), float(p["high"]), log=bool(p.get("log")))
        elif p["type"] == "int":
            values[key] = trial.suggest_int(key, int(p["low"]), int(p["high"]), log=bool(p.get("log")))
        else:
            # Optuna stores categorical choices as JSON-able scalars: index lists/dicts by position.
            choices = p["choices"]
            index = trial.suggest_categorical(key, list(range(len(choices))))
            values[key] = choices[index]
    return values


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``{"a.b": 1}`` -> ``["--a.b=1"]`` (YAML flow style, which jsonargparse parses)."""
    return [f"--{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in values.items()]


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys to a nested mapping: a config that can be stacked with ``--config``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def redact(url: str) -> str:
    """A storage URL safe to print: the password replaced by ``***``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown by its scheme only
        return url.split(":", 1)[0] + "://***"


def make_storage(url: str, heartbeat_interval: int, grace_period: int) -> Any:
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                failed_trial_callback=lambda study, trial: print(
                    f"fusegen tune: trial {trial.number} lost its worker (no heartbeat): marked failed",
                    file=sys.stderr))
        except (IntegrityError, OperationalError):
            # Workers started at once on a new database race to create its tables; the loser
            # finds them made on its next try.
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


def pruning_callback(trial: Any, metric: str):
    """Reports ``metric`` to Optuna after every validation and prunes through Optuna's rule."""
    import optuna
    import pytorch_lightning as pl

    class OptunaPruning(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking or metric not in trainer.callback_metrics:
                return
            epoch = trainer.current_epoch
            trial.report(float(trainer.callback_metrics[metric]), step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"trial {trial.number} pruned at epoch {epoch}")

    return OptunaPruning()


def objective_for(args: argparse.Namespace, space: dict[str, Any]):
    from experiments.cli import FusegenCLI

    def objective(trial: Any) -> float:
        values = suggest(trial, space["params"])
        cli_args = [a for c in args.config for a in ("--config", c)]
        cli_args += ["--experiment", f"{args.study_name}/trial_{trial.number:03d}",
                     "--trainer.default_root_dir", str(args.root), *args.overrides, *as_overrides(values)]
        print(f"fusegen tune: trial {trial.number}: {values}", file=sys.stderr, flush=True)
        with warnings.catch_warnings():
            # The trial's arguments are passed on purpose while sys.argv holds `tune`'s own.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within")
            cli = FusegenCLI(args=cli_args, run=False,
                             trainer_defaults={"callbacks": [pruning_callback(trial, space["metric"])]})
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        metrics = cli.trainer.callback_metrics
        if space["metric"] not in metrics:
            raise KeyError(f"search metric {space['metric']!r} was not logged; logged metrics: {sorted(metrics)}")
        value = float(metrics[space["metric"]])
        print(f"fusegen tune: trial {trial.number}: {space['metric']} = {value:.4g}", file=sys.stderr, flush=True)
        return value

    return objective


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fusegen tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="experiment config(s), stacked in order")
    parser.add_argument("--search", required=True, help="search-space YAML (see above)")
    parser.add_argument("--n-trials", type=int, required=True, help="finished trials the study should reach")
    parser.add_argument("--study-name", default=None, help="default: the search file's name")
    parser.add_argument("--root", type=Path, default=Path("runs"), help="trainer.default_root_dir of the trials")
    parser.add_argument("--workers", type=int, default=1, help="worker processes to start on this machine")
    parser.add_argument("--heartbeat", type=int, default=10, help="seconds between a running trial's heartbeats")
    parser.add_argument("--grace-period", type=int, default=60,
                        help="seconds without a heartbeat after which a trial counts as failed")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (TPE)")
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="further CLI overrides for every trial, after `--`")
    args = parser.parse_args(argv)
    if args.n_trials < 1:
        parser.error(f"--n-trials must be >= 1, got {args.n_trials}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    for config in args.config:
        if not Path(config).is_file():
            parser.error(f"--config {config!r}: no such file")
    args.study_name = args.study_name or Path(args.search).stem
    return args


def main(argv: list[str] | None = None) -> int:
    import optuna

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        space = load_search_space(args.search)
    except SearchSpaceError as err:
        print(f"fusegen tune: error: {err}", file=sys.stderr)
        return 2
    study_dir = args.root / args.study_name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = os.environ.get(STORAGE_ENV) or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    storage = make_storage(url, args.heartbeat, args.grace_period)
    pruner = {"median": optuna.pruners.MedianPruner(n_warmup_steps=1),
              "hyperband": optuna.pruners.HyperbandPruner(), "none": optuna.pruners.NopPruner()}[space["pruner"]]
    seed = None if args.seed is None else args.seed + args.worker_index
    study = optuna.create_study(study_name=args.study_name, storage=storage, direction=space["direction"],
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner, load_if_exists=True)
    print(f"fusegen tune: study {args.study_name!r} in {redact(url)}; {args.workers} worker(s); "
          f"target {args.n_trials} finished trials", file=sys.stderr, flush=True)

    workers = []
    if args.workers > 1:
        child = [a for a in argv if not a.startswith("--workers")]
        if "--workers" in argv:  # the two-token form
            i = argv.index("--workers")
            child = argv[:i] + argv[i + 2:]
        # Each worker gets its own sampler seed, or seeded workers would all draw the same values.
        workers = [subprocess.Popen([sys.executable, "-m", "experiments.tune", "--worker-index", str(i), *child])
                   for i in range(1, args.workers)]

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < args.n_trials:
        study.optimize(objective_for(args, space), n_trials=args.n_trials - done,
                       callbacks=[optuna.study.MaxTrialsCallback(args.n_trials, states=finished)],
                       catch=(RuntimeError, ValueError, KeyError, FloatingPointError))
    died = [worker_death(i, w.pid, w.wait()) for i, w in enumerate(workers, start=1)]
    died = [d for d in died if d]
    for line in died:
        print(f"fusegen tune: {line}", file=sys.stderr)

    trials = study.get_trials(deepcopy=False)
    print(trial_table(trials, space), file=sys.stderr)
    finished_now = sum(t.state in finished for t in trials)
    counts = ", ".join(f"{sum(t.state.name == s for t in trials)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL")
                       if any(t.state.name == s for t in trials))
    reached = finished_now >= args.n_trials
    print(f"fusegen tune: study {args.study_name!r} {'completed' if reached else 'stopped short'}: {counts} "
          f"({finished_now} of {args.n_trials} finished trials{'' if reached else '; rerun the command to go on'})"
          + (f"; {len(died)} worker(s) died, their running trials marked failed" if died else ""),
          file=sys.stderr)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        print("fusegen tune: no trial completed; see the errors above", file=sys.stderr)
        return 1
    best = study.best_trial
    values = best_values(best, space)
    from datamodules.files import atomic_write_text

    header = (f"# fusegen tune: best trial {best.number} of study {args.study_name!r}: {space['metric']} = "
              f"{best.value!r} ({space['direction']}; {len(complete)} complete trials)\n")
    best_path = atomic_write_text(study_dir / "best.yaml",
                                  header + yaml.safe_dump(nested(values), sort_keys=False))
    print(f"fusegen tune: best trial {best.number}: {space['metric']} = {best.value:.4g} with {values}\n"
          f"fusegen tune: stack it: fusegen fit {' '.join('--config ' + c for c in args.config)} "
          f"--config {best_path}", file=sys.stderr)
    return 0 if reached else 1


def best_values(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as config values (categorical choices are stored by index)."""
    return {key: space["params"][key]["choices"][v] if space["params"][key]["type"] == "categorical" else v
            for key, v in trial.params.items() if key in space["params"]}


def worker_death(index: int, pid: int, code: int) -> str | None:
    """One line for a worker process that did not exit cleanly, or ``None``."""
    if code == 0:
        return None
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code} (its error is printed above)"
    return f"worker {index} (PID {pid}) {how}; a trial it was running is marked failed once its heartbeat stops"


def trial_table(trials: list[Any], space: dict[str, Any]) -> str:
    """All trials of the study, one row each: number, state, metric, seconds, values."""
    metric = space["metric"]
    rows = [("trial", "state", metric, "seconds", "values")]
    for t in sorted(trials, key=lambda t: t.number):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        values = ", ".join(f"{k.split('.')[-1]}={f'{v:.4g}' if isinstance(v, float) else v}"
                           for k, v in best_values(t, space).items())
        rows.append((str(t.number), t.state.name.lower(), "" if t.value is None else f"{t.value:.4g}",
                     "" if seconds is None else f"{seconds:.1f}", values))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)


if __name__ == "__main__":
    sys.exit(main())
