"""What the ``fusegen`` CLI says when the input is wrong, and what it keeps quiet about.

- ``config_file_problem``: a ``--config`` file that is not valid YAML, is empty, or is not a
  mapping is named (file, line, column) before the parser sees it.
- ``explain_parse_error``: jsonargparse's "Does not validate against any of the Union subtypes"
  dump for a mistyped ``init_args`` key becomes one line naming the key, the file and line it came
  from and the closest valid key.
- ``constructor_errors``: the whole message of a class's own check, out of the same dump.
- ``quiet_known_noise``: the lines every run printed that concern no user (a cloud-logger
  advert, a deprecation inside Lightning, a logging-interval hint on small data).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, Iterable

import yaml

UNION_DUMP = "Does not validate against any of the Union subtypes"


# ---------------------------------------------------------------------------------- config files
def config_files(args: Iterable[str]) -> list[str]:
    args = list(args)
    files = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    files += [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    return files


def config_file_problem(args: Iterable[str]) -> str | None:
    """``<file>[:<line>:<col>]: <problem>`` for the first ``--config`` file that is not valid YAML, is
    empty or is not a mapping of keys (the parser would only say ``Unexpected config: - a``)."""
    for name in config_files(args):
        path = Path(name)
        if not path.is_file():
            continue  # the parser reports missing files
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            return f"{where}: {err.problem or err.context} (YAML syntax)"
        except yaml.YAMLError as err:
            return f"{path}: {err} (YAML syntax)"
        if content is None:
            return (f"{path}: the config file is empty. A config is a YAML mapping of keys, e.g. "
                    "`trainer: {max_epochs: 3}`; remove the --config or fill the file.")
        if not isinstance(content, dict):
            return (f"{path}: a config must be a YAML mapping of keys (experiment:, trainer:, model:, data:), "
                    f"not a {type(content).__name__} ({str(content)[:60]!r}).")
    return None


def key_location(files: Iterable[str], key: str, parents: tuple[str, ...] = ()) -> str | None:
    """``file:line`` where ``key`` is written in one of the YAML ``files`` (the last one wins, as
    when configs stack), preferring an occurrence under ``parents``."""
    found = None
    for name in files:
        try:
            root = yaml.compose(Path(name).read_text())
        except (OSError, yaml.YAMLError):
            continue
        for path, node in _mapping_keys(root, ()):
            if node.value != key:
                continue
            line = f"{name}:{node.start_mark.line + 1}"
            if found is None or all(p in path for p in parents):
                found = line
    return found


def _mapping_keys(node: Any, path: tuple[str, ...]):
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                yield path, key
                yield from _mapping_keys(value, (*path, str(key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _mapping_keys(item, path)


# ---------------------------------------------------------------------------------- parse errors
def accepted_arguments(class_path: str) -> list[str]:
    """The constructor arguments of ``class_path`` (following ``**kwargs`` up the MRO, as
    jsonargparse does)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else [cls]:
        init = klass.__init__ if inspect.isclass(cls) else klass
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                  and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params) or klass is object:
            break
    return names


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


_OPTION = re.compile(r"(?:Option|Key) '([\w.]+)' is not (?:accepted|expected)")


def explain_parse_error(message: str, files: Iterable[str]) -> str:
    """A short message for a mistyped key inside ``init_args`` (jsonargparse reports it as a failed
    Union followed by the whole given value); other messages are returned unchanged."""
    option = _OPTION.search(message)
    if UNION_DUMP not in message or not option:
        return message
    key = option.group(1)
    before, after = message[:option.start()], message[option.end():]
    later = re.search(r"class_path='([\w.]+)'", after.split("\n", 1)[0])  # nested: "Got value: Namespace(...)"
    earlier = re.findall(r"Problem with given class_path '([\w.]+)'", before)
    class_path = later.group(1) if later else (earlier[-1] if earlier else "")
    parents = re.findall(r'Parser key "([\w.]+)"', before)
    full_key = ".init_args.".join([*parents, key])  # model.init_args.fusion.init_args.<key>
    valid = accepted_arguments(class_path) if class_path else []
    location = key_location(files, key.split(".")[-1], parents=(*parents, "init_args"))
    hint = did_you_mean(key, valid) or (f"; its options: {', '.join(valid)}" if valid else "")
    owner = f" by {class_path}" if class_path else ""
    return f"{location + ': ' if location else ''}{full_key}: option {key!r} is not accepted{owner}{hint}"


