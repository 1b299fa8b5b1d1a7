"""The ODE-Net results run: Table 1, memory vs depth and Figure 3, from one config.

:func:`run` trains the four Table 1 classifiers with the experiment's protocol, measures
memory against depth and sweeps the trained ODE-Net's tolerance, and writes
``config.json`` (the settings that reproduce it), ``results.json``, the figures and the
Markdown report. :class:`OdenetResultsConfig` holds every setting; the command
``cnflow odenet-results`` (:data:`COMMAND`) has one option per field, and
:func:`command_line` spells out the command that reproduces a config.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnflow import report as reporting
from cnflow.data.mnist import load_named
from cnflow.experiments.odenet.baselines import build_classifier
from cnflow.experiments.odenet.memory import memory_vs_depth, plot_memory_vs_depth
from cnflow.experiments.odenet.report import plot_learning_curves, write_markdown
from cnflow.experiments.odenet.sweep import plot_figure3, tolerance_sweep
from cnflow.experiments.odenet.train import (
    MAX_SEED,
    classifier_training,
    mean_of,
    train_classifier,
)
from cnflow.models.odenet import count_parameters
from cnflow.runs import environment, write_json
from cnflow.solvers import ADAPTIVE_METHODS, FIXED_STEP_METHODS
from cnflow.validation import check_choice, check_float, check_int, check_ints

__all__ = ["COMMAND", "DEFAULT_OUT", "TABLE_MODELS", "OdenetResultsConfig", "command_line",
           "default_md", "run"]

#: The command line of :func:`run` (registered in ``cnflow.cli.main``).
COMMAND = ("cnflow", "odenet-results")
#: Where the committed results live: the figures and JSON files in this folder, the report
#: beside it (:func:`default_md`).
DEFAULT_OUT = Path("results/odenet")
#: The Table 1 classifiers: name for ``build_classifier`` and label in the report.
TABLE_MODELS = (("mlp", "1-layer MLP"), ("resnet", "ResNet"), ("rknet", "RK-Net"),
                ("odenet", "ODE-Net"))


@dataclass
class OdenetResultsConfig:
    """Settings of the ODE-Net results run (paper Section 3: Table 1, Figure 3).

    Attributes:
        data: offline: the packaged MNIST test set split 8000/2000, stratified (not full
            MNIST); digits: sklearn's 8x8 digits (a quick run).
        epochs: training epochs of every Table 1 model.
        batch_size: training images per step.
        lr: Adam's learning rate, decayed by a cosine to 0 over the run.
        seed: initialisation and batch order (the data split has its own fixed seed).
        method: adaptive solver of ODE-Net and RK-Net.
        tol: rtol = atol of ODE-Net and RK-Net while training.
        memory_batch: training images of the one step of memory vs depth.
        memory_multipliers: depth multipliers of memory vs depth.
        memory_base_steps: solver steps of ODE-Net and RK-Net at multiplier 1 (the ResNet
            has its 6 blocks there).
        memory_method: fixed-step solver of memory vs depth.
        sweep_batch: test images of the tolerance sweep.
        sweep_tolerances: rtol = atol of each solve of the tolerance sweep.
        reference_tol: tolerance of the sweep's reference solve (with method), below the
            tightest swept one.
        threads: torch CPU threads for the whole run (timings are per thread count).
    """

    data: str = "offline"
    # At 10 epochs RK-Net and ODE-Net were still improving (the report judges each curve's
    # plateau); 20 take about an hour on one thread.
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    method: str = "dopri5"
    tol: float = 1e-3
    memory_batch: int = 128
    memory_multipliers: tuple[int, ...] = (1, 2, 4, 8)
    memory_base_steps: int = 2
    memory_method: str = "rk4"
    sweep_batch: int = 128
    sweep_tolerances: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5,
                                           1e-5)
    # The dynamics have ReLU kinks, which make high-order methods (dopri8) waste thousands
    # of evaluations; dopri5 three decades below the tightest swept tolerance is affordable.
    reference_tol: float = 1e-8
    threads: int = 1

    def __post_init__(self) -> None:
        check_choice("data", self.data, ("offline", "digits"))
        for name in ("epochs", "batch_size", "memory_base_steps", "sweep_batch", "threads"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        check_int("memory_batch", self.memory_batch, minimum=2)  # fit needs two rows
        check_float("lr", self.lr)
        check_float("tol", self.tol)
        check_choice("method", self.method, ADAPTIVE_METHODS)
        check_choice("memory_method", self.memory_method, FIXED_STEP_METHODS)
        self.memory_multipliers = check_ints("memory_multipliers", self.memory_multipliers)
        self.sweep_tolerances = tuple(self.sweep_tolerances)
        if not self.sweep_tolerances:
            raise ValueError("sweep_tolerances must not be empty")
        for tol in self.sweep_tolerances:
            check_float("sweep_tolerances entries", tol, maximum=1)
        check_float("reference_tol", self.reference_tol, maximum=min(self.sweep_tolerances),
                    allow_maximum=False)


def default_md(out_dir: str | Path) -> Path:
    """The report beside its folder: ``results/odenet`` -> ``results/odenet.md``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.md"


def command_line(config: OdenetResultsConfig, out_dir: str | Path = DEFAULT_OUT,
                 md_path: str | Path | None = None) -> str:
    """The ``cnflow odenet-results`` command that reruns ``config`` into ``out_dir``: the
    settings that differ from the defaults, as the generated options spell them."""
    md = md_path if md_path is not None and Path(md_path) != default_md(out_dir) else None
    # Rerunning replaces these very results, which the folder refuses without --overwrite.
    return reporting.command_line(
        COMMAND, config, changed_only=True,
        out=str(out_dir) if Path(out_dir) != DEFAULT_OUT else None,
        md=str(md) if md is not None else None, overwrite=True)


