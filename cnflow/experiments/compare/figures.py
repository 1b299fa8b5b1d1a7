"""The comparisons' figures: target and model densities (Figure 4), data, densities and
samples of both models (Figure 5), and their noise → data snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import toydata
from cnflow.experiments.compare.common import (
    EVAL_SEED,
    FIGURE_EXTENT,
    model_label,
)
from cnflow.experiments.compare.density_matching import DensityMatchingConfig
from cnflow.experiments.compare.mle import MLEConfig
from cnflow.flows.base import Flow
from cnflow.plots import flow_log_prob
from cnflow.report import pyplot, save_figure

# Histogram bins per axis of the sample panels.
SAMPLE_BINS = 120
SNAPSHOT_BINS = 100


def _bare(ax: Any, title: str, fontsize: int) -> None:
    """Title an image panel and drop its ticks (the axes carry no information here)."""
    ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])


def density_matching_figure(grids: dict[tuple[str, str, int], np.ndarray],
                            config: DensityMatchingConfig, summary: list[dict[str, Any]],
                            path: Path) -> None:
    """One row per target: its density, then each model's (first seed) with its mean KL.
    ``grids`` maps ``(target, kind, size)`` to a density grid, ``kind="target"`` (size 0)
    for the target itself."""
    plt = pyplot()
    kl = {(s["target"], s["model"], s["size"]): s["kl_mean"] for s in summary}
    models = config.models()
    rows, cols = len(config.targets), 1 + len(models)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows), squeeze=False)
    for row, name in zip(axes, config.targets):
        panels = [("target", 0, f"{name}: target")] + [
            (kind, size, f"{model_label(kind, size)}\nKL {kl[(name, kind, size)]:.2f}")
            for kind, size in models]
        for ax, (kind, size, title) in zip(row, panels):
            ax.imshow(grids[(name, kind, size)], origin="lower", extent=FIGURE_EXTENT,
                      cmap="viridis", aspect="equal", interpolation="nearest")
            _bare(ax, title, 9)
    fig.suptitle(f"Density matching, reverse KL (density of seed {config.seeds[0]}; "
                 f"KL = mean over {len(config.seeds)} seed(s))", fontsize=10)
    save_figure(fig, path)


def mle_figure(trained: dict[tuple[str, str], Flow], config: MLEConfig, path: Path) -> None:
    """One row per data set: the data, both models' densities and both models' samples."""
    from cnflow.plots import density_grid, plot_extent

    plt = pyplot()
    n = config.figure_samples
    fig, axes = plt.subplots(len(config.datasets), 5, figsize=(14, 2.9 * len(config.datasets)),
                             squeeze=False)
    for row, dataset in zip(axes, config.datasets):
        data = toydata.get(dataset).sample(n, seed=EVAL_SEED)
        extent = plot_extent(data)
        bins = [np.linspace(*extent[:2], SAMPLE_BINS + 1),
                np.linspace(*extent[2:], SAMPLE_BINS + 1)]
        panels = [("hist", data, f"data ({dataset})")]
        for kind in ("NF", "CNF"):
            flow = trained[(dataset, kind)]
            panels.append(("density", density_grid(flow_log_prob(flow), extent,
                                                   n=config.grid), f"{kind} density"))
        for kind in ("NF", "CNF"):
            torch.manual_seed(EVAL_SEED)
            samples = trained[(dataset, kind)].sample(n).numpy()
            panels.append(("hist", samples, f"{kind} samples"))
        for ax, (how, values, title) in zip(row, panels):
            if how == "hist":
                ax.hist2d(values[:, 0], values[:, 1], bins=bins, cmap="viridis")
            else:
                ax.imshow(values, origin="lower", extent=extent, cmap="viridis",
                          interpolation="nearest")
            ax.set_aspect("equal")
            ax.set_xlim(extent[:2])
            ax.set_ylim(extent[2:])
            _bare(ax, title, 10)
    fig.suptitle(f"Maximum likelihood: planar NF (K={config.nf_layers}) vs CNF "
                 f"(M={config.cnf_width})", fontsize=11)
    save_figure(fig, path)


def snapshot_figure(trained: dict[tuple[str, str], Flow], config: MLEConfig, path: Path,
                    fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                    n: int = 5000) -> None:
    """Noise → data for both models: CNF time ``t/T``; NF layers applied so far."""
    from cnflow.plots import plot_extent

    plt = pyplot()
    rows = [(d, k) for d in config.datasets for k in ("NF", "CNF")]
    fig, axes = plt.subplots(len(rows), len(fractions),
                             figsize=(2.8 * len(fractions), 2.9 * len(rows)), squeeze=False)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(EVAL_SEED))
    for row, (dataset, kind) in zip(axes, rows):
        flow = trained[(dataset, kind)]
        with torch.no_grad():
            states = flow.trajectory(z, torch.tensor(fractions, dtype=torch.float64)).numpy()
        extent = plot_extent(np.concatenate([states[0], states[-1]]))
        for ax, frac, points in zip(row, fractions, states):
            ax.hist2d(points[:, 0], points[:, 1], bins=SNAPSHOT_BINS,
                      range=[extent[:2], extent[2:]], cmap="viridis")
            ax.set_aspect("equal")
            if kind == "NF":
                title = f"{dataset} NF: layer {round(frac * config.nf_layers)}/{config.nf_layers}"
            else:
                title = f"{dataset} CNF: t = {frac:.2f} T"
            _bare(ax, title, 9)
    save_figure(fig, path)
