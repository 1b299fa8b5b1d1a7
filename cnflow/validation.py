"""Checks of settings, in one place: integers, finite numbers and names from a list.

Every check raises ``ValueError`` with a message that names the setting, says what it must
be and shows the value it got, and returns the value so a caller can check and assign in
one line. ``bool`` is refused where a number is asked for (``True`` is an ``int`` to
Python, never a sensible count or rate).

Example:
    >>> check_int("epochs", 3)
    3
    >>> check_float("lr", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number > 0, got nan
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["check_choice", "check_choices", "check_float", "check_int", "check_ints"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None,
              optional: bool = False) -> int | None:
    """``value`` if it is an integer in ``[minimum, maximum]`` (or None with ``optional``)."""
    if value is None and optional:
        return None
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        none = " or None" if optional else ""
        raise ValueError(f"{name} must be an integer {bound}{none}, got {value!r}")
    return value


def check_float(name: str, value: Any, *, minimum: float = 0.0, allow_minimum: bool = False,
                maximum: float | None = None, allow_maximum: bool = True,
                optional: bool = False) -> float | None:
    """``value`` if it is a finite number above ``minimum`` (or equal, with
    ``allow_minimum``) and below ``maximum`` (or equal, with ``allow_maximum``)."""
    if value is None and optional:
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value)
          and (value >= minimum if allow_minimum else value > minimum)
          and (maximum is None or (value <= maximum if allow_maximum else value < maximum)))
    if not ok:
        bound = f"{'>=' if allow_minimum else '>'} {minimum:g}"
        if maximum is not None:
            bound += f" and {'<=' if allow_maximum else '<'} {maximum:g}"
        none = " or None" if optional else ""
        raise ValueError(f"{name} must be a finite number {bound}{none}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
    return value


def check_choices(name: str, values: Sequence[str], choices: Sequence[str]
                  ) -> tuple[str, ...]:
    """``values`` as a tuple if it is a non-empty list of distinct names from ``choices``."""
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values:
        raise ValueError(f"{name} must not be empty; choose from {list(choices)}")
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise ValueError(f"{name} has unknown entries {unknown}; choose from {list(choices)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has repeated entries: {list(values)}")
    return values


def check_ints(name: str, values: Sequence[int], *, minimum: int = 1,
               maximum: int | None = None) -> tuple[int, ...]:
    """``values`` as a tuple if it is a non-empty list of distinct integers in range."""
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    for value in values:
        check_int(f"{name} entries", value, minimum=minimum, maximum=maximum)
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has repeated entries: {list(values)}")
    return values
