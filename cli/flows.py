"""`cnflow fit`, `cnflow sample`, `cnflow logprob`, `cnflow datasets`: CNF density models of
tables (CSV/NPY, any number of columns) and of the built-in datasets."""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import fields
from pathlib import Path

import click
import numpy as np
from cnflow.cli.options import FRACTION, NON_NEGATIVE, POSITIVE

import toydata
from cnflow.density import (
    DEFAULT_FINETUNE,
    DEFAULT_FINETUNE_LR,
    DEFAULT_ITERATIONS,
    DEFAULT_OBJECTIVE,
    DYNAMICS,
    CheckpointError,
    FitConfig,
)
from cnflow.flows.cnf import TRACE_MODES
from cnflow.objectives import OBJECTIVES
from cnflow.solvers import GRADIENT_MODES, METHODS
from cnflow.training import LR_SCHEDULES

_DEFAULTS = FitConfig()


def _default(name: str):
    return getattr(_DEFAULTS, name)


def _load(checkpoint: str, device: str):
    from cnflow.density import load_checkpoint
    from cnflow.runs import resolve_device

    try:
        return load_checkpoint(checkpoint, resolve_device(device))
    except (CheckpointError, ValueError) as error:
        raise click.ClickException(str(error)) from None


def _check_output(path: str, suffixes: tuple[str, ...], option: str) -> Path:
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise click.BadParameter(f"{path!r} must end in one of {', '.join(suffixes)}",
                                 param_hint=option)
    if out.is_dir():
        raise click.BadParameter(f"{path!r} is a directory", param_hint=option)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise click.BadParameter(f"folder {str(parent)!r} does not exist", param_hint=option)
    return out


def _write_array(array: np.ndarray, out: Path, header: str) -> None:
    """Write ``.npy`` or ``.csv`` through a temporary file, so no half-written file remains."""
    from cnflow.runs import write_bytes, write_text

    try:
        if out.suffix.lower() == ".npy":
            buffer = io.BytesIO()
            np.save(buffer, array)
            write_bytes(buffer.getvalue(), out)
        else:
            rows = array.reshape(len(array), -1)
            text = header + "\n" + "\n".join(",".join(f"{v:.10g}" for v in row)
                                              for row in rows)
            write_text(text + "\n", out)
    except OSError as error:
        raise click.ClickException(f"cannot write {str(out)!r}: {error.strerror}") from None


