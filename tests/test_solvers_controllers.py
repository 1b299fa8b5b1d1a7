"""The step-size controllers (cnflow.solvers.controllers): a controller keeps its step
between solves, budget, underflow and NaN/inf errors say where, and a fixed grid
too fine for its budget fails before it is built or the field is evaluated."""

from __future__ import annotations

import math
import time
import tracemalloc

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from solver_checks import FEW, T01, Counted, decay_field, van_der_pol_field

import cnflow
from cnflow.solvers.odeint import make_norm
from cnflow.solvers.runge_kutta import StepStats
from cnflow.solvers.tableaus import TABLEAUS

F64 = torch.float64


# --- one controller interface; errors that say where ---------------------------------

def test_controllers_are_objects_that_keep_their_step_between_solves():
    """integrate asks the controller only; a PI controller reused for a second interval
    starts from the step it carried instead of probing again."""
    from cnflow.solvers.controllers import FixedGrid, PIController, StepControl
    from cnflow.solvers.runge_kutta import integrate

    def func(t, y):
        return -y * (1 + t)

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    tab = TABLEAUS["dopri5"]
    controller = PIController(tab, 1e-8, 1e-8, StepControl(), make_norm("rms", [y0.shape]))
    first, second = StepStats(), StepStats()
    y1 = integrate(func, y0, [0.0, 0.5], tab, controller, first)[-1]
    integrate(func, y1, [0.5, 1.0], tab, controller, second)
    # One probe evaluation in the first solve only: f0, then 6 per attempted step (FSAL).
    steps = first.n_accepted + first.n_rejected
    assert first.nfe == 2 + 6 * steps
    assert second.nfe == 1 + 6 * (second.n_accepted + second.n_rejected)
    grid = FixedGrid("rk4", 0.1, max_num_steps=100)
    ys = integrate(func, y0, [0.0, 1.0], TABLEAUS["rk4"], grid, StepStats())
    direct = cnflow.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), method="rk4",
                           options={"step_size": 0.1})
    assert torch.equal(ys[-1], direct[-1])


def test_budget_underflow_and_nan_errors_say_where():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(cnflow.ODESolverError, match=r"max_num_steps=5 .* at t=.*step size h="):
        cnflow.odeint(van_der_pol_field, torch.tensor([2.0, 0.0], dtype=F64), t * 8,
                      options={"max_num_steps": 5})
    # y' = y², y(0) = 1 blows up at t = 1.
    with pytest.raises(cnflow.ODESolverError, match=r"(underflowed|NaN/inf) at t=(0\.99|1\b)"):
        cnflow.odeint(lambda t, y: y * y, torch.ones(1, dtype=F64), t * 2)
    with pytest.raises(cnflow.ODESolverError, match="NaN/inf"):
        cnflow.odeint(lambda t, y: y * y, torch.ones(1, dtype=F64), t * 2, method="rk4",
                      options={"step_size": 0.25})


# --- fixed-step budget ---------------------------------------------------------------------

def test_tiny_fixed_step_fails_before_building_the_grid():
    func = Counted()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(cnflow.ODESolverError,
                           match=r"step_size'\]=1e-09 .* implies 1e\+09 steps, more than "
                                 r"max_num_steps=100000"):
            cnflow.odeint(func, torch.ones(1), torch.tensor([0.0, 1.0]), method="rk4",
                          options={"step_size": 1e-9})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 1 << 20  # the grid alone would be 8 GB of floats
    assert func.calls == 0
    # A subnormal step makes the step count overflow to inf; it is still a clear error.
    with pytest.raises(cnflow.ODESolverError, match="implies inf steps"):
        cnflow.odeint(func, torch.ones(1), T01, method="euler", options={"step_size": 5e-324})


def test_fixed_step_budget_is_exact():
    # 1 / 0.1 is 10 steps up to round-off: a budget of 10 suffices, 9 does not.
    ys = cnflow.odeint(decay_field, torch.ones(1, dtype=F64), T01, method="rk4",
                       options={"step_size": 0.1, "max_num_steps": 10})
    assert ys[-1].item() == pytest.approx(math.exp(-1), rel=1e-6)
    with pytest.raises(cnflow.ODESolverError, match="implies 10 steps"):
        cnflow.odeint(decay_field, torch.ones(1, dtype=F64), T01, method="rk4",
                      options={"step_size": 0.1, "max_num_steps": 9})
    # Without step_size a fixed-step method steps from output to output.
    func = Counted()
    with pytest.raises(cnflow.ODESolverError, match="the 11 output times imply 10 steps"):
        cnflow.odeint(func, torch.ones(1), torch.linspace(0, 1, 11), method="euler",
                      options={"max_num_steps": 5})
    assert func.calls == 0


@FEW
@given(step=st.floats(1e-7, 2.0), budget=st.integers(1, 300), end=st.floats(0.01, 5.0))
def test_random_fixed_steps_run_or_fail_before_evaluating(step, budget, end):
    func = Counted()
    t = torch.tensor([0.0, end], dtype=F64)
    try:
        sol = cnflow.solve(func, torch.ones(2, dtype=F64), t, method="euler",
                           options={"step_size": step, "max_num_steps": budget})
    except cnflow.ODESolverError as exc:
        assert "step_size" in str(exc) and f"max_num_steps={budget}" in str(exc)
        assert func.calls == 0
        assert end / step > budget - 1e-6
    else:
        assert sol.stats.forward.n_accepted <= budget
        assert sol.stats.forward.n_accepted == max(1, math.ceil(end / step - 1e-9))
