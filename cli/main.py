"""Entry point of the `cnflow` command: one click group, one module per sub-command."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnflow")
def cli() -> None:
    """cnflow: continuous normalizing flows and neural ODEs in PyTorch."""


# Sub-commands register themselves here, one line each.
from cnflow.cli.classify import classify; cli.add_command(classify)  # noqa: I001
