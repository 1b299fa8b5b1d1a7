"""The experiment's one entry point: :func:`run` trains and scores every model for every
observation count of a :class:`LatentConfig` and writes the run folder and the report."""

from __future__ import annotations

import errno
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnflow.experiments.latent_ode.config import WINDOW, LatentConfig, command_line
from cnflow.experiments.latent_ode.data import make_splits
from cnflow.experiments.latent_ode.evaluate import evaluate
from cnflow.experiments.latent_ode.figures import (
    plot_interpolation,
    plot_learning_curves,
    plot_predictions,
)
from cnflow.experiments.latent_ode.report import LOSS_STEPS, write_markdown
from cnflow.experiments.latent_ode.train import TrainResult, train_model
from cnflow.runs import environment, resolve_device, run_directory, save_checkpoint, write_json


def check_writable(path: Path) -> None:
    """Raise OSError now if the file ``path`` could not be written later (nothing is created)."""
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{str(folder)!r} is a file", str(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{str(folder)!r} is not writable", str(path))


def run_key(name: str, n_obs: int, seed: int) -> str:
    """The key of one trained model in ``metrics.json``'s ``"runs"``."""
    return f"{name}/n={n_obs}/seed={seed}"


def run_record(name: str, n_obs: int, seed: int, result: TrainResult,
               metrics: dict[str, Any]) -> dict[str, Any]:
    """What ``metrics.json`` keeps of one trained model."""
    return {
        "model": name,
        "n_obs": n_obs,
        "seed": seed,
        "iterations": len(result.losses),
        "stop_reason": result.stop_reason,
        "train_seconds": result.seconds,
        "loss_first": float(np.mean(result.losses[:LOSS_STEPS])),
        "loss_last": float(np.mean(result.losses[-LOSS_STEPS:])),
        "nfe_forward_mean": result.nfe_forward,
        "nfe_backward_mean": result.nfe_backward,
        "n_parameters": sum(p.numel() for p in result.model.parameters()),
        **metrics,
        "curve": result.curve,
    }


def run(config: LatentConfig, out_dir: str | Path, *, md_path: str | Path | None = None,
        figures: bool = True, overwrite: bool = False, progress: bool | None = None
        ) -> dict[str, Any]:
    """Train and evaluate every model of ``config`` for every observation count and seed;
    write results.

    Writes, atomically, into ``out_dir``: ``config.json`` (the settings, with the first
    results: a run that fails before any leaves no folder behind), ``metrics.json`` (after
    each model, so partial progress is kept; ``"complete"`` is true once every run is in it,
    and ``"command"`` is the ``cnflow latent`` command that regenerates everything),
    ``checkpoints/<model>_n<n>_seed<seed>.pt``, the figures ``predictions_n<n>.png`` and
    ``interpolation_n<n>.png`` (of the first seed's models) and ``learning_curves.png`` and,
    when ``md_path`` is given, the
    Markdown report there. ``out_dir`` is claimed with :func:`cnflow.runs.run_directory`:
    locked while the runs write, and refused if it holds another run unless ``overwrite``
    (which first removes that run's metrics, checkpoints and figures).

    Args:
        config: the settings (checked when it was made).
        out_dir: output folder.
        md_path: where to write the Markdown report (None: no report).
        figures: draw the figures.
        overwrite: replace another run in ``out_dir``.
        progress: show progress bars; None shows them only on a terminal.

    Returns:
        The summary that ``metrics.json`` holds.

    Raises:
        ValueError: the device is not available here (before anything is written).
        OSError: ``md_path`` could not be written (found before anything is written).
        RunDirectoryError: ``out_dir`` holds another run, or another process writes there.
    """
    device = resolve_device(config.device)
    if md_path is not None:
        check_writable(Path(md_path))
    summary: dict[str, Any] = {
        # The thread count is the caller's (the CLI sets it): timings depend on it.
        "command": command_line(config, out_dir, md_path=md_path, figures=figures,
                                threads=torch.get_num_threads()),
        "config": asdict(config),
        "environment": environment(),
        "window": WINDOW,
        "runs": {},
        "complete": False,
        "total_seconds": 0.0,
    }
    start = time.perf_counter()
    with run_directory(out_dir, overwrite=overwrite, clear=("*.png", "checkpoints/*.pt"),
                       resumable=False, keep_lock=False) as folder:
        for seed in config.seeds:
            for n in config.n_obs:
                train, test = (split.to(device) for split in make_splits(config, n, seed))
                trained = {}
                for name in config.models:
                    result = train_model(name, train, config, seed=seed, test=test,
                                         progress=progress)
                    trained[name] = result.model
                    key = run_key(name, n, seed)
                    summary["runs"][key] = run_record(name, n, seed, result,
                                                      evaluate(result.model, test))
                    save_checkpoint({"model": name, "n_obs": n, "seed": seed,
                                     "config": asdict(config),
                                     "state_dict": result.model.state_dict(),
                                     "metrics": summary["runs"][key]},
                                    folder / "checkpoints" / f"{name}_n{n}_seed{seed}.pt")
                    if len(summary["runs"]) == 1:
                        write_json(asdict(config), folder / "config.json")
                    summary["total_seconds"] = time.perf_counter() - start
                    write_json(summary, folder / "metrics.json")
                if figures and seed == config.seeds[0]:
                    plot_predictions(trained, test, folder / f"predictions_n{n}.png")
                    if "latent-ode" in trained:
                        plot_interpolation(trained["latent-ode"], test,
                                           folder / f"interpolation_n{n}.png")
        if figures and config.eval_every:
            plot_learning_curves(summary["runs"], folder / "learning_curves.png")
        summary["complete"] = True
        summary["total_seconds"] = time.perf_counter() - start
        write_json(summary, folder / "metrics.json")
        if md_path is not None:
            write_markdown(summary, md_path, folder)
    return summary
