"""The stepping loop (cnflow.solvers.runge_kutta): the measured convergence order of
every method's step and of its dense output, and output times served by the dense
output instead of forced steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from solver_checks import lotka_volterra_field

import cnflow
from cnflow.solvers.runge_kutta import DenseStep, StepStats, rk_step
from cnflow.solvers.tableaus import TABLEAUS, ButcherTableau

F64 = torch.float64


def _fixed_grid_error(tab: ButcherTableau, n: int, theta: float | None) -> float:
    """Error at t=4 (theta None) or at θ inside the last of n equal steps.

    The problem — a rotation with angular speed 1 + t, exact solution
    (cos(t + t²/2), sin(t + t²/2)) — has no error cancellations, so each method shows
    its asymptotic order cleanly.
    """
    func = lambda t, y: torch.stack([-y[1], y[0]]) * (1 + t)

    def exact(t: float) -> np.ndarray:
        return np.array([math.cos(t + t * t / 2), math.sin(t + t * t / 2)])

    y = torch.tensor([1.0, 0.0], dtype=F64)
    h = 4.0 / n
    for i in range(n):
        t = i * h
        y1, ks = rk_step(func, tab, t, y, func(torch.tensor(t, dtype=F64), y), h)
        if i == n - 1 and theta is not None:
            dense = DenseStep(func, tab, t, h, y, y1, ks, StepStats())
            return float(np.abs(dense(theta).numpy() - exact(t + theta * h)).max())
        y = y1
    return float(np.abs(y.numpy() - exact(4.0)).max())


# Step counts in each order's asymptotic range and well above round-off.
_STEPS = {1: 256, 2: 128, 3: 64, 4: 128, 5: 256, 8: 24}


def _measured_order(tab: ButcherTableau, theta: float | None) -> float:
    ns = [_STEPS[tab.order] * 2 ** i for i in range(3)]
    errors = [_fixed_grid_error(tab, n, theta) for n in ns]
    return -np.polyfit(np.log(ns), np.log(errors), 1)[0]


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_measured_convergence_order(name):
    tab = TABLEAUS[name]
    slope = _measured_order(tab, None)
    assert abs(slope - tab.order) < 0.3, f"{name}: measured order {slope:.2f}"


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_dense_output_order(name):
    tab = TABLEAUS[name]
    slope = _measured_order(tab, 0.37)
    # Global error at an interpolated point: O(h^min(order, interpolant order + 1)).
    assert slope > min(tab.order, tab.interp_order + 1) - 0.3, f"{name}: {slope:.2f}"


def test_dense_output_does_not_force_steps():
    t2 = torch.tensor([0.0, 10.0], dtype=F64)
    t200 = torch.linspace(0, 10, 200, dtype=F64)
    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    few = cnflow.solve(lotka_volterra_field, y0, t2, rtol=1e-8, atol=1e-8)
    many = cnflow.solve(lotka_volterra_field, y0, t200, rtol=1e-8, atol=1e-8)
    assert many.stats.forward.n_accepted == few.stats.forward.n_accepted
    assert torch.allclose(many.ys[-1], few.ys[-1], rtol=0, atol=0)
