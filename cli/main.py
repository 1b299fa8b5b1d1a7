"""Entry point of the `cnflow` command: one click group, one module per sub-command."""

from __future__ import annotations

import click
from cnflow.cli.benchmark import benchmark
from cnflow.cli.classify import classify
from cnflow.cli.compare import compare
from cnflow.cli.flows import datasets, fit, logprob, sample
from cnflow.cli.latent import latent


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnflow")
def cli() -> None:
    """cnflow: continuous normalizing flows and neural ODEs in PyTorch."""


for _command in (fit, sample, logprob, datasets, compare, classify, latent, benchmark):
    cli.add_command(_command)
