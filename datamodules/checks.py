"""Argument checks shared by every family: a bad value fails at construction, before any data,
env or run folder exists, with one message format naming the config key, the value and what is
allowed: ``model.init_args.gamma = 1.5 is not allowed: a number in [0.0, 1.0]``.

``prefix`` is how a user's config names the argument (``model.init_args.`` for modules,
``data.init_args.`` for datamodules); it lives in the lowest package so every layer can use it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

MODEL = "model.init_args."
DATA = "data.init_args."


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def check_value(name: str, value: Any, ok: bool, allowed: str, prefix: str = MODEL) -> None:
    """Raise ``ValueError`` naming the config key, the value and what is allowed."""
    if not ok:
        raise ValueError(f"{prefix}{name} = {value!r} is not allowed: {allowed}")


def check_int(name: str, value: Any, minimum: int = 1, optional: bool = False, none_means: str = "",
              prefix: str = MODEL) -> None:
    ok = (optional and value is None) or (_is_int(value) and value >= minimum)
    check_value(name, value, ok, f"an integer >= {minimum}" + (f", or null ({none_means})" if optional else ""),
                prefix)


def check_real(name: str, value: Any, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False, optional: bool = False, none_means: str = "", prefix: str = MODEL) -> None:
    ok = _is_real(value) and (low is None or (value > low if low_open else value >= low)) \
        and (high is None or (value < high if high_open else value <= high))
    ok = ok or (optional and value is None)
    if low is not None and high is not None:
        allowed = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"a finite number {'>' if low_open else '>='} {low}"
    else:
        allowed = "a finite number"
    check_value(name, value, ok, allowed + (f", or null ({none_means})" if optional else ""), prefix)


def check_choice(name: str, value: Any, choices: Iterable[Any], prefix: str = MODEL) -> None:
    choices = list(choices)
    check_value(name, value, value in choices, "one of " + ", ".join(map(repr, choices)), prefix)
