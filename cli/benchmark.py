"""`cnflow benchmark …`: the commands that regenerate the benchmark reports in results/."""

from __future__ import annotations

import click
from cnflow.cli.options import POSITIVE, build_config, config_options

from cnflow.experiments import cnf_bench, ddp_bench, gpu_bench, solver_bench
from cnflow.experiments.tabular import MODELS as _TABULAR_MODELS
from cnflow.experiments.tabular import SETS as _TABULAR_SETS
from cnflow.experiments.tabular import SWEEP_SETS as _SWEEP_SETS


def _require_peer(name: str) -> None:
    """Refuse a benchmark whose peer library (of the `bench` extra) is not installed."""
    from importlib.util import find_spec

    if find_spec(name) is None:
        raise click.ClickException(f"this benchmark compares against {name}; install it "
                                   "with: pip install -e \".[bench]\"")


@click.group()
def benchmark() -> None:
    """Regenerate a benchmark report (results/*.md)."""


@benchmark.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True),
              default="results/solver.md", show_default=True,
              help="Markdown report to write (its settings go to config.json in a folder "
                   "of the same name).")
@config_options(solver_bench.SolverBenchConfig)
def solver(out: str, **settings) -> None:
    """cnflow vs torchdiffeq, adjoint memory, seminorm NFE (needs the `bench` extra)."""
    config = build_config(solver_bench.SolverBenchConfig, settings)
    _require_peer("torchdiffeq")
    click.echo(solver_bench.run(config, out))


@benchmark.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True),
              default="results/cnf.md", show_default=True,
              help="Markdown report to write (its settings go to config.json in a folder "
                   "of the same name).")
@click.option("--runs", type=click.Path(file_okay=False), default="results/cnf",
              show_default=True, help="Where the default fits' run directories go.")
@config_options(cnf_bench.CNFBenchConfig)
@click.option("--reuse-fits", is_flag=True,
              help="Use existing fits in --runs instead of training them again.")
def cnf(out: str, runs: str, reuse_fits: bool, **settings) -> None:
    """Speed vs torchdiffeq's reference CNF, test NLL vs entropy floor, log_prob throughput."""
    config = build_config(cnf_bench.CNFBenchConfig, settings)
    _require_peer("torchdiffeq")
    click.echo(cnf_bench.run(config, out, runs, refit=not reuse_fits))


@benchmark.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True),
              default="results/tabular.md", show_default=True,
              help="Markdown report to write (with a .png figure and a .json of every fit).")
@click.option("--work", type=click.Path(file_okay=False), default="results/runs/tabular",
              show_default=True, help="Splits and the cache of finished fits.")
@click.option("--sets", default=",".join(_TABULAR_SETS), show_default=True,
              help="Comma-separated benchmark sets.")
@click.option("--models", default=",".join(_TABULAR_MODELS), show_default=True,
              help="Comma-separated models.")
@click.option("--seeds", type=click.IntRange(1), default=3, show_default=True,
              help="Seeds (splits and initialisations) per set and model.")
@click.option("--budget", type=POSITIVE, default=60.0,
              show_default=True, help="CPU seconds per fit (training and validation).")
@click.option("--jobs", type=click.IntRange(1), default=2, show_default=True,
              help="Fits run in parallel, one thread each.")
@click.option("--sweep-sets", default=",".join(_SWEEP_SETS), show_default=True,
              help="Sets of the defaults sweep (cnflow fit's settings against the "
                   "alternatives); empty to skip it.")
@click.option("--full-runs/--no-full-runs", default=True, show_default=True,
              help="Also run the whole default `cnflow fit` on a 20,000 x 6 table.")
