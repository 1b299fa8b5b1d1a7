"""`cnflow benchmark …`: the commands that regenerate the benchmark reports in results/."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from cnflow.cli.options import build_config, config_options

from cnflow.experiments import cnf_bench, ddp_bench, gpu_bench, solver_bench
from cnflow.experiments.flow_matching.benchmark import DEFAULT_WORK as FLOW_MATCHING_WORK
from cnflow.experiments.flow_matching.config import FlowMatchingBenchConfig
from cnflow.experiments.tabular.benchmark import DEFAULT_WORK as TABULAR_WORK
from cnflow.experiments.tabular.config import TabularConfig
from cnflow.report import report_beside


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


def _report_options(name: str, work: str, fresh: str) -> Callable[[Callable], Callable]:
    """``--out`` (the report's folder, ``results/<name>``), ``--work`` and ``--fresh``."""
    def decorate(func: Callable) -> Callable:
        func = click.option("--fresh", is_flag=True, help=fresh)(func)
        func = click.option("--work", type=click.Path(file_okay=False), default=work,
                            show_default=True, help="Run folders and caches of finished "
                                                    "runs.")(func)
        return click.option("--out", type=click.Path(file_okay=False),
                            default=f"results/{name}", show_default=True,
                            help=f"Folder of the report: config.json, {name}.md, its "
                                 f"figures and {name}.json.")(func)

    return decorate


@benchmark.command()
@config_options(TabularConfig)
@_report_options("tabular", TABULAR_WORK, "Ignore cached fits in --work.")
def tabular(out: str, work: str, fresh: bool, **values: Any) -> None:
    """cnflow fit's default CNF vs zuko's NSF, MAF and CNF on tables (needs the `bench`
    extra)."""
    config = build_config(TabularConfig, values)  # bad settings first, then the peer
    _require_peer("zuko")
    from cnflow.experiments.tabular import run

    run(config, out, work=work, reuse=not fresh, echo=click.echo)
    click.echo(f"wrote {report_beside(out)} and {out}/")


@benchmark.command("flow-matching")
@config_options(FlowMatchingBenchConfig)
@_report_options("flow_matching", FLOW_MATCHING_WORK,
                 "Run everything again (ignore finished runs and cached fits).")
def flow_matching(out: str, work: str, fresh: bool, **values: Any) -> None:
    """Flow matching vs maximum likelihood: 2-D runs, tables beside zuko's NSF, a
    conditional model (needs the `bench` extra). The tabular fits' cache is the tabular
    benchmark's, beside --work."""
    config = build_config(FlowMatchingBenchConfig, values)  # bad settings first
    _require_peer("zuko")
    from cnflow.experiments.flow_matching import run

    run(config, out, work=work, reuse=not fresh, echo=click.echo)
    click.echo(f"wrote {report_beside(out)} and {out}/")


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
