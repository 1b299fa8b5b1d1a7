"""Figures of a fitted flow: for 2-D data, data | model density | model samples and noise →
data snapshots; for any dimension, a pair plot of data against model samples; learning
curves. Every figure is written through :func:`cnflow.report.save_figure`."""

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
from cnflow.report import save_figure


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


def flow_log_prob(flow: Flow):
    """``flow.log_prob`` on numpy points (in the flow's dtype and device, without a graph),
    as float64 numpy (for :func:`density_grid`)."""
    anchor = next(flow.buffers())

    def log_prob(points: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(points, dtype=anchor.dtype, device=anchor.device)
        with torch.no_grad():
            return flow.log_prob(x).double().cpu().numpy()

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


def density_panels(flow: Flow, data: np.ndarray | str, path: str | Path,
                   n_samples: int = 20000, seed: int = 0) -> None:
    """Three equal-aspect panels: data, model density on a grid, model samples.

    ``data`` is an ``(n, 2)`` array of reference points or the name of a toy dataset.
    """
    title = "data"
    if isinstance(data, str):
        title = f"data ({data})"
        data = toydata.get(data).sample(n_samples, seed=seed)
    data = np.asarray(data, dtype=np.float64)
    extent = plot_extent(data)
    was_training = flow.training
    flow.eval()
    density = density_grid(flow_log_prob(flow), extent)
    samples = flow.sample(min(n_samples, max(len(data), 5000))).cpu().numpy()
    flow.train(was_training)
    sns.set_theme(style="white")
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    _show_points(axes[0], data, extent, title)
    _show_density(axes[1], density, extent, "model density")
    _show_points(axes[2], samples, extent, "model samples")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)


def pair_plot(flow: Flow, data: np.ndarray, columns, path: str | Path, max_columns: int = 4,
              n: int = 2000) -> None:
    """Seaborn pair plot of data rows against model samples on the first few columns."""
    import pandas as pd

    data = np.asarray(data, dtype=np.float64)[:n]
    was_training = flow.training
    flow.eval()
    samples = flow.sample(len(data)).cpu().numpy()
    flow.train(was_training)
    shown = list(columns)[:max_columns]
    frame = pd.DataFrame(np.concatenate([data, samples])[:, : len(shown)], columns=shown)
    frame["source"] = ["data"] * len(data) + ["model"] * len(samples)
    sns.set_theme(style="white")
    grid = sns.pairplot(frame, hue="source", corner=True, diag_kind="kde", height=2.0,
                        plot_kws={"s": 4, "alpha": 0.4, "linewidth": 0})
    total = len(list(columns))
    grid.figure.suptitle(f"{len(data)} test rows vs {len(samples)} model samples"
                         + (f" (columns 1-{len(shown)} of {total})" if total > len(shown)
                            else ""), y=1.02)
    save_figure(grid.figure, path)


