"""The adjoint (cnflow.solvers.adjoint) against autograd and against the carried parameter
adjoint (float64): the field's own VJPs, the parameter quadrature, the seminorm, the
step size carried across output intervals, and memory that does not grow with steps."""

from __future__ import annotations

import pytest
import torch
from solver_checks import Decay, Oscillator, autograd_only, small_gated

import cnflow
from cnflow.flows.cnf import JointField
from cnflow.solvers import ADAPTIVE_METHODS

F64 = torch.float64


def _seminorm_carried(n: int):
    """The seminorm as a callable: the adjoint cannot tell, so it carries ``a_θ``."""
    return lambda e: e[:2 * n].pow(2).mean().sqrt()


def _gradients(func, params, y0, times, method="dopri5", norm="seminorm", rtol=1e-8,
               first_step=None):
    sol = cnflow.solve(func, y0, times, method=method, rtol=rtol, atol=rtol,
                       gradient="adjoint", adjoint_params=params,
                       adjoint_options={"norm": norm, "first_step": first_step})
    # A loss that uses every output and both columns of the joint state.
    loss = (sol.ys[..., :2].sin().sum() + (sol.ys[..., 2] * torch.linspace(1, 2, len(y0),
                                                                          dtype=F64)).sum())
    grads = torch.autograd.grad(loss, (y0, *params))
    return torch.cat([g.reshape(-1) for g in grads]), sol.stats


@pytest.mark.parametrize("norm", ["seminorm", "rms"])
@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_closed_form_adjoint_equals_autograd_adjoint(method, norm):
    """The CNF's joint field (state and log-density, exact trace), forward and reversed."""
    dynamics = small_gated()
    field = JointField(dynamics, 2, "closed_form")
    params = tuple(dynamics.parameters())
    for times in (torch.tensor([0.0, 0.4, 1.0], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)):
        y0 = torch.cat([torch.randn(6, 2, dtype=F64), torch.zeros(6, 1, dtype=F64)], 1)
        y0.requires_grad_(True)
        closed, stats = _gradients(field, params, y0, times, method, norm)
        auto, auto_stats = _gradients(autograd_only(field), params, y0, times, method, norm)
        assert stats.backward.n_accepted == auto_stats.backward.n_accepted
        torch.testing.assert_close(closed, auto, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_parameter_quadrature_equals_carried_parameter_adjoint(method):
    """Under the seminorm a_θ cannot change a step: summing it over the accepted steps'
    stages is the Runge–Kutta update of the carried a_θ, up to the order of additions."""
    dynamics = small_gated(seed=1)
    params = tuple(dynamics.parameters())
    times = torch.linspace(1.0, 0.0, 5, dtype=F64)
    y0 = torch.cat([torch.randn(5, 2, dtype=F64), torch.zeros(5, 1, dtype=F64)], 1)
    y0.requires_grad_(True)
    for field in (JointField(dynamics, 2, "closed_form"),
                  autograd_only(JointField(dynamics, 2, "closed_form"))):
        # A first step of the whole interval is rejected: rejections are exercised.
        rtol = 1e-10 if method == "dopri8" else 1e-6
        summed, stats = _gradients(field, params, y0, times, method, "seminorm", rtol, 0.25)
        carried, carried_stats = _gradients(field, params, y0, times, method,
                                            _seminorm_carried(y0.numel()), rtol, 0.25)
        assert stats.backward == carried_stats.backward  # the very same steps
        assert stats.backward.n_rejected > 0
        torch.testing.assert_close(summed, carried, rtol=0, atol=1e-10)


class CountingField:
    """The joint field, counting its parameter VJPs (the VJP protocol is passed on)."""

    def __init__(self, field: JointField):
        self.field, self.param_calls = field, 0
        self.vjp_params, self.vjp = field.vjp_params, field.vjp

    def __call__(self, t, y):
        return self.field(t, y)

    def param_vjp(self, partials, weights):
        self.param_calls += 1
        return self.field.param_vjp(partials, weights)


def test_rejected_steps_cost_no_parameter_vjps():
    dynamics = small_gated(seed=1)
    field = CountingField(JointField(dynamics, 2, "closed_form"))
    y0 = torch.cat([torch.randn(5, 2, dtype=F64), torch.zeros(5, 1, dtype=F64)], 1)
    y0.requires_grad_(True)
    _, stats = _gradients(field, tuple(dynamics.parameters()), y0,
                          torch.tensor([1.0, 0.0], dtype=F64), rtol=1e-6, first_step=1.0)
    assert stats.backward.n_rejected > 0
    assert field.param_calls == stats.backward.n_accepted  # one call per accepted step


def test_many_output_times_carry_the_step_size_backwards():
    """One controller serves every interval: no per-interval probe and small first step."""
    field = Oscillator()
    state = (torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True),
             torch.tensor([0.2, 0.4], dtype=F64, requires_grad=True))
    sol = cnflow.solve(field, state, torch.linspace(0, 10, 40, dtype=F64), rtol=1e-6,
                       atol=1e-6, gradient="adjoint", adjoint_options={"norm": "seminorm"})
    sum(y.sum() for y in sol.ys).backward()
    forward, backward = sol.stats.forward, sol.stats.backward
    # Each of the 39 intervals needs at least one step of 6 new evaluations; a restart per
    # interval (probe and a small first step) costs several more.
    assert backward.n_accepted <= 39 + forward.n_accepted
    assert backward.nfe <= 3 * forward.nfe


def test_seminorm_does_not_add_backward_steps():
    nfe = {}
    for norm in ("rms", "seminorm"):
        func = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(),
                                   torch.nn.Linear(32, 4)).double()
        torch.manual_seed(1)
        for p in func.parameters():
            torch.nn.init.normal_(p, std=0.5)
        sol = cnflow.solve(lambda t, y, func=func: func(y), torch.ones(16, 4, dtype=F64),
                           torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-6, atol=1e-6,
                           gradient="adjoint", adjoint_params=tuple(func.parameters()),
                           adjoint_options={"norm": norm})
        sol.ys[-1].pow(2).sum().backward()
        nfe[norm] = sol.stats.backward.nfe
    assert nfe["seminorm"] <= nfe["rms"]


def test_adjoint_memory_is_not_kept_per_step():
    """The adjoint graph holds the outputs only: saved tensors do not grow with steps."""
    saved = {}
    for rtol in (1e-4, 1e-9):
        sizes = []

        def pack(x, sizes=sizes):
            sizes.append(x.numel())
            return x

        func = Decay()
        y0 = torch.ones(2, dtype=F64, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            sol = cnflow.solve(func, y0, torch.tensor([0.0, 5.0], dtype=F64), rtol=rtol,
                               atol=rtol, gradient="adjoint")
        saved[rtol] = (sum(sizes), sol.stats.forward.n_accepted)
    assert saved[1e-9][1] > 5 * saved[1e-4][1]
    assert saved[1e-9][0] == saved[1e-4][0]
