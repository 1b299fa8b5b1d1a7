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


@benchmark.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True),
              default="results/cnf.md", show_default=True, help="Markdown report to write.")
@click.option("--runs", type=click.Path(file_okay=False), default="results/cnf",
              show_default=True, help="Where the default fits' run directories go.")
@click.option("--iterations", type=click.IntRange(1), default=20, show_default=True,
              help="Timed training iterations of each model in the speed comparison.")
@click.option("--reuse-fits", is_flag=True,
              help="Use existing fits in --runs instead of training them again.")
def cnf(out: str, runs: str, iterations: int, reuse_fits: bool) -> None:
    """Speed vs torchdiffeq's reference CNF, test NLL vs entropy floor, log_prob throughput."""
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        raise click.ClickException("this benchmark compares against torchdiffeq; install it "
                                   "with: pip install -e \".[bench]\"") from None
    from cnflow.experiments.cnf_bench import write_report

    click.echo(write_report(out, runs, iterations=iterations, refit=not reuse_fits))
