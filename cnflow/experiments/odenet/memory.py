"""Peak training memory as depth grows: ODE-Net (adjoint), RK-Net and ResNet.

ODE-Net's adjoint keeps its memory flat in the number of solver steps, while
backpropagating through the solver (RK-Net) or through more residual blocks (ResNet) grows
it; :func:`memory_vs_depth` measures one training step per depth and
:func:`plot_memory_vs_depth` draws the curves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cnflow.experiments.odenet.baselines import ResNet, RKNet
from cnflow.experiments.odenet.train import measure_training_step
from cnflow.models.odenet import ODENet, count_parameters
from cnflow.report import pyplot, save_figure
from cnflow.solvers import FIXED_STEP_METHODS
from cnflow.validation import check_choice, check_int, check_ints

__all__ = ["MiB", "memory_vs_depth", "plot_memory_vs_depth"]

MiB = 2.0 ** 20


def memory_vs_depth(x: torch.Tensor, y: torch.Tensor, *, multipliers: Sequence[int] = (1, 2, 4, 8),
                    base_steps: int = 2, base_blocks: int = 6, method: str = "rk4",
                    channels: int = 64, num_classes: int = 10, seed: int = 0,
                    device: torch.device | str = "cpu", progress: bool | None = None
                    ) -> list[dict[str, Any]]:
    """Peak training memory as depth grows: solver steps for ODE/RK-Net, blocks for ResNet.

    ODE-Net (adjoint) and RK-Net (direct backpropagation) integrate with a fixed-step
    ``method`` using ``base_steps * m`` steps for each multiplier ``m``;
    the ResNet gets ``base_blocks * m`` residual blocks. Each configuration runs one training
    step (:func:`~cnflow.experiments.odenet.train.measure_training_step`) on ``(x, y)`` from
    a fresh initialisation with the same seed.

    The checkpointed gradient mode is left out on purpose: it keeps one state per step in
    the solver's own record rather than as tensors saved for backward, which
    :class:`~cnflow.report.SavedTensorMemory` cannot see, so its curve would look flat when
    it is not.

    Args:
        x: One batch of images.
        y: Its labels.
        multipliers: Depth multipliers.
        base_steps: Solver steps at multiplier 1.
        base_blocks: Residual blocks at multiplier 1.
        method: Fixed-step solver.
        channels: Width of the networks.
        num_classes: Output classes.
        seed: Seed of every initialisation.
        device: Where to compute.
        progress: Show a progress bar; None: only on a terminal.

    Returns:
        One record per (model, multiplier) with the fields of ``measure_training_step`` and
        ``model``, ``multiplier``, ``depth`` (steps or blocks), ``parameters``.
    """
    multipliers = check_ints("multipliers", multipliers)
    check_int("base_steps", base_steps)
    check_int("base_blocks", base_blocks)
    check_choice("method", method, FIXED_STEP_METHODS)
    in_channels = int(x.shape[1])
    configs: list[tuple[str, int, str, Callable[[], nn.Module]]] = []
    for m in multipliers:
        steps = base_steps * m
        h = 1.0 / steps
        configs += [
            ("ODE-Net (adjoint)", m, f"{steps} {method} steps",
             lambda h=h: ODENet(in_channels=in_channels, num_classes=num_classes,
                                channels=channels, method=method, step_size=h,
                                gradient="adjoint")),
            ("RK-Net (direct)", m, f"{steps} {method} steps",
             lambda h=h: RKNet(in_channels=in_channels, num_classes=num_classes,
                               channels=channels, method=method, step_size=h)),
            ("ResNet", m, f"{base_blocks * m} blocks",
             lambda b=base_blocks * m: ResNet(in_channels=in_channels,
                                              num_classes=num_classes, channels=channels,
                                              num_blocks=b)),
        ]
    rows = []
    # tqdm's disable=None: shown only on a terminal.
    disable = None if progress is None else not progress
    for name, m, depth, make in tqdm(configs, desc="memory vs depth", disable=disable,
                                     leave=False):
        torch.manual_seed(seed)
        model = make().to(device)
        record = measure_training_step(model, x, y)
        record.update(model=name, multiplier=m, depth=depth,
                      parameters=count_parameters(model))
        rows.append(record)
    return rows


def plot_memory_vs_depth(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Plot peak training memory against the depth multiplier, one line per model."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    plt = pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for i, name in enumerate(dict.fromkeys(r["model"] for r in rows)):
        mine = [r for r in rows if r["model"] == name]
        ax.plot([r["multiplier"] for r in mine], [r["peak_training_bytes"] / MiB for r in mine],
                "o-", color=f"C{i}", label=name)
    ax.set(xscale="log", xlabel="depth multiplier (solver steps or residual blocks)",
           ylabel="peak training memory (MiB)", title="Memory vs depth (one training step)")
    ax.set_xticks(sorted({r["multiplier"] for r in rows}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return path