def _read_points(path: str, state: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of INPUT in the checkpoint's columns (by name where both have a header), and
    their context columns for a conditional model (else None)."""
    from cnflow.data.tables import DataError, read_matching

    columns, context = state["data"]["columns"], state["data"]["context_columns"]
    try:
        values = read_matching(path, [*columns, *context], role="INPUT").values
    except DataError as error:
        raise click.BadParameter(str(error), param_hint="INPUT") from None
    return values[:, : len(columns)], values[:, len(columns):] if context else None


def _parse_contexts(values: tuple[str, ...], names: list[str]) -> np.ndarray | None:
    """``--context`` values (comma-separated numbers, one per context column) as rows."""
    if not names:
        if values:
            raise click.BadParameter("the model is unconditional; it takes no context",
                                     param_hint="--context")
        return None
    if not values:
        raise click.UsageError(f"the model is conditional on {names}: give --context with "
                               f"{len(names)} comma-separated value(s), e.g. --context "
                               + ",".join("0" for _ in names))
    rows = []
    for value in values:
        try:
            row = [float(v) for v in value.split(",")]
        except ValueError:
            row = []
        if len(row) != len(names) or not all(math.isfinite(v) for v in row):
            raise click.BadParameter(f"{value!r} must be {len(names)} finite comma-separated "
                                     f"number(s), one for each of {names}",
                                     param_hint="--context")
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def _data_argument(ctx, param, value: str) -> str:
    if value in toydata.names() or Path(value).suffix.lower() in (".csv", ".npy"):
        return value
    raise click.BadParameter(
        f"{value!r} is neither a built-in dataset ({', '.join(toydata.names())}) nor a "
        ".csv or .npy file", ctx=ctx, param=param)


class RankFailure(click.ClickException):
    """A failure of one rank under torchrun, which the others did not see: the console
    script shows it on that rank (other errors, alike on every rank, rank 0 alone shows)."""

    def __init__(self, message: str):
        rank = os.environ.get("RANK", "0")
        super().__init__(message if rank == "0" else f"rank {rank}: {message}")




@click.command()
@click.argument("data", callback=_data_argument)
@click.option("--columns", default=None,
              help="Columns of a data file to model, by header name or 0-based index, "
                   "comma-separated  [default: all]")
@click.option("--context", default=None,
              help="Columns of a data file to condition on (by name or index): the model is "
                   "p(other columns | these).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
              help="mle: maximum likelihood through the adjoint; fm: flow matching; otfm: "
                   "flow matching with minibatch optimal-transport pairs  [default: "
                   + ", ".join(f"{o} for {k} data" for k, o in DEFAULT_OBJECTIVE.items()) + "]")
@click.option("--finetune", type=click.IntRange(0), default=None,
              help="Maximum-likelihood steps after flow matching  [default: "
                   + ", ".join(f"{n} for {k} data" for k, n in DEFAULT_FINETUNE.items()) + "]")
@click.option("--finetune-lr", type=POSITIVE, default=None,
              help="Learning rate of the fine-tune  [default: "
                   + ", ".join(f"{r:g} for {k} data" for k, r in DEFAULT_FINETUNE_LR.items())
                   + "]")
@click.option("--val", "val", type=click.Path(dir_okay=False), default=None,
              help="Validation rows from this file instead of a split of DATA.")
@click.option("--val-fraction", type=FRACTION, default=_default("val_fraction"),
              show_default=True, help="Share of DATA's rows held out for validation.")
@click.option("--test", "test", type=click.Path(dir_okay=False), default=None,
              help="Test rows from this file instead of a split of DATA.")
@click.option("--test-fraction", type=FRACTION, default=_default("test_fraction"),
              show_default=True, help="Share of DATA's rows held out for the test NLL.")
@click.option("--dequantize", is_flag=True,
              help="Add uniform noise over each bin of the integer-valued columns.")
@click.option("--epochs", type=click.IntRange(1), default=_default("epochs"),
              show_default=True, help="Maximum passes over a data file's training rows.")
@click.option("--patience", type=click.IntRange(1), default=_default("patience"),
              show_default=True, help="Stop after this many epochs without a better "
                                      "validation NLL.")
@click.option("--max-time", type=POSITIVE, default=None,
              help="Budget in CPU seconds of this process (all threads), validation "
                   "included; the run then stops cleanly with its best weights.")
@click.option("--iterations", type=click.IntRange(1), default=None,
              help="Built-in datasets: training steps (one fresh batch each), validated ten "
                   "times  [default: " + ", ".join(f"{n} for {k}" for k, n in
                                                   DEFAULT_ITERATIONS.items()) + "]")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="[default: 512 for mle, 256 for flow matching]")
@click.option("--min-epoch-steps", type=click.IntRange(1), default=None,
              help="Data files: an epoch repeats passes until it has this many steps  "
                   "[default: 20 for mle, 200 for flow matching]")
@click.option("--dynamics", type=click.Choice(DYNAMICS), default=_default("dynamics"),
              show_default=True, help="gated: the paper's layer, closed-form trace; "
                                      "concat_squash: FFJORD's network.")
@click.option("--width", "-M", type=click.IntRange(1), default=_default("width"),
              show_default=True, help="Hidden units M (gated) or layer width (concat_squash).")
@click.option("--hidden", type=click.IntRange(1), default=_default("hidden"), show_default=True,
              help="Width of the gated layer's hypernetwork of t.")
@click.option("--depth", type=click.IntRange(1), default=_default("depth"), show_default=True,
              help="Hidden layers of concat_squash.")
@click.option("--trace", type=click.Choice(TRACE_MODES), default=_default("trace"),
              show_default=True, help="Trace estimator while training (auto: closed form for "
                                      "gated, exact up to D = 8, Hutchinson above); "
                                      "evaluation always uses the exact trace.")
@click.option("--lr", type=POSITIVE, default=None,
              help="Adam learning rate  [default: mle 1e-2 for built-in datasets, 3e-3 for "
                   "files; flow matching 3e-3]")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES),
              default=_default("lr_schedule"), show_default=True,
              help="cosine: decay to 1 % over the maximum number of steps.")
@click.option("--weight-decay", type=NON_NEGATIVE, default=_default("weight_decay"),
              show_default=True)
@click.option("--grad-clip", type=NON_NEGATIVE, default=_default("grad_clip"),
              show_default=True, help="Clip the gradient norm to this value; 0: no clipping.")
@click.option("--rtol", type=POSITIVE, default=_default("rtol"), show_default=True,
              help="Solver tolerance while training.")
@click.option("--atol", type=POSITIVE, default=_default("atol"), show_default=True)
@click.option("--eval-tol", type=POSITIVE, default=_default("eval_tol"), show_default=True,
              help="rtol = atol of the exact validation and test log-likelihoods.")
@click.option("--method", type=click.Choice(METHODS), default=_default("method"),
              show_default=True)
@click.option("--gradient", type=click.Choice(GRADIENT_MODES), default=_default("gradient"),
              show_default=True)
@click.option("--val-size", type=click.IntRange(2), default=_default("val_size"),
              show_default=True, help="Built-in datasets: held-out validation points.")
@click.option("--test-size", type=click.IntRange(2), default=_default("test_size"),
              show_default=True, help="Built-in datasets: fresh held-out points for the "
                                      "test NLL.")
@click.option("--kinetic", type=NON_NEGATIVE, default=None,
              help="Weight of the kinetic-energy regulariser  [default: 0 for built-in "
                   "datasets, 0.01 for files]")
@click.option("--jacobian", type=NON_NEGATIVE, default=_default("jacobian"),
              show_default=True, help="Weight of the Jacobian-Frobenius regulariser.")
@click.option("--seed", type=click.IntRange(0), default=_default("seed"), show_default=True,
              help="Initialisation, splits, shuffling and noise.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory  [default: results/runs/NAME, NAME the dataset or file stem]")
@click.option("--resume", type=click.Path(), default=None,
              help="Run directory or checkpoint to continue from after an interruption or "
                   "its --max-time (same settings; only --max-time, --patience and "
                   "--test-size may change).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="CPU threads for torch. A CNF's tensors are small: one thread avoids "
                   "thread-synchronisation overhead that can make several threads slower.")
@click.option("--overwrite", is_flag=True,
              help="Replace another run in the run directory (refused without this).")
@click.option("--no-figures", is_flag=True, help="Skip the PNG figures.")
def fit(data: str, out: str | None, device: str, resume: str | None, no_figures: bool,
        threads: int, overwrite: bool, **settings) -> None:
    """Fit a CNF density model to DATA; write a run directory.

    DATA is a built-in dataset (`cnflow datasets` lists them; fresh samples every step)
    or a .csv/.npy table with one row per observation. A CSV's first row is a header if
    none of its cells is a number. A file is split into training, validation and test
    rows (--val-fraction, --test-fraction, or --val/--test files); training runs for at
    most --epochs with early stopping on the validation NLL and keeps the best weights.
    Whatever the --objective, the validation and test NLL are exact likelihoods. With
    --context the model is conditional: the other columns given these.

    The run directory holds config.json, checkpoint.pt, metrics.json (train, validation
    and test NLL in nats and nats per dimension; the entropy floor where it is known)
    and figures: learning_curves.png, and density.png + snapshots.png for 2-D data or
    pairs.png (data vs model samples) for other dimensions.
    """
    import torch

    from cnflow import distributed
    from cnflow.data.tables import DataError
    from cnflow.density import fit_run
    from cnflow.solvers import ODESolverError

    torch.set_num_threads(threads)  # per process under torchrun
    names = {f.name for f in fields(FitConfig)}
    settings["grad_clip"] = settings["grad_clip"] or None
    try:
        config = FitConfig(dataset=data, **{k: v for k, v in settings.items() if k in names})
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if resume is not None and not Path(resume).exists():
        raise click.BadParameter(f"{resume!r} does not exist", param_hint="--resume")
    run_dir = Path(out) if out else Path("results") / "runs" / Path(data).stem
    distributed.setup()  # under torchrun: join the job's process group
    main = distributed.is_main()
    with warnings.catch_warnings():
        # Warnings about the data (integer columns) as one plain line, before training.
        warnings.showwarning = lambda message, *_, **__: click.echo(
            f"warning: {message}", err=True) if main else None
        try:
            metrics = fit_run(config, run_dir, device=device, resume=resume,
                              figures=not no_figures, overwrite=overwrite)
            distributed.teardown(synchronize=True)  # every rank finished: leave together
        except (DataError, CheckpointError, ValueError) as error:
            raise click.ClickException(str(error)) from None
        except ODESolverError as error:
            raise RankFailure(str(error)) from None
        except OSError as error:
            raise click.ClickException(f"cannot write the run directory {str(run_dir)!r}: "
                                       f"{error.strerror or error}") from None
        finally:
            distributed.teardown()
    if not main:
        return
    floor = metrics["entropy_floor"]
    gap = "" if floor is None else f"  floor {floor:.4f}  gap {metrics['gap']:+.4f}"
    objective = metrics["objective"] + (f" + {metrics['finetune']} MLE fine-tune steps"
                                        if metrics["finetune"] else "")
    click.echo(f"{objective}: test NLL {metrics['test_nll']:.4f} ± "
               f"{metrics['test_nll_stderr']:.4f} nats "
               f"({metrics['test_nll_per_dim']:.4f} per dim){gap}  best epoch "
               f"{metrics['best_epoch']}/{metrics['epochs_run']} ({metrics['stop_reason']}), "
               f"{metrics['cpu_seconds']:.0f} CPU-s  -> {run_dir}")


@click.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Run directory or checkpoint.pt written by `cnflow fit`.")
@click.option("-n", "--num", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(), help="Output .npy or .csv.")
@click.option("--plot", type=click.Path(), default=None,
              help="Also save a PNG: a scatter for 2-D models, a pair plot otherwise.")
@click.option("--context", "contexts", multiple=True,
              help="Conditional models: the context values, comma-separated (one per "
                   "context column); repeat for several contexts, N samples each.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
def sample(checkpoint: str, num: int, out: str, plot: str | None, contexts: tuple[str, ...],
           seed: int, device: str) -> None:
    """Draw N samples from a trained CNF (CSV columns named as in the training data; a
    conditional model's rows end with their context columns)."""
    import torch

    target = _check_output(out, (".npy", ".csv"), "--out")
    plot_path = _check_output(plot, (".png",), "--plot") if plot else None
    flow, config, state = _load(checkpoint, device)
    context_names = state["data"]["context_columns"]
    context = _parse_contexts(contexts, context_names)
    torch.manual_seed(seed)
    columns = state["data"]["columns"]
    if context is None:
        points = flow.sample(num).cpu().numpy()
    else:
        given = torch.as_tensor(context, dtype=flow.dtype, device=flow.device)
        drawn = flow.sample(num, context=given).transpose(0, 1).reshape(-1, flow.dim)
        points = np.hstack([drawn.cpu().numpy(), np.repeat(context, num, axis=0)])
        columns = [*columns, *context_names]
        num = len(points)
    _write_array(points, target, ",".join(columns))
    if plot_path is not None:
        from cnflow import plots

        try:
            plots.sample_plot(points, columns, plot_path,
                              title=f"{num} samples, CNF on {Path(config.dataset).name}")
        except OSError as error:
            target.unlink(missing_ok=True)  # all or nothing
            raise click.ClickException(f"cannot write {str(plot_path)!r}: "
                                       f"{error.strerror or error}") from None
    click.echo(f"wrote {num} samples to {target}")


@click.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Run directory or checkpoint.pt written by `cnflow fit`.")
@click.argument("input", type=click.Path())
@click.option("--out", "-o", type=click.Path(), default=None,
              help="Write log p to this .npy/.csv instead of standard output.")
@click.option("--tol", type=POSITIVE, default=None,
              help="Solver rtol = atol  [default: the run's eval tolerance]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
def logprob(checkpoint: str, input: str, out: str | None, tol: float | None,
            device: str) -> None:
    """Exact log-density (nats) of every row of INPUT (.npy or .csv).

    A CSV whose header holds the training columns is read by name; otherwise INPUT must
    have exactly the model's columns, in the training order. For a conditional model the
    context columns are read from INPUT the same way, and the values are log p(x | c).
    """
    import torch

    if not Path(input).is_file():
        raise click.BadParameter(f"{input!r} does not exist", param_hint="INPUT")
    target = _check_output(out, (".npy", ".csv"), "--out") if out else None
    flow, _, state = _load(checkpoint, device)
    points, context = _read_points(input, state)

    def as_tensor(rows: np.ndarray | None):
        return None if rows is None else torch.as_tensor(rows, dtype=flow.dtype,
                                                         device=flow.device)

    with torch.no_grad():
        values = flow.log_prob(as_tensor(points), as_tensor(context), rtol=tol,
                               atol=tol).cpu().numpy().astype(np.float64)
    if target is None:
        click.echo("\n".join(f"{v:.8f}" for v in values))
    else:
        _write_array(values, target, "log_prob")
        click.echo(f"wrote {len(values)} log-densities to {target}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def datasets(as_json: bool) -> None:
    """List the datasets with their dimension and entropy floor (nats)."""
    rows = []
    for name in toydata.names():
        data = toydata.get(name)
        try:
            floor = data.entropy()
        except NotImplementedError:
            floor = None
        rows.append({"name": name, "dim": data.dim, "entropy_floor": floor,
                     "description": data.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'dataset':<{width}}  dim  floor (nats)  description")
    for r in rows:
        floor = "n/a" if r["entropy_floor"] is None else f"{r['entropy_floor']:.4f}"
        click.echo(f"{r['name']:<{width}}  {r['dim']:>3}  {floor:>12}  {r['description']}")
