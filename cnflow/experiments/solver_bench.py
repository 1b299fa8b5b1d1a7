"""Solver benchmark: cnflow against torchdiffeq, memory held for backward, seminorm NFE.

Regenerate ``results/solver.md`` with ``cnflow benchmark solver`` (needs the ``bench``
extra: ``pip install -e ".[bench]"``). :func:`run` measures; every number of the report
(:mod:`cnflow.experiments.solver_report`) comes out of this module.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp

import cnflow
from cnflow.experiments.solver_report import report_text
from cnflow.report import SavedTensorMemory, command_line, record_link, write_record
from cnflow.runs import write_text
from cnflow.validation import check_choices, check_float, check_int, check_ints

__all__ = ["SHARED_METHODS", "Problem", "SolverBenchConfig", "compare_with_torchdiffeq",
           "graph_memory", "run", "seminorm_nfe"]

# The adaptive methods of both libraries (torchdiffeq 0.2.5 has no tsit5).
SHARED_METHODS = ("bosh3", "dopri5", "dopri8")


@dataclass
class SolverBenchConfig:
    """What ``cnflow benchmark solver`` measures.

    Attributes:
        repeats: timed runs per configuration (the median is reported).
        methods: adaptive methods compared with torchdiffeq's of the same name.
        tolerances: rtol = atol of the comparison with torchdiffeq.
        steps: numbers of fixed rk4 steps of the memory table.
        seminorm_tolerances: rtol = atol of the adjoint's full norm against its seminorm.
    """

    repeats: int = 5
    methods: tuple[str, ...] = SHARED_METHODS
    tolerances: tuple[float, ...] = (1e-5, 1e-8)
    steps: tuple[int, ...] = (10, 100, 1000)
    seminorm_tolerances: tuple[float, ...] = (1e-4, 1e-6, 1e-8)

    def __post_init__(self) -> None:
        # Each check returns the value, so lists (from JSON) become tuples here.
        check_int("repeats", self.repeats)
        self.methods = check_choices("methods", self.methods, SHARED_METHODS)
        self.steps = check_ints("steps", self.steps)
        for name in ("tolerances", "seminorm_tolerances"):
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"{name} must not be empty")
            setattr(self, name, tuple(check_float(f"{name} entries", v, maximum=1)
                                      for v in values))


F64 = torch.float64


@dataclass
class Problem:
    """A test problem of the comparison, with its reference solution at the output times."""

    name: str
    func: Callable  # torch vector field f(t, y)
    y0: torch.Tensor
    t: torch.Tensor
    reference: np.ndarray  # scipy DOP853 at rtol 1e-13, shape (len(t), *y0.shape)


def _scipy_reference(func: Callable, y0: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    shape = y0.shape

    def f(s, y):
        with torch.no_grad():
            out = func(torch.tensor(s, dtype=F64), torch.from_numpy(y).view(shape))
        return out.reshape(-1).numpy()

    ts = t.numpy()
    sol = solve_ivp(f, (ts[0], ts[-1]), y0.reshape(-1).numpy(), method="DOP853", rtol=1e-13,
                    atol=1e-13, t_eval=ts)
    return sol.y.T.reshape(len(ts), *shape)


def _problems() -> list[Problem]:
    def lotka(t, y):
        return torch.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])

    def vdp(t, y):
        return torch.stack([y[1], 2.0 * (1 - y[0] ** 2) * y[1] - y[0]])

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 2)).double()

    def neural(t, y):
        return net(torch.cat([y, t.expand(y.shape[0], 1)], 1))

    problems = []
    for name, func, y0, t in [
        ("Lotka–Volterra, 2 states, 50 outputs", lotka, torch.tensor([1.0, 1.0], dtype=F64),
         torch.linspace(0, 10, 50, dtype=F64)),
        ("Van der Pol μ=2, 2 states, 50 outputs", vdp, torch.tensor([2.0, 0.0], dtype=F64),
         torch.linspace(0, 10, 50, dtype=F64)),
        ("neural ODE (MLP 3→64→2), batch 512", neural, torch.randn(512, 2, dtype=F64),
         torch.tensor([0.0, 1.0], dtype=F64)),
    ]:
        problems.append(Problem(name, func, y0, t, _scipy_reference(func, y0, t)))
    return problems


def _timed(run: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def compare_with_torchdiffeq(repeats: int = 5, methods: tuple[str, ...] = SHARED_METHODS,
                             tolerances: tuple[float, ...] = (1e-5, 1e-8)
                             ) -> list[dict[str, Any]]:
    """Wall time, NFE and achieved error of both libraries on the same problems."""
    import torchdiffeq

    rows = []
    for problem in _problems():
        for method in methods:
            for tol in tolerances:
                counter = {"nfe": 0}

                def counted(t, y, problem=problem, counter=counter):
                    counter["nfe"] += 1
                    return problem.func(t, y)

                def ours(problem=problem, method=method, tol=tol):
                    with torch.no_grad():
                        return cnflow.odeint(problem.func, problem.y0, problem.t,
                                             method=method, rtol=tol, atol=tol)

                def theirs(problem=problem, method=method, tol=tol, counted=counted):
                    with torch.no_grad():
                        return torchdiffeq.odeint(counted, problem.y0, problem.t,
                                                  method=method, rtol=tol, atol=tol)

                ours_s, ours_y = _timed(ours, repeats)
                theirs_s, theirs_y = _timed(theirs, repeats)
                counter["nfe"] = 0
                theirs()
                nfe_theirs = counter["nfe"]
                with torch.no_grad():
                    nfe_ours = cnflow.solve(problem.func, problem.y0, problem.t, method=method,
                                            rtol=tol, atol=tol).stats.forward.nfe
                ref = problem.reference
                rows.append({
                    "problem": problem.name, "method": method, "tol": tol,
                    "cnflow_ms": 1e3 * ours_s, "torchdiffeq_ms": 1e3 * theirs_s,
                    "speedup": theirs_s / ours_s,
                    "cnflow_nfe": nfe_ours, "torchdiffeq_nfe": nfe_theirs,
                    "cnflow_err": float(np.abs(ours_y.numpy() - ref).max()),
                    "torchdiffeq_err": float(np.abs(theirs_y.numpy() - ref).max()),
                })
    return rows


class _MLPField(torch.nn.Module):
    """An autonomous MLP field ``dim → width → dim``, the same weights every time (seed 1)."""

    def __init__(self, width: int = 64, dim: int = 8):
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, dim))

    def forward(self, t, y):
        return self.net(y)


def graph_memory(step_counts: tuple[int, ...] = (10, 100, 1000)) -> list[dict[str, Any]]:
    """Peak bytes held for the backward pass of one forward and backward solve, as the
    number of steps grows; fixed-step rk4 on a batch of 256 8-d states.

    :class:`cnflow.report.SavedTensorMemory` (the field's parameters excluded) counts the
    storages autograd saves for backward, each once, over the forward solve and the graphs
    the backward pass builds (the adjoint's and the checkpointed mode's per-step
    recomputations). The checkpointed mode keeps one state per accepted step outside
    autograd, where the meter cannot see it, so those states are added.

    Returns:
        One row per (steps, gradient mode): ``saved_mib`` (the meter's peak),
        ``states_mib`` (the checkpointed states; 0 for the other modes) and their sum
        ``graph_mib``.
    """
    rows = []
    for n in step_counts:
        for gradient in cnflow.GRADIENT_MODES:
            func = _MLPField()
            y0 = torch.randn(256, 8, requires_grad=True)
            meter = SavedTensorMemory(exclude=list(func.parameters()))
            with meter:
                sol = cnflow.solve(func, y0, torch.tensor([0.0, 1.0]), method="rk4",
                                   options={"step_size": 1.0 / n}, gradient=gradient)
                sol.ys[-1].pow(2).sum().backward()
                steps = sol.stats.forward.n_accepted
                del sol  # the graph's last reference goes while the meter counts
            states = steps * y0.numel() * y0.element_size() if gradient == "checkpoint" else 0
            rows.append({"steps": steps, "gradient": gradient,
                         "saved_mib": meter.peak_bytes / 2**20, "states_mib": states / 2**20,
                         "graph_mib": (meter.peak_bytes + states) / 2**20})
    return rows


def seminorm_nfe(tols: tuple[float, ...] = (1e-4, 1e-6, 1e-8)) -> list[dict[str, Any]]:
    """Backward/forward NFE of the adjoint with the full norm and with the seminorm."""
    rows = []
    for tol in tols:
        row = {"tol": tol}
        for norm in ("rms", "seminorm"):
            func = _MLPField(width=64, dim=2).double()
            y0 = torch.randn(512, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
            sol = cnflow.solve(func, y0, torch.tensor([0.0, 1.0], dtype=F64), rtol=tol,
                               atol=tol, gradient="adjoint", adjoint_options={"norm": norm})
            sol.ys[-1].pow(2).sum().backward()
            row[f"{norm}_forward"] = sol.stats.forward.nfe
            row[f"{norm}_backward"] = sol.stats.backward.nfe
        rows.append(row)
    return rows


def run(config: SolverBenchConfig, out: str | Path) -> str:
    """Run the three measurements on one thread and write the Markdown report ``out`` and
    the settings to its ``config.json``; return the report."""
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    compare = compare_with_torchdiffeq(config.repeats, config.methods, config.tolerances)
    memory = graph_memory(config.steps)
    semi = seminorm_nfe(config.seminorm_tolerances)
    text = report_text(config, command_line(("cnflow", "benchmark", "solver"), config, changed_only=True, out=out),
                       compare, memory, semi, load=(load_before, os.getloadavg()[0]),
                       record=record_link(out))
    write_text(text, out)
    write_record(config, out)
    return text