@click.option("--fresh", is_flag=True, help="Ignore cached fits in --work.")
def tabular(out: str, work: str, sets: str, models: str, seeds: int, budget: float,
            jobs: int, sweep_sets: str, full_runs: bool, fresh: bool) -> None:
    """cnflow fit's default CNF vs zuko's NSF, MAF and CNF on tables (needs the `bench`
    extra)."""
    import shlex

    _require_peer("zuko")
    from cnflow.experiments.tabular import TabularConfig, write_report

    try:
        config = TabularConfig(sets=tuple(s for s in sets.split(",") if s),
                               models=tuple(m for m in models.split(",") if m),
                               seeds=tuple(range(seeds)), budget=budget, jobs=jobs,
                               sweep_sets=tuple(s for s in sweep_sets.split(",") if s),
                               full_runs=full_runs)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    command = shlex.join(["cnflow", "benchmark", "tabular", "--sets", sets, "--models", models,
                          "--seeds", str(seeds), "--budget", f"{budget:g}", "--jobs", str(jobs),
                          "--sweep-sets", sweep_sets,
                          "--full-runs" if full_runs else "--no-full-runs", "--out", out])
    click.echo(write_report(config, out, work, command=command, reuse=not fresh,
                            echo=click.echo))


@benchmark.command("flow-matching")
@click.option("--out", type=click.Path(dir_okay=False, writable=True),
              default="results/flow_matching.md", show_default=True,
              help="Markdown report to write (with .png figures and a .json).")
@click.option("--work", type=click.Path(file_okay=False), default="results/runs/flow_matching",
              show_default=True, help="Run directories; the tabular fits' cache is the "
                                      "tabular benchmark's, beside it.")
@click.option("--seeds", type=click.IntRange(1), default=3, show_default=True,
              help="Seeds per set and model of the tabular section.")
@click.option("--budget", type=POSITIVE, default=60.0,
              show_default=True, help="CPU seconds per tabular fit.")
@click.option("--jobs", type=click.IntRange(1), default=2, show_default=True,
              help="Runs in parallel, one thread each.")
@click.option("--fresh", is_flag=True,
              help="Run everything again (ignore finished runs and cached fits).")
def flow_matching(out: str, work: str, seeds: int, budget: float, jobs: int,
                  fresh: bool) -> None:
    """Flow matching vs maximum likelihood: 2-D runs, tables beside zuko's NSF, a
    conditional model (needs the `bench` extra)."""
    import shlex

    _require_peer("zuko")
    from cnflow.experiments.flow_matching import write_report

    command = shlex.join(["cnflow", "benchmark", "flow-matching", "--seeds", str(seeds),
                          "--budget", f"{budget:g}", "--jobs", str(jobs), "--out", out])
    click.echo(write_report(out, work, command, seeds=seeds, budget=budget, jobs=jobs,
                            reuse=not fresh, echo=click.echo))


@benchmark.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True),
              default="results/ddp.md", show_default=True,
              help="Markdown report to write (with a .png figure and a .json; its settings "
                   "go to config.json in a folder of the same name).")
@click.option("--work", type=click.Path(file_okay=False), default="results/runs/ddp",
              show_default=True, help="Run directories and the generated table.")
@config_options(ddp_bench.DDPBenchConfig)
def ddp(out: str, work: str, **settings) -> None:
    """`cnflow fit` in one process against several under torchrun (gloo on CPU)."""
    config = build_config(ddp_bench.DDPBenchConfig, settings)
    click.echo(ddp_bench.run(config, out, work, echo=click.echo))


@benchmark.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True),
              default="results/gpu.md", show_default=True,
              help="Markdown report to write (with a .json; its settings go to config.json "
                   "in a folder of the same name).")
@click.option("--model", type=click.Path(file_okay=False), default="results/cnf/two_moons",
              show_default=True, help="Trained two_moons run directory for log_prob.")
@config_options(gpu_bench.GPUBenchConfig)
def gpu(out: str, model: str, **settings) -> None:
    """cnflow vs torchdiffeq's reference CNF on CUDA, batches up to 65,536, and log_prob
    throughput up to 1e6 points (needs a GPU and the `bench` extra)."""
    import torch

    config = build_config(gpu_bench.GPUBenchConfig, settings)
    if not torch.cuda.is_available():
        raise click.ClickException("this benchmark needs a CUDA device; none is available")
    _require_peer("torchdiffeq")
    click.echo(gpu_bench.run(config, out, model))
