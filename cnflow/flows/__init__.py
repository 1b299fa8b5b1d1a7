"""Flows with a torch-distribution interface: the CNF and the planar/radial baselines."""

from cnflow.flows.base import Flow
from cnflow.flows.cnf import CNF, ConcatSquashMLP, GatedHyperDynamics
from cnflow.flows.planar import PlanarFlow
from cnflow.flows.radial import RadialFlow

__all__ = ["CNF", "ConcatSquashMLP", "Flow", "GatedHyperDynamics", "PlanarFlow", "RadialFlow"]
