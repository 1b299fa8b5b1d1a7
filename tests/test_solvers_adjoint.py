"""The adjoint's VJP protocol, the parameter quadrature and the step size carried across
output intervals, against autograd and against the carried parameter adjoint (float64)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import cnflow
from cnflow.flows.cnf import GatedHyperDynamics, JointField
from cnflow.solvers import ADAPTIVE_METHODS, GRADIENT_MODES, GRADIENTS, METHODS, Gradient

F64 = torch.float64


def _gated(seed: int = 0, width: int = 8) -> GatedHyperDynamics:
    dynamics = GatedHyperDynamics(2, width=width, hidden=6).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # away from the identity initialisation: every term matters
        for p in dynamics.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=F64) * 0.5)
    return dynamics


def _autograd_only(field):
    """The same field without its own VJP or stage times: the adjoint uses autograd."""
    return lambda t, y: field(t, y)


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


def test_gated_joint_vjp_equals_autograd():
    dynamics = _gated()
    field = JointField(dynamics, 2, "closed_form")
    params = tuple(dynamics.parameters())
    assert field.vjp_params == params
    y, a = torch.randn(9, 3, dtype=F64), torch.randn(9, 3, dtype=F64)
    ts = torch.tensor([0.3, -0.8], dtype=F64)
    partials, expected = [], []
    for t, stage in zip(ts, field.at_times(ts)):
        f, a_y, partial = field.vjp(t, y, a)
        with torch.enable_grad():
            leaf = y.clone().requires_grad_(True)
            reference = field(t, leaf)
            grads = torch.autograd.grad(reference, (leaf, *params), a)
        torch.testing.assert_close(f, reference.detach(), rtol=0, atol=1e-14)
        torch.testing.assert_close(a_y, grads[0], rtol=0, atol=1e-13)
        # The stage-time path: the same field and VJP from one batched hypernetwork call.
        torch.testing.assert_close(stage(y), f, rtol=0, atol=1e-14)
        torch.testing.assert_close(stage.vjp(y, a)[1], a_y, rtol=0, atol=1e-14)
        partials.append(partial)
        expected.append(grads[1:])
    weights = torch.tensor([0.25, -1.5], dtype=F64)
    combined = field.param_vjp(partials, weights)
    for i, g in enumerate(combined):
        torch.testing.assert_close(g, weights[0] * expected[0][i] + weights[1] * expected[1][i],
                                   rtol=0, atol=1e-13)


@pytest.mark.parametrize("norm", ["seminorm", "rms"])
@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_closed_form_adjoint_equals_autograd_adjoint(method, norm):
    """The CNF's joint field (state and log-density, exact trace), forward and reversed."""
    dynamics = _gated()
    field = JointField(dynamics, 2, "closed_form")
    params = tuple(dynamics.parameters())
    for times in (torch.tensor([0.0, 0.4, 1.0], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)):
        y0 = torch.cat([torch.randn(6, 2, dtype=F64), torch.zeros(6, 1, dtype=F64)], 1)
        y0.requires_grad_(True)
        closed, stats = _gradients(field, params, y0, times, method, norm)
        auto, auto_stats = _gradients(_autograd_only(field), params, y0, times, method, norm)
        assert stats.backward.n_accepted == auto_stats.backward.n_accepted
        torch.testing.assert_close(closed, auto, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_parameter_quadrature_equals_carried_parameter_adjoint(method):
    """Under the seminorm a_θ cannot change a step: summing it over the accepted steps'
    stages is the Runge–Kutta update of the carried a_θ, up to the order of additions."""
    dynamics = _gated(seed=1)
    params = tuple(dynamics.parameters())
    times = torch.linspace(1.0, 0.0, 5, dtype=F64)
    y0 = torch.cat([torch.randn(5, 2, dtype=F64), torch.zeros(5, 1, dtype=F64)], 1)
    y0.requires_grad_(True)
    for field in (JointField(dynamics, 2, "closed_form"),
                  _autograd_only(JointField(dynamics, 2, "closed_form"))):
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
    dynamics = _gated(seed=1)
    field = CountingField(JointField(dynamics, 2, "closed_form"))
    y0 = torch.cat([torch.randn(5, 2, dtype=F64), torch.zeros(5, 1, dtype=F64)], 1)
    y0.requires_grad_(True)
    _, stats = _gradients(field, tuple(dynamics.parameters()), y0,
                          torch.tensor([1.0, 0.0], dtype=F64), rtol=1e-6, first_step=1.0)
    assert stats.backward.n_rejected > 0
    assert field.param_calls == stats.backward.n_accepted  # one call per accepted step


class Oscillator(torch.nn.Module):
    """A damped, forced oscillator on a tuple state with a hand-written VJP."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.7, dtype=F64))
        self.c = torch.nn.Parameter(torch.tensor([0.3, 0.1], dtype=F64))

    @property
    def vjp_params(self):
        return (self.k, self.c)

    def forward(self, t, state):
        x, v = state
        return v, -self.k * x - self.c * v + torch.sin(t)

    def vjp(self, t, state, cotangent):
        x, v = state
        ax, av = cotangent
        return self.forward(t, state), (-self.k * av, ax - self.c * av), (x, v, av)

    def param_vjp(self, partials, weights):
        dk = sum(w * -(x * av).sum() for (x, v, av), w in zip(partials, weights))
        dc = sum(w * -(v * av) for (x, v, av), w in zip(partials, weights))
        return dk, dc


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


def test_stage_time_batching_gives_the_same_solve():
    dynamics = _gated()
    field = JointField(dynamics, 2, "closed_form")
    y0 = torch.cat([torch.randn(7, 2, dtype=F64), torch.zeros(7, 1, dtype=F64)], 1)
    times = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    batched = cnflow.solve(field, y0, times, rtol=1e-9, atol=1e-9)
    plain = cnflow.solve(_autograd_only(field), y0, times, rtol=1e-9, atol=1e-9)
    assert batched.stats.forward == plain.stats.forward
    torch.testing.assert_close(batched.ys, plain.ys, rtol=0, atol=1e-13)


def test_registries_and_import_order():
    assert GRADIENT_MODES == tuple(GRADIENTS) == ("direct", "adjoint", "checkpoint")
    assert all(issubclass(kind, Gradient) for kind in GRADIENTS.values())
    assert set(ADAPTIVE_METHODS) | set(cnflow.solvers.FIXED_STEP_METHODS) == set(METHODS)
    # Every solver module imports on its own: no module needs another imported first.
    for module in ("adjoint", "gradients", "problem", "field", "controllers", "runge_kutta"):
        subprocess.run([sys.executable, "-c", f"import cnflow.solvers.{module}"], check=True)
