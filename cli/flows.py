"""`cnflow fit`, `cnflow sample`, `cnflow logprob`, `cnflow datasets`: CNFs on 2-D data."""

from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path

import click
import numpy as np

import toydata
from cnflow.solvers import GRADIENT_MODES, METHODS
from cnflow.training import CheckpointError, FitConfig

_DEFAULTS = FitConfig()


def _default(name: str):
    return getattr(_DEFAULTS, name)


def _load(checkpoint: str, device: str):
    from cnflow.runs import resolve_device
    from cnflow.training import load_checkpoint

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


def _read_points(path: str, dim: int) -> np.ndarray:
    file = Path(path)
    try:
        if file.suffix.lower() == ".npy":
            data = np.load(file, allow_pickle=False)
        elif file.suffix.lower() == ".csv":
            # A header row is allowed: skip a first line that does not parse as numbers.
            with open(file) as handle:
                first = handle.readline()
            try:
                [float(v) for v in first.strip().split(",") if v.strip()]
                skip = 0
            except ValueError:
                skip = 1
            data = np.loadtxt(file, delimiter=",", skiprows=skip, ndmin=2)
        else:
            raise click.BadParameter(f"{path!r} must be a .npy or .csv file",
                                     param_hint="INPUT")
    except (OSError, ValueError) as error:
        raise click.BadParameter(f"cannot read {path!r}: {error}", param_hint="INPUT") from None
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != dim:
        raise click.BadParameter(f"{path!r} holds an array of shape {data.shape}; expected "
                                 f"rows of {dim} numbers, shape (n, {dim})", param_hint="INPUT")
    bad = np.flatnonzero(~np.isfinite(data).all(1))
    if bad.size:
        raise click.BadParameter(f"{path!r} has NaN or infinite values in rows "
                                 f"{bad[:5].tolist()} (first five, counting from 0)",
                                 param_hint="INPUT")
    return data


@click.command()
@click.argument("dataset", type=click.Choice(toydata.names()))
@click.option("--iterations", type=click.IntRange(1), default=_default("iterations"),
              show_default=True, help="Training iterations (one fresh batch each).")
@click.option("--batch-size", type=click.IntRange(1), default=_default("batch_size"),
              show_default=True)
@click.option("--width", "-M", type=click.IntRange(1), default=_default("width"),
              show_default=True, help="Hidden units M of the gated CNF layer.")
@click.option("--hidden", type=click.IntRange(1), default=_default("hidden"), show_default=True,
              help="Width of the hypernetwork of t.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_default("lr"),
              show_default=True, help="Adam learning rate (cosine decay to 1 %).")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True), default=_default("rtol"),
              show_default=True, help="Solver tolerance while training.")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), default=_default("atol"),
              show_default=True)
@click.option("--eval-tol", type=click.FloatRange(min=0, min_open=True),
              default=_default("eval_tol"), show_default=True,
              help="rtol = atol of the exact test log-likelihood.")
@click.option("--method", type=click.Choice(METHODS), default=_default("method"),
              show_default=True)
@click.option("--gradient", type=click.Choice(GRADIENT_MODES), default=_default("gradient"),
              show_default=True)
@click.option("--test-size", type=click.IntRange(1), default=_default("test_size"),
              show_default=True, help="Fresh held-out points for the test NLL.")
@click.option("--kinetic", type=click.FloatRange(min=0), default=_default("kinetic"),
              show_default=True, help="Weight of the kinetic-energy regulariser.")
@click.option("--jacobian", type=click.FloatRange(min=0), default=_default("jacobian"),
              show_default=True, help="Weight of the Jacobian-Frobenius regulariser.")
