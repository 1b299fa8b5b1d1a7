"""The CNF benchmark's cnflow side is the reference field itself: the gated layer with the
reference's parameterisation gives the same field, log-density and gradients as the
reference model of torchdiffeq's examples/cnf.py (autograd trace), in float64."""

from __future__ import annotations

import torch

import cnflow
from cnflow.experiments.cnf_reference import (
    BASE_VARIANCE,
    D,
    ReferenceCNF,
    ReferenceHyperNetwork,
    base_log_prob,
    reference_joint_field,
)

F64 = torch.float64


def _hyper() -> ReferenceHyperNetwork:
    torch.manual_seed(0)
    hyper = ReferenceHyperNetwork().double()
    with torch.no_grad():  # large enough weights that the gates and every unit matter
        for p in hyper.parameters():
            p.mul_(3)
    return hyper


def test_reference_field_and_trace_match_the_autograd_reference():
    hyper = _hyper()
    field, _ = reference_joint_field(hyper)
    z = torch.randn(7, D, dtype=F64)
    t = torch.tensor(0.4, dtype=F64)
    dz, dlogp = ReferenceCNF(hyper)(t, (z, torch.zeros(7, 1, dtype=F64)))
    joint = field(t, torch.cat([z, torch.zeros(7, 1, dtype=F64)], 1))
    torch.testing.assert_close(joint[:, :D], dz.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(joint[:, D], dlogp.detach().view(-1), rtol=1e-12, atol=1e-12)


def test_closed_form_adjoint_gradients_equal_direct_backpropagation():
    """The benchmark's hooks (_hyper, _raw_cotangent) give the reference's chain rule: the
    adjoint through them equals backpropagation through the solver's steps."""
    hyper = _hyper()
    field, module = reference_joint_field(hyper)
    params = tuple(module.parameters())
    assert field.vjp_params == params  # so the adjoint takes the closed-form path
    y0 = torch.cat([torch.randn(6, D, dtype=F64), torch.zeros(6, 1, dtype=F64)], 1)
    times = torch.tensor([1.0, 0.0], dtype=F64)
    grads = {}
    for mode in ("adjoint", "direct"):
        sol = cnflow.solve(field, y0, times, rtol=1e-10, atol=1e-10, gradient=mode,
                           adjoint_params=params, adjoint_options={"norm": "seminorm"})
        loss = sol.ys[-1, :, :D].pow(2).sum() + sol.ys[-1, :, D].sum()
        grads[mode] = torch.autograd.grad(loss, params)
    for adjoint, direct in zip(grads["adjoint"], grads["direct"], strict=True):
        # Both are the exact gradient up to the solver tolerance 1e-10.
        torch.testing.assert_close(adjoint, direct, rtol=1e-6, atol=1e-8)



def test_base_log_prob_is_the_reference_gaussian():
    z = torch.randn(5, D, dtype=F64)
    gaussian = torch.distributions.Normal(0.0, BASE_VARIANCE ** 0.5)
    torch.testing.assert_close(base_log_prob(z), gaussian.log_prob(z).sum(1))
