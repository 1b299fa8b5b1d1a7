"""``cnflow reproduce NAME``: regenerate one report of ``results/`` with the commands that
wrote it.

:data:`REPRODUCTIONS` is the one record of how every committed report is made: each entry
names its Markdown file and the ``cnflow`` command lines that write it (and its folder of
figures and JSON), run in order. Every report states the same command lines (a test checks
that they agree), so a reader of ``results/`` can rerun one by hand, or by name here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Reproduction:
    """How one report of ``results/`` is made.

    Attributes:
        report: the Markdown file, relative to the repository root.
        commands: ``cnflow`` command lines, run in this order.
        cost: roughly what the run takes, for the listing.
    """

    report: str
    commands: tuple[str, ...]
    cost: str


REPRODUCTIONS: dict[str, Reproduction] = {
    "cnf": Reproduction("results/cnf.md", (
        "cnflow benchmark cnf --out results/cnf.md",), "about 15 CPU-minutes"),
    "solver": Reproduction("results/solver.md", (
        "cnflow benchmark solver --out results/solver.md",), "a few CPU-minutes"),
    "ddp": Reproduction("results/ddp.md", (
        "cnflow benchmark ddp --out results/ddp.md",),
        "about 20 minutes on 2 cores"),
    "tabular": Reproduction("results/tabular.md", (
        ("cnflow benchmark tabular --sets "
         "wine,breast_cancer,digits,mnist_pca16,mix4,mix8,mix16 --models "
         "cnflow,zuko_nsf,zuko_maf,zuko_cnf --seeds 0,1,2 --budget 60.0 --jobs 2 --sweep "
         "--sweep-sets mix8,mnist_pca16,breast_cancer,digits --full-runs --work "
         "results/runs/tabular --out results/tabular"),
    ), "about an hour on 2 cores; fits are cached in results/runs/tabular"),
    "flow_matching": Reproduction("results/flow_matching.md", (
        ("cnflow benchmark flow-matching --sets "
         "wine,breast_cancer,digits,mnist_pca16,mix4,mix8,mix16 --seeds 0,1,2 --budget "
         "60.0 --jobs 2 --val-size 5000 --test-size 20000 --anchor-seeds 0,1,2 "
         "--conditional-rows 20000 --conditional-epochs 100 --work "
         "results/runs/flow_matching --out results/flow_matching"),),
        "about 20 minutes on 2 cores; tabular fits from the tabular cache"),
    "odenet": Reproduction("results/odenet.md", (
        "cnflow odenet-results --overwrite",), "about 60 CPU-minutes"),
    "latent_ode": Reproduction("results/latent_ode.md", (
        ("cnflow latent --model both --n-obs 30 --n-obs 50 --n-obs 100 --n-spirals 1000 "
         "--n-train 800 --noise-std 0.1 --seeds 0,1,2 --iterations 2500 --rnn-iterations 2500 "
         "--batch-size 200 --lr 0.01 --final-lr-factor 0.1 --time-subsample 0 --rtol 0.001 "
         "--atol 0.0001 --gradient checkpoint --no-poisson --no-train-future --eval-every 100 "
         "--device cpu --threads 1 --out results/latent_ode --md results/latent_ode.md "
         "--overwrite"),), "about 30 CPU-minutes"),
    "latent_ode_train_future": Reproduction("results/latent_ode_train_future.md", (
        ("cnflow latent --model both --n-obs 30 --n-obs 50 --n-obs 100 --n-spirals 1000 "
         "--n-train 800 --noise-std 0.1 --seeds 0 --iterations 2500 --rnn-iterations 2500 "
         "--batch-size 200 --lr 0.01 --final-lr-factor 0.1 --time-subsample 0 --rtol 0.001 "
         "--atol 0.0001 --gradient checkpoint --no-poisson --train-future --eval-every 100 "
         "--device cpu --threads 1 --out results/latent_ode_train_future "
         "--md results/latent_ode_train_future.md --overwrite"),), "about 20 CPU-minutes"),
    "comparisons": Reproduction("results/comparisons.md", (
        ("cnflow compare density-matching --targets U1,U2,U3,U4 --nf-layers 2,8,32 "
         "--cnf-widths 2,8,32 --seeds 0,1 --nf-iterations 20000 --cnf-iterations 2000 "
         "--batch-size 256 --nf-lr 0.003 --cnf-lr 0.01 --hidden 32 --rtol 1e-05 --atol "
         "1e-05 --eval-tol 1e-06 --eval-samples 10000 --grid 80 --box-wall 100.0 --jobs 2 "
         "--threads 1 --out results/comparisons/density_matching --overwrite"),
        ("cnflow compare mle --datasets two_circles,two_moons --nf-layers 64 --cnf-width "
         "64 --seed 0 --nf-iterations 1500 --cnf-iterations 500 --batch-size 512 --nf-lr "
         "0.005 --cnf-lr 0.01 --hidden 32 --rtol 1e-05 --atol 1e-05 --eval-tol 1e-06 "
         "--test-size 20000 --grid 120 --figure-samples 20000 --threads 1 --out "
         "results/comparisons/mle --overwrite"),
        ("cnflow compare report --out results/comparisons --md results/comparisons.md"),
    ), "about an hour of CPU time"),
}


@click.command("reproduce")
@click.argument("names", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the command lines; run nothing.")
@click.pass_context
def reproduce(ctx: click.Context, names: tuple[str, ...], dry_run: bool) -> None:
    """Regenerate reports of results/ by NAME (no NAME: list them with their commands).

    Run it from the repository root: the commands write into results/.
    """
    if not names:
        for name, entry in REPRODUCTIONS.items():
            click.echo(f"{name}: {entry.report} ({entry.cost})")
            for command in entry.commands:
                click.echo(f"    {command}")
        return
    unknown = [n for n in names if n not in REPRODUCTIONS]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(map(repr, unknown))}; choose from "
                                 f"{', '.join(REPRODUCTIONS)}", param_hint="NAME")
    root = ctx.find_root().command
    for name in names:
        for command in REPRODUCTIONS[name].commands:
            click.echo(f"$ {command}", err=True)
            if not dry_run:
                # The same group this command belongs to: the line runs as typed.
                root.main(shlex.split(command)[1:], prog_name="cnflow", standalone_mode=False)