@click.option("--seed", type=int, default=_default("seed"), show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory  [default: results/runs/DATASET]")
@click.option("--resume", type=click.Path(), default=None,
              help="Run directory or checkpoint to continue from.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="CPU threads for torch. A 2-D CNF's tensors are tiny: one thread avoids "
                   "thread-synchronisation overhead that can make several threads slower.")
@click.option("--no-figures", is_flag=True, help="Skip the PNG figures.")
def fit(dataset: str, out: str | None, device: str, resume: str | None, no_figures: bool,
        threads: int, **settings) -> None:
    """Train a CNF on DATASET by maximum likelihood; write a run directory.

    The run directory holds config.json, checkpoint.pt, metrics.json (test NLL next to
    the dataset's entropy floor) and the figures density.png and snapshots.png.
    """
    import torch

    from cnflow.training import fit_mle

    torch.set_num_threads(threads)
    names = {f.name for f in fields(FitConfig)}
    config = FitConfig(dataset=dataset, **{k: v for k, v in settings.items() if k in names})
    if resume is not None and not Path(resume).exists():
        raise click.BadParameter(f"{resume!r} does not exist", param_hint="--resume")
    run_dir = Path(out) if out else Path("results") / "runs" / dataset
    try:
        metrics = fit_mle(config, run_dir, device=device, resume=resume,
                          figures=not no_figures)
    except (CheckpointError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    floor = metrics["entropy_floor"]
    gap = "" if floor is None else f"  floor {floor:.4f}  gap {metrics['gap']:+.4f}"
    click.echo(f"test NLL {metrics['test_nll']:.4f} ± {metrics['test_nll_stderr']:.4f} nats"
               f"{gap}  ({metrics['wall_seconds']:.0f} s)  -> {run_dir}")


@click.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Run directory or checkpoint.pt written by `cnflow fit`.")
@click.option("-n", "--num", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(), help="Output .npy or .csv.")
@click.option("--plot", type=click.Path(), default=None, help="Also save a scatter PNG.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
def sample(checkpoint: str, num: int, out: str, plot: str | None, seed: int,
           device: str) -> None:
    """Draw N samples from a trained CNF."""
    import torch

    target = _check_output(out, (".npy", ".csv"), "--out")
    plot_path = _check_output(plot, (".png",), "--plot") if plot else None
    flow, config, _ = _load(checkpoint, device)
    torch.manual_seed(seed)
    points = flow.sample(num).cpu().numpy()
    _write_array(points, target, "x0,x1")
    if plot_path is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from cnflow.plots import _save

        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
        ax.set_title(f"{num} samples, CNF on {config.dataset}")
        _save(fig, plot_path)
    click.echo(f"wrote {num} samples to {target}")


@click.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Run directory or checkpoint.pt written by `cnflow fit`.")
@click.argument("input", type=click.Path())
@click.option("--out", "-o", type=click.Path(), default=None,
              help="Write log p to this .npy/.csv instead of standard output.")
@click.option("--tol", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Solver rtol = atol  [default: the run's eval tolerance]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
def logprob(checkpoint: str, input: str, out: str | None, tol: float | None,
            device: str) -> None:
    """Exact log-density of every row of INPUT (.npy or .csv with 2 columns)."""
    import torch

    if not Path(input).is_file():
        raise click.BadParameter(f"{input!r} does not exist", param_hint="INPUT")
    target = _check_output(out, (".npy", ".csv"), "--out") if out else None
    flow, _, _ = _load(checkpoint, device)
    points = _read_points(input, flow.dim)
    anchor = next(flow.buffers())
    with torch.no_grad():
        values = flow.log_prob(torch.as_tensor(points, dtype=anchor.dtype, device=anchor.device),
                               rtol=tol, atol=tol).cpu().numpy().astype(np.float64)
    if target is None:
        click.echo("\n".join(f"{v:.8f}" for v in values))
    else:
        _write_array(values, target, "log_prob")
        click.echo(f"wrote {len(values)} log-densities to {target}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def datasets(as_json: bool) -> None:
    """List the 2-D datasets with their entropy floors (nats)."""
    rows = []
    for name in toydata.names():
        data = toydata.get(name)
        try:
            floor = data.entropy()
        except NotImplementedError:
            floor = None
        rows.append({"name": name, "entropy_floor": floor, "description": data.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'dataset':<{width}}  floor (nats)  description")
    for r in rows:
        floor = "n/a" if r["entropy_floor"] is None else f"{r['entropy_floor']:.4f}"
        click.echo(f"{r['name']:<{width}}  {floor:>12}  {r['description']}")
