"""The adjoint (cnflow.solvers.adjoint) against autograd and against the carried parameter
adjoint (float64): the field's own VJPs, the parameter quadrature under every norm, the
seminorm, the step size carried across output intervals, and memory that does not grow
with steps."""

from __future__ import annotations

import pytest
import torch
from solver_checks import Decay, Oscillator, autograd_only, small_gated

import cnflow
from cnflow.flows.cnf import JointField
from cnflow.solvers import ADAPTIVE_METHODS
from cnflow.solvers.controllers import StepControl, make_controller
from cnflow.solvers.problem import make_norm
from cnflow.solvers.runge_kutta import StepStats, integrate
from cnflow.solvers.tableaus import get_tableau

F64 = torch.float64


def _seminorm_as_callable(n: int):
    """The seminorm as a callable: the adjoint cannot tell, so it measures ``a_θ`` too."""
    return lambda e: e[:2 * n].pow(2).mean().sqrt()


def _carried_adjoint(field, params, y0, times, method, norm, rtol, first_step):
    """The textbook adjoint, written independently of cnflow's: ``[y, a, a_θ]`` stepped as
    one Runge–Kutta state (the VJPs by autograd), one controller for all intervals. Returns
    the gradients of :func:`_loss` and the backward solve's stats."""
    with torch.no_grad():
        ys = cnflow.solve(field, y0, times, method=method, rtol=rtol, atol=rtol).ys
    ys_leaf = ys.detach().requires_grad_(True)
    grad_ys, = torch.autograd.grad(_loss(ys_leaf), ys_leaf)
    n, shape = y0.numel(), y0.shape

    def augmented(s, z):
        with torch.enable_grad():
            y = z[:n].view(shape).detach().requires_grad_(True)
            f = field(-s, y)
            grads = torch.autograd.grad(f, (y, *params), z[n:2 * n].view(shape))
        return torch.cat([-f.reshape(-1), *(g.reshape(-1) for g in grads)])

    tab = get_tableau(method)
    controller = make_controller(tab, rtol, rtol, StepControl(first_step=first_step),
                                 make_norm(norm, [], measured=2 * n))
    stats = StepStats()
    a, a_params = grad_ys[-1].reshape(-1), torch.zeros(sum(p.numel() for p in params),
                                                       dtype=F64)
    for i in range(len(times) - 1, 0, -1):
        z = torch.cat([ys[i].reshape(-1), a, a_params])
        z = integrate(augmented, z, [-float(times[i]), -float(times[i - 1])], tab,
                      controller, stats)[-1]
        a, a_params = z[n:2 * n] + grad_ys[i - 1].reshape(-1), z[2 * n:]
    return torch.cat([a, a_params]), stats


def _loss(ys):
    """A loss that uses every output and both columns of the joint state."""
    return (ys[..., :2].sin().sum()
            + (ys[..., 2] * torch.linspace(1, 2, ys.shape[1], dtype=F64)).sum())


def _gradients(func, params, y0, times, method="dopri5", norm="seminorm", rtol=1e-8,
               first_step=None):
    sol = cnflow.solve(func, y0, times, method=method, rtol=rtol, atol=rtol,
                       gradient="adjoint", adjoint_params=params,
                       adjoint_options={"norm": norm, "first_step": first_step})
    grads = torch.autograd.grad(_loss(sol.ys), (y0, *params))
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


@pytest.mark.parametrize("norm", ["seminorm", "seminorm_as_callable", "rms", "max"])
@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_parameter_quadrature_equals_carried_parameter_adjoint(method, norm):
    """a_θ cannot change a stage of (y, a): summing it over the accepted steps' stages is the
    Runge–Kutta update of the carried a_θ, and a full norm measures the same error
    combination of those stages, so the steps, the NFE and the gradients are the carried
    adjoint's, up to the order of additions."""
    dynamics = small_gated(seed=1)
    params = tuple(dynamics.parameters())
    times = torch.tensor([0.0, 0.3, 0.6, 2.0], dtype=F64)  # increasing, as the reference needs
    y0 = torch.cat([torch.randn(5, 2, dtype=F64), torch.zeros(5, 1, dtype=F64)], 1)
    y0.requires_grad_(True)
    if norm == "seminorm_as_callable":
        norm = _seminorm_as_callable(y0.numel())
    # A first step of the whole interval is rejected: rejections are exercised.
    rtol = 1e-10 if method == "dopri8" else 1e-6
    carried, carried_stats = _carried_adjoint(JointField(dynamics, 2, "closed_form"), params,
                                              y0.detach(), times, method, norm, rtol, 1.4)
    assert carried_stats.n_rejected > 0
    for field in (JointField(dynamics, 2, "closed_form"),
                  autograd_only(JointField(dynamics, 2, "closed_form"))):
        summed, stats = _gradients(field, params, y0, times, method, norm, rtol, 1.4)
        assert stats.backward == carried_stats  # the very same steps
        torch.testing.assert_close(summed, carried, rtol=0, atol=1e-10)


def test_a_full_norm_gets_each_steps_parameter_cotangents_in_one_pass():
    """Under a full norm each attempted step asks for its stages' parameter VJPs twice, for
    its error estimate and for its update (the error's scale needs a_θ at the step's end,
    which the accepted step then reuses): never once per stage."""
    dynamics = small_gated(seed=1)
    field = CountingField(JointField(dynamics, 2, "closed_form"))
    y0 = torch.cat([torch.randn(5, 2, dtype=F64), torch.zeros(5, 1, dtype=F64)], 1)
    y0.requires_grad_(True)
    _, stats = _gradients(field, tuple(dynamics.parameters()), y0,
                          torch.tensor([1.0, 0.0], dtype=F64), norm="rms", rtol=1e-6,
                          first_step=1.0)
    backward = stats.backward
    assert backward.n_rejected > 0
    assert field.param_calls == 2 * (backward.n_accepted + backward.n_rejected)


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
