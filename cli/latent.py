"""`cnflow latent`: train and evaluate the latent ODE and the RNN baseline on the spirals.

The options are generated from :class:`~cnflow.experiments.latent_ode.LatentConfig`, whose
checks are the only ones: a bad value is one usage error naming the setting (exit code 2),
before anything is written. The output folder is claimed through
:func:`cnflow.runs.run_directory` (another run there is refused without --overwrite, a second
process writing there gets a clear error), and every file in it is written atomically.
"""

from __future__ import annotations

import typing
from dataclasses import fields
from pathlib import Path

import click
import torch
from cnflow.cli.options import POSITIVE, build_config, config_options

from cnflow.experiments.latent_ode import MODEL_CHOICES, LatentConfig, models_of
from cnflow.experiments.latent_ode.config import BOTH, LIST_FIELDS

_HINTS = typing.get_type_hints(LatentConfig)
# Parsing refuses nan and inf by the option's name (they are no setting at all). Every float
# setting of the config is positive, so the option's type says so in --help; the config adds
# the finer ranges (the seeds' among them, refused by the option's name).
OPTION_TYPES = {f.name: POSITIVE for f in fields(LatentConfig) if _HINTS[f.name] is float}


def config_from(params: dict) -> LatentConfig:
    """The config of the command's parsed options (a usage error if a value is bad)."""
    return build_config(LatentConfig, {**params, "models": models_of(params["model"])})


@click.command("latent")
@click.option("--model", type=click.Choice(MODEL_CHOICES), default=BOTH, show_default=True,
              help="Which model(s) to train.")
@click.option("--n-obs", "n_obs", type=int, multiple=True, default=LatentConfig().n_obs,
              show_default=True,
              help="Observations per spiral (1..100); repeat for several.")
@config_options(LatentConfig, skip=LIST_FIELDS, types_=OPTION_TYPES)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads (the report's timings are per thread count).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/runs/latent_ode"), show_default=True,
              help="Folder for checkpoints, config.json, metrics.json and figures.")
@click.option("--md", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the markdown report here (e.g. results/latent_ode.md).")
@click.option("--figures/--no-figures", default=True, show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Replace another run in --out (refused without this).")
def latent(**params) -> None:
    """Latent ODE vs RNN on irregularly sampled spirals (paper Section 5, Table 2)."""
    from cnflow.experiments.latent_ode import run
    from cnflow.runs import RunDirectoryError, failure_message
    from cnflow.solvers import ODESolverError

    config = config_from(params)
    # One thread by default, so that the report's timings are comparable between runs.
    torch.set_num_threads(params["threads"])
    try:
        summary = run(config, params["out"], md_path=params["md"], figures=params["figures"],
                      overwrite=params["overwrite"])
    except (RunDirectoryError, ODESolverError, OSError) as error:
        raise click.ClickException(failure_message(error)) from None
    for key, result in summary["runs"].items():
        click.echo(f"{key}: extrapolation RMSE {result['rmse_extrapolation']:.4f} "
                   f"({result['train_seconds']:.0f} s)")
    click.echo(f"metrics: {params['out'] / 'metrics.json'}")
    if params["md"] is not None:
        click.echo(f"report: {params['md']}")
