"""The flows package (cnflow.flows): what it exports."""

from __future__ import annotations

from cnflow.flows import CNF, Flow, GatedHyperDynamics, PlanarFlow, RadialFlow


def test_package_exports():
    assert issubclass(PlanarFlow, Flow) and issubclass(RadialFlow, Flow)
    assert issubclass(CNF, Flow) and GatedHyperDynamics is not None
