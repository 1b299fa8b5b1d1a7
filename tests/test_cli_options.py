"""Options generated from a config dataclass: defaults, help, lists, flags and checks all
come from the dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import click
from click.testing import CliRunner
from cnflow.cli.options import build_config, config_options, field_help


@dataclass
class _Config:
    """Settings.

    Attributes:
        widths: hidden units, one model
            per entry.
        rtol, atol: solver tolerances.
        name: a ``label``.
        quick: run small.
    """

    widths: tuple[int, ...] = (2, 8)
    rtol: float = 1e-5
    atol: float | None = None
    name: str = "x"
    quick: bool = False

    def __post_init__(self) -> None:
        if self.rtol <= 0:
            raise ValueError(f"rtol must be positive, got {self.rtol}")


@click.command()
@config_options(_Config)
def _command(**values):
    click.echo(repr(build_config(_Config, values)))


def test_help_comes_from_the_docstring():
    assert field_help(_Config) == {"widths": "hidden units, one model per entry.",
                                   "rtol": "solver tolerances.", "atol": "solver tolerances.",
                                   "name": "a label.", "quick": "run small."}
    text = CliRunner().invoke(_command, ["--help"]).output
    assert "--widths A,B,..." in text and "[default: 2,8]" in text
    assert "--quick / --no-quick" in text


def test_defaults_lists_and_flags_build_the_config():
    run = CliRunner().invoke(_command, [])
    assert run.exit_code == 0 and run.output.strip() == repr(_Config())
    run = CliRunner().invoke(_command, ["--widths", "4,16", "--atol", "1e-3", "--quick"])
    assert run.output.strip() == repr(_Config(widths=(4, 16), atol=1e-3, quick=True))


def test_bad_values_are_usage_errors_naming_the_setting():
    run = CliRunner().invoke(_command, ["--widths", "4,,5"])
    assert run.exit_code == 2 and "comma-separated list without empty entries" in run.output
    run = CliRunner().invoke(_command, ["--widths", "4,x"])
    assert run.exit_code == 2 and "not a list of int" in run.output
    run = CliRunner().invoke(_command, ["--rtol", "-1"])
    assert run.exit_code == 2 and "rtol must be positive, got -1.0" in run.output
