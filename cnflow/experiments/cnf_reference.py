"""The reference CNF of torchdiffeq's ``examples/cnf.py``, re-implemented, and the same field
as cnflow's gated layer, for the speed comparison of :mod:`cnflow.experiments.cnf_bench`.

The reference: a hypernetwork ``t -> (W, B, U, G)`` of shape 1→32→32→(3·M·D + M), the field
``mean_n σ(G_n) ⊙ U_n · tanh(W_nᵀ z + B_n)``, the trace by one autograd call per dimension,
the base density N(0, 0.1 I), trained from t = 10 to 0 with dopri5 at rtol = atol = 1e-5.

:func:`reference_joint_field` runs the *same* field on the *same* weights through cnflow: its
closed-form trace replaces the autograd loop, so equal fields make the NFE comparable and
leave only the implementation to differ.

Example:
    >>> hyper = ReferenceHyperNetwork()
    >>> field, module = reference_joint_field(hyper)
    >>> field(torch.tensor(0.5), torch.zeros(4, D + 1)).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnflow.flows.base import standard_normal_log_prob
from cnflow.flows.cnf import GatedHyperDynamics, JointField

__all__ = ["BASE_VARIANCE", "HIDDEN", "T1", "TOL", "D", "M", "ReferenceCNF", "ReferenceGated",
           "ReferenceHyperNetwork", "base_log_prob", "reference_joint_field"]

M, D, HIDDEN = 64, 2, 32  # units of the field, data dimension, hypernetwork width
T1 = 10.0  # the reference integrates from t = T1 to 0
TOL = 1e-5  # its rtol = atol
BASE_VARIANCE = 0.1  # its base density is N(0, BASE_VARIANCE · I)


class ReferenceHyperNetwork(nn.Module):
    """torchdiffeq examples/cnf.py's hypernetwork: t -> W (M, D), B (M,), gated U (M, D)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN),
                                 nn.Tanh(), nn.Linear(HIDDEN, 3 * M * D + M))

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.net(t.reshape(1, 1)).reshape(-1)
        w = p[: M * D].view(M, D)
        u = p[M * D: 2 * M * D].view(M, D) * torch.sigmoid(p[2 * M * D: 3 * M * D].view(M, D))
        return w, p[3 * M * D:], u


class ReferenceCNF(nn.Module):
    """The reference field with the trace by autograd, one call per dimension."""

    def __init__(self, hyper: ReferenceHyperNetwork) -> None:
        super().__init__()
        self.hyper = hyper

    def forward(self, t: torch.Tensor, states: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        z = states[0]
        with torch.set_grad_enabled(True):
            z.requires_grad_(True)
            w, b, u = self.hyper(t)
            dz = (torch.tanh(z @ w.t() + b) @ u) / M
            trace = sum(torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i]
                        for i in range(D))
        return dz, -trace.view(-1, 1)


class ReferenceGated(GatedHyperDynamics):
    """The reference field as cnflow's gated layer, so that it runs with the closed-form
    trace and vector-Jacobian product: the reference's parameterisation (a gate per unit
    and dimension, the mean over the M units) through the layer's two hooks, ``_hyper`` and
    ``_raw_cotangent``, on the reference's own hypernetwork (shared weights)."""

    def __init__(self, hyper: ReferenceHyperNetwork) -> None:
        super().__init__(D, M, HIDDEN)
        self.hyper = hyper.net

    def _hyper(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        md = M * D
        h1 = torch.tanh(self.hyper[0](x))
        h2 = torch.tanh(self.hyper[2](h1))
        raw = self.hyper[4](h2)
        w, u = raw[:, :md].view(-1, M, D), raw[:, md:2 * md].view(-1, M, D)
        sig = torch.sigmoid(raw[:, 2 * md:3 * md]).view(-1, M, D)
        return h1, h2, w, u * sig / M, raw[:, 3 * md:], sig, u

    def _raw_cotangent(self, sig, u, d_w, d_gated, d_b):
        r = len(d_b)
        return torch.cat([d_w.reshape(r, -1), (d_gated * sig / M).reshape(r, -1),
                          (d_gated * u / M * sig * (1 - sig)).reshape(r, -1), d_b], 1)


def reference_joint_field(hyper: ReferenceHyperNetwork) -> tuple[JointField, ReferenceGated]:
    """The reference field for cnflow's solver: ``[z, log p]`` jointly, closed-form trace
    and VJP; and the module that holds its weights."""
    dynamics = ReferenceGated(hyper)
    return JointField(dynamics, D, "closed_form", block=None), dynamics


def base_log_prob(z: torch.Tensor) -> torch.Tensor:
    """The reference's base log-density, N(0, BASE_VARIANCE · I), of each row of ``z``."""
    scale = math.sqrt(BASE_VARIANCE)
    return standard_normal_log_prob(z / scale) - D * math.log(scale)
