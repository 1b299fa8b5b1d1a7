"""The reproduction command of a run and the ± formatter the experiments' tables share."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

import click
from cnflow.cli.options import build_config, config_options

from cnflow.report import command_line, plus_minus


@dataclass
class _Settings:
    """Settings.

    Attributes:
        sets: names.
        seeds: seeds.
        budget: seconds.
        steps: steps; None for the default.
        full: a flag.
        label: a name with a space.
    """

    sets: tuple[str, ...] = ("a", "b")
    seeds: tuple[int, ...] = (0,)
    budget: float = 0.1
    steps: int | None = None
    full: bool = True
    label: str = "x"
    derived: int = field(default=0, init=False)


@click.command()
@config_options(_Settings)
@click.option("--out")
@click.option("--fresh", is_flag=True)
def _command(**values):
    click.echo(repr(values))


def test_the_command_parses_back_into_the_same_settings():
    settings = _Settings(sets=("c",), seeds=(3, 1), budget=1e-7, steps=12, full=False,
                         label="two words")
    line = command_line(("cnflow", "x"), settings, out="a/b", fresh=True)
    assert line == ("cnflow x --sets c --seeds 3,1 --budget 1e-07 --steps 12 --no-full "
                    "--label 'two words' --out a/b --fresh")
    ctx = _command.make_context("x", shlex.split(line)[2:])
    assert build_config(_Settings, ctx.params) == settings
    assert ctx.params["out"] == "a/b" and ctx.params["fresh"] is True


def test_none_and_false_options_are_left_out():
    assert command_line(("cnflow", "x"), _Settings(), out=None, fresh=False) == \
        "cnflow x --sets a,b --seeds 0 --budget 0.1 --full --label x"
    assert command_line(("cnflow", "report"), None, md="r.md") == "cnflow report --md r.md"


def test_plus_minus():
    assert plus_minus(-0.5, 0.25) == "-0.500 ± 0.250"
    assert plus_minus(2.0, None, digits=1) == "2.0"
    assert plus_minus(float("nan"), float("nan")) == "nan"
