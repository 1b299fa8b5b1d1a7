"""`cnflow compare`: CNF versus planar normalizing flows (paper Figures 4 and 5).

* ``cnflow compare density-matching``: reverse-KL fits to the energies U1–U4;
* ``cnflow compare mle``: maximum likelihood on two_circles / two_moons;
* ``cnflow compare report``: both results merged into one markdown document.

The options of the two comparisons are generated from their config dataclasses, which hold
every default and every check. ``--quick`` shrinks every setting not given explicitly, so a
run takes seconds (tests). Every setting is checked before anything is written; each
comparison locks its output folder while it runs and refuses to replace a run there
without ``--overwrite``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from cnflow.cli.options import build_config, config_options

from cnflow.experiments.compare import density_matching as density_experiment
from cnflow.experiments.compare import mle as mle_experiment
from cnflow.runs import failure_message
from cnflow.solvers import ODESolverError

#: The folder ``cnflow compare report`` reads; each comparison's run folder sits in it.
DEFAULT_OUT = "results/runs/comparisons"
# What a comparison raises for bad settings, a held --out, a failed solve or an unwritable --out.
FAILURES = (ValueError, ODESolverError, OSError)


def with_quick(ctx: click.Context, values: dict[str, Any], quick: dict[str, Any]
               ) -> dict[str, Any]:
    """``values`` with the settings still at their defaults replaced by the ``quick`` ones:
    options given on the command line win."""
    return {**values, **{name: value for name, value in quick.items()
                         if ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT}}


def run_options(name: str) -> Callable[[Callable], Callable]:
    """The options every comparison has beside its settings: its run folder (by default
    ``DEFAULT_OUT/name``), the bar, ``--overwrite`` and ``--quick``."""
    def decorate(func: Callable) -> Callable:
        for option in reversed([
            click.option("--out", type=click.Path(file_okay=False),
                         default=f"{DEFAULT_OUT}/{name}", show_default=True,
                         help="Run folder (created)."),
            click.option("--progress/--no-progress", default=None,
                         help="Progress bar (default: only on a terminal)."),
            click.option("--overwrite", is_flag=True,
                         help="Replace the run already in --out (refused without this)."),
            click.option("--quick", is_flag=True,
                         help="Tiny settings (seconds), for tests; explicit options win."),
        ]):
            func = option(func)
        return func

    return decorate


def start(ctx: click.Context, experiment: Any, config_class: type, values: dict[str, Any]
          ) -> None:
    """Build ``experiment``'s config from the options (``--quick`` applied; a bad setting
    is a usage error), run it into ``--out`` and say what it wrote."""
    settings = with_quick(ctx, values, experiment.QUICK) if values["quick"] else values
    config = build_config(config_class, settings)
    try:
        result = experiment.run(config, values["out"], progress=values["progress"],
                                overwrite=values["overwrite"])
    except FAILURES as error:
        raise click.ClickException(failure_message(error)) from None
    click.echo(f"wrote {values['out']}/{experiment.NAME}.md "
               f"({result['cpu_seconds'] / 60:.1f} CPU-min)")


@click.group("compare")
def compare() -> None:
    """CNF vs planar normalizing flows: density matching and maximum likelihood."""


@compare.command("density-matching")
@config_options(density_experiment.DensityMatchingConfig)
@run_options(density_experiment.NAME)
@click.pass_context
def density_matching(ctx: click.Context, **values: Any) -> None:
    """Fit planar NFs (K layers) and CNFs (M units) to U1–U4 by reverse KL (Figure 4)."""
    start(ctx, density_experiment, density_experiment.DensityMatchingConfig, values)


@compare.command("mle")
@config_options(mle_experiment.MLEConfig)
@run_options(mle_experiment.NAME)
@click.pass_context
def mle(ctx: click.Context, **values: Any) -> None:
    """CNF (M = 64) vs planar NF (64 layers) by maximum likelihood (Figure 5)."""
    start(ctx, mle_experiment, mle_experiment.MLEConfig, values)


@compare.command("report")
@click.option("--out", type=click.Path(file_okay=False), default=DEFAULT_OUT,
              show_default=True,
              help=f"Folder holding the runs {density_experiment.NAME}/ and "
                   f"{mle_experiment.NAME}/.")
@click.option("--md", type=click.Path(dir_okay=False), default="results/comparisons.md",
              show_default=True, help="Markdown file to write.")
def report(out: str, md: str) -> None:
    """Merge the results of both comparisons into one markdown file."""
    from cnflow.experiments.compare import write_report

    try:
        write_report(out, md)
    except (OSError, ValueError) as error:
        raise click.ClickException(failure_message(error)) from None
    click.echo(f"wrote {md}")
