"""Checks of user-given values, shared by the config, the modules and the baselines.

Each check returns the value (so ``self.n = check_int("n", n)`` reads naturally) or raises an error that
names the field, the value and the rule: ``TypeError`` for a value of the wrong type, ``ValueError`` for a
value of the right type outside the rule. ``bool`` is never accepted where a number is expected.

This module is a leaf: it imports nothing from the package (``sessa.ops`` keeps its own checks).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterable


def check_int(name: str, value: object, minimum: int = 1, *, optional: bool = False) -> int | None:
    """``value`` if it is an int >= ``minimum`` (or None when ``optional``)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool (not 0/1: a config typo should not pass silently)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def check_float(
    name: str, value: object, low: float = -math.inf, high: float = math.inf, *, closed: bool = False
) -> float:
    """``float(value)`` if it is a real number in the open interval (low, high) ([low, high] when
    ``closed``); NaN never passes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    inside = low <= value <= high if closed else low < value < high
    if not inside:
        interval = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return float(value)


def check_positive_float(name: str, value: object) -> float:
    """``float(value)`` if it is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``; the error lists them and suggests the closest."""
    if not isinstance(value, str) or value not in choices:
        hint = did_you_mean(value, choices)
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}{hint}")
    return value


def did_you_mean(value: object, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """'' or "; did you mean 'x'?" for the closest candidate (difflib, similarity >= ``cutoff``; 0 always
    names one), to end an error message."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(candidates), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""
