"""The one stepping loop that runs every explicit Runge–Kutta method.

It sees a single, canonical problem (built in :mod:`cnflow.solvers.odeint`): a flat 1-D
state, strictly increasing output times given as Python floats, and ``func(t, y)`` taking a
0-d time tensor. Step-size control runs on the host in float64 Python numbers; the only
host–device synchronisation per adaptive step is reading the scalar error ratio that
decides acceptance. Fixed-step methods do not synchronise at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from cnflow.solvers.tableaus import ButcherTableau

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Norm = Callable[[torch.Tensor], torch.Tensor]


class ODESolverError(RuntimeError):
    """A solve could not finish: step size underflow, step budget spent, or NaN/inf."""


@dataclass
class StepStats:
    """What one solve did.

    Attributes:
        nfe: evaluations of the vector field.
        n_accepted: accepted steps.
        n_rejected: rejected steps (always 0 for fixed-step methods).
    """

    nfe: int = 0
    n_accepted: int = 0
    n_rejected: int = 0


@dataclass
class StepRecord:
    """Accepted steps of a forward solve, kept by the checkpointed gradient mode."""

    starts: list[tuple[float, float, torch.Tensor]] = field(default_factory=list)
    # For each output after the first: (index of the step holding it, θ or None at a step end).
    outputs: list[tuple[int, float | None]] = field(default_factory=list)


def combine(weights: tuple[float, ...], ks: list[torch.Tensor]) -> torch.Tensor | None:
    acc = None
    for w, k in zip(weights, ks):
        if w != 0.0:
            acc = k * w if acc is None else acc.add(k, alpha=w)
    return acc


def time_tensor(t: float, like: torch.Tensor) -> torch.Tensor:
    # torch.full passes the value as a kernel argument: no host-to-device copy, no sync.
    return torch.full((), t, dtype=like.dtype, device=like.device)


def rk_step(func: Func, tab: ButcherTableau, t: float, y: torch.Tensor, f0: torch.Tensor,
            h: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One step of ``tab`` from ``(t, y)`` with ``f0 = func(t, y)``: returns ``y1`` and the stages.

    A field with ``at_times(ts)`` (see :mod:`cnflow.solvers.field`) gets all of the step's
    stage times at once, which lets it compute what depends on time alone — a hypernetwork
    of ``t`` — once per step instead of once per stage. The times are the same tensors
    either way.
    """
    times = [time_tensor(t + c * h, y) for c in tab.c[1:]]
    at_times = getattr(func, "at_times", None)
    fields = at_times(torch.stack(times)) if at_times is not None and times else None
    ks = [f0]
    y1 = None
    for i in range(1, tab.stages):
        if tab.fsal and i == tab.stages - 1:
            y1 = y.add(combine(tab.b, ks), alpha=h)
            yi = y1
        else:
            yi = y.add(combine(tab.a[i], ks), alpha=h)
        ks.append(func(times[i - 1], yi) if fields is None else fields[i - 1](yi))
    if y1 is None:
        y1 = y.add(combine(tab.b, ks), alpha=h)
    return y1, ks


class DenseStep:
    """Interpolation inside one accepted step; the extra stages are evaluated on first use."""

    def __init__(self, func: Func, tab: ButcherTableau, t: float, h: float, y: torch.Tensor,
                 y1: torch.Tensor, ks: list[torch.Tensor], stats: StepStats):
        self.func, self.tab, self.t, self.h, self.y, self.y1 = func, tab, t, h, y, y1
        self.ks, self.stats = ks, stats
        self._ready = False

    def f1(self) -> torch.Tensor:
        """``func(t1, y1)``: the FSAL stage, or one evaluation that the next step reuses."""
        if self.tab.fsal:
            return self.ks[self.tab.stages - 1]
        if len(self.ks) == self.tab.stages:
            self.ks.append(self.func(time_tensor(self.t + self.h, self.y), self.y1))
            self.stats.nfe += 1
        return self.ks[self.tab.stages]

    def __call__(self, theta: float) -> torch.Tensor:
        if not self._ready:
            self.f1()
            for c, row in zip(self.tab.extra_c, self.tab.extra_a):
                ye = self.y.add(combine(row, self.ks), alpha=self.h)
                self.ks.append(self.func(time_tensor(self.t + c * self.h, self.y), ye))
                self.stats.nfe += 1
            self._ready = True
        weights = tuple(sum(p * theta ** (j + 1) for j, p in enumerate(row))
                        for row in self.tab.interp)
        return self.y.add(combine(weights, self.ks), alpha=self.h)


