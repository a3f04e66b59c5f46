"""Save a model as ``config.json`` + ``model.safetensors`` and rebuild it anywhere, without the
training code's config and without unpickling anything.

``save_pretrained(module, folder)`` writes::

    folder/config.json         {"class_path": "fusion.encoders.AudioEncoder", "init_args": {...}}
    folder/model.safetensors   the state dict (safetensors: tensors only, no code)

``config.json`` uses the CLI's ``class_path`` / ``init_args`` syntax, nested modules recorded
the same way (a ``FusionClassifier``'s encoders dict, its fusion head's class and options), so
the file also reads as the ``model:`` section of a fusegen config. ``from_pretrained(folder)``
rebuilds the module with jsonargparse (the CLI's own parser, so callables such as a fusion head
factory or an optimizer come back as they would from a YAML file) and loads the weights strictly.

Which arguments get recorded: classes deriving from ``Configurable`` (every ``fusion.Encoder``)
remember the arguments of their constructor call; a ``LightningModule`` without it is described
from its ``hparams`` plus its sub-modules. An argument that cannot be written as JSON (a lambda,
a tensor, an object that records nothing) is a ``TypeError`` naming it, raised before anything
is written.

A saved folder is data: ``from_pretrained`` imports nothing its ``config.json`` names unless it
is a class or function of fusegen's own packages (``fusion``, ``generative``, ``rl``,
``datamodules``) or of the short allowlist ``ALLOWED_EXTERNAL`` (``torch.optim`` optimizers and
schedulers, ``torch.nn`` layers, ``gymnasium.wrappers``). Every ``class_path`` and every dotted
import-path string, at any depth of ``init_args``, is checked as a string before any import;
anything else is an ``UntrustedConfigError`` naming the class path and where it stands.

This module also holds the one error every pretrained-weights loader raises when weights are
neither local nor downloadable (``weights_unavailable``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import os
import re
import socket
import threading
import typing
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datamodules.files import atomic_path, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ----------------------------------------------------------------------------------------------
# Recording constructor arguments
# ----------------------------------------------------------------------------------------------

class Configurable:
    """Mixin: remembers the arguments a module was constructed with, for ``save_pretrained``.

    The outermost constructor call is recorded (``MyEncoder(width=8)`` records ``MyEncoder``'s
    arguments, not those its ``__init__`` passes to ``super().__init__``), in ``__new__`` so the
    ``__init__`` chain and its frames stay as they are (Lightning's ``save_hyperparameters``
    inspects them). Override ``pretrained_config`` to change what is saved, e.g. to replace a
    download source by the architecture it produced.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        except TypeError:  # copy/pickle re-create without arguments; __init__ reports real mistakes
            return obj
        bound.apply_defaults()
        params = inspect.signature(cls.__init__).parameters
        recorded: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = params[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                recorded.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                recorded[name] = value
            elif value:
                recorded[f"*{name}"] = value  # reported by describe(): positional extras have no name
        object.__setattr__(obj, "_init_args", recorded)  # before nn.Module.__init__: a plain attribute
        return obj

    def pretrained_config(self) -> dict[str, Any]:
        """The constructor arguments ``from_pretrained`` rebuilds this module with."""
        return dict(self.__dict__.get("_init_args", {}))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (see module doc)."""
        return save_pretrained(self, directory)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> Any:
        """Rebuild a module saved with ``save_pretrained`` (``overrides`` replace init args)."""
        return from_pretrained(directory, expected=cls, **overrides)


def class_path_of(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _callable_arity(annotation: Any) -> int | None:
    """``Callable[[A, B], R]`` -> 2 (also inside ``X | None``); ``None`` when not a Callable."""
    for hint in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(hint) is Callable or hint is Callable:
            args = typing.get_args(hint)
            return len(args[0]) if args and isinstance(args[0], list) else 0
    return None


def _init_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations only mean "no hint"
        return {}


def to_config(value: Any, where: str, annotation: Any = None) -> Any:
    """``value`` as JSON in the CLI's syntax; ``TypeError`` naming ``where`` if it has none."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [to_config(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"cannot record {where}: JSON object keys must be strings, got {bad[:3]}")
        return {k: to_config(v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_config(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, nn.ModuleDict):
        return {k: to_config(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, nn.Module):
        return describe(value, where, drop_leading=_callable_arity(annotation) or 0)
    if isinstance(value, functools.partial):
        if value.args:
            raise TypeError(f"cannot record {where}: functools.partial with positional arguments {value.args}; "
                            "bind them by keyword")
        return {"class_path": _import_path(value.func, where),
                "init_args": {k: to_config(v, f"{where}.{k}") for k, v in value.keywords.items()}}
    if isinstance(value, type):
        return {"class_path": _import_path(value, where)}
    if callable(value) and not isinstance(value, torch.Tensor):
        return _import_path(value, where)
    raise TypeError(f"cannot record {where} = {type(value).__name__}: save_pretrained writes constructor arguments "
                    "as JSON; pass plain values, a class, a functools.partial of a class, or a module that records "
                    "its arguments (derive it from fusion.pretrained.Configurable)")


def _import_path(obj: Any, where: str) -> str:
    path = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    if "<" in path or not getattr(obj, "__module__", None):  # <lambda>, <locals>
        raise TypeError(f"cannot record {where} = {obj!r}: only importable classes and functions can be saved "
                        "(not a lambda or a function defined inside another one); pass a class, a module-level "
                        "function or a functools.partial of one")
    return path


def describe(module: nn.Module, where: str = "model", drop_leading: int = 0) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuild ``module`` (see the module doc).

    Recorded arguments (``Configurable``) are used where they can be written as JSON; where one
    cannot (a callable jsonargparse built from a config), the module's ``hparams`` entry (the
    CLI's config for it) or the built sub-module of that name stands in. ``drop_leading``: leave
    out the first constructor arguments, for a module that was passed where a factory is expected
    (a built fusion head given as ``fusion``: the model supplies its ``in_dims`` when it calls it).
    """
    cls = type(module)
    hints = _init_hints(cls)
    recorded = module.pretrained_config() if isinstance(module, Configurable) else None
    args = _args_from_hparams(module, where) if not recorded and "_init_args" not in module.__dict__ else recorded
    if drop_leading:
        names = [n for n in inspect.signature(cls.__init__).parameters][1:1 + drop_leading]
        args = {k: v for k, v in args.items() if k not in names}
    hparams = dict(getattr(module, "hparams", None) or {})
    init_args: dict[str, Any] = {}
    for name, value in args.items():
        key = f"{where}.init_args.{name}"
        if name.startswith("*"):
            raise TypeError(f"cannot record {key}: positional extras have no name; pass them by keyword")
        try:
            init_args[name] = to_config(value, key, hints.get(name))
        except TypeError:
            sub = getattr(module, name, None)
            if name in hparams and _is_config_data(hparams[name]):
                init_args[name] = to_config(hparams[name], key)
            elif isinstance(sub, nn.Module) and sub is not value:
                init_args[name] = to_config(sub, key, hints.get(name))
            else:
                raise
    return {"class_path": class_path_of(module), "init_args": init_args}


def _is_config_data(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_config_data(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_config_data(v) for k, v in value.items())
    return False


def _args_from_hparams(module: nn.Module, where: str) -> dict[str, Any]:
    """Constructor arguments of a module that did not record them: a LightningModule's
    ``hparams``, with sub-modules and other values taken from the attribute of the same name."""
    hparams = getattr(module, "hparams", None)
    if hparams is None:
        raise TypeError(f"cannot record {where} ({class_path_of(module)}): it does not record its constructor "
                        "arguments; derive its class from fusion.pretrained.Configurable")
    hparams = {k: v for k, v in dict(hparams).items() if not k.startswith("_")}
    args: dict[str, Any] = {}
    for name, param in list(inspect.signature(type(module).__init__).parameters.items())[1:]:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if isinstance(getattr(module, name, None), nn.Module):
            args[name] = getattr(module, name)
        elif name in hparams:
            args[name] = hparams[name]
        elif hasattr(module, name):
            args[name] = getattr(module, name)
        elif param.default is inspect.Parameter.empty:
            raise TypeError(f"cannot record {where}.init_args.{name} ({class_path_of(module)}): it is neither in "
                            "the module's hparams nor an attribute; derive the class from "
                            "fusion.pretrained.Configurable so its constructor arguments are recorded")
    return args


# ----------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------

def save_pretrained(module: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors``; returns the folder.

    The config is built (and any argument that cannot be recorded is reported) before a file
    is written; both files are written atomically."""
    from safetensors.torch import save_file

    config = describe(module)
    # Own copies: safetensors refuses tensors that share storage (tied weights, or torchaudio's
    # window buffer, a view into a larger tensor); each key is then stored on its own.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_json(folder / CONFIG_NAME, config)
    return folder


def from_pretrained(directory: str | os.PathLike, expected: type | None = None, **overrides: Any) -> Any:
    """Rebuild the module saved in ``directory`` and load its weights (safetensors, strict).

    The module is returned in eval mode. ``expected``: a class the saved one must derive from
    (``AudioEncoder.from_pretrained`` on a folder holding a text encoder is an error)."""
    from safetensors.torch import load_file

    folder = Path(directory).expanduser()
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: from_pretrained reads a folder written by save_pretrained "
                                    f"({CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); save the model again") from err
    if not isinstance(config, dict) or "class_path" not in config:
        raise ValueError(f"{config_file} has no 'class_path': not written by fusion.pretrained.save_pretrained")
    check_config_classes(config, config_file)  # before any import: the file is data, not code
    config = {**config, "init_args": {**(config.get("init_args") or {}), **overrides}}
    cls = _import(config["class_path"], config_file)
    if expected is not None and not issubclass(cls, expected):
        raise TypeError(f"{folder} holds a {config['class_path']}, not a {class_path_of(expected)}; "
                        f"load it with {config['class_path'].rpartition('.')[2]}.from_pretrained({str(folder)!r}) "
                        f"or fusion.from_pretrained({str(folder)!r})")
    module = instantiate(cls, config, where=str(config_file))
    try:
        state = load_file(str(weights_file), device="cpu")
    except Exception as err:  # safetensors' own error type: a truncated or foreign file
        raise ValueError(f"{weights_file} is not a readable safetensors file ({err}); save the model again") from err
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{weights_file} does not fit the module rebuilt from {config_file}: {err}") from err
    return module.eval()


# ----------------------------------------------------------------------------------------------
# What a config file read from disk may name
# ----------------------------------------------------------------------------------------------

#: fusegen's own packages: any class or function defined in them may be named.
TRUSTED_PACKAGES = ("fusion", "generative", "rl", "datamodules")
#: Other libraries' classes that saved configs use: optimizers / schedulers (a classifier's
#: ``optimizer``), layers and activations (heads and encoders that take a layer class), and env
#: wrappers (an agent's ``wrappers``). Nothing here runs commands or reads files.
ALLOWED_EXTERNAL = ("torch.optim", "torch.nn", "gymnasium.wrappers")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class UntrustedConfigError(ValueError):
    """A config file read from disk names a class or function outside the allowlist."""


def _allowed(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in (*TRUSTED_PACKAGES, *ALLOWED_EXTERNAL))


def _refuse(path: str, where: str, source: Any) -> UntrustedConfigError:
    return UntrustedConfigError(
        f"{source}: refusing to load: {where} names {path!r}, which is not a class or function of fusegen's "
        f"packages ({', '.join(TRUSTED_PACKAGES)}) or of the allowlist ({', '.join(ALLOWED_EXTERNAL)}); a "
        f"config file read from disk may name only those, so {path!r} was not imported and nothing ran. A folder "
        "written by save_pretrained names only such classes: this one was edited or comes from elsewhere. If you "
        "trust it, build the model in Python and load only its weights: "
        "model.load_state_dict(safetensors.torch.load_file('.../model.safetensors'))")


def _check_name(path: str, where: str, source: Any, must_resolve: bool) -> None:
    """``path`` is allowlisted as a string, then (importing only allowlisted modules) resolves to
    an object that is itself defined there: ``fusion.pretrained.os.system`` is refused too."""
    if not _allowed(path):
        raise _refuse(path, where, source)
    try:
        obj = _import(path, source)
    except (ImportError, AttributeError):
        if must_resolve:
            raise
        return  # a plain string that only looks like a path; jsonargparse treats it as text
    origin = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
    if not isinstance(origin, str) or not _allowed(origin):
        raise _refuse(f"{path} (defined in {origin})", where, source)


def check_config_classes(config: Any, source: Any, where: str = "") -> None:
    """Raise ``UntrustedConfigError`` unless every class a config names is allowlisted.

    Walks ``config`` (``{"class_path", "init_args"}`` nested to any depth, in dicts and lists):
    each ``class_path``, and each string that reads as a dotted import path of an installed
    module (what jsonargparse resolves for a callable- or class-typed argument), is checked
    before anything is imported. ``source`` (the file) and ``where`` (the key) go into the error."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "class_path":
                if not isinstance(value, str):
                    raise UntrustedConfigError(f"{source}: {here} must be a string, got {value!r}")
                _check_name(value, here, source, must_resolve=True)
            else:
                check_config_classes(value, source, here)
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            check_config_classes(value, source, f"{where}[{i}]")
    elif isinstance(config, str) and _DOTTED.fullmatch(config):
        top = config.partition(".")[0]
        try:
            installed = importlib.util.find_spec(top) is not None  # a top-level lookup runs no module code
        except (ImportError, ValueError):
            installed = False
        if installed:
            _check_name(config, where or "the config", source, must_resolve=False)


def _import(class_path: str, where: Any) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:  # a nested class: import the longest importable prefix
        parts = class_path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        else:
            raise ImportError(f"{where}: cannot import {class_path!r}; is the package that defines it installed?")
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    try:
        return getattr(obj, name)
    except AttributeError as err:
        raise ImportError(f"{where}: {module_name} has no {name!r} (class_path {class_path!r})") from err


def instantiate(cls: type, config: dict[str, Any], where: str = "config") -> Any:
    """Build ``cls`` from ``{"class_path", "init_args"}`` with jsonargparse, as the CLI would."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--module", type=cls)
    try:
        parsed = parser.parse_object({"module": config})
    except Exception as err:  # jsonargparse reports type mismatches as its own error types
        raise ValueError(f"{where}: cannot rebuild {config['class_path']}: {err}") from err
    return parser.instantiate_classes(parsed).module


# ----------------------------------------------------------------------------------------------
# Weights that are neither local nor downloadable
# ----------------------------------------------------------------------------------------------

class WeightsUnavailableError(OSError):
    """Pretrained weights were asked for, are not cached, and could not be downloaded."""


#: One connection attempt this long decides whether a download is tried at all (the libraries'
#: own retry ladders take about a minute to give up on an unreachable host).
PROBE_TIMEOUT_S = 3.0
_PROBED: dict[tuple[str, int], bool] = {}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: fusegen's loaders then download
    nothing, from the Hub or from torch.hub URLs, and use only what is cached."""
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:
        pass
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    """The Hugging Face Hub address in use (``HF_ENDPOINT`` or huggingface.co)."""
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether ``url``'s host (or the proxy for its scheme) accepts a TCP connection within
    ``timeout`` seconds, name lookup included; the answer is kept for the process."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    if (host, port) not in _PROBED:
        answer: list[bool] = []

        def probe() -> None:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                answer.append(True)
            except OSError:
                answer.append(False)

        thread = threading.Thread(target=probe, daemon=True)  # a hanging name lookup is abandoned
        thread.start()
        thread.join(timeout)
        _PROBED[(host, port)] = bool(answer and answer[0])
    return _PROBED[(host, port)]


def download_blocked(url: str) -> ConnectionError | None:
    """Why a download from ``url`` must not be tried now (``HF_HUB_OFFLINE``, or its host did
    not answer one short probe), as the ``cause`` for ``weights_unavailable``; ``None`` to go on."""
    if hub_offline():
        return ConnectionError("HF_HUB_OFFLINE is set: nothing is downloaded")
    if not reachable(url):
        host = urllib.parse.urlsplit(url).netloc
        return ConnectionError(f"{host} did not answer within {PROBE_TIMEOUT_S:g} s (offline?); no download tried")
    return None


def cache_locations() -> dict[str, str]:
    """Where Hugging Face (transformers, timm's Hub weights) and torch.hub (torchaudio, timm's
    URL weights) look for cached files right now."""
    try:
        from huggingface_hub import constants

        hf = constants.HF_HUB_CACHE
    except ImportError:
        hf = os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    return {"HF_HOME": hf, "TORCH_HOME": os.path.join(torch.hub.get_dir(), "checkpoints")}


def weights_unavailable(what: str, model_id: str, cause: BaseException, local_hint: str) -> WeightsUnavailableError:
    """The one-screen error for weights that are not cached and could not be fetched."""
    caches = cache_locations()
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    return WeightsUnavailableError(
        f"{what}: pretrained weights for {model_id!r} are not in the local cache and could not be downloaded "
        f"(offline, or no such model).\n"
        f"  searched: {caches['HF_HOME']} (Hugging Face cache, under HF_HOME) and {caches['TORCH_HOME']} "
        f"(torch.hub cache, under TORCH_HOME)\n"
        f"  fixes: 1. run once with network access (the weights are cached, later runs work offline);\n"
        f"         2. point HF_HOME / TORCH_HOME at a cache that holds them (e.g. copied from another machine);\n"
        f"         3. pass a local copy: {local_hint}.\n"
        f"  cause: {type(cause).__name__}: {first_line}")
