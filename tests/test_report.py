"""The report layer (cnflow.report): Markdown tables, the atomic figure saver, the
saved-tensor meter, the reproduction command of a run and the ± formatter the
experiments' tables share, and a report's record: the command line it prints rebuilds
its settings through the options generated from the config (for every benchmark's
config), and config.json rebuilds them too."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field

import click
import pytest
import torch
from click.testing import CliRunner
from cnflow.cli.options import build_config, config_options

from cnflow.experiments.cnf_bench import CNFBenchConfig
from cnflow.experiments.ddp_bench import DDPBenchConfig
from cnflow.experiments.gpu_bench import GPUBenchConfig
from cnflow.experiments.solver_bench import SolverBenchConfig
from cnflow.models.odenet import ODENet
from cnflow.report import (
    SavedTensorMemory,
    command_line,
    markdown_table,
    plus_minus,
    pyplot,
    record_link,
    save_figure,
    state_bytes,
    write_record,
)


def test_markdown_table_rows_and_refusal():
    text = markdown_table(["a", "b"], [[1, 2.5], ["x", None]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2.5 |", "| x | None |"]
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [[1, 2], [3]])


def test_save_figure_is_atomic_and_closes(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "sub" / "line.png")
    assert (tmp_path / "sub" / "line.png").read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)

    broken, _ = plt.subplots()

    def refuse(*args, **kwargs):
        raise RuntimeError("disk on fire")

    broken.savefig = refuse
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_figure(broken, tmp_path / "broken.png")
    assert sorted(os.listdir(tmp_path)) == ["sub"]  # nothing half-written
    assert not plt.fignum_exists(broken.number)


def test_saved_tensor_memory_counts_and_releases():
    w = torch.randn(100, 100, requires_grad=True)
    x = torch.randn(50, 100)
    with SavedTensorMemory(exclude=[w]) as meter:
        out = torch.tanh(x @ w)  # saves x (w excluded) and tanh's output
        assert meter.current_bytes == 2 * 50 * 100 * 4
        out.sum().backward()
        del out
    assert meter.current_bytes == 0
    assert meter.peak_bytes == 2 * 50 * 100 * 4


def test_saved_tensor_memory_does_not_leak_unvisited_branches():
    # dopri5's last stage is evaluated with a graph but is not part of the output, so
    # backward never visits it; the meter must not keep that branch alive.
    model = ODENet(channels=8, gradient="direct")
    meter = SavedTensorMemory(exclude=list(model.parameters()))
    for _ in range(2):
        with meter:
            model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert meter.current_bytes == 0


def test_state_bytes_counts_parameters_gradients_and_adam_moments():
    model = torch.nn.Linear(10, 5)  # 55 float32 parameters
    optimizer = torch.optim.Adam(model.parameters())
    assert state_bytes(model, optimizer) == 2 * 55 * 4
    model(torch.randn(3, 10)).sum().backward()
    optimizer.step()  # Adam now holds two moments per parameter (and a step count each)
    steps = sum(s["step"].numel() * s["step"].element_size() for s in optimizer.state.values())
    assert state_bytes(model, optimizer) == 4 * 55 * 4 + steps


# --- the reproduction command of a run, and the ± formatter ----------------------

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


# --- a report's record, for every benchmark's config ------------------------------

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