def _log(message: str) -> None:
    """Progress of the results run on stderr (the full run takes tens of minutes)."""
    print(f"[odenet results] {message}", file=sys.stderr, flush=True)


def _table_row(key: str, label: str, model: torch.nn.Module, result: dict[str, Any]
               ) -> dict[str, Any]:
    """One Table 1 row of a trained model."""
    last = result["epochs"][-1]
    return {
        "model": label, "key": key, "parameters": count_parameters(model),
        "test_error": last["test_error"], "train_loss": last["train_loss"],
        "peak_training_bytes": result["peak_training_bytes"],
        "peak_saved_bytes": result["peak_saved_bytes"], "state_bytes": result["state_bytes"],
        "time_per_epoch_s": mean_of(result["epochs"], "time_s"),
        "nfe_forward_train": mean_of(result["steps"], "nfe_forward"),
        "nfe_backward_train": mean_of(result["steps"], "nfe_backward"),
        "nfe_forward_test": last["nfe_forward_test"], "epochs": result["epochs"],
        "module": repr(model.odeblock) if hasattr(model, "odeblock") else "",
    }


def run(config: OdenetResultsConfig, out_dir: str | Path = DEFAULT_OUT, *,
        md_path: str | Path | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Train the Table 1 classifiers, measure memory vs depth, sweep ODE-Net's tolerance.

    Writes ``out_dir/config.json`` first, then ``out_dir/results.json``, the figures in
    ``out_dir`` and the report ``md_path``.

    Args:
        config: Every setting of the run.
        out_dir: Folder of the JSON and PNG files.
        md_path: The Markdown report; None: beside ``out_dir`` (:func:`default_md`).
        progress: Progress bars; None: only on a terminal.

    Returns:
        Everything that was written to ``results.json``.

    Raises:
        ValueError: ``memory_batch`` or ``sweep_batch`` exceeds the data (before anything
            is written).
        RuntimeError: A model's training stopped before its last epoch (a non-finite loss
            or a failed solve).
    """
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    md_path = default_md(out_dir) if md_path is None else Path(md_path)
    data = load_named(config.data)
    check_int("memory_batch", config.memory_batch, maximum=len(data.y_train))
    check_int("sweep_batch", config.sweep_batch, maximum=len(data.y_test))
    write_json(dataclasses.asdict(config), out_dir / "config.json")
    training = classifier_training(epochs=config.epochs, batch_size=config.batch_size,
                                   lr=config.lr, seed=config.seed)
    table, trained = [], {}
    for key, label in TABLE_MODELS:
        torch.manual_seed(config.seed)
        model = build_classifier(key, in_channels=data.in_channels, image_size=data.image_size,
                                 num_classes=data.num_classes, method=config.method,
                                 rtol=config.tol, atol=config.tol)
        result = train_classifier(model, data, training, progress=progress, desc=label)
        if result["stop_reason"] != "epochs":
            raise RuntimeError(f"{label}: training stopped early ({result['stop_reason']})")
        trained[key] = (model, result)
        table.append(_table_row(key, label, model, result))
        _log(f"{label}: test error {100 * table[-1]['test_error']:.2f}% after "
             f"{time.perf_counter() - started:.0f} s")
    train_seconds = time.perf_counter() - started
    curves_png = plot_learning_curves(table, out_dir / "test_error_per_epoch.png")

    _log("memory vs depth")
    memory_rows = memory_vs_depth(data.x_train[:config.memory_batch],
                                  data.y_train[:config.memory_batch],
                                  multipliers=config.memory_multipliers,
                                  base_steps=config.memory_base_steps,
                                  method=config.memory_method, num_classes=data.num_classes,
                                  seed=config.seed, progress=progress)
    memory_png = plot_memory_vs_depth(memory_rows, out_dir / "memory_vs_depth.png")

    _log(f"tolerance sweep after {time.perf_counter() - started:.0f} s")
    ode_model, ode_result = trained["odenet"]
    x_sweep, y_sweep = data.x_test[:config.sweep_batch], data.y_test[:config.sweep_batch]
    sweeps = [tolerance_sweep(ode_model, x_sweep, y_sweep, config.sweep_tolerances,
                              method=config.method, reference_method=config.method,
                              reference_tol=config.reference_tol, adjoint_options=options)
              for options in (None, {"norm": "seminorm"})]
    figures = plot_figure3(sweeps[0], ode_result["steps"], out_dir, title_suffix=data.name,
                           sweep_seminorm=sweeps[1])

    results = {
        "data": data.describe(), "data_name": data.name,
        "n_train": len(data.y_train), "n_test": len(data.y_test),
        "command": command_line(config, out_dir, md_path),
        "config": dataclasses.asdict(config), "train": training.loop_settings(),
        "table1": table, "memory_vs_depth": memory_rows,
        "figure3_sweep": sweeps[0], "figure3_sweep_seminorm": sweeps[1],
        "odenet_steps": ode_result["steps"],
        "figures": [str(p) for p in [*figures, memory_png, curves_png]],
        "environment": environment(), "processor": platform.processor() or platform.machine(),
        "train_seconds": train_seconds,
    }
    results["total_seconds"] = time.perf_counter() - started
    write_json(results, out_dir / "results.json")
    write_markdown(results, md_path, out_dir)
    return results