def context_values(context: np.ndarray, most: int = 4) -> tuple[np.ndarray, list[np.ndarray]]:
    """A few representative contexts of ``context`` rows ``(n, k)`` and, for each, the rows
    that belong to it: each distinct value when there are at most ``most`` (labels), else
    the rows nearest to evenly spaced quantiles of the first context column."""
    unique = np.unique(context, axis=0)
    if len(unique) <= most:
        return unique, [np.flatnonzero((context == u).all(1)) for u in unique]
    order = np.argsort(context[:, 0], kind="stable")
    chunks = np.array_split(order, most)
    picks = np.stack([context[chunk[len(chunk) // 2]] for chunk in chunks])
    return picks, chunks


def conditional_panels(flow: Flow, data: np.ndarray, context: np.ndarray, columns,
                       context_columns, path: str | Path, n: int = 2000) -> None:
    """Data beside model samples for a few contexts (first two modelled columns): top row
    the data rows of each context, bottom row samples given it."""
    values, groups = context_values(np.asarray(context, dtype=np.float64))
    was_training = flow.training
    flow.eval()
    context_tensor = torch.as_tensor(values, dtype=flow.dtype, device=flow.device)
    samples = flow.sample(n, context=context_tensor).cpu().numpy()  # (n, contexts, d)
    flow.train(was_training)
    x_axis, y_axis = 0, min(1, data.shape[1] - 1)
    extent = plot_extent(np.asarray(data)[:, [x_axis, y_axis]])
    sns.set_theme(style="white")
    fig, axes = plt.subplots(2, len(values), figsize=(3.4 * len(values), 5.4), squeeze=False)
    for j, (value, rows) in enumerate(zip(values, groups)):
        label = ", ".join(f"{c}={v:.3g}" for c, v in zip(context_columns, value))
        _show_points(axes[0, j], data[rows][:, [x_axis, y_axis]], extent, f"data: {label}")
        _show_points(axes[1, j], samples[:, j][:, [x_axis, y_axis]], extent,
                     f"model | {label}")
    for ax in axes.reshape(-1):
        ax.set(xlabel=columns[x_axis], ylabel=columns[y_axis])
    fig.tight_layout()
    save_figure(fig, path)


def sample_plot(points: np.ndarray, columns, path: str | Path, title: str = "") -> None:
    """Model samples alone: a scatter in 2-D, a histogram in 1-D, a pair plot otherwise."""
    import pandas as pd

    columns = list(columns)
    sns.set_theme(style="white")
    if len(columns) == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
        ax.set(aspect="equal", xlabel=columns[0], ylabel=columns[1], title=title)
    elif len(columns) == 1:
        fig, ax = plt.subplots(figsize=(5, 4))
        sns.histplot(points[:, 0], bins=80, stat="density", ax=ax)
        ax.set(xlabel=columns[0], title=title)
    else:
        shown = columns[:4]
        grid = sns.pairplot(pd.DataFrame(points[:2000, : len(shown)], columns=shown),
                            corner=True, diag_kind="kde", height=2.0,
                            plot_kws={"s": 4, "alpha": 0.4, "linewidth": 0})
        grid.figure.suptitle(title, y=1.02)
        fig = grid.figure
    save_figure(fig, path)


def learning_curves(records: list[dict], path: str | Path, floor: float | None = None) -> None:
    """Training loss and validation NLL against the training step."""
    steps = [r["step"] for r in records]
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 4))
    # Maximum likelihood's training loss is an NLL (the validation NLL's axis); a
    # flow-matching loss is a regression error, drawn on its own axis.
    objectives = [r.get("objective", "mle") for r in records]
    train = [(s, r["train_loss"]) for s, r, o in zip(steps, records, objectives)
             if r["train_loss"] is not None and o == "mle"]
    if train:
        ax.plot(*zip(*train), marker=".", label="training NLL (epoch mean)")
    matching = [(s, r["train_loss"]) for s, r, o in zip(steps, records, objectives)
                if r["train_loss"] is not None and o != "mle"]
    if matching:
        right = ax.twinx()
        right.plot(*zip(*matching), marker=".", color="tab:green", alpha=0.7)
        right.set_ylabel("flow-matching loss (epoch mean)", color="tab:green")
        right.grid(False)
        if train:
            ax.axvline(train[0][0], color="gray", linewidth=0.8, linestyle="--",
                       label="maximum-likelihood fine-tune")
    val = [(s, r["val_nll"]) for s, r in zip(steps, records) if r["val_nll"] is not None]
    if val:
        ax.plot(*zip(*val), marker=".", label="validation NLL")
        best = min(val, key=lambda p: p[1])
        ax.scatter([best[0]], [best[1]], color="black", zorder=3, label="best (restored)")
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle=":", label="entropy floor")
    ax.set(xlabel="training step", ylabel="nats per row", title="Learning curves")
    ax.legend()
    save_figure(fig, path)


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
    save_figure(fig, path)
