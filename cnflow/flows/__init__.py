"""Flows with a torch-distribution interface: the CNF and the planar/radial baselines.

Every flow is registered by name in :data:`FLOWS` (``get_flow(name)(dim, **options)``).
"""

from cnflow.flows.base import Flow
from cnflow.flows.cnf import CNF, ConcatSquashMLP, GatedHyperDynamics
from cnflow.flows.planar import PlanarFlow
from cnflow.flows.radial import RadialFlow
from cnflow.flows.registry import FLOWS, get_flow, register_flow
from cnflow.flows.stacked import StackedFlow

__all__ = ["CNF", "FLOWS", "ConcatSquashMLP", "Flow", "GatedHyperDynamics", "PlanarFlow",
           "RadialFlow", "StackedFlow", "get_flow", "register_flow"]
