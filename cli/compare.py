"""`cnflow compare`: CNF versus planar normalizing flows (paper Figures 4 and 5).

* ``cnflow compare density-matching``: reverse-KL fits to the energies U1–U4;
* ``cnflow compare mle``: maximum likelihood on two_circles / two_moons;
* ``cnflow compare report``: both results merged into one markdown document.

``--quick`` shrinks every setting not given explicitly, so a run takes seconds (tests).
Every setting is checked before anything is written; each comparison locks its output
folder while it runs and refuses to replace its own earlier results there without
``--overwrite`` (the other comparison's results in the folder are kept).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from cnflow.cli.options import NON_NEGATIVE, POSITIVE

from cnflow.experiments.compare import (
    DENSITY_MAX_SEED,
    MLE_MAX_SEED,
    DensityMatchingConfig,
    MLEConfig,
)
from cnflow.runs import failure_message
from cnflow.solvers import ODESolverError

DEFAULT_OUT = "results/runs/comparisons"
def _join(values) -> str:
    return ",".join(str(v) for v in values)


# One source of defaults: the config dataclasses.
_DENSITY, _MLE = DensityMatchingConfig(), MLEConfig()

# Settings that --quick replaces unless they are given on the command line.
_QUICK_DENSITY = {"nf_layers": (2,), "cnf_widths": (2,), "seeds": (0,), "nf_iterations": 3,
                  "cnf_iterations": 2, "batch_size": 32, "eval_samples": 200, "grid": 12}
_QUICK_MLE = {"nf_layers": 2, "cnf_width": 4, "nf_iterations": 3, "cnf_iterations": 2,
              "batch_size": 32, "test_size": 200, "grid": 12, "figure_samples": 200}


def _split(value: str, param: click.Parameter) -> list[str]:
    items = [v.strip() for v in str(value).split(",")]
    if not value or not str(value).strip() or any(not v for v in items):
        raise click.BadParameter(f"{value!r} must be a comma-separated, non-empty list "
                                 "without empty entries", param=param)
    if len(set(items)) != len(items):
        raise click.BadParameter(f"{value!r} has repeated entries", param=param)
    return items


def _names(known_fn):
    def callback(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
        known = known_fn()
        items = _split(value, param)
        unknown = [v for v in items if v not in known]
        if unknown:
            raise click.BadParameter(f"unknown {', '.join(map(repr, unknown))}; choose from "
                                     f"{', '.join(known)}", ctx=ctx, param=param)
        return tuple(items)

    return callback


def _ints(minimum: int, maximum: int | None = None):
    def callback(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
        out = []
        for item in _split(value, param):
            try:
                number = int(item)
            except ValueError:
                raise click.BadParameter(f"{item!r} is not an integer", ctx=ctx,
                                         param=param) from None
            if number < minimum:
                raise click.BadParameter(f"{number} is not allowed: every entry must be "
                                         f">= {minimum}", ctx=ctx, param=param)
            if maximum is not None and number > maximum:
                raise click.BadParameter(f"{number} is not allowed: every entry must be "
                                         f"<= {maximum}", ctx=ctx, param=param)
            out.append(number)
        return tuple(out)

    return callback


def _energy_names() -> list[str]:
    import toydata

    return toydata.energy.names()


def _dataset_names() -> list[str]:
    import toydata

    return toydata.names(dim=2)


def _apply_quick(ctx: click.Context, params: dict, quick_values: dict) -> dict:
    """Replace the settings still at their defaults by the quick ones."""
    settings = dict(params)
    for name, value in quick_values.items():
        if ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT:
            settings[name] = value
    return settings


def _common(func):
    func = click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                        help="torch CPU threads.")(func)
    func = click.option("--out", type=click.Path(file_okay=False), default=DEFAULT_OUT,
                        show_default=True, help="Output folder (created).")(func)
    func = click.option("--progress/--no-progress", default=None,
                        help="Progress bar (default: only on a terminal).")(func)
    func = click.option("--overwrite", is_flag=True,
                        help="Replace this comparison's earlier results in --out (refused "
                             "without this).")(func)
    func = click.option("--quick", is_flag=True,
                        help="Tiny settings (seconds), for tests; explicit options win.")(func)
    return func


def _fail(error: Exception) -> click.ClickException:
    return click.ClickException(failure_message(error))


# What a comparison raises for bad settings, a held --out, a failed solve or an unwritable --out.
_FAILURES = (ValueError, ODESolverError, OSError)


def _command_line(subcommand: str, settings: dict, names: tuple[str, ...]) -> list[str]:
    """The full command that reproduces a run, written into its report."""
    command = ["cnflow", "compare", subcommand]
    for name in names:
        value = settings[name]
        command += [f"--{name.replace('_', '-')}",
                    _join(value) if isinstance(value, tuple) else str(value)]
    # Rerunning it replaces these very results, which a run folder refuses without this.
    return [*command, "--overwrite"]


@click.group("compare")
def compare() -> None:
    """CNF vs planar normalizing flows: density matching and maximum likelihood."""


@compare.command("density-matching")
@click.option("--targets", default=_join(_DENSITY.targets), show_default=True,
              callback=_names(_energy_names), help="Comma-separated energy targets.")
@click.option("--nf-layers", default=_join(_DENSITY.nf_layers), show_default=True,
              callback=_ints(1),
              help="Comma-separated planar-flow depths K.")
@click.option("--cnf-widths", default=_join(_DENSITY.cnf_widths), show_default=True,
              callback=_ints(1),
              help="Comma-separated CNF widths M.")
@click.option("--seeds", default=_join(_DENSITY.seeds), show_default=True,
              callback=_ints(0, DENSITY_MAX_SEED),
              help="Comma-separated seeds; one fit per seed and model.")
@click.option("--nf-iterations", type=click.IntRange(min=1), default=_DENSITY.nf_iterations,
              show_default=True)
@click.option("--cnf-iterations", type=click.IntRange(min=1), default=_DENSITY.cnf_iterations,
              show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=_DENSITY.batch_size,
              show_default=True)
@click.option("--nf-lr", type=POSITIVE, default=_DENSITY.nf_lr,
              show_default=True)
@click.option("--cnf-lr", type=POSITIVE, default=_DENSITY.cnf_lr,
              show_default=True)
@click.option("--eval-samples", type=click.IntRange(min=2), default=_DENSITY.eval_samples,
              show_default=True,
              help="Samples of q per KL estimate.")
@click.option("--grid", type=click.IntRange(min=2), default=_DENSITY.grid, show_default=True,
              help="Grid points per axis of the density figure.")
@click.option("--box-wall", type=NON_NEGATIVE, default=_DENSITY.box_wall, show_default=True,
              help="Strength of the soft wall at the box [-4, 4]² added to U while "
                   "training (0: none).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (each with --threads threads); results do not "
                   "depend on it.")
@_common
@click.pass_context
def density_matching(ctx: click.Context, **params) -> None:
    """Fit planar NFs (K layers) and CNFs (M units) to U1–U4 by reverse KL (Figure 4)."""
    import torch

    from cnflow.experiments.compare import DensityMatchingConfig
    from cnflow.experiments.compare import density_matching as run

    settings = _apply_quick(ctx, params, _QUICK_DENSITY) if params["quick"] else params
    names = ("targets", "nf_layers", "cnf_widths", "seeds", "nf_iterations", "cnf_iterations",
             "batch_size", "nf_lr", "cnf_lr", "eval_samples", "grid", "box_wall")
    command = _command_line("density-matching", settings, (*names, "jobs", "threads", "out"))
    torch.set_num_threads(settings["threads"])
    try:
        config = DensityMatchingConfig(**{n: settings[n] for n in names})
        result = run(config, settings["out"], shlex.join(command), settings["progress"],
                     jobs=settings["jobs"], overwrite=settings["overwrite"])
    except _FAILURES as error:
        raise _fail(error) from None
    click.echo(f"wrote {Path(settings['out']) / 'density_matching.md'} "
               f"({result['cpu_seconds'] / 60:.1f} CPU-min)")


@compare.command("mle")
@click.option("--datasets", default=_join(_MLE.datasets), show_default=True,
              callback=_names(_dataset_names), help="Comma-separated toy data sets.")
@click.option("--nf-layers", type=click.IntRange(min=1), default=_MLE.nf_layers,
              show_default=True,
              help="Planar layers of the NF.")
@click.option("--cnf-width", type=click.IntRange(min=1), default=_MLE.cnf_width,
              show_default=True,
              help="Hidden units M of the CNF.")
@click.option("--seed", type=click.IntRange(0, MLE_MAX_SEED), default=_MLE.seed,
              show_default=True)
@click.option("--nf-iterations", type=click.IntRange(min=1), default=_MLE.nf_iterations,
              show_default=True)
@click.option("--cnf-iterations", type=click.IntRange(min=1), default=_MLE.cnf_iterations,
              show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=_MLE.batch_size,
              show_default=True)
@click.option("--nf-lr", type=POSITIVE, default=_MLE.nf_lr,
              show_default=True)
@click.option("--cnf-lr", type=POSITIVE, default=_MLE.cnf_lr,
              show_default=True)
@click.option("--test-size", type=click.IntRange(min=2), default=_MLE.test_size,
              show_default=True)
@click.option("--grid", type=click.IntRange(min=2), default=_MLE.grid, show_default=True)
@click.option("--figure-samples", type=click.IntRange(min=2), default=_MLE.figure_samples,
              show_default=True)
@_common
@click.pass_context
def mle(ctx: click.Context, **params) -> None:
    """CNF (M = 64) vs planar NF (64 layers) by maximum likelihood (Figure 5)."""
    import torch

    from cnflow.experiments.compare import MLEConfig, maximum_likelihood

    settings = _apply_quick(ctx, params, _QUICK_MLE) if params["quick"] else params
    names = ("datasets", "nf_layers", "cnf_width", "seed", "nf_iterations", "cnf_iterations",
             "batch_size", "nf_lr", "cnf_lr", "test_size", "grid", "figure_samples")
    command = _command_line("mle", settings, (*names, "threads", "out"))
    torch.set_num_threads(settings["threads"])
    try:
        config = MLEConfig(**{n: settings[n] for n in names})
        result = maximum_likelihood(config, settings["out"], shlex.join(command),
                                    settings["progress"], overwrite=settings["overwrite"])
    except _FAILURES as error:
        raise _fail(error) from None
    click.echo(f"wrote {Path(settings['out']) / 'mle.md'} "
               f"({result['cpu_seconds'] / 60:.1f} CPU-min)")


@compare.command("report")
@click.option("--out", type=click.Path(file_okay=False), default=DEFAULT_OUT,
              show_default=True, help="Folder holding density_matching.json / mle.json.")
@click.option("--md", type=click.Path(dir_okay=False), default="results/comparisons.md",
              show_default=True, help="Markdown file to write.")
def report(out: str, md: str) -> None:
    """Merge the results of both comparisons into one markdown file."""
    from cnflow.experiments.compare import write_report

    try:
        write_report(out, md)
    except (OSError, ValueError) as error:
        raise _fail(error) from None
    click.echo(f"wrote {md}")
