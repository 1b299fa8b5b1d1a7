"""Entry point of the `cnflow` command: one click group, one module per sub-command."""

from __future__ import annotations

import os
import sys

import click
from cnflow.cli.benchmark import benchmark
from cnflow.cli.classify import classify, odenet_results
from cnflow.cli.compare import compare
from cnflow.cli.flows import RankFailure, datasets, fit, logprob, sample
from cnflow.cli.latent import latent
from cnflow.cli.reproduce import reproduce


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnflow")
def cli() -> None:
    """cnflow: continuous normalizing flows and neural ODEs in PyTorch."""


for _command in (fit, sample, logprob, datasets, compare, classify, odenet_results, latent,
                 benchmark, reproduce):
    cli.add_command(_command)


def main() -> None:
    """The console script: ``cli``, with one error message per job under ``torchrun``.

    Every rank parses the same options and reads the same data, so a bad option or file
    fails on every rank alike: rank 0 alone says so. A :class:`RankFailure` is shown by the
    rank it happened on.
    """
    try:
        code = cli.main(standalone_mode=False)
    except click.ClickException as error:
        if os.environ.get("RANK", "0") == "0" or isinstance(error, RankFailure):
            error.show()
        sys.exit(error.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # `python -m cnflow.cli.main`, `torchrun -m cnflow.cli.main`
    main()
