"""Argument checks for the agents: a bad value fails at construction, before any env or run
folder exists, with the config key, the value and the allowed range in the message."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

KEY = "model.init_args."  # how a user's config names an agent argument


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def check_value(name: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ``ValueError`` naming the config key, the value and the allowed range."""
    if not ok:
        raise ValueError(f"{KEY}{name} = {value!r} is not allowed: {allowed}")


def check_int(name: str, value: Any, minimum: int = 1, optional: bool = False, none_means: str = "") -> None:
    ok = (optional and value is None) or (_is_int(value) and value >= minimum)
    check_value(name, value, ok, f"an integer >= {minimum}" + (f", or null ({none_means})" if optional else ""))


def check_real(name: str, value: Any, low: float | None = None, high: float | None = None, low_open: bool = False,
               optional: bool = False, none_means: str = "") -> None:
    ok = _is_real(value) and (low is None or (value > low if low_open else value >= low)) \
        and (high is None or value <= high)
    ok = ok or (optional and value is None)
    if low is not None and high is not None:
        allowed = f"a number in [{low}, {high}]"
    elif low is not None:
        allowed = f"a finite number {'>' if low_open else '>='} {low}"
    else:
        allowed = "a finite number"
    check_value(name, value, ok, allowed + (f", or null ({none_means})" if optional else ""))
