"""Problems, fields and settings shared by the solver tests (test_solvers_*.py) and
the CNF's VJP test."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import settings

from cnflow.flows.cnf import GatedHyperDynamics
from cnflow.solvers.tableaus import TABLEAUS

ADAPTIVE = [name for name, tab in TABLEAUS.items() if tab.adaptive]
FIXED = [name for name, tab in TABLEAUS.items() if not tab.adaptive]
F64 = torch.float64
T01 = torch.tensor([0.0, 1.0], dtype=F64)


# Small and without deadline: the whole file runs in seconds on two cores.
FEW = settings(max_examples=30, deadline=None)


class Counted:
    """``dy/dt = -y`` that counts its evaluations."""

    def __init__(self):
        self.calls = 0

    def __call__(self, t, y):
        self.calls += 1
        return -y


def decay_field(t, y):
    return -y


# --- nonlinear problems ------------------------------------------------------------

def lotka_volterra_field(t, y):
    a, b = y[..., 0], y[..., 1]
    return torch.stack([1.5 * a - a * b, -3.0 * b + a * b], -1) if isinstance(y, torch.Tensor) \
        else np.array([1.5 * a - a * b, -3.0 * b + a * b])


def van_der_pol_field(t, y):
    x, v = y[0], y[1]
    return torch.stack([v, 2.0 * (1 - x * x) * v - x]) if isinstance(y, torch.Tensor) \
        else np.array([v, 2.0 * (1 - x * x) * v - x])


# --- fields with parameters and their own VJPs --------------------------------------

class Decay(torch.nn.Module):
    """dy/dt = −k·y·(1 + 0.5 sin t) + w: non-autonomous, parameters k (vector) and w."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor([0.7, 1.3], dtype=F64))
        self.w = torch.nn.Parameter(torch.tensor(0.2, dtype=F64))

    def forward(self, t, y):
        return -self.k * y * (1 + 0.5 * torch.sin(t)) + self.w * torch.tanh(y)


def small_gated(seed: int = 0, width: int = 8, context_dim: int = 0) -> GatedHyperDynamics:
    dynamics = GatedHyperDynamics(2, width=width, hidden=6, context_dim=context_dim).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # away from the identity initialisation: every term matters
        for p in dynamics.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=F64) * 0.5)
    return dynamics


def autograd_only(field):
    """The same field without its own VJP or stage times: the adjoint uses autograd."""
    return lambda t, y: field(t, y)


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
