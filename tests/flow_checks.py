"""Checks shared by the flow tests (CNF, planar, radial)."""

from __future__ import annotations

import torch

from cnflow.flows.base import Flow, standard_normal_log_prob


def brute_force_log_prob(flow: Flow, x: torch.Tensor) -> torch.Tensor:
    """log p(x) by the change of variables with the full autograd Jacobian and slogdet."""
    values = []
    for xi in x:
        jacobian = torch.autograd.functional.jacobian(lambda v: flow.to_base(v[None])[0][0], xi)
        z = flow.to_base(xi[None])[0][0]
        values.append(standard_normal_log_prob(z) + torch.linalg.slogdet(jacobian)[1])
    return torch.stack(values)
