"""Figure 3 analogs: NFE against numerical error, time and backward NFE of a trained ODE-Net.

:func:`tolerance_sweep` solves the trained ODE block at a range of tolerances;
:func:`plot_figure3` draws (a) NFE vs error, (b) NFE vs time, (c) backward vs forward NFE
and (d) NFE over training.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import cnflow
from cnflow.experiments.odenet.train import mean_of
from cnflow.models.odenet import ODENet
from cnflow.report import pyplot, save_figure
from cnflow.validation import check_float

__all__ = ["FIGURE3_FILES", "plot_figure3", "tolerance_sweep"]

#: The files of :func:`plot_figure3`, in the order a, b, c, d.
FIGURE3_FILES = ("fig3a_nfe_vs_error.png", "fig3b_nfe_vs_time.png",
                 "fig3c_backward_vs_forward_nfe.png", "fig3d_nfe_over_training.png")


def tolerance_sweep(model: ODENet, x: torch.Tensor, y: torch.Tensor,
                    tolerances: Sequence[float], *, method: str = "dopri5",
                    reference_method: str = "dopri5", reference_tol: float = 1e-8,
                    adjoint_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """NFE, numerical error, forward time and backward NFE of a trained ODE-Net per tolerance.

    For each tolerance (``rtol = atol = tol``) the ODE block's dynamics are solved from the
    stem's output of ``x``: once without gradients (timed; its error is the relative L2
    distance of ``h(1)`` from a reference solve at ``reference_tol``) and once with the
    adjoint gradient of the cross-entropy loss, which gives the backward NFE.

    Args:
        model: Trained ODE-Net, on the device to compute on.
        x: Images.
        y: Labels.
        tolerances: Tolerances to sweep.
        method: Adaptive solver.
        reference_method: Solver of the reference solution.
        reference_tol: Tolerance of the reference solution.
        adjoint_options: Options of the adjoint solve (e.g. ``{"norm": "seminorm"}``).

    Returns:
        One record per tolerance: ``tol``, ``nfe_forward``, ``nfe_backward``,
        ``relative_error``, ``forward_time_s``, ``test_error`` (of the batch).
    """
    for tol in tolerances:
        check_float("tolerances entries", tol)
    check_float("reference_tol", reference_tol)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x, y = x.to(device), y.to(device)
    func = model.odeblock.func
    params = tuple(func.parameters())
    with torch.no_grad():
        h0 = model.stem(x)
        t = torch.tensor([0.0, 1.0], dtype=h0.dtype, device=h0.device)
        reference = cnflow.solve(func, h0, t, rtol=reference_tol, atol=reference_tol,
                                 method=reference_method).ys[-1]
    extra = {} if adjoint_options is None else {"adjoint_options": dict(adjoint_options)}
    rows = []
    for tol in tolerances:
        with torch.no_grad():
            start = time.perf_counter()
            solution = cnflow.solve(func, h0, t, rtol=tol, atol=tol, method=method)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the time then covers the solve's kernels
            elapsed = time.perf_counter() - start
            h1 = solution.ys[-1]
            error = ((h1 - reference).norm() / reference.norm()).item()
            wrong = (model.head(h1).argmax(1) != y).float().mean().item()
        grad_solution = cnflow.solve(func, h0, t, rtol=tol, atol=tol, method=method,
                                     gradient="adjoint", adjoint_params=params, **extra)
        F.cross_entropy(model.head(grad_solution.ys[-1]), y).backward()
        model.zero_grad(set_to_none=True)
        stats = grad_solution.stats
        rows.append({
            "tol": tol,
            "nfe_forward": int(solution.stats.forward.nfe),
            "nfe_backward": None if stats.backward is None else int(stats.backward.nfe),
            "relative_error": error,
            "forward_time_s": elapsed,
            "test_error": wrong,
        })
    model.train(was_training)
    return rows


def plot_figure3(sweep: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]],
                 out_dir: str | Path, *, title_suffix: str = "",
                 sweep_seminorm: Sequence[dict[str, Any]] | None = None) -> list[Path]:
    """Write the four Figure 3 analogs as PNG files (named :data:`FIGURE3_FILES`).

    (a) NFE vs numerical error and (b) NFE vs forward time come from ``sweep``;
    (c) backward vs forward NFE shows every training step of ``steps`` and the sweep;
    (d) forward and backward NFE over training, per step and per-epoch mean.

    Args:
        sweep: Records of :func:`tolerance_sweep`.
        steps: Per-step records of ``train_classifier`` for the ODE-Net (``epoch``, ``step``
            counted over the run, ``nfe_forward``, ``nfe_backward``).
        out_dir: Folder of the PNG files.
        title_suffix: Appended to every title (e.g. the data set's name).
        sweep_seminorm: Optional second sweep with a seminorm adjoint, shown in (c).

    Returns:
        The paths written, in the order a, b, c, d.
    """
    plt = pyplot()
    import seaborn as sns

    paths = [Path(out_dir) / name for name in FIGURE3_FILES]
    suffix = f"\n{title_suffix}" if title_suffix else ""
    nfe = [r["nfe_forward"] for r in sweep]

    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    ax.plot(nfe, [r["relative_error"] for r in sweep], "o-")
    for r in sweep:
        ax.annotate(f"{r['tol']:.0e}", (r["nfe_forward"], r["relative_error"]), fontsize=6,
                    textcoords="offset points", xytext=(3, 3))
    ax.set(xlabel="NFE forward", ylabel="relative error of h(1)", yscale="log",
           title=f"(a) NFE vs numerical error{suffix}")
    fig.tight_layout()
    save_figure(fig, paths[0])

    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    ax.plot(nfe, [r["forward_time_s"] for r in sweep], "o-")
    ax.set(xlabel="NFE forward", ylabel="forward time (s)",
           title=f"(b) NFE vs forward time{suffix}")
    fig.tight_layout()
    save_figure(fig, paths[1])

    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    train = [s for s in steps if s.get("nfe_backward") is not None]
    if train:
        sns.scatterplot(x=[s["nfe_forward"] for s in train],
                        y=[s["nfe_backward"] for s in train], hue=[s["epoch"] for s in train],
                        palette="viridis", s=14, alpha=0.6, ax=ax, legend="brief")
    ax.plot(nfe, [r["nfe_backward"] for r in sweep], "s-", color="C3", ms=4,
            label="tolerance sweep (trained)")
    if sweep_seminorm:
        ax.plot([r["nfe_forward"] for r in sweep_seminorm],
                [r["nfe_backward"] for r in sweep_seminorm], "^-", color="C1", ms=4,
                label="sweep, seminorm adjoint")
    top = max(nfe + [s["nfe_forward"] for s in train])
    ax.plot([0, top], [0, top], ":", color="grey", label="backward = forward")
    ax.plot([0, top], [0, top / 2], "--", color="grey", label="backward = forward / 2")
    ax.set(xlabel="NFE forward", ylabel="NFE backward",
           title=f"(c) backward vs forward NFE{suffix}")
    ax.legend(fontsize=6, title="epoch / series", title_fontsize=6)
    fig.tight_layout()
    save_figure(fig, paths[2])

    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    n_epochs = max(s["epoch"] for s in steps)
    # Steps are counted over the run; an epoch is one pass, so all epochs have as many.
    position = np.array([s["step"] for s in steps]) * n_epochs / max(s["step"] for s in steps)
    ax.plot(position, [s["nfe_forward"] for s in steps], ".", ms=3, alpha=0.5,
            label="forward, per step")
    if train:
        ax.plot(position, [s["nfe_backward"] for s in steps], ".", ms=3, alpha=0.5,
                label="backward, per step")
    for key, style, label in (("nfe_forward", "o-", "forward, epoch mean"),
                              ("nfe_backward", "s-", "backward, epoch mean")):
        means = [mean_of([s for s in steps if s["epoch"] == e], key)
                 for e in range(1, n_epochs + 1)]
        if all(v is not None for v in means):
            ax.plot(np.arange(1, n_epochs + 1) - 0.5, means, style, label=label)
    ax.set(xlabel="training epoch", ylabel="NFE", title=f"(d) NFE during training{suffix}")
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, paths[3])
    return paths
