"""What the experiments' reports share: the command line that reproduces a run, built from
its config dataclass; the record of its settings (``config.json`` in the report's folder);
and the one ``mean ± spread`` formatter of their tables.

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
    >>> command_line(("cnflow", "demo"), Settings(lr=0.01), changed_only=True, n=[1, 2])
    'cnflow demo --lr 0.01 --n 1 --n 2'
    >>> plus_minus(1.23456, 0.0123), plus_minus(1.5, float("nan"), digits=2)
    ('1.235 ± 0.012', '1.50')
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnflow.runs import write_json

__all__ = ["command_line", "plus_minus", "record_folder", "record_link", "report_beside",
           "write_record"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _config_arguments(config: Any, changed_only: bool, skip: Sequence[str]) -> list[str]:
    """One option per field of the dataclass ``config``, spelt as ``config_options`` parses
    it: tuples comma-joined, booleans as ``--name`` / ``--no-name``, None left out (it is the
    default of every optional field here, and the command line has no spelling for it)."""
    arguments: list[str] = []
    for field in dataclasses.fields(config):
        if not field.init or field.name in skip:
            continue
        value = getattr(config, field.name)
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory())  # type: ignore[misc]
        if value is None or (changed_only and value == default):
            continue
        if isinstance(value, bool):
            arguments.append(_flag(field.name if value else "no_" + field.name))
        elif isinstance(value, (tuple, list)):
            arguments += [_flag(field.name), ",".join(map(str, value))]
        else:
            # str() of a float is its shortest exact repr: the command reproduces the value.
            arguments += [_flag(field.name), str(value)]
    return arguments


def command_line(command: Sequence[str], config: Any | None, *, changed_only: bool = False,
                 skip: Sequence[str] = (), **options: Any) -> str:
    """The shell command ``command`` with the settings of ``config`` (a dataclass whose
    fields are the command's options; None for a command without one) and then ``options``.

    Every field is written (the line keeps its meaning when a default changes), or with
    ``changed_only`` those that differ from their defaults (the line stays as short as a
    user's); ``skip`` leaves fields out that the command spells another way. Of
    ``options``, ``True`` is a plain flag (``overwrite=True`` gives ``--overwrite``),
    ``False`` or None leaves the option out, a list repeats the option once per item, and
    anything else is ``--name value``."""
    arguments = [*command]
    if config is not None:
        arguments += _config_arguments(config, changed_only, skip)
    for name, value in options.items():
        if value is True:
            arguments.append(_flag(name))
        elif isinstance(value, list):
            for item in value:
                arguments += [_flag(name), str(item)]
        elif value is not None and value is not False:
            arguments += [_flag(name), str(value)]
    return shlex.join(arguments)


def plus_minus(mean: float, spread: float | None, digits: int = 3) -> str:
    """``mean ± spread`` at ``digits`` decimals; the mean alone where the spread is missing
    or not finite (one seed, a diverged fit)."""
    if spread is None or not math.isfinite(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def record_folder(report: str | Path) -> Path:
    """The folder of a report's other files: ``results/NAME`` for ``results/NAME.md``."""
    return Path(report).with_suffix("")


def report_beside(folder: str | Path) -> Path:
    """The report of a folder of results: ``results/NAME.md`` for ``results/NAME``."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.md"


def record_link(report: str | Path) -> str:
    """The link from ``report`` to its ``config.json``: ``NAME/config.json``."""
    return f"{record_folder(report).name}/config.json"


def write_record(config: Any, report: str | Path) -> Path:
    """Write every field of the dataclass ``config`` to ``config.json`` in the folder of
    ``report`` (:func:`record_folder`), atomically; return the file's path."""
    path = record_folder(report) / "config.json"
    write_json(dataclasses.asdict(config), path)
    return path
