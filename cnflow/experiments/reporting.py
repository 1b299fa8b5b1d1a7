"""What the experiments' reports share: the command line that reproduces a run, built from
its config dataclass, and the one ``mean ± spread`` formatter of their tables.

The command is the inverse of :func:`cnflow.cli.options.config_options`: every field of the
config becomes the ``--field-name value`` that option parses back into it, so a report's
"regenerate" line and the command's options cannot drift apart.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Settings:
    ...     widths: tuple[int, ...] = (2, 8)
    ...     lr: float = 0.003
    ...     sweep: bool = True
    >>> command_line(("cnflow", "demo"), Settings(), out="my results", overwrite=True)
    "cnflow demo --widths 2,8 --lr 0.003 --sweep --out 'my results' --overwrite"
    >>> plus_minus(1.23456, 0.0123), plus_minus(1.5, float("nan"), digits=2)
    ('1.235 ± 0.012', '1.50')
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Sequence
from typing import Any

__all__ = ["command_line", "plus_minus"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _config_arguments(config: Any) -> list[str]:
    """One option per field of the dataclass ``config``, spelt as ``config_options`` parses
    it: tuples comma-joined, booleans as ``--name`` / ``--no-name``, None left out (it is the
    default of every optional field here, and the command line has no spelling for it)."""
    arguments: list[str] = []
    for field in dataclasses.fields(config):
        if not field.init:
            continue
        value = getattr(config, field.name)
        if value is None:
            continue
        if isinstance(value, bool):
            arguments.append(_flag(field.name if value else "no_" + field.name))
        elif isinstance(value, (tuple, list)):
            arguments += [_flag(field.name), ",".join(map(str, value))]
        else:
            # str() of a float is its shortest exact repr: the command reproduces the value.
            arguments += [_flag(field.name), str(value)]
    return arguments


def command_line(command: Sequence[str], config: Any | None, **options: Any) -> str:
    """The shell command ``command`` with every setting of ``config`` (a dataclass whose
    fields are the command's options; None for a command without one) and then ``options``:
    a value ``True`` is a plain flag
    (``overwrite=True`` gives ``--overwrite``), ``False`` or None leaves the option out, and
    anything else is ``--name value``."""
    arguments = [*command, *(_config_arguments(config) if config is not None else ())]
    for name, value in options.items():
        if value is True:
            arguments.append(_flag(name))
        elif value is not None and value is not False:
            arguments += [_flag(name), str(value)]
    return shlex.join(arguments)


def plus_minus(mean: float, spread: float | None, digits: int = 3) -> str:
    """``mean ± spread`` at ``digits`` decimals; the mean alone where the spread is missing
    or not finite (one seed, a diverged fit)."""
    if spread is None or not math.isfinite(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"
