"""The flow registry: every flow of cnflow under one name.

A registered builder takes the data dimension and keyword options and returns a
:class:`~cnflow.flows.base.Flow`: ``get_flow(name)(dim, **options)``. The built-in flows
are registered at the bottom of this module, the one list of their names.

Example:
    >>> flow = get_flow("planar")(2, layers=4)
    >>> sorted(FLOWS)
    ['concat_squash_cnf', 'gated_cnf', 'planar', 'radial']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cnflow.flows.base import Flow
from cnflow.flows.cnf import CNF, ConcatSquashMLP, GatedHyperDynamics
from cnflow.flows.planar import PlanarFlow
from cnflow.flows.radial import RadialFlow

#: Builds a flow: ``builder(dim, **options) -> Flow``.
FlowBuilder = Callable[..., Flow]

#: Name -> builder of every registered flow.
FLOWS: dict[str, FlowBuilder] = {}


def register_flow(name: str, builder: FlowBuilder) -> FlowBuilder:
    """Register ``builder`` under ``name``.

    Args:
        name: the registry key.
        builder: ``builder(dim, **options)`` returns a new flow (a Flow subclass itself
            qualifies when its constructor takes ``dim`` first).

    Returns:
        ``builder``.

    Raises:
        TypeError: if ``name`` is not a non-empty str or ``builder`` is not callable.
        ValueError: if ``name`` is registered already.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not callable(builder):
        raise TypeError(f"builder must be callable, got {type(builder).__name__}")
    if name in FLOWS:
        raise ValueError(f"a flow named {name!r} is already registered; choose another name")
    FLOWS[name] = builder
    return builder


def get_flow(name: str) -> FlowBuilder:
    """The builder registered under ``name``.

    Raises:
        ValueError: if ``name`` is unknown; the message lists the known names.
    """
    try:
        return FLOWS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown flow {name!r}; known flows: {', '.join(sorted(FLOWS))}"
                         ) from None


def gated_cnf(dim: int, width: int = 64, hidden: int = 32, context_dim: int = 0,
              **options: Any) -> CNF:
    """A CNF on the paper's gated layer (closed-form trace).

    Args:
        dim: data dimension.
        width: hidden units M of :class:`~cnflow.flows.cnf.GatedHyperDynamics`.
        hidden: width of its hypernetwork.
        context_dim: context size of a conditional flow (0: none).
        **options: further :class:`~cnflow.flows.cnf.CNF` options (``method``, ``rtol`` …).
    """
    dynamics = GatedHyperDynamics(dim, width, hidden, context_dim=context_dim)
    return CNF(dynamics, dim, context_dim=context_dim, **options)


def concat_squash_cnf(dim: int, hidden: tuple[int, ...] = (64, 64, 64),
                      activation: str = "tanh", context_dim: int = 0, **options: Any) -> CNF:
    """A CNF on FFJORD's concat-squash network (autograd or Hutchinson trace).

    Args:
        dim: data dimension.
        hidden: hidden widths of :class:`~cnflow.flows.cnf.ConcatSquashMLP`.
        activation: ``"tanh"`` or ``"softplus"``.
        context_dim: context size of a conditional flow (0: none).
        **options: further :class:`~cnflow.flows.cnf.CNF` options (``trace``, ``rtol`` …).
    """
    dynamics = ConcatSquashMLP(dim, hidden, activation, context_dim=context_dim)
    return CNF(dynamics, dim, context_dim=context_dim, **options)


register_flow("gated_cnf", gated_cnf)
register_flow("concat_squash_cnf", concat_squash_cnf)
register_flow("planar", PlanarFlow)
register_flow("radial", RadialFlow)
