"""Click parameter types shared by the commands, and options generated from a config
dataclass (:func:`config_options`), so that its defaults and checks are the only ones."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import click

__all__ = ["FRACTION", "NON_NEGATIVE", "POSITIVE", "FiniteFloat", "build_config",
           "config_options", "field_help"]


class FiniteFloat(click.FloatRange):
    """A ``FloatRange`` that also refuses ``nan`` and ``inf`` (they pass range checks)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0)
FRACTION = FiniteFloat(min=0, max=1, max_open=True)


# --- options generated from a config dataclass ---------------------------------------------

def field_help(cls: type) -> dict[str, str]:
    """Each field's text in the ``Attributes:`` (or ``Args:``) section of ``cls``'s docstring;
    an entry may describe several fields (``rtol, atol: solver tolerances``)."""
    helps: dict[str, str] = {}
    names: list[str] = []
    inside, indent = False, None
    for line in inspect.getdoc(cls).splitlines() if cls.__doc__ else ():
        stripped = line.strip()
        if stripped in ("Attributes:", "Args:"):
            inside, indent = True, None
            continue
        if not inside:
            continue
        if not stripped:
            names = []
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            inside = False  # the next section
            continue
        indent = depth if indent is None else indent
        head, sep, text = stripped.partition(": ")
        if depth == indent and sep:
            names = [n.strip() for n in head.split(",")]
            for name in names:
                helps[name] = text.strip().replace("``", "")
        else:  # a continuation line
            for name in names:
                helps[name] += " " + stripped.replace("``", "")
    return helps


def _option_type(hint: Any) -> tuple[Any, bool]:
    """The click type of a field's annotation, and whether it is a comma-separated list."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and len(args) == 1:
        return _option_type(args[0])
    if typing.get_origin(hint) is tuple:
        return args[0], True
    return hint, False


def _comma_list(kind: type):
    def convert(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        items = [v.strip() for v in str(value).split(",")]
        if any(not v for v in items):
            raise click.BadParameter(f"{value!r} must be a comma-separated list without "
                                     "empty entries", ctx=ctx, param=param)
        try:
            return tuple(kind(v) for v in items)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a list of {kind.__name__}",
                                     ctx=ctx, param=param) from None

    return convert


def config_options(cls: type, *, skip: tuple[str, ...] = (), types_: dict[str, Any] | None = None
                   ) -> Callable[[Callable], Callable]:
    """A decorator adding one ``--field-name`` option per field of the dataclass ``cls``: its
    default is the field's, its help the docstring's; tuples are comma-separated lists and
    booleans ``--name/--no-name`` flags. Values are checked by ``cls`` itself (build it with
    :func:`build_config`), so the dataclass is the one source of defaults and checks.

    ``skip`` leaves fields out; ``types_`` gives a click type for a field (a range, a
    choice) where the annotation's is too loose for the command line."""
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)

    def decorate(command: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip or not f.init:
                continue
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory())  # type: ignore[misc]
            kind, is_list = _option_type(hints[f.name])
            flag = "--" + f.name.replace("_", "-")
            text = helps.get(f.name, "")
            if kind is bool:
                option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=default,
                                      show_default=True, help=text)
            elif is_list:
                option = click.option(flag, f.name, default=",".join(map(str, default)),
                                      callback=_comma_list(kind), show_default=True,
                                      metavar="A,B,...",
                                      help=text + " (comma-separated)")
            else:
                option = click.option(flag, f.name, type=(types_ or {}).get(f.name, kind),
                                      default=default, show_default=True, help=text)
            command = option(command)
        return command

    return decorate


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` for the fields of ``cls`` among ``values``; a ValueError of its
    checks becomes a usage error (exit code 2) naming the option of the field its message
    starts with (every check of :mod:`cnflow.validation` starts with the field's name)."""
    fields = [f.name for f in dataclasses.fields(cls)]
    try:
        return cls(**{k: v for k, v in values.items() if k in fields})
    except ValueError as error:
        message = str(error)
        named = [name for name in fields if re.match(rf"{re.escape(name)}\b", message)]
        if not named:
            raise click.UsageError(message) from None
        flag = "--" + max(named, key=len).replace("_", "-")
        raise click.BadParameter(message, param_hint=[flag]) from None
