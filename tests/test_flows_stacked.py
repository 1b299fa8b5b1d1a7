"""Stacked flows (cnflow.flows.stacked) of planar and radial layers: each kind of layer's
log-determinant against the autograd Jacobian, and trajectories from the base to the
data (the contract every flow keeps is in test_flow_contract.py)."""

from __future__ import annotations

import pytest
import torch

from cnflow.flows import Flow, PlanarFlow, RadialFlow
from cnflow.flows.planar import PlanarLayer
from cnflow.flows.radial import RadialLayer

F64 = torch.float64
KINDS = [PlanarFlow, RadialFlow]
DIRECTIONS = ["generative", "normalizing"]


def _randomize(flow: Flow, seed: int = 0) -> Flow:
    """Well away from the identity, but not near-singular (the realistic regime)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if name.endswith(("alpha_raw", "beta_raw")):
                p.add_(noise * 0.3)
            elif name.endswith(".z0"):
                p.add_(noise * 0.8)
            else:  # planar u, w, b: fresh values of order one
                p.copy_(noise * 0.8)
    return flow


def _flow(kind, direction: str) -> Flow:
    torch.manual_seed(0)
    flow = kind(2, layers=6, direction=direction).double()
    _randomize(flow)
    with torch.no_grad():
        flow.shift.copy_(torch.tensor([0.3, -0.2], dtype=F64))
        flow.log_scale.copy_(torch.tensor([0.2, -0.1], dtype=F64))
    return flow


@pytest.mark.parametrize("layer_cls", [PlanarLayer, RadialLayer])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_layer_log_det_matches_autograd_jacobian(layer_cls, dim):
    torch.manual_seed(dim)
    layer = layer_cls(dim).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    z = torch.randn(5, dim, dtype=F64) * 1.5
    _, log_det = layer(z)
    for zi, ld in zip(z, log_det):
        jacobian = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], zi)
        sign, expected = torch.linalg.slogdet(jacobian)
        assert sign.item() > 0  # orientation preserving: the constraint holds
        assert ld.item() == pytest.approx(expected.item(), abs=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_trajectory_runs_from_the_base_to_the_data(kind, direction):
    flow = _flow(kind, direction)
    z = torch.randn(10, 2, dtype=F64)
    states = flow.trajectory(z, torch.tensor([0.0, 0.5, 1.0]))
    assert states.shape == (3, 10, 2)
    assert torch.allclose(states[-1], flow.from_base(z)[0], atol=1e-10)
    assert torch.allclose(states[0], z * flow.log_scale.exp() + flow.shift)
