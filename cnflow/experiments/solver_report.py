"""The Markdown report of ``cnflow benchmark solver`` (``results/solver.md``) from the
measurements of :mod:`cnflow.experiments.solver_bench`."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnflow.report import markdown_table

if TYPE_CHECKING:  # only for annotations: solver_bench imports this module
    from cnflow.experiments.solver_bench import SolverBenchConfig

__all__ = ["report_text"]


def _comparison_section(compare: Sequence[dict[str, Any]]) -> list[str]:
    rows = [[r["problem"], r["method"], f"{r['tol']:.0e}", f"{r['cnflow_ms']:.2f}",
             f"{r['torchdiffeq_ms']:.2f}", f"{r['speedup']:.2f}×", r["cnflow_nfe"],
             r["torchdiffeq_nfe"], f"{r['cnflow_err']:.1e}", f"{r['torchdiffeq_err']:.1e}"]
            for r in compare]
    speedups = [r["speedup"] for r in compare]
    return [
        "## cnflow vs torchdiffeq, same problems and tolerances (float64, forward solve)",
        "",
        markdown_table(["problem", "method", "tol", "cnflow ms", "torchdiffeq ms", "speed-up",
                        "cnflow NFE", "torchdiffeq NFE", "cnflow error", "torchdiffeq error"],
                       rows),
        "",
        (f"Geometric-mean speed-up: {float(np.exp(np.mean(np.log(speedups)))):.2f}× "
         f"(range {min(speedups):.2f}×–{max(speedups):.2f}×). torchdiffeq's dopri8 is a "
         "different 8th-order pair (Prince–Dormand RK8(7)13M) from cnflow's (Hairer's "
         "DOP853), so their NFE and error differ by design. torchdiffeq 0.2.5 has no tsit5."),
        "",
    ]


def _memory_section(memory: Sequence[dict[str, Any]]) -> list[str]:
    by_steps: dict[int, dict[str, float]] = {}
    for r in memory:
        by_steps.setdefault(r["steps"], {})[r["gradient"]] = r["graph_mib"]
    rows = [[steps, f"{cols['direct']:.2f}", f"{cols['adjoint']:.3f}",
             f"{cols['checkpoint']:.2f}"] for steps, cols in by_steps.items()]
    first, last = by_steps[min(by_steps)], by_steps[max(by_steps)]
    return [
        "## Memory held for the backward pass as the number of steps grows",
        "",
        ("Peak bytes of the storages autograd saves for backward over one forward solve and "
         "its backward pass, measured by `cnflow.report.SavedTensorMemory` (each storage "
         "counted once, however many saved tensors view it; the field's parameters left "
         "out, they are model state); for the checkpointed mode plus the one state per "
         "accepted step it keeps outside autograd. Fixed-step rk4, batch 256 × 8 float32 "
         "states, MLP 8→64→8. The adjoint's and the checkpointed mode's saved bytes are the "
         "graph of one step that their backward passes rebuild at a time."),
        "",
        markdown_table(["steps", "direct MiB", "adjoint MiB", "checkpoint MiB"], rows),
        "",
        (f"From {min(by_steps)} to {max(by_steps)} steps the adjoint's memory changes by a "
         f"factor {last['adjoint'] / first['adjoint']:.2f}; direct backpropagation's grows "
         f"by {last['direct'] / first['direct']:.0f}×, the checkpointed mode's by "
         f"{last['checkpoint'] / first['checkpoint']:.0f}×."),
        "",
    ]


def _seminorm_section(semi: Sequence[dict[str, Any]]) -> list[str]:
    rows = [[f"{r['tol']:.0e}", r["rms_forward"], r["rms_backward"],
             f"{r['rms_backward'] / r['rms_forward']:.2f}", r["seminorm_backward"],
             f"{r['seminorm_backward'] / r['seminorm_forward']:.2f}"] for r in semi]
    return [
        "## Adjoint NFE, full norm vs seminorm",
        "",
        "Neural ODE (MLP 2→64→2, float64), batch 512, t ∈ [0, 1], dopri5 both ways.",
        "",
        markdown_table(["tol", "forward NFE", "backward NFE (rms)", "backward/forward (rms)",
                        "backward NFE (seminorm)", "backward/forward (seminorm)"], rows),
    ]


def report_text(config: SolverBenchConfig, command: str, compare: Sequence[dict[str, Any]],
                memory: Sequence[dict[str, Any]], semi: Sequence[dict[str, Any]], *,
                load: tuple[float, float], record: str) -> str:
    """The report of one run of the benchmark.

    Args:
        config: its settings.
        command: the command line that regenerates it.
        compare: :func:`~cnflow.experiments.solver_bench.compare_with_torchdiffeq`'s rows.
        memory: :func:`~cnflow.experiments.solver_bench.graph_memory`'s rows.
        semi: :func:`~cnflow.experiments.solver_bench.seminorm_nfe`'s rows.
        load: the machine's load average at the start and at the end.
        record: the link from the report to its ``config.json``.
    """
    import torchdiffeq

    lines = [
        "# Solver benchmark",
        "",
        (f"Regenerate with `{command}` (needs `pip install -e \".[bench]\"`); the settings "
         f"are in [{record}]({record})."),
        "",
        (f"Measured on {platform.processor() or platform.machine()}, 1 CPU thread, torch "
         f"{torch.__version__}, torchdiffeq {getattr(torchdiffeq, '__version__', '?')}. "
         f"Times are medians of {config.repeats} runs after a warm-up; errors are max-abs "
         "against scipy `solve_ivp(method='DOP853', rtol=1e-13, atol=1e-13)`; rtol = atol = "
         f"tol. Machine load average {load[0]:.1f} at the start, {load[1]:.1f} at the end: "
         "absolute times grow with load; the two libraries alternate, so the ratios hold."),
        "",
        *_comparison_section(compare),
        *_memory_section(memory),
        *_seminorm_section(semi),
    ]
    return "\n".join(lines) + "\n"
