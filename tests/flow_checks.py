"""Checks shared by the flow tests (the flow contract, conditional flows, objectives)."""

from __future__ import annotations

from functools import partial

import torch

from cnflow.flows.base import Flow, standard_normal_log_prob


def _row_to_base(flow: Flow, kwargs: dict[str, torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    return flow.to_base(v[None], **kwargs)[0][0]


def brute_force_log_prob(flow: Flow, x: torch.Tensor, context: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """log p(x) by the change of variables with the full autograd Jacobian and slogdet.

    Args:
        flow: anything with ``to_base(x[, context]) -> (z, log_det)``.
        x: points ``(n, dim)``.
        context: None, or one context row per point ``(n, context_dim)``.
    """
    values = []
    for i, xi in enumerate(x):
        to_base = partial(_row_to_base, flow, {} if context is None else
                          {"context": context[i:i + 1]})
        jacobian = torch.autograd.functional.jacobian(to_base, xi)
        values.append(standard_normal_log_prob(to_base(xi)) + torch.linalg.slogdet(jacobian)[1])
    return torch.stack(values)
