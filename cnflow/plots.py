"""Figures for 2-D flows: data | model density | model samples, and noise → data snapshots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

import toydata
from cnflow.flows.base import Flow


def _save(fig: plt.Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_extent(points: np.ndarray, margin: float = 0.15) -> tuple[float, float, float, float]:
    """A square-ish box around the central 99.8 % of ``points``."""
    lo = np.quantile(points, 0.001, axis=0)
    hi = np.quantile(points, 0.999, axis=0)
    pad = margin * (hi - lo)
    return lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1]


@torch.no_grad()
def density_grid(log_prob, extent: tuple[float, float, float, float], n: int = 120,
                 batch: int = 20000) -> np.ndarray:
    """``exp(log_prob)`` on an ``n × n`` grid; rows are y, columns x (``imshow`` order)."""
    xs = np.linspace(extent[0], extent[1], n)
    ys = np.linspace(extent[2], extent[3], n)
    gx, gy = np.meshgrid(xs, ys, indexing="xy")
    points = np.stack([gx.ravel(), gy.ravel()], 1)
    values = [np.asarray(log_prob(points[i:i + batch])) for i in range(0, len(points), batch)]
    return np.exp(np.concatenate(values)).reshape(n, n)


def _flow_log_prob(flow: Flow):
    anchor = next(flow.buffers())

    def log_prob(points: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(points, dtype=anchor.dtype, device=anchor.device)
        return flow.log_prob(x).cpu().numpy()

    return log_prob


def _show_density(ax: plt.Axes, density: np.ndarray, extent, title: str) -> None:
    ax.imshow(density, origin="lower", extent=extent, cmap="viridis", aspect="equal",
              interpolation="nearest")
    ax.set_title(title)


def _show_points(ax: plt.Axes, points: np.ndarray, extent, title: str) -> None:
    ax.hist2d(points[:, 0], points[:, 1], bins=120, range=[extent[:2], extent[2:]],
              cmap="viridis")
    ax.set_aspect("equal")
    ax.set_title(title)


def density_panels(flow: Flow, dataset: str, path: str | Path, n_samples: int = 20000,
                   seed: int = 0) -> None:
    """Three equal-aspect panels: data, model density on a grid, model samples."""
    data = toydata.get(dataset).sample(n_samples, seed=seed)
    extent = plot_extent(data)
    was_training = flow.training
    flow.eval()
    density = density_grid(_flow_log_prob(flow), extent)
    samples = flow.sample(n_samples).cpu().numpy()
    flow.train(was_training)
    sns.set_theme(style="white")
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    _show_points(axes[0], data, extent, f"data ({dataset})")
    _show_density(axes[1], density, extent, "model density")
    _show_points(axes[2], samples, extent, "model samples")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)


def flow_snapshots(flow, path: str | Path, n: int = 5000, fractions=(0.0, 0.25, 0.5, 0.75, 1.0),
                   seed: int = 0) -> None:
    """Samples carried from noise (t = 0) to data (t = T), as in the paper's Figure 5."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, flow.dim, generator=generator)
    anchor = next(flow.buffers())
    was_training = flow.training
    flow.eval()
    with torch.no_grad():
        states = flow.trajectory(z.to(anchor), torch.tensor(fractions)).cpu().numpy()
    flow.train(was_training)
    extent = plot_extent(np.concatenate([states[0], states[-1]]))
    sns.set_theme(style="white")
    fig, axes = plt.subplots(1, len(fractions), figsize=(3.2 * len(fractions), 3.4))
    for ax, frac, points in zip(axes, fractions, states):
        _show_points(ax, points, extent, f"t = {frac:.2f} T")
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)
