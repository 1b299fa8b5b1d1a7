"""A report's record: the command line it prints rebuilds its settings through the options
generated from the config (for every benchmark's config), and config.json rebuilds them too."""

from __future__ import annotations

import json
import shlex

import click
import pytest
from click.testing import CliRunner
from cnflow.cli.options import build_config, config_options

from cnflow.experiments.cnf_bench import CNFBenchConfig
from cnflow.experiments.ddp_bench import DDPBenchConfig
from cnflow.experiments.gpu_bench import GPUBenchConfig
from cnflow.experiments.solver_bench import SolverBenchConfig
from cnflow.report import command_line, record_link, write_record

CHANGED = [
    CNFBenchConfig(iterations=3, points=(10, 20)),
    SolverBenchConfig(methods=("dopri5",), tolerances=(1e-3, 2.5e-7), steps=(4,)),
    GPUBenchConfig(batches=(8,), repeats=2),
    DDPBenchConfig(processes=3),
]


@pytest.mark.parametrize("config", CHANGED, ids=lambda c: type(c).__name__)
def test_the_command_line_rebuilds_the_config(config):
    cls = type(config)

    @click.command()
    @click.option("--out")
    @config_options(cls)
    def command(out, **values):
        click.echo(repr(build_config(cls, values)))

    line = command_line(("cnflow", "benchmark", "x"), config, changed_only=True, out="a b.md")
    args = shlex.split(line)
    assert args[:3] == ["cnflow", "benchmark", "x"] and args[-2:] == ["--out", "a b.md"]
    result = CliRunner().invoke(command, args[3:])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(config)


def test_defaults_give_the_bare_command():
    assert command_line(("cnflow", "benchmark", "ddp"), DDPBenchConfig(), changed_only=True, out="results/ddp.md") == \
        "cnflow benchmark ddp --out results/ddp.md"


def test_the_record_sits_in_the_report_folder(tmp_path):
    config = CHANGED[1]
    path = write_record(config, tmp_path / "solver.md")
    assert path == tmp_path / "solver" / "config.json"
    assert record_link(tmp_path / "solver.md") == "solver/config.json"
    assert SolverBenchConfig(**json.loads(path.read_text())) == config
