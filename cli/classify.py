"""``cnflow classify`` and ``cnflow odenet-results``: the Section 3 classifiers (MLP, ResNet,
RK-Net, ODE-Net), one at a time or the whole results run.

Thin click wrappers over :mod:`cnflow.experiments.odenet`: each command's settings are the
options generated from its config dataclass (:class:`~cnflow.experiments.odenet.
ClassifyConfig`, :class:`~cnflow.experiments.odenet.OdenetResultsConfig`), the one source of
their defaults and checks. Every input is checked, and the data are loaded, before anything
is written, so a bad argument or a corrupt data directory leaves no output behind. The output
folder is claimed through :func:`cnflow.runs.run_directory` (another run there is refused
without --overwrite; a second process gets a clear error); every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import click
import torch
from cnflow.cli.options import POSITIVE, FiniteFloat, build_config, config_options

from cnflow.data.mnist import DATA_NAMES, load_named
from cnflow.experiments import odenet
from cnflow.models.odenet import count_parameters
from cnflow.runs import (
    RunDirectoryError,
    environment,
    failure_message,
    resolve_device,
    run_directory,
    write_json,
)
from cnflow.solvers import ADAPTIVE_METHODS, FIXED_STEP_METHODS, GRADIENT_MODES

__all__ = ["classify", "odenet_results"]

# Click types where a field's annotation is too loose: a bad value is then refused while
# parsing, naming its option; the config's own checks stay the rule.
_COMMON_TYPES = {"epochs": click.IntRange(min=1), "batch_size": click.IntRange(min=1),
                 "lr": POSITIVE, "seed": click.IntRange(0, odenet.MAX_SEED),
                 "threads": click.IntRange(min=1)}
CLASSIFY_TYPES = {**_COMMON_TYPES, "model": click.Choice(odenet.MODEL_NAMES),
                  "data": click.Choice(DATA_NAMES), "data_dir": click.Path(),
                  "method": click.Choice(ADAPTIVE_METHODS + FIXED_STEP_METHODS),
                  "rtol": POSITIVE, "atol": POSITIVE,
                  "step_size": FiniteFloat(min=0, max=1, min_open=True),
                  "gradient": click.Choice(GRADIENT_MODES)}
RESULTS_TYPES = {**_COMMON_TYPES, "data": click.Choice(("offline", "digits")),
                 "method": click.Choice(ADAPTIVE_METHODS), "tol": POSITIVE,
                 "memory_batch": click.IntRange(min=2), "memory_base_steps": click.IntRange(min=1),
                 "memory_method": click.Choice(FIXED_STEP_METHODS),
                 "sweep_batch": click.IntRange(min=1), "reference_tol": POSITIVE}


def _shows_bar(progress: bool | None) -> bool:
    """Whether fit shows its bar: as asked, else only on a terminal (tqdm's disable=None)."""
    return sys.stderr.isatty() if progress is None else progress


@click.command("classify", context_settings={"help_option_names": ["-h", "--help"]})
@config_options(odenet.ClassifyConfig, types_=CLASSIFY_TYPES)
@click.option("--output-dir", "--out", "output_dir",
              type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Run directory [default: results/runs/classify-MODEL].")
@click.option("--overwrite", is_flag=True,
              help="Replace another run in the run directory (refused without this).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar [default: only when stderr is a terminal].")
def classify(output_dir: Path | None, overwrite: bool, progress: bool | None,
             **values: Any) -> None:
    """Train and evaluate an MNIST classifier: mlp, resnet, rknet or odenet (paper Sec. 3).

    Writes OUTPUT_DIR/checkpoint.pt (after every epoch, atomically) and
    OUTPUT_DIR/metrics.json (test error, parameters, measured peak training memory, time and
    NFE per epoch and per step).
    """
    config = build_config(odenet.ClassifyConfig, values)
    device = resolve_device(config.device)  # known good: the config checked it
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        dataset = load_named(config.data, config.data_dir)
    except (OSError, ValueError) as exc:
        # IDXFormatError is a ValueError; both name the file and what is wrong with it.
        raise click.BadParameter(str(exc), param_hint="--data-dir" if config.data == "idx"
                                 else "--data") from exc
    torch.manual_seed(config.seed)
    kwargs = config.model_kwargs(dataset)
    model = odenet.build_classifier(config.model, **kwargs).to(device)
    out = (Path(output_dir) if output_dir is not None
           else Path("results") / "runs" / f"classify-{config.model}")
    n_params = count_parameters(model)
    click.echo(f"{config.model}: {n_params:,} parameters; data: {dataset.describe()}; "
               f"device {device}; {torch.get_num_threads()} CPU thread(s)")
    bar = _shows_bar(progress)

    def echo_epoch(record: dict[str, Any]) -> None:
        if not bar:  # the bar shows the same; lines would break it
            click.echo(f"epoch {record['epoch']}/{config.epochs}: train loss "
                       f"{record['train_loss']:.4f}, test error "
                       f"{100 * record['test_error']:.2f}%, {record['time_s']:.1f} s")

    try:
        with run_directory(out, overwrite=overwrite, resumable=False, keep_lock=False):
            # Called through the package, so that tests can replace it.
            result = odenet.train_classifier(
                model, dataset, config.train_config(), progress=bar, desc=config.model,
                checkpoint=out / "checkpoint.pt", on_epoch=echo_epoch,
                extra_state={"classifier": {"name": config.model, "kwargs": kwargs},
                             "config": dataclasses.asdict(config)})
            last = result["epochs"][-1]
            write_json({
                "model": config.model, "config": dataclasses.asdict(config),
                "train": result["train"], "data": dataset.describe(),
                "data_name": dataset.name, "parameters": n_params, "device": str(device),
                "test_error": last["test_error"], "test_loss": last["test_loss"],
                "time_per_epoch_s": odenet.mean_of(result["epochs"], "time_s"),
                "stop_reason": result["stop_reason"],
                **{k: v for k, v in result.items() if k.endswith("_bytes")
                   or k == "cuda_max_memory_allocated"},
                "epochs": result["epochs"], "steps": result["steps"],
                "environment": environment(),
            }, out / "metrics.json")
    except (RunDirectoryError, OSError) as exc:
        raise click.ClickException(failure_message(exc)) from None
    except (ValueError, RuntimeError) as exc:
        # RuntimeError covers cnflow.ODESolverError (NaN/inf, step-size underflow); the
        # checkpoint of the last finished epoch, if any, is intact.
        raise click.ClickException(f"training failed: {exc}") from None
    if result["stop_reason"] != "epochs":
        raise click.ClickException(f"training stopped early ({result['stop_reason']}) after "
                                   f"{len(result['epochs'])} epoch(s); {out} holds its "
                                   "checkpoint and metrics")
    click.echo(f"test error {100 * last['test_error']:.2f}% on {dataset.name}; "
               f"peak training memory {result['peak_training_bytes'] / 2**20:.1f} MiB; "
               f"wrote {out / 'checkpoint.pt'} and {out / 'metrics.json'}")


def _check_writable(path: Path, option: str) -> None:
    """Refuse, before a long run, a report file that could not be written at its end."""
    if path.is_dir():
        raise click.BadParameter(f"{str(path)!r} is a folder", param_hint=option)
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise click.BadParameter(f"cannot write {str(path)!r}: {str(folder)!r} is not a "
                                 "writable folder", param_hint=option)


@click.command("odenet-results", context_settings={"help_option_names": ["-h", "--help"]})
@config_options(odenet.OdenetResultsConfig, types_=RESULTS_TYPES)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              default=odenet.DEFAULT_OUT, show_default=True,
              help="Folder of config.json, results.json and the figures.")
@click.option("--md", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The Markdown report [default: OUT.md, beside the folder].")
@click.option("--overwrite", is_flag=True,
              help="Replace the earlier results in --out (refused without this).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars [default: only when stderr is a terminal].")
def odenet_results(out: Path, md: Path | None, overwrite: bool, progress: bool | None,
                   **values: Any) -> None:
    """Train MLP, ResNet, RK-Net and ODE-Net; measure memory vs depth and the tolerance
    sweep; write the Table 1 and Figure 3 analogs (results/odenet.md by default)."""
    config = build_config(odenet.OdenetResultsConfig, values)
    md = odenet.default_md(out) if md is None else md
    _check_writable(md, "--md")
    try:
        with run_directory(out, overwrite=overwrite, files=("config.json", "results.json"),
                           resumable=False, keep_lock=False):
            results = odenet.run(config, out, md_path=md, progress=_shows_bar(progress))
    except (RunDirectoryError, OSError) as exc:
        raise click.ClickException(failure_message(exc)) from None
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(f"results run failed: {exc}") from None
    for row in results["table1"]:
        click.echo(f"{row['model']}: test error {100 * row['test_error']:.2f}%")
    click.echo(f"wrote {md} and {out / 'results.json'} "
               f"({results['total_seconds'] / 60:.1f} min)")
