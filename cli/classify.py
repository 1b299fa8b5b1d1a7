"""``cnflow classify``: train and evaluate the Section 3 classifiers (MLP, ResNet, RK-Net, ODE-Net).

A thin click wrapper over :mod:`cnflow.experiments.odenet`. Every input is checked, and the
data are loaded, before anything is written, so a bad argument or a corrupt data directory
leaves no output behind. The run folder is claimed through :func:`cnflow.runs.run_directory`
(another run there is refused without --overwrite; a second process gets a clear error). The
checkpoint is rewritten atomically after every epoch and the metrics file once at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import torch
from cnflow.cli.options import POSITIVE, FiniteFloat

from cnflow.data.mnist import (
    ClassificationData,
    load_digits,
    load_mnist,
    load_mnist_offline,
)
from cnflow.models.odenet import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    GRADIENT_MODES,
    MODEL_NAMES,
    build_classifier,
    count_parameters,
)
from cnflow.runs import (
    RunDirectoryError,
    environment,
    failure_message,
    resolve_device,
    run_directory,
    save_checkpoint,
    write_json,
)

DATA_CHOICES = ("offline", "digits", "idx")


def _load_data(data: str, data_dir: Path | None) -> ClassificationData:
    """Load the chosen data set, turning every data problem into a click error."""
    if data == "idx":
        if data_dir is None:
            raise click.UsageError("--data idx needs --data-dir DIRECTORY with the MNIST "
                                   "train-*/t10k-* IDX files")
    elif data_dir is not None:
        raise click.UsageError(f"--data-dir is only used with --data idx, not --data {data}")
    try:
        if data == "idx":
            return load_mnist(data_dir)
        if data == "digits":
            return load_digits()
        return load_mnist_offline()
    except (OSError, ValueError) as exc:
        # IDXFormatError is a ValueError; both name the file and what is wrong with it.
        raise click.BadParameter(str(exc), param_hint="--data-dir" if data == "idx"
                                 else "--data") from exc


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default="odenet",
              show_default=True, help="Classifier to train.")
@click.option("--data", type=click.Choice(DATA_CHOICES), default="offline", show_default=True,
              help="offline: the packaged MNIST test set split 8000/2000 (not full MNIST); "
                   "digits: sklearn's 8x8 digits; idx: full MNIST from --data-dir.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                   "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz].")
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=POSITIVE, default=1e-3,
              show_default=True, help="Adam learning rate (cosine decay to 0).")
@click.option("--method", type=click.Choice(ADAPTIVE_METHODS + FIXED_STEP_METHODS),
              default="dopri5", show_default=True, help="ODE solver of ODE-Net / RK-Net.")
@click.option("--rtol", type=POSITIVE, default=1e-3,
              show_default=True, help="Relative tolerance of adaptive methods.")
@click.option("--atol", type=POSITIVE, default=1e-3,
              show_default=True, help="Absolute tolerance of adaptive methods.")
@click.option("--step-size", type=FiniteFloat(min=0, max=1, min_open=True), default=None,
              help="Step of fixed-step methods (required for them).")
@click.option("--gradient", type=click.Choice(GRADIENT_MODES), default="adjoint",
              show_default=True, help="Gradient mode of ODE-Net (RK-Net is always direct).")
@click.option("--seminorm/--no-seminorm", default=False, show_default=True,
              help="Use the seminorm in ODE-Net's adjoint step-size control.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
              help="Seed of the initialisation and the batch order.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch.set_num_threads for the run (default: torch's choice).")
@click.option("--output-dir", "--out", "output_dir",
              type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Run directory [default: results/runs/classify-MODEL].")
@click.option("--overwrite", is_flag=True,
              help="Replace another run in the run directory (refused without this).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar [default: only when stderr is a terminal].")
def classify(model_name: str, data: str, data_dir: Path | None, epochs: int, batch_size: int,
             lr: float, method: str, rtol: float, atol: float, step_size: float | None,
             gradient: str, seminorm: bool, seed: int, device: str, threads: int | None,
             output_dir: Path | None, overwrite: bool, progress: bool | None) -> None:
    """Train and evaluate an MNIST classifier: mlp, resnet, rknet or odenet (paper Sec. 3).

    Writes OUTPUT_DIR/checkpoint.pt (after every epoch, atomically) and
    OUTPUT_DIR/metrics.json (test error, parameters, measured peak training memory, time and
    NFE per epoch).
    """
    from cnflow.experiments.odenet import train_classifier

    try:
        torch_device = resolve_device(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from exc
    uses_solver = model_name in ("odenet", "rknet")
    if uses_solver and method in FIXED_STEP_METHODS and step_size is None:
        raise click.UsageError(f"--method {method} is a fixed-step method; give --step-size")
    if step_size is not None and (not uses_solver or method in ADAPTIVE_METHODS):
        raise click.UsageError("--step-size is only used by odenet/rknet with a fixed-step "
                               f"--method ({', '.join(FIXED_STEP_METHODS)})")
    if threads is not None:
        torch.set_num_threads(threads)
    dataset = _load_data(data, data_dir)

    config: dict[str, Any] = {
        "model": model_name, "in_channels": dataset.in_channels,
        "image_size": dataset.image_size, "num_classes": dataset.num_classes,
    }
    if uses_solver:
        config.update(method=method, rtol=rtol, atol=atol, step_size=step_size)
    if model_name == "odenet":
        config.update(gradient=gradient,
                      adjoint_options={"norm": "seminorm"} if seminorm else None)
    kwargs = {k: v for k, v in config.items() if k != "model"}
    torch.manual_seed(seed)
    try:
        model = build_classifier(model_name, **kwargs).to(torch_device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    out = Path(output_dir) if output_dir is not None else Path("results") / "runs" / f"classify-{model_name}"
    if progress is None:
        progress = sys.stderr.isatty()
    n_params = count_parameters(model)
    click.echo(f"{model_name}: {n_params:,} parameters; data: {dataset.describe()}; "
               f"device {torch_device}; {torch.get_num_threads()} CPU thread(s)")
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                "data": data, "data_dir": None if data_dir is None else str(data_dir)}

    def on_epoch(epoch: int, summary: dict[str, Any]) -> None:
        save_checkpoint({"config": config, "settings": settings, "epoch": epoch,
                         "summary": summary, "model_state": model.state_dict()},
                        out / "checkpoint.pt")
        if not progress:
            click.echo(f"epoch {epoch}/{epochs}: train loss {summary['train_loss']:.4f}, "
                       f"test error {100 * summary['test_error']:.2f}%, "
                       f"{summary['time_s']:.1f} s")

    try:
        with run_directory(out, overwrite=overwrite, resumable=False, keep_lock=False):
            result = train_classifier(model, dataset, epochs=epochs, batch_size=batch_size,
                                      lr=lr, seed=seed, device=torch_device, progress=progress,
                                      description=model_name, on_epoch=on_epoch)
            last = result["epochs"][-1]
            metrics = {
                "model": model_name, "config": config, "settings": settings,
                "data": dataset.describe(), "data_name": dataset.name,
                "parameters": n_params, "device": str(torch_device),
                "test_error": last["test_error"], "test_loss": last["test_loss"],
                "time_per_epoch_s": sum(e["time_s"] for e in result["epochs"]) / epochs,
                "peak_training_bytes": result["peak_training_bytes"],
                "peak_saved_bytes": result["peak_saved_bytes"],
                "state_bytes": result["state_bytes"],
                "epochs": result["epochs"], "batches": result["batches"],
                "environment": environment(),
            }
            if "cuda_max_memory_allocated" in result:
                metrics["cuda_max_memory_allocated"] = result["cuda_max_memory_allocated"]
            write_json(metrics, out / "metrics.json")
    except (RunDirectoryError, OSError) as exc:
        raise click.ClickException(failure_message(exc)) from None
    except (ValueError, RuntimeError) as exc:
        # RuntimeError covers cnflow.ODESolverError (NaN/inf, step-size underflow); the
        # checkpoint of the last finished epoch, if any, is intact.
        raise click.ClickException(f"training failed: {exc}") from None
    click.echo(f"test error {100 * last['test_error']:.2f}% on {dataset.name}; "
               f"peak training memory {result['peak_training_bytes'] / 2**20:.1f} MiB; "
               f"wrote {out / 'checkpoint.pt'} and {out / 'metrics.json'}")
