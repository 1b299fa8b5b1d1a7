"""``cnflow reproduce``: the one record of how each report in results/ is made."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cnflow.cli.main import cli
from cnflow.cli.reproduce import REPRODUCTIONS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_every_report_states_the_commands_that_make_it(name):
    entry = REPRODUCTIONS[name]
    text = (ROOT / entry.report).read_text()
    for command in entry.commands:
        assert command in text, f"{entry.report} does not state `{command}`"


def test_every_report_in_results_has_a_reproduction():
    reports = {p.relative_to(ROOT).as_posix() for p in (ROOT / "results").glob("*.md")}
    assert reports == {entry.report for entry in REPRODUCTIONS.values()}


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_every_command_parses_with_the_current_options(name):
    """Each line names an existing command and every option converts and passes its
    checks (``make_context`` parses without running the command)."""
    for line in REPRODUCTIONS[name].commands:
        command, args = cli, shlex.split(line)[1:]
        while isinstance(command, click.Group):
            command, args = command.commands[args[0]], args[1:]
        command.make_context(command.name, args)


def test_listing_dry_run_and_unknown_names():
    runner = CliRunner()
    listing = runner.invoke(cli, ["reproduce"])
    assert listing.exit_code == 0
    assert all(f"{name}: " in listing.output for name in REPRODUCTIONS)
    dry = runner.invoke(cli, ["reproduce", "solver", "--dry-run"])
    assert dry.exit_code == 0
    assert "$ cnflow benchmark solver --out results/solver.md" in dry.output
    bad = runner.invoke(cli, ["reproduce", "solverr"])
    assert bad.exit_code == 2 and "unknown 'solverr'" in bad.output
