"""The experiment's figures: predicted spirals, the latent interpolation and the learning curves.

Every figure goes through :mod:`cnflow.report` (the file-only backend and theme, the atomic
saver); matplotlib and seaborn are imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnflow.experiments.latent_ode.config import MODELS, PAPER_RMSE, WINDOW
from cnflow.experiments.latent_ode.data import Split
from cnflow.experiments.latent_ode.evaluate import predict
from cnflow.experiments.latent_ode.report import by_model_and_n
from cnflow.models.latent_ode import LatentODE
from cnflow.report import pyplot, save_figure


def figure_spirals(test: Split, per_direction: int = 2) -> list[int]:
    """Indices of the first ``per_direction`` clockwise and counter-clockwise test spirals."""
    cw = torch.nonzero(test.data.clockwise).flatten()[:per_direction]
    ccw = torch.nonzero(~test.data.clockwise).flatten()[:per_direction]
    return [int(i) for i in torch.cat([cw, ccw])]


def plot_predictions(models: dict[str, nn.Module], test: Split, path: Path) -> None:
    """Observed points, reconstruction and extrapolation of a few test spirals, model by model.

    One column per spiral (two clockwise, two counter-clockwise), one row per model.
    """
    plt = pyplot()
    indices = figure_spirals(test)
    predictions = {name: predict(model, test).cpu() for name, model in models.items()}
    clean = test.data.clean.cpu()
    fig, axes = plt.subplots(len(models), len(indices),
                             figsize=(3.0 * len(indices), 3.0 * len(models)), squeeze=False)
    for row, (name, pred) in enumerate(predictions.items()):
        for col, i in enumerate(indices):
            ax = axes[row, col]
            x_obs = test.observed(slice(i, i + 1))[0][0].cpu()
            ax.plot(clean[i, :, 0], clean[i, :, 1], color="0.75", lw=1, label="true")
            ax.scatter(x_obs[:, 0], x_obs[:, 1], s=6, color="k", zorder=3, label="observed")
            if not torch.isnan(pred[i, :WINDOW]).all():
                ax.plot(pred[i, :WINDOW, 0], pred[i, :WINDOW, 1], color="tab:blue", lw=1.5,
                        label="reconstruction")
            ax.plot(pred[i, WINDOW:, 0], pred[i, WINDOW:, 1], color="tab:red", lw=1.5, ls="--",
                    label="extrapolation")
            ax.set_aspect("equal")
            direction = "clockwise" if bool(test.data.clockwise[i]) else "counter-clockwise"
            ax.set_title(f"{name}: test {i} ({direction})", fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"Spirals from n = {test.n_obs} irregular observations")
    fig.tight_layout()
    save_figure(fig, path)


def plot_interpolation(model: LatentODE, test: Split, path: Path, steps: int = 7) -> None:
    """Decoded trajectories along the line between a clockwise and a counter-clockwise ``z0``.

    The end points are the posterior means of one clockwise and one counter-clockwise test
    spiral; each panel decodes ``z0 = (1 - a) z_cw + a z_ccw`` over the whole grid.
    """
    import seaborn as sns

    plt = pyplot()
    i_cw, i_ccw = figure_spirals(test, per_direction=1)
    times = test.data.times
    with torch.no_grad():
        x_obs, t_obs = test.observed(torch.tensor([i_cw, i_ccw], device=times.device))
        mean, _ = model.encode(x_obs, t_obs, times[0])
        alphas = torch.linspace(0.0, 1.0, steps, dtype=mean.dtype, device=mean.device)
        z0 = (1 - alphas)[:, None] * mean[0] + alphas[:, None] * mean[1]
        zs, _, _ = model.trajectory(z0, times, gradient="direct")
        paths = model.decode(zs).cpu()
    fig, axes = plt.subplots(1, steps, figsize=(2.2 * steps, 2.6), sharex=True, sharey=True)
    colors = sns.color_palette("viridis", len(times))
    for k, ax in enumerate(axes):
        ax.scatter(paths[k, :, 0], paths[k, :, 1], c=colors, s=3)
        ax.set_title(f"a = {float(alphas[k]):.2f}", fontsize=8)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    fig.suptitle("Latent ODE: interpolating z0 from a clockwise (a = 0) to a counter-clockwise "
                 "(a = 1) spiral (colour: time)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_learning_curves(runs: dict[str, Any], path: Path) -> None:
    """Test extrapolation RMSE against training step, one panel per ``n`` and one line per
    model and seed, paper values dotted.

    Args:
        runs: the ``"runs"`` of a summary written by
            :func:`~cnflow.experiments.latent_ode.experiment.run`.
        path: the PNG file.
    """
    import matplotlib.ticker
    import seaborn as sns

    plt = pyplot()
    ns = sorted({run["n_obs"] for run in runs.values()})
    groups = by_model_and_n(runs)
    colors = dict(zip(MODELS, sns.color_palette("colorblind", len(MODELS)), strict=True))
    fig, axes = plt.subplots(1, len(ns), figsize=(3.6 * len(ns), 3.0), sharey=True,
                             squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        for name in MODELS:
            curves = [run["curve"] for run in groups.get((name, n), []) if run["curve"]["step"]]
            if not curves:
                continue
            # One line per seed, labelled once.
            for index, curve in enumerate(curves):
                ax.plot(curve["step"], curve["rmse_extrapolation"], color=colors[name], lw=1,
                        label=name if index == 0 else None)
            if n in PAPER_RMSE[name]:
                ax.axhline(PAPER_RMSE[name][n], color=colors[name], ls=":", lw=1,
                           label=f"{name} (paper)")
        ax.set_yscale("log")
        # Plain decimals on the log axis: RMSEs read as 0.1, 0.2, ... rather than 10^-1 powers.
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"n = {n}", fontsize=9)
        ax.set_xlabel("training step")
    axes[0, 0].set_ylabel("test extrapolation RMSE")
    # The paper has a value for every n of the default run, so the last panel has every label.
    axes[0, -1].legend(fontsize=7)
    fig.suptitle("Extrapolation error during training (dotted: the paper's Table 2)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
