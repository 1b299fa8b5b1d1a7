"""The gradient strategies (cnflow.solvers.gradients: direct, checkpoint; the adjoint
beside them): gradcheck, agreement between the modes, checkpointing exact where the
adjoint's reconstruction drifts, and fields without a graph."""

from __future__ import annotations

import pytest
import torch
from solver_checks import ADAPTIVE, Decay

import cnflow

F64 = torch.float64


@pytest.mark.parametrize("gradient", list(cnflow.GRADIENT_MODES))
def test_gradcheck(gradient):
    func = Decay()
    y0 = torch.tensor([1.0, -0.4], dtype=F64, requires_grad=True)
    t = torch.tensor([0.1, 0.6, 1.5], dtype=F64, requires_grad=True)

    def run(y0, t, k, w):
        return cnflow.solve(func, y0, t, rtol=1e-12, atol=1e-12, method="dopri8",
                            gradient=gradient).ys

    assert torch.autograd.gradcheck(run, (y0, t, func.k, func.w), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adjoint_and_checkpoint_match_direct(method):
    grads = {}
    for gradient in cnflow.GRADIENT_MODES:
        func = Decay()
        y0 = torch.tensor([1.0, -0.4], dtype=F64, requires_grad=True)
        t = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=F64, requires_grad=True)
        sol = cnflow.solve(func, y0, t, method=method, rtol=1e-9, atol=1e-9,
                           gradient=gradient)
        (sol.ys ** 2).sum().backward()
        grads[gradient] = torch.cat([y0.grad, t.grad, func.k.grad, func.w.grad.view(1)])
        if gradient != "direct":
            assert sol.stats.backward.nfe > 0
    assert torch.allclose(grads["adjoint"], grads["direct"], rtol=1e-5, atol=1e-6)
    # Checkpointing recomputes the very same steps: equal up to round-off.
    assert torch.allclose(grads["checkpoint"], grads["direct"], rtol=1e-10, atol=1e-12)


def test_checkpoint_is_exact_where_reverse_reconstruction_drifts():
    """Fast decay forward is blow-up backward: the adjoint's reconstructed y(t) drifts."""

    class Stiffish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.nn.Parameter(torch.tensor(40.0, dtype=F64))

        def forward(self, t, y):
            return -self.k * (y - torch.sin(t))

    grads = {}
    for gradient in cnflow.GRADIENT_MODES:
        func = Stiffish()
        y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
        sol = cnflow.solve(func, y0, torch.tensor([0.0, 3.0], dtype=F64), rtol=1e-5,
                           atol=1e-5, gradient=gradient)
        sol.ys[-1].sum().backward()
        grads[gradient] = torch.cat([y0.grad, func.k.grad.view(1)])
    assert torch.allclose(grads["checkpoint"], grads["direct"], rtol=1e-10, atol=1e-14)
    drift = (grads["adjoint"] - grads["direct"]).abs().max()
    assert drift > 1e3 * (grads["checkpoint"] - grads["direct"]).abs().max()


# --- fields without a graph -----------------------------------------------------------

class TimeOnly(torch.nn.Module):
    """``dy/dt = k cos t``: parameters, but no dependence on y."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return self.k * torch.cos(t) * torch.ones_like(y)


class UnusedParameter(torch.nn.Module):
    """A constant field of a module whose parameter it does not use."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return torch.full_like(y, 2.0)


# name: (make the field, its adjoint_params, closed-form y(t_i) from y0, t and k)
NO_GRAPH = {
    "constant": (lambda: lambda t, y: torch.full_like(y, 2.0), (),
                 lambda y0, t, k: y0 + 2.0 * (t - t[0])[:, None]),
    "time_only": (lambda: lambda t, y: torch.sin(t) * torch.ones_like(y), (),
                  lambda y0, t, k: y0 + (torch.cos(t[0]) - torch.cos(t))[:, None]),
    "params_not_y": (TimeOnly, None,
                     lambda y0, t, k: y0 + k * (torch.sin(t) - torch.sin(t[0]))[:, None]),
    "unused_params": (UnusedParameter, None,
                      lambda y0, t, k: y0 + 2.0 * (t - t[0])[:, None] + 0 * k),
    "minus_y_no_params": (lambda: lambda t, y: -y, (),
                          lambda y0, t, k: y0 * torch.exp(-(t - t[0]))[:, None]),
}


@pytest.mark.parametrize("gradient", list(cnflow.GRADIENT_MODES))
@pytest.mark.parametrize("case", list(NO_GRAPH))
def test_gradients_of_fields_without_a_graph(case, gradient):
    make, adjoint_params, exact = NO_GRAPH[case]
    func = make()
    params = list(func.parameters()) if isinstance(func, torch.nn.Module) else []
    k = params[0] if params else torch.tensor(0.0, dtype=F64)

    def grads(ys, y0, t):
        (ys ** 2 * torch.tensor([1.0, -0.5], dtype=F64)).sum().backward()
        out = [y0.grad, t.grad] + [torch.zeros(1, dtype=F64) if p.grad is None
                                   else p.grad.view(1) for p in params]
        for x in [y0, t, *params]:
            x.grad = None
        return torch.cat(out)

    y0 = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.2, 0.7, 1.5], dtype=F64, requires_grad=True)
    expected = grads(exact(y0, t, k), y0, t)
    kwargs = {} if gradient == "direct" else {"adjoint_params": adjoint_params}
    sol = cnflow.solve(func, y0, t, rtol=1e-10, atol=1e-10, gradient=gradient, **kwargs)
    got = grads(sol.ys, y0, t)
    assert torch.allclose(got, expected, rtol=1e-7, atol=1e-9), (got, expected)
