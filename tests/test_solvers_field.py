"""The vector field in canonical form (cnflow.solvers.field): a user's VJP through
flattening and time reversal, and only for the parameters it covers; stage-time
batching; the field's output checked on every evaluation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from solver_checks import FEW, Oscillator, autograd_only, small_gated

import cnflow
from cnflow.flows.cnf import JointField
from cnflow.solvers.tableaus import TABLEAUS

F64 = torch.float64


# --- the VJP protocol through flattening and time reversal; stage times --------------

class PlainOscillator(Oscillator):
    vjp_params = None  # the protocol switched off: autograd


@pytest.mark.parametrize("norm", ["seminorm", "rms"])
def test_user_vjp_survives_flattening_and_time_reversal(norm):
    for times in (torch.linspace(0.0, 2.0, 6, dtype=F64), torch.linspace(2.0, 0.0, 6, dtype=F64)):
        grads = []
        for field in (Oscillator(), PlainOscillator()):
            state = (torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True),
                     torch.tensor([0.2, 0.4], dtype=F64, requires_grad=True))
            xs, vs = cnflow.odeint_adjoint(field, state, times, rtol=1e-9, atol=1e-9,
                                           adjoint_options={"norm": norm})
            loss = (xs ** 2).sum() + vs.sin().sum()
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                loss, (*state, field.k, field.c))]))
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)


def test_own_vjp_is_not_used_for_parameters_it_does_not_cover():
    field = Oscillator()
    extra = torch.tensor(0.5, dtype=F64, requires_grad=True)

    def scaled(t, state):  # a parameter the field's VJP does not know about
        v, a = field(t, state)
        return v, a * extra

    scaled.vjp_params, scaled.vjp, scaled.param_vjp = field.vjp_params, field.vjp, None
    state = (torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64))
    times = torch.tensor([0.0, 1.0], dtype=F64)
    xs, _ = cnflow.odeint_adjoint(scaled, state, times, adjoint_params=(field.k, extra))
    (grad_extra,) = torch.autograd.grad(xs[-1].sum(), (extra,))
    xs, _ = cnflow.odeint(scaled, state, times)
    (expected,) = torch.autograd.grad(xs[-1].sum(), (extra,))
    torch.testing.assert_close(grad_extra, expected, rtol=1e-5, atol=1e-7)


def test_stage_time_batching_gives_the_same_solve():
    dynamics = small_gated()
    field = JointField(dynamics, 2, "closed_form")
    y0 = torch.cat([torch.randn(7, 2, dtype=F64), torch.zeros(7, 1, dtype=F64)], 1)
    times = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    batched = cnflow.solve(field, y0, times, rtol=1e-9, atol=1e-9)
    plain = cnflow.solve(autograd_only(field), y0, times, rtol=1e-9, atol=1e-9)
    assert batched.stats.forward == plain.stats.forward
    torch.testing.assert_close(batched.ys, plain.ys, rtol=0, atol=1e-13)


# --- the vector field's output, on every evaluation ----------------------------------------

def test_output_shape_and_dtype_are_checked_on_every_evaluation():
    def late_shape(t, y):
        return -y if t < 0.5 else -y[:1]

    def late_dtype(t, y):
        return -y if t < 0.5 else -y.double()

    with pytest.raises(ValueError, match=r"shape \(1,\) but the state has shape \(2,\), at "
                                         r"t=0\.[5-9]"):
        cnflow.odeint(late_shape, torch.ones(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match=r"dtype torch.float64 but y0 has dtype torch.float32, "
                                        r"at t=0\.[5-9]"):
        cnflow.odeint(late_dtype, torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4",
                      options={"step_size": 0.1})
    # Decreasing time: the message gives the caller's time, not the solver's internal one.
    with pytest.raises(ValueError, match=r"at t=0\.[0-4]"):
        cnflow.odeint(lambda t, y: -y if t > 0.5 else -y[:1], torch.ones(2),
                      torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"func\(t, y\)\[1\] has shape \(3,\) .* \(2,\)"):
        cnflow.odeint(lambda t, s: (s[0], torch.ones(3) if t > 0.5 else s[1]),
                      (torch.ones(1), torch.ones(2)), torch.tensor([0.0, 1.0]))


@FEW
@given(shape=st.lists(st.integers(1, 3), min_size=0, max_size=3),
       other=st.lists(st.integers(1, 3), min_size=0, max_size=3),
       at=st.floats(0.0, 0.9), method=st.sampled_from(list(TABLEAUS)))
def test_random_mismatched_shapes_are_named(shape, other, at, method):
    if other == shape:
        other = shape + [2]

    def func(t, y):
        return -y if t < at else torch.ones(other)

    options = None if TABLEAUS[method].adaptive else {"step_size": 0.1}
    with pytest.raises(ValueError) as info:
        cnflow.odeint(func, torch.ones(shape), torch.tensor([0.0, 1.0]), method=method,
                      options=options)
    assert f"shape {tuple(other)} but the state has shape {tuple(shape)}" in str(info.value)
