"""`cnflow latent`: train and evaluate the latent ODE and the RNN baseline on the spirals.

Every setting is checked before anything is written; the output folder is claimed through
:func:`cnflow.runs.run_directory` (another run there is refused without --overwrite, a second
process writing there gets a clear error), and every file in it is written atomically.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import torch
from cnflow.cli.options import POSITIVE

from cnflow.experiments.latent_ode import MAX_SEED, WINDOW, LatentConfig
from cnflow.solvers import GRADIENT_MODES

MODEL_CHOICES = ("latent-ode", "rnn", "both")
# One source of defaults: the config dataclass.
_DEFAULTS = LatentConfig()


def _check_n_obs(ctx: click.Context, param: click.Parameter, value: tuple[int, ...]):
    for n in value:
        if n < 1:
            raise click.BadParameter(
                f"{n}: at least one observation per spiral is needed", ctx=ctx, param=param
            )
        if n > WINDOW:
            raise click.BadParameter(
                f"{n}: at most {WINDOW} observations can be drawn without replacement from the "
                f"{WINDOW}-point observation window",
                ctx=ctx,
                param=param,
            )
    return value


def _command_line(params: dict) -> str:
    """The full, explicit command that reproduces a run (every option spelled out)."""
    args = ["cnflow", "latent", "--model", params["model"]]
    for n in params["n_obs"]:
        args += ["--n-obs", str(n)]
    for name in ("iterations", "rnn_iterations", "batch_size", "lr", "final_lr_factor",
                 "time_subsample", "rtol", "atol", "gradient", "eval_every", "seed", "threads",
                 "device"):
        args += [f"--{name.replace('_', '-')}", str(params[name])]
    args.append("--poisson" if params["poisson"] else "--no-poisson")
    args.append("--train-future" if params["train_future"] else "--window-only")
    args += ["--out", str(params["out"])]
    if params["md"] is not None:
        args += ["--md", str(params["md"])]
    if not params["figures"]:
        args.append("--no-figures")
    # Rerunning it replaces these very results, which a run folder refuses without this.
    return shlex.join([*args, "--overwrite"])


@click.command("latent")
@click.option("--model", type=click.Choice(MODEL_CHOICES), default="both", show_default=True,
              help="Which model(s) to train.")
@click.option("--n-obs", "n_obs", type=int, multiple=True, default=(30, 50, 100),
              show_default=True, callback=_check_n_obs,
              help="Observations per spiral (1..100); repeat for several.")
@click.option("--iterations", type=click.IntRange(min=1), default=_DEFAULTS.iterations,
              show_default=True,
              help="Training steps of the latent ODE.")
@click.option("--rnn-iterations", type=click.IntRange(min=1), default=_DEFAULTS.rnn_iterations,
              show_default=True,
              help="Training steps of the RNN.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULTS.batch_size,
              show_default=True)
@click.option("--lr", type=POSITIVE, default=_DEFAULTS.lr,
              show_default=True, help="Initial Adam learning rate.")
@click.option("--final-lr-factor", type=POSITIVE, default=_DEFAULTS.final_lr_factor,
              show_default=True, help="Last learning rate relative to the first.")
@click.option("--time-subsample", type=click.IntRange(min=0), default=_DEFAULTS.time_subsample,
              show_default=True,
              help="Random grid times per step for the latent ODE's ELBO estimate (0: all; at "
                   "most 198, or 98 with --window-only).")
@click.option("--rtol", type=POSITIVE, default=_DEFAULTS.rtol,
              show_default=True)
@click.option("--atol", type=POSITIVE, default=_DEFAULTS.atol,
              show_default=True)
@click.option("--gradient", type=click.Choice(GRADIENT_MODES),
              default=_DEFAULTS.gradient, show_default=True,
              help="How the latent ODE is differentiated.")
@click.option("--poisson/--no-poisson", default=_DEFAULTS.poisson, show_default=True,
              help="Add the Poisson-process likelihood of the observation times.")
@click.option("--train-future/--window-only", default=_DEFAULTS.train_future, show_default=True,
              help="Also train on the training spirals' 100 points after the window, or on the "
                   "window alone (then every extrapolated time is unseen in training).")
@click.option("--eval-every", type=click.IntRange(min=0), default=_DEFAULTS.eval_every,
              show_default=True,
              help="Record the test extrapolation RMSE every this many steps (0: never).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=_DEFAULTS.seed, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads.")
@click.option("--device", default=_DEFAULTS.device,
              show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/runs/latent_ode"), show_default=True,
              help="Folder for checkpoints, metrics.json and figures.")
@click.option("--md", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the markdown report here (e.g. results/latent_ode.md).")
@click.option("--figures/--no-figures", default=True, show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Replace another run in --out (refused without this).")
@click.pass_context
def latent(ctx: click.Context, **params) -> None:
    """Latent ODE vs RNN on irregularly sampled spirals (paper Section 5, Table 2)."""
    from cnflow.experiments.latent_ode import MODELS, LatentConfig, run_experiment
    from cnflow.runs import RunDirectoryError, failure_message, resolve_device
    from cnflow.solvers import ODESolverError

    models = MODELS if params["model"] == "both" else (params["model"],)
    try:
        resolve_device(params["device"])
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param_hint="'--device'") from error
    config = LatentConfig(
        iterations=params["iterations"],
        rnn_iterations=params["rnn_iterations"],
        batch_size=params["batch_size"],
        lr=params["lr"],
        final_lr_factor=params["final_lr_factor"],
        time_subsample=params["time_subsample"],
        rtol=params["rtol"],
        atol=params["atol"],
        gradient=params["gradient"],
        poisson=params["poisson"],
        train_future=params["train_future"],
        eval_every=params["eval_every"],
        seed=params["seed"],
        device=params["device"],
    )
    try:
        config.validate()
    except ValueError as error:
        raise click.UsageError(str(error), ctx=ctx) from error
    # Timings in the report are per thread count; one thread by default so they are comparable.
    torch.set_num_threads(params["threads"])
    try:
        summary = run_experiment(
            config,
            models,
            params["n_obs"],
            params["out"],
            md_path=params["md"],
            command=_command_line(params),
            figures=params["figures"],
            overwrite=params["overwrite"],
        )
    except (RunDirectoryError, ODESolverError, OSError) as error:
        raise click.ClickException(failure_message(error)) from None
    for key, run in summary["runs"].items():
        click.echo(f"{key}: extrapolation RMSE {run['rmse_extrapolation']:.4f} "
                   f"({run['train_seconds']:.0f} s)")
    click.echo(f"metrics: {params['out'] / 'metrics.json'}")
    if params["md"] is not None:
        click.echo(f"report: {params['md']}")
