"""`cnflow benchmark …`: the commands that regenerate the benchmark reports in results/."""

from __future__ import annotations

import click


@click.group()
def benchmark() -> None:
    """Regenerate a benchmark report (results/*.md)."""


@benchmark.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True),
              default="results/solver.md", show_default=True, help="Markdown report to write.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True,
              help="Timed runs per configuration (the median is reported).")
def solver(out: str, repeats: int) -> None:
    """cnflow vs torchdiffeq, adjoint memory, seminorm NFE (needs the `bench` extra)."""
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        raise click.ClickException("this benchmark compares against torchdiffeq; install it "
                                   "with: pip install -e \".[bench]\"") from None
    from cnflow.experiments.solver_bench import write_report

    click.echo(write_report(out, repeats=repeats))
