"""Options generated from a config dataclass: defaults, help, lists, flags and checks all
come from the dataclass; every command refuses a non-finite number or a seed out of
range while parsing, naming the option, with nothing written."""

from __future__ import annotations

from dataclasses import dataclass

import click
import pytest
from cli_checks import COMMANDS, assert_refused
from click.testing import CliRunner
from cnflow.cli.options import build_config, config_options, field_help

from cnflow.experiments.latent_ode import MAX_SEED as LATENT_MAX_SEED


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


# --- every command: non-finite numbers and seeds out of range ------------------------

FLOAT_OPTIONS = {
    "classify": ["--lr", "--rtol", "--atol", "--step-size"],
    "latent": ["--lr", "--final-lr-factor", "--rtol", "--atol"],
    "density-matching": ["--nf-lr", "--cnf-lr", "--box-wall"],
    "mle": ["--nf-lr", "--cnf-lr"],
}
SEEDS = {
    "classify": ("--seed", str(2**64)),
    "latent": ("--seeds", f"0,{LATENT_MAX_SEED + 1}"),
    "density-matching": ("--seeds", f"0,{2**64}"),
    "mle": ("--seed", "429"),  # its batch seeds seed * 10**7 + step must stay below 2**32
}


@pytest.mark.parametrize("command", COMMANDS)
def test_non_finite_numbers_are_refused_while_parsing(tmp_path, command):
    for option in FLOAT_OPTIONS[command]:
        for value in ("nan", "inf", "-inf"):
            assert_refused(tmp_path, [*COMMANDS[command], str(tmp_path / "run"), option, value],
                     f"'{option}'", code=2)


@pytest.mark.parametrize("command", COMMANDS)
def test_seeds_out_of_range_name_the_seed_option(tmp_path, command):
    option, value = SEEDS[command]
    assert_refused(tmp_path, [*COMMANDS[command], str(tmp_path / "run"), option, value],
             f"'{option}'", code=2)