_UNKNOWN = (re.compile(r"Group '([\w.]+)' does not accept option '([\w.]+)'"),
            re.compile(r"Subcommand '[\w.]+' does not accept option '([\w.]+)'()"),
            re.compile(r"Key '?\"?([\w.]+?)'?\"? is not expected()"),
            re.compile(r"unrecognized arguments: --([\w.]+)()"))


def unknown_key_hint(message: str, valid: Iterable[str], files: Iterable[str]) -> str:
    """Add the file:line and a "did you mean" to jsonargparse's message for an unknown key outside
    ``init_args`` (``Group 'trainer' does not accept option 'max_epohcs'``, ``unrecognized arguments``)."""
    for pattern in _UNKNOWN:
        found = pattern.search(message)
        if found:
            break
    else:
        return message
    key = ".".join(part for part in found.groups() if part)
    valid = list(valid)
    if key.startswith("trainer.") and not any(v.startswith("trainer.") for v in valid):
        valid += [f"trainer.{name}" for name in accepted_arguments("pytorch_lightning.Trainer")]
    parts = key.split(".")
    location = key_location(files, parts[-1], parents=tuple(parts[:-1]))
    return f"{location + ': ' if location else ''}{message}{did_you_mean(key, valid)}"


def constructor_errors(message: str) -> list[str]:
    """The whole messages of the constructors that failed, out of jsonargparse's "Does not validate
    against any of the Union subtypes" text (which appends the whole parsed config)."""
    if UNION_DUMP not in message or "Errors:" not in message:
        return []
    body = message.split("Errors:", 1)[1].split("\nGiven value type:", 1)[0]
    errors: list[list[str]] = []
    for line in body.splitlines():
        if line.startswith("  - "):
            errors.append([line[4:]])
        elif errors and line.strip():
            errors[-1].append(line)
    texts = [e[0] + ("\n" + textwrap.dedent("\n".join(e[1:])) if len(e) > 1 else "") for e in errors]
    return [t for t in texts if not t.startswith("Expected a <class 'NoneType'>")]


# ---------------------------------------------------------------------------------- noise
class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not any(f in text for f in self.fragments)


_QUIETED = False


def quiet_known_noise() -> None:
    """Silence what every run printed and no user acts on; every other warning stays."""
    global _QUIETED
    _quiet_warnings()  # again each time: warnings.catch_warnings() (tests, sweeps) restores the filters
    if _QUIETED:
        return
    _QUIETED = True
    # An advert for Lightning's cloud logger, printed by every Trainer.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropMessages("litlogger"))
    # `datasets` draws a "Generating train split" bar for every file it converts (the cached arrays
    # are built once); HF_DATASETS_DISABLE_PROGRESS_BARS=0 brings the bars back.
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
    # fusegen's own warnings on one line, like Lightning's: no repeated source line under the message.
    plain = warnings.formatwarning

    def one_line(message: Any, category: Any, filename: str, lineno: int, line: str | None = None) -> str:
        if Path(filename).parent == Path(__file__).parent:
            return f"fusegen: {category.__name__}: {message}\n"
        return plain(message, category, filename, lineno, line)

    warnings.formatwarning = one_line


def _quiet_warnings() -> None:
    # A deprecation inside Lightning's own code (pytorch_lightning/utilities/_pytree.py) under torch 2.10.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # On small data an epoch is shorter than log_every_n_steps: step metrics are still logged every
    # log_every_n_steps steps (counted across epochs) and epoch metrics every epoch.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging "
                                              r"interval")
