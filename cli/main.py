"""Entry point of the `cnflow` command: one click group, one module per sub-command."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnflow")
def cli() -> None:
    """cnflow: continuous normalizing flows and neural ODEs in PyTorch."""


# Sub-commands register themselves here, one line each.
from cnflow.cli.benchmark import benchmark; cli.add_command(benchmark)  # noqa: E402, E702, I001
from cnflow.cli.flows import datasets, fit, logprob, sample  # noqa: E402, I001
for _command in (fit, sample, logprob, datasets): cli.add_command(_command)  # noqa: E701
from cnflow.cli.classify import classify; cli.add_command(classify)  # noqa: I001
from cnflow.cli.latent import latent; cli.add_command(latent)  # noqa: I001
