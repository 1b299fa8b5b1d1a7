"""Step-size controllers: a fixed grid and a PI error controller, one interface.

:func:`~cnflow.solvers.runge_kutta.integrate` asks a controller for the first step
(``first_step``), for the step to attempt (``propose``) and whether to accept it and what
to try next (``adapt``); it never asks which kind it has. Control runs on the host in
float64 Python numbers: the adaptive controller's one host–device synchronisation per step
reads the scalar error ratio, and the fixed grid synchronises only once, at the end.

A controller keeps its state between solves: the adjoint reuses one for all of its output
intervals, so the step size (and the PI memory) carries over from one interval to the next
instead of restarting from an initial-step probe each time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from cnflow.solvers.runge_kutta import (
    Func,
    Norm,
    ODESolverError,
    StepSizeController,
    StepStats,
    combine,
    fail,
    time_tensor,
)
from cnflow.solvers.tableaus import ButcherTableau

__all__ = ["FixedGrid", "MeasuredQuadrature", "PIController", "StepControl",
           "make_controller"]


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


class FixedGrid:
    """The steps of a fixed-step method, computed on demand instead of stored.

    Without ``step_size`` the grid is the output times; with it, ``t0 + i * step_size`` up to
    the end, whose last step may be shorter. The number of steps is known arithmetically, so
    the budget is checked before anything is allocated or evaluated.
    """

    def __init__(self, name: str, step_size: float | None, max_num_steps: int):
        self.name, self.step_size, self.max_num_steps = name, step_size, max_num_steps
        self.times: list[float] = []
        self.n_steps: int | float = 0
        self.index = 1

    def init(self, times: list[float]) -> None:
        self.times, self.index = times, 1
        if self.step_size is None:
            self.n_steps = len(times) - 1
        else:
            ratio = (times[-1] - times[0]) / self.step_size  # inf for a subnormal step
            # The 1e-9 keeps a span that is a whole number of steps up to round-off from
            # getting one extra, vanishing step.
            self.n_steps = max(1, math.ceil(ratio - 1e-9)) if math.isfinite(ratio) else math.inf
        if self.n_steps <= self.max_num_steps:
            return
        if self.step_size is None:
            what = f"the {len(times)} output times imply {self.n_steps} steps"
            fix = "Raise options['max_num_steps']."
        else:
            what = (f"options['step_size']={self.step_size:.6g} over a time span of "
                    f"{times[-1] - times[0]:.8g} implies {self.n_steps:.6g} steps")
            fix = "Use a larger options['step_size'] or raise options['max_num_steps']."
        raise ODESolverError(f"{self.name}: {what}, more than max_num_steps="
                             f"{self.max_num_steps}. {fix}")

    def _point(self, i: int) -> float:
        """The end of step ``i`` (1-based); the last is exactly the final output time."""
        if self.step_size is None:
            return self.times[i]
        if i >= self.n_steps:
            return self.times[-1]
        return self.times[0] + i * self.step_size

    def first_step(self, func: Func, t0: float, y0: torch.Tensor, f0: torch.Tensor,
                   stats: StepStats) -> float:
        return self._point(1) - t0

    def propose(self, t: float, h: float) -> tuple[float, float]:
        t_new = self._point(self.index)
        return t_new - t, t_new

    def adapt(self, t: float, h: float, y: torch.Tensor, y1: torch.Tensor,
              ks: list[torch.Tensor]) -> tuple[bool, float]:
        self.index += 1
        return True, h

    def finish(self, y: torch.Tensor) -> None:
        # The one synchronisation of a fixed-step solve: NaN/inf anywhere stays to the end.
        if not bool(torch.isfinite(y).all()):
            raise ODESolverError(
                f"{self.name}: the state became NaN/inf between t={self.times[0]:.8g} and "
                f"t={self.times[-1]:.8g}. Try a smaller options['step_size'] or an adaptive "
                "method.")


class MeasuredQuadrature(Protocol):
    """Components solved beside the stepped state as a quadrature, whose error the norm
    still measures: the adjoint's parameter adjoint under a full norm.

    Their derivative depends on the stepped state alone, so they never need to be stepped:
    their Runge–Kutta combinations over a step's stages are asked for only when the error
    norm needs them, with all of the step's stages at once.
    """

    def combination(self, h: float, weights: Sequence[float]) -> torch.Tensor:
        """``h Σ_i w_i g_i`` over the current step's stages ``g_i`` (flat)."""

    def step_ends(self, h: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The components at the current step's start and end (flat), for the error scale."""

    def extend(self, y0: torch.Tensor, f0: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, Func]:
        """The state, derivative and field with the components appended: the
        initial-step probe sees them as if they were stepped."""


def initial_step(func: Func, tab: ButcherTableau, t0: float, y0: torch.Tensor,
                 f0: torch.Tensor, rtol: float, atol: float, norm: Norm,
                 stats: StepStats) -> float:
    """Hairer, Nørsett & Wanner (1993), Sec. II.4: a first step from two derivative samples."""
    scale = atol + rtol * y0.abs()
    d0, d1 = torch.stack([norm(y0 / scale), norm(f0 / scale)]).tolist()
    if not (math.isfinite(d0) and math.isfinite(d1)):
        raise fail("the initial state or the vector field is not finite", t0, 0.0,
                   "Check y0 and the field's parameters (a diverged training run?).")
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    # A field that is huge next to the state makes h0 underflow to zero.
    h0 = max(h0, 1e-12)
    f1 = func(time_tensor(t0 + h0, y0), y0 + h0 * f0)
    stats.nfe += 1
    d2 = float(norm((f1 - f0) / scale)) / h0
    q = tab.controller_order
    dmax = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1.0 / q)
    return min(100 * h0, h1)


