"""The Markdown report of ``cnflow benchmark cnf`` (``results/cnf.md``) from the measurements
of :mod:`cnflow.experiments.cnf_bench`, with the goals it is judged against."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cnflow.experiments.cnf_reference import HIDDEN, T1, TOL, D, M
from cnflow.report import markdown_table
from cnflow.runs import environment

if TYPE_CHECKING:  # only for annotations: cnf_bench imports this module
    from cnflow.experiments.cnf_bench import CNFBenchConfig

__all__ = ["NLL_GOALS", "SPEED_GOAL", "THROUGHPUT_GOAL", "THROUGHPUT_POINTS", "report_text"]

SPEED_GOAL = 8.0  # training iteration against the reference, like for like (issue 12)
THROUGHPUT_GOAL = 10_000  # points/s at THROUGHPUT_POINTS points, one thread (issue 12)
THROUGHPUT_POINTS = 100_000
NLL_GOALS = {"two_moons": 0.03, "two_circles": 0.05}  # test NLL minus the entropy floor


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _speed_section(config: CNFBenchConfig, speed: dict[str, dict[str, float]]) -> list[str]:
    ref, ours, semi = speed["reference"], speed["cnflow"], speed["cnflow_default"]
    rows = []
    for name, s in (("torchdiffeq reference", ref),
                    ("cnflow, torchdiffeq's norms (like for like)", ours),
                    ("cnflow, its default norms (joint RMS; seminorm adjoint)", semi)):
        rows.append([name, f"{s['seconds_per_iteration']:.4f}", f"{s['nfe_forward']:.1f}",
                     f"{s['nfe_backward']:.1f}",
                     f"{ref['seconds_per_iteration'] / s['seconds_per_iteration']:.1f}×",
                     f"{s['logp_error']:.1e}"])
    speedup = ref["seconds_per_iteration"] / ours["seconds_per_iteration"]
    nfe_ref = ref["nfe_forward"] + ref["nfe_backward"]
    nfe_ours = ours["nfe_forward"] + ours["nfe_backward"]
    return [
        "## 1. Speed against torchdiffeq's reference CNF (`examples/cnf.py`)",
        "",
        (f"Same field (hypernetwork 1→{HIDDEN}→{HIDDEN}→(3·M·D+M), M = {M}, D = {D}), same "
         f"initial weights, same batches of {config.batch} two_circles points, dopri5 at "
         f"rtol = atol = {TOL:g}, adjoint gradients, t from {T1:g} to 0. Reference: "
         "torchdiffeq `odeint_adjoint`, trace by one autograd call per dimension. cnflow: "
         "the same field as its gated layer, with the closed-form trace and vector-Jacobian "
         "product, cnflow's solver and adjoint. Median seconds over "
         f"{config.iterations} training iterations after {config.warmup} warm-up "
         "iterations; NFE are means."),
        "",
        markdown_table(["implementation", "s / iteration", "NFE forward", "NFE backward",
                        "speed-up", "max log p error"], rows),
        "",
        (f"Goal: at least {SPEED_GOAL:g}× faster per iteration — "
         f"**{_verdict(speedup >= SPEED_GOAL)}** ({speedup:.1f}× like for like). Goal: no "
         f"more NFE than the reference — **{_verdict(nfe_ours <= nfe_ref)}** (total NFE "
         f"{nfe_ours:.0f} vs {nfe_ref:.0f}, {100 * (nfe_ours - nfe_ref) / nfe_ref:+.1f} %). "
         "The optimiser steps on the like-for-like model only, so the reference and that "
         "model see the same field throughout; the default-norm row is timed on that same "
         "field. The last column is the largest error in log p of one forward solve of a "
         "batch (float64) against dopri8 at rtol = atol = 1e-11."),
        "",
    ]


def _fit_section(fits: dict[str, dict[str, Any]], links: dict[str, str]) -> list[str]:
    rows = []
    for dataset, m in fits.items():
        goal = NLL_GOALS[dataset]
        rows.append([dataset, f"{m['test_nll']:.4f} ± {m['test_nll_stderr']:.4f}",
                     f"{m['entropy_floor']:.4f}", f"{m['gap']:+.4f}",
                     f"{m['kl_estimate']:.4f} ± {m['kl_stderr']:.4f}",
                     f"≤ {goal} ({_verdict(m['gap'] <= goal)})", m["steps"],
                     f"{m['cpu_seconds']:.0f}", f"{m['wall_seconds']:.0f}"])
    figures = ", ".join(f"[{d}]({link}/density.png) ([snapshots]({link}/snapshots.png))"
                        for d, link in links.items())
    return [
        "## 2. Test NLL of the default `cnflow fit` against the entropy floor",
        "",
        ("Test NLL on fresh held-out points with the exact trace at the eval tolerance; the "
         "floor is the dataset's true entropy (`toydata`). The KL column is the mean of "
         "log p_true − log q over the same points: the same gap, with a much smaller error."),
        "",
        markdown_table(["dataset", "test NLL", "floor", "gap (NLL − floor)",
                        "KL(p‖q) estimate", "goal", "iterations", "CPU s", "wall s"], rows),
        "",
        ("CPU s is the process's CPU time; wall s depends on what else ran on the machine. "
         "The 5-minute goal is judged on the CPU time of the single-threaded run."),
        "",
        "Figures: " + figures,
        "",
    ]


def _throughput_section(config: CNFBenchConfig, rates: Sequence[dict[str, Any]]
                        ) -> list[str]:
    rows = [[r["device"], r["points"], f"{r['seconds']:.2f}", f"{r['points_per_second']:.0f}",
             f"{r['unblocked_points_per_second']:.0f}",
             f"{r['points_per_second'] / r['unblocked_points_per_second']:.1f}x", r["nfe"]]
            for r in rates]
    at_goal = [r for r in rates if r["device"] == "cpu" and r["points"] == THROUGHPUT_POINTS]
    if at_goal:
        rate = at_goal[0]["points_per_second"]
        verdict = (f"Goal on the CPU at {THROUGHPUT_POINTS:,} points: "
                   f"{_verdict(rate >= THROUGHPUT_GOAL)} ({rate:,.0f} points/s).")
    else:
        verdict = f"Goal not judged: this run has no CPU row at {THROUGHPUT_POINTS:,} points."
    lines = [
        "## 3. Exact `log_prob` throughput (trained two_moons model, eval tolerance)",
        "",
        (f"Median of {config.repeats} timings (CPU seconds on the CPU, one thread). The "
         f"field is evaluated in blocks of {rates[0]['block_size']} rows "
         "(`CNF(block_size=…)`); the last column is the same solve with all rows at once, "
         f"timed alternately with it. Goal at {THROUGHPUT_POINTS:,} points: at least "
         f"{THROUGHPUT_GOAL:,} points/s."),
        "",
        markdown_table(["device", "points", "seconds", "points / s", "points / s unblocked",
                        "blocked / unblocked", "NFE"], rows),
        "",
        verdict,
    ]
    if not any(r["device"] == "cuda" for r in rates):
        lines += ["", "No CUDA device was available to this run, so there is no GPU row."]
    return lines


def report_text(config: CNFBenchConfig, command: str, speed: dict[str, dict[str, float]],
                fits: dict[str, dict[str, Any]], rates: Sequence[dict[str, Any]], *,
                load: tuple[float, float], record: str, links: dict[str, str]) -> str:
    """The report of one run of the benchmark.

    Args:
        config: its settings.
        command: the command line that regenerates it.
        speed: :func:`~cnflow.experiments.cnf_bench.speed_comparison`'s summary.
        fits: each default fit's ``metrics.json``, by dataset.
        rates: :func:`~cnflow.experiments.cnf_bench.throughput`'s rows.
        load: the machine's load average at the start and at the end.
        record: the link from the report to its ``config.json``.
        links: the link from the report to each fit's run directory, by dataset.
    """
    env = environment()
    lines = [
        "# CNF benchmark",
        "",
        (f"Regenerate with `{command}` (needs the `bench` extra for torchdiffeq); the "
         f"settings are in [{record}]({record}). Every number below is measured by "
         "`cnflow/experiments/cnf_bench.py`."),
        "",
        (f"Machine: {platform.machine()}, 1 torch thread, torch {env['torch']}, Python "
         f"{env['python']}. Machine load average {load[0]:.1f} at the start, {load[1]:.1f} "
         "at the end (wall times grow with load)."),
        "",
        *_speed_section(config, speed),
        *_fit_section(fits, links),
        *_throughput_section(config, rates),
    ]
    return "\n".join(lines) + "\n"
