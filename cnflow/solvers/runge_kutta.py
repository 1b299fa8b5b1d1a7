"""The one stepping loop that runs every explicit Runge–Kutta method.

It sees a single, canonical problem (built in :mod:`cnflow.solvers.odeint`): a flat 1-D
state, strictly increasing output times given as Python floats, and ``func(t, y)`` taking a
0-d time tensor. Step-size control runs on the host in float64 Python numbers; the only
host–device synchronisation per adaptive step is reading the scalar error ratio that
decides acceptance. Fixed-step methods do not synchronise at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class StepControl:
    """Validated solver options (see ``cnflow.odeint``'s ``options``)."""

    step_size: float | None = None
    first_step: float | None = None
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = 100_000
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pi_beta: float = 0.04


@dataclass
class StepRecord:
    """Accepted steps of a forward solve, kept by the checkpointed gradient mode."""

    starts: list[tuple[float, float, torch.Tensor]] = field(default_factory=list)
    # For each output after the first: (index of the step holding it, θ or None at a step end).
    outputs: list[tuple[int, float | None]] = field(default_factory=list)


def _combine(weights: tuple[float, ...], ks: list[torch.Tensor]) -> torch.Tensor | None:
    acc = None
    for w, k in zip(weights, ks):
        if w != 0.0:
            acc = k * w if acc is None else acc.add(k, alpha=w)
    return acc


def _time(t: float, like: torch.Tensor) -> torch.Tensor:
    # torch.full passes the value as a kernel argument: no host-to-device copy, no sync.
    return torch.full((), t, dtype=like.dtype, device=like.device)


def rk_step(func: Func, tab: ButcherTableau, t: float, y: torch.Tensor, f0: torch.Tensor,
            h: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One step of ``tab`` from ``(t, y)`` with ``f0 = func(t, y)``: returns ``y1`` and the stages."""
    ks = [f0]
    y1 = None
    for i in range(1, tab.stages):
        if tab.fsal and i == tab.stages - 1:
            y1 = y.add(_combine(tab.b, ks), alpha=h)
            yi = y1
        else:
            yi = y.add(_combine(tab.a[i], ks), alpha=h)
        ks.append(func(_time(t + tab.c[i] * h, y), yi))
    if y1 is None:
        y1 = y.add(_combine(tab.b, ks), alpha=h)
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
            self.ks.append(self.func(_time(self.t + self.h, self.y), self.y1))
            self.stats.nfe += 1
        return self.ks[self.tab.stages]

    def __call__(self, theta: float) -> torch.Tensor:
        if not self._ready:
            self.f1()
            for c, row in zip(self.tab.extra_c, self.tab.extra_a):
                ye = self.y.add(_combine(row, self.ks), alpha=self.h)
                self.ks.append(self.func(_time(self.t + c * self.h, self.y), ye))
                self.stats.nfe += 1
            self._ready = True
        weights = tuple(sum(p * theta ** (j + 1) for j, p in enumerate(row))
                        for row in self.tab.interp)
        return self.y.add(_combine(weights, self.ks), alpha=self.h)


def _initial_step(func: Func, tab: ButcherTableau, t0: float, y0: torch.Tensor,
                  f0: torch.Tensor, rtol: float, atol: float, norm: Norm,
                  stats: StepStats) -> float:
    """Hairer, Nørsett & Wanner (1993), Sec. II.4: a first step from two derivative samples."""
    scale = atol + rtol * y0.abs()
    d0, d1 = torch.stack([norm(y0 / scale), norm(f0 / scale)]).tolist()
    if not (math.isfinite(d0) and math.isfinite(d1)):
        raise _fail("the initial state or the vector field is not finite", t0, 0.0,
                    "Check y0 and the field's parameters (a diverged training run?).")
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    # A field that is huge next to the state makes h0 underflow to zero.
    h0 = max(h0, 1e-12)
    f1 = func(_time(t0 + h0, y0), y0 + h0 * f0)
    stats.nfe += 1
    d2 = float(norm((f1 - f0) / scale)) / h0
    q = tab.controller_order
    dmax = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1.0 / q)
    return min(100 * h0, h1)


def _fail(reason: str, t: float, h: float, hint: str) -> ODESolverError:
    return ODESolverError(f"{reason} at t={t:.8g} (step size h={h:.3g}). {hint}")


class _FixedGrid:
    """The step ends of a fixed-step solve, computed on demand instead of stored.

    Without ``step_size`` the grid is the output times; with it, ``t0 + i * step_size`` up to
    the end, whose last step may be shorter. The number of steps is known arithmetically, so
    the budget is checked before anything is allocated or evaluated.
    """

    def __init__(self, times: list[float], step_size: float | None):
        self.times, self.step_size = times, step_size
        if step_size is None:
            self.n_steps: int | float = len(times) - 1
        else:
            span = times[-1] - times[0]
            ratio = span / step_size  # inf for a subnormal step over a long span
            # The 1e-9 keeps a span that is a whole number of steps up to round-off from
            # getting one extra, vanishing step.
            self.n_steps = max(1, math.ceil(ratio - 1e-9)) if math.isfinite(ratio) else math.inf

    def check_budget(self, max_num_steps: int, name: str) -> None:
        if self.n_steps <= max_num_steps:
            return
        if self.step_size is None:
            what = f"the {len(self.times)} output times imply {self.n_steps} steps"
            fix = "Raise options['max_num_steps']."
        else:
            what = (f"options['step_size']={self.step_size:.6g} over a time span of "
                    f"{self.times[-1] - self.times[0]:.8g} implies {self.n_steps:.6g} steps")
            fix = "Use a larger options['step_size'] or raise options['max_num_steps']."
        raise ODESolverError(f"{name}: {what}, more than max_num_steps={max_num_steps}. {fix}")

    def point(self, i: int) -> float:
        """The end of step ``i`` (1-based); the last is exactly the final output time."""
        if self.step_size is None:
            return self.times[i]
        if i >= self.n_steps:
            return self.times[-1]
        return self.times[0] + i * self.step_size


def integrate(func: Func, y0: torch.Tensor, times: list[float], tab: ButcherTableau,
              rtol: float, atol: float, control: StepControl, norm: Norm, stats: StepStats,
              record: StepRecord | None = None) -> list[torch.Tensor]:
    """Solve the canonical problem; return the state at every time in ``times``.

    Args:
        func: vector field ``func(t, y)`` on the flat state.
        y0: flat initial state at ``times[0]``.
        times: strictly increasing output times.
        tab: the method.
        rtol, atol: local error tolerances (adaptive methods).
        control: step-size options.
        norm: maps the scaled error vector to a scalar tensor.
        stats: updated in place with evaluations and steps.
        record: if given, every accepted step's start is kept (checkpointed gradients).

    Raises:
        ODESolverError: the solve cannot finish.
    """
    outputs = [y0]
    if len(times) == 1:
        return outputs
    grid = None if tab.adaptive else _FixedGrid(times, control.step_size)
    if grid is not None:
        # Before the first evaluation: a tiny step size fails at once, not after hours.
        grid.check_budget(control.max_num_steps, tab.name)
    t, y = times[0], y0
    t_end = times[-1]
    f0 = func(_time(t, y), y)
    stats.nfe += 1
    next_out = 1

    if tab.adaptive:
        if control.first_step is not None:
            h = control.first_step
        else:
            with torch.no_grad():
                h = _initial_step(func, tab, t, y, f0, rtol, atol, norm, stats)
        h = min(h, t_end - t, control.max_step)
    else:
        grid_index = 1

    q = tab.controller_order
    alpha, beta = 1.0 / q - 0.75 * control.pi_beta, control.pi_beta
    r_prev = 1.0
    last_rejected = False
    n_steps = 0
    while next_out < len(times):
        if n_steps >= control.max_num_steps:
            raise _fail(f"{tab.name} used its whole budget of max_num_steps="
                        f"{control.max_num_steps} steps before reaching t={t_end:.8g}", t,
                        h if grid is None else grid.point(grid_index) - t,
                        "Increase options['max_num_steps'], loosen rtol/atol, or check "
                        "whether the problem is stiff (an explicit method then needs tiny "
                        "steps).")
        n_steps += 1
        if grid is not None:
            t_new = grid.point(grid_index)
            h = t_new - t
        else:
            h = min(max(h, control.min_step), control.max_step)
            # Land exactly on t_end instead of stepping a hair short or past it.
            if t + h >= t_end - 1e-12 * max(1.0, abs(t_end)) or t + 1.01 * h >= t_end:
                h, t_new = t_end - t, t_end
            else:
                t_new = t + h
            if h <= 10 * math.ulp(max(abs(t), abs(t_new), 1e-300)):
                raise _fail(f"{tab.name}: the step size underflowed", t, h,
                            "The solution may blow up here or the problem is stiff; try "
                            "loosening rtol/atol, a lower-order method, or options"
                            "['min_step'] to force progress.")

        y1, ks = rk_step(func, tab, t, y, f0, h)
        stats.nfe += tab.stages - 1

        if grid is not None:
            accept = True
        else:
            with torch.no_grad():  # step-size control is not differentiated through
                scale = atol + rtol * torch.maximum(y.abs(), y1.abs())
                r5 = norm(_combine(tab.b_error, ks) * (h / scale))
                if tab.b_error_low is not None:
                    # DOP853's combination of its 5th- and 3rd-order estimates (Hairer).
                    r3 = norm(_combine(tab.b_error_low, ks) * (h / scale))
                    denom = torch.sqrt(r5 * r5 + 0.01 * r3 * r3)
                    r5 = torch.where(denom > 0, r5 * r5 / denom, torch.zeros_like(denom))
            r = float(r5)  # the step's one host-device synchronisation
            if not math.isfinite(r):
                raise _fail(f"{tab.name}: the state or its derivative became NaN/inf "
                            f"within the step from t={t:.8g} to {t + h:.8g}", t, h,
                            "Check the vector field for overflow or division by zero; a "
                            "smaller options['max_step'] can keep steps from leaving the "
                            "region where it is defined.")
            accept = r <= 1.0 or h <= control.min_step
            if r == 0.0:
                factor = control.ifactor
            elif accept:
                factor = control.safety * r ** -alpha * r_prev ** beta
            else:
                factor = control.safety * r ** (-1.0 / q)
            factor = min(control.ifactor, max(control.dfactor, factor))
            if not accept or last_rejected:
                factor = min(1.0, factor)

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
            if grid is not None:
                grid_index += 1
            else:
                r_prev = max(r, 1e-4)
                last_rejected = False
        else:
            stats.n_rejected += 1
            last_rejected = True
        if grid is None:
            h = h * factor

    if grid is not None and not bool(torch.isfinite(y).all()):
        raise ODESolverError(f"{tab.name}: the state became NaN/inf between t={times[0]:.8g} "
                             f"and t={t_end:.8g}. Try a smaller options['step_size'] or an "
                             "adaptive method.")
    return outputs