class PIController:
    """Error-per-step control with a proportional–integral factor (Hairer & Wanner, IV.2).

    Args:
        tab: an adaptive method (its error weights and controller order).
        rtol, atol: local error tolerances.
        control: the validated options.
        norm: maps the scaled error vector to a scalar.
        probe: the field the initial-step probe evaluates; default the solved one. The
            adjoint passes one that records nothing for its parameter quadrature.
        quadrature: components the norm measures beside the stepped state (appended to
            its error vector, scaled by their own values); None: the state alone.
    """

    def __init__(self, tab: ButcherTableau, rtol: float, atol: float, control: StepControl,
                 norm: Norm, probe: Func | None = None,
                 quadrature: MeasuredQuadrature | None = None):
        self.tab, self.rtol, self.atol, self.control, self.norm = tab, rtol, atol, control, norm
        self.max_num_steps = control.max_num_steps
        self.probe, self.quadrature = probe, quadrature
        q = tab.controller_order
        self.q, self.alpha = q, 1.0 / q - 0.75 * control.pi_beta
        self.h: float | None = control.first_step  # the step to try next; None: probe
        self.r_prev = 1.0
        self.last_rejected = False
        self.t_end = math.inf
        self.wanted = math.inf  # the step wanted before it was shortened to land on t_end

    def init(self, times: list[float]) -> None:
        self.t_end, self.last_rejected = times[-1], False

    def first_step(self, func: Func, t0: float, y0: torch.Tensor, f0: torch.Tensor,
                   stats: StepStats) -> float:
        if self.h is None:
            func = self.probe or func
            with torch.no_grad():
                if self.quadrature is not None:
                    y0, f0, func = self.quadrature.extend(y0, f0)
                self.h = initial_step(func, self.tab, t0, y0, f0, self.rtol, self.atol,
                                      self.norm, stats)
        return min(self.h, self.t_end - t0, self.control.max_step)

    def propose(self, t: float, h: float) -> tuple[float, float]:
        h = min(max(h, self.control.min_step), self.control.max_step)
        self.wanted = h
        t_end = self.t_end
        # Land exactly on t_end instead of stepping a hair short or past it.
        if t + h >= t_end - 1e-12 * max(1.0, abs(t_end)) or t + 1.01 * h >= t_end:
            h, t_new = t_end - t, t_end
        else:
            t_new = t + h
        if h <= 10 * math.ulp(max(abs(t), abs(t_new), 1e-300)):
            raise fail(f"{self.tab.name}: the step size underflowed", t, h,
                       "The solution may blow up here or the problem is stiff; try "
                       "loosening rtol/atol, a lower-order method, or options"
                       "['min_step'] to force progress.")
        return h, t_new

    def error_ratio(self, h: float, y: torch.Tensor, y1: torch.Tensor,
                    ks: list[torch.Tensor]) -> float:
        """The step's scaled error norm; at most 1 means accurate enough."""
        tab = self.tab
        with torch.no_grad():  # step-size control is not differentiated through
            scale = self.atol + self.rtol * torch.maximum(y.abs(), y1.abs())
            q_scale = None
            if self.quadrature is not None:  # once per step, for every error estimate
                start, end = self.quadrature.step_ends(h)
                q_scale = self.atol + self.rtol * torch.maximum(start.abs(), end.abs())
            r5 = self.norm(self._scaled_error(tab.b_error, h, scale, q_scale, ks))
            if tab.b_error_low is not None:
                # DOP853's combination of its 5th- and 3rd-order estimates (Hairer).
                r3 = self.norm(self._scaled_error(tab.b_error_low, h, scale, q_scale, ks))
                denom = torch.sqrt(r5 * r5 + 0.01 * r3 * r3)
                r5 = torch.where(denom > 0, r5 * r5 / denom, torch.zeros_like(denom))
        return float(r5)  # the step's one host-device synchronisation

    def _scaled_error(self, weights: tuple[float, ...], h: float, scale: torch.Tensor,
                      q_scale: torch.Tensor | None, ks: list[torch.Tensor]) -> torch.Tensor:
        """The error estimate of ``weights`` over the stages, divided by its scale; the
        quadrature's components appended, scaled as they would be if stepped."""
        error = combine(weights, ks) * (h / scale)
        if self.quadrature is None:
            return error
        return torch.cat([error, self.quadrature.combination(h, weights) / q_scale])

    def adapt(self, t: float, h: float, y: torch.Tensor, y1: torch.Tensor,
              ks: list[torch.Tensor]) -> tuple[bool, float]:
        control = self.control
        r = self.error_ratio(h, y, y1, ks)
        if not math.isfinite(r):
            raise fail(f"{self.tab.name}: the state or its derivative became NaN/inf "
                       f"within the step from t={t:.8g} to {t + h:.8g}", t, h,
                       "Check the vector field for overflow or division by zero; a "
                       "smaller options['max_step'] can keep steps from leaving the "
                       "region where it is defined.")
        accept = r <= 1.0 or h <= control.min_step
        if r == 0.0:
            raw = control.ifactor
        elif accept:
            raw = control.safety * r ** -self.alpha * self.r_prev ** control.pi_beta
        else:
            raw = control.safety * r ** (-1.0 / self.q)
        factor = min(control.ifactor, max(control.dfactor, raw))
        if not accept or self.last_rejected:
            factor = min(1.0, factor)
        h_next = h * factor
        if accept:
            self.r_prev, self.last_rejected = max(r, 1e-4), False
            if h < self.wanted:
                # A step shortened to land on an output time says little about the step the
                # error allows; the next interval (the adjoint's) starts from the step that
                # was wanted, unless this step's error asks for less.
                h_next = max(h_next, min(self.wanted, h * raw))
        else:
            self.last_rejected = True
        self.h = h_next
        return accept, h_next

    def finish(self, y: torch.Tensor) -> None:
        pass  # every step's error ratio was finite


def make_controller(tab: ButcherTableau, rtol: float, atol: float, control: StepControl,
                    norm: Norm, probe: Func | None = None,
                    quadrature: MeasuredQuadrature | None = None) -> StepSizeController:
    """The controller for ``tab``: error control if it is adaptive, else a fixed grid."""
    if tab.adaptive:
        return PIController(tab, rtol, atol, control, norm, probe, quadrature)
    return FixedGrid(tab.name, control.step_size, control.max_num_steps)