def fail(reason: str, t: float, h: float, hint: str) -> ODESolverError:
    """The error for a solve that stops at ``t`` with step size ``h``."""
    return ODESolverError(f"{reason} at t={t:.8g} (step size h={h:.3g}). {hint}")


class StepSizeController(Protocol):
    """What :func:`integrate` asks of a step-size controller (see ``controllers``)."""

    max_num_steps: int

    def init(self, times: list[float]) -> None:
        """Start a solve over ``times``, before the first evaluation (budget checks)."""

    def first_step(self, func: Func, t0: float, y0: torch.Tensor, f0: torch.Tensor,
                   stats: StepStats) -> float:
        """The first step to try from ``(t0, y0)`` with ``f0 = func(t0, y0)``."""

    def propose(self, t: float, h: float) -> tuple[float, float]:
        """The step to attempt from ``t`` given the wanted ``h``: ``(h, t + h)``."""

    def adapt(self, t: float, h: float, y: torch.Tensor, y1: torch.Tensor,
              ks: list[torch.Tensor]) -> tuple[bool, float]:
        """Whether the step ``(t, y) -> (t + h, y1)`` with stages ``ks`` is accepted, and the
        step to try next."""

    def finish(self, y: torch.Tensor) -> None:
        """Checks at the end of a solve that ends in ``y``."""


def integrate(func: Func, y0: torch.Tensor, times: list[float], tab: ButcherTableau,
              controller: StepSizeController, stats: StepStats,
              record: StepRecord | None = None,
              on_step: Callable[[bool, float], None] | None = None) -> list[torch.Tensor]:
    """Solve the canonical problem; return the state at every time in ``times``.

    Args:
        func: vector field ``func(t, y)`` on the flat state.
        y0: flat initial state at ``times[0]``.
        times: strictly increasing output times.
        tab: the method.
        controller: chooses and accepts the steps (a fixed grid or an error controller).
        stats: updated in place with evaluations and steps.
        record: if given, every accepted step's start is kept (checkpointed gradients).
        on_step: called after each attempted step with whether it was accepted and its
            size, before anything else is evaluated. A step's stages are the ``f0`` it
            started from and the ``tab.stages - 1`` evaluations after it, in order (the
            adjoint's parameter quadrature relies on this).

    Raises:
        ODESolverError: the solve cannot finish.
    """
    outputs = [y0]
    if len(times) == 1:
        return outputs
    controller.init(times)  # before the first evaluation: a hopeless budget fails at once
    t, y = times[0], y0
    t_end = times[-1]
    f0 = func(time_tensor(t, y), y)
    stats.nfe += 1
    h = controller.first_step(func, t, y, f0, stats)
    next_out = 1
    n_steps = 0
    while next_out < len(times):
        h, t_new = controller.propose(t, h)
        if n_steps >= controller.max_num_steps:
            raise fail(f"{tab.name} used its whole budget of max_num_steps="
                       f"{controller.max_num_steps} steps before reaching t={t_end:.8g}", t, h,
                       "Increase options['max_num_steps'], loosen rtol/atol, or check "
                       "whether the problem is stiff (an explicit method then needs tiny "
                       "steps).")
        n_steps += 1
        y1, ks = rk_step(func, tab, t, y, f0, h)
        stats.nfe += tab.stages - 1
        accept, h_next = controller.adapt(t, h, y, y1, ks)
        if on_step is not None:
            on_step(accept, h)
        if accept:
            stats.n_accepted += 1
            dense = DenseStep(func, tab, t, h, y, y1, ks, stats)
            if record is not None:
                record.starts.append((t, h, y))
            while next_out < len(times) and times[next_out] <= t_new:
                if times[next_out] == t_new:
                    outputs.append(y1)
                    theta = None
                else:
                    theta = (times[next_out] - t) / h
                    outputs.append(dense(theta))
                if record is not None:
                    record.outputs.append((len(record.starts) - 1, theta))
                next_out += 1
            if next_out < len(times):
                f0 = dense.f1()
            t, y = t_new, y1
        else:
            stats.n_rejected += 1
        h = h_next
    controller.finish(y)
    return outputs
