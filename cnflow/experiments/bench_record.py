"""What a benchmark report records about its own making: the command line that regenerates it,
and ``config.json`` with every setting of its config dataclass.

A report ``results/NAME.md`` keeps the record in its folder, ``results/NAME/config.json``
(the folder of a report's other files, as for the other reports in ``results/``). The JSON
holds the dataclass's fields and nothing else, so ``Config(**json.load(...))`` rebuilds the
settings.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Settings:
    ...     repeats: int = 5
    ...     sizes: tuple[int, ...] = (10, 100)
    ...     quick: bool = False
    >>> command_line("cnflow benchmark solver", Settings(sizes=(1, 2), quick=True),
    ...              out="results/solver.md")
    'cnflow benchmark solver --sizes 1,2 --quick --out results/solver.md'
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

from cnflow.runs import write_json

__all__ = ["command_line", "record_folder", "record_link", "write_record"]


def command_line(command: str, config: Any, **paths: Any) -> str:
    """``command`` with the options that rebuild ``config`` through
    :func:`cnflow.cli.options.config_options`, then ``--name value`` for each of ``paths``
    (what is not a setting, such as the report's path); quoted for a POSIX shell.

    Only fields that differ from their defaults are written, so the line stays as short as
    the user's; ``config.json`` records every field. Tuples are comma-separated and
    booleans ``--name`` or ``--no-name``, as :func:`~cnflow.cli.options.config_options`
    reads them; floats are written as ``repr`` writes them, which reads back exactly.
    """
    args = shlex.split(command)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory())  # type: ignore[misc]
        if not field.init or value == default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, str(value)]
    for name, value in paths.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return shlex.join(args)


def record_folder(report: str | Path) -> Path:
    """The folder of a report's other files: ``results/NAME`` for ``results/NAME.md``."""
    return Path(report).with_suffix("")


def record_link(report: str | Path) -> str:
    """The link from ``report`` to its ``config.json``: ``NAME/config.json``."""
    return f"{record_folder(report).name}/config.json"


def write_record(config: Any, report: str | Path) -> Path:
    """Write every field of the dataclass ``config`` to ``config.json`` in the folder of
    ``report`` (:func:`record_folder`), atomically; return the file's path."""
    path = record_folder(report) / "config.json"
    write_json(dataclasses.asdict(config), path)
    return path
