"""ODE-Net (cnflow.models.odenet): its structure and NFE reporting, the ODE block's
argument checks, and adjoint against direct gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnflow.experiments.odenet.baselines import MLP
from cnflow.models.odenet import ConvODEFunc, ODEBlock, ODENet, block_nfe


def test_odenet_structure_and_nfe_reporting():
    model = ODENet(method="rk4", step_size=0.25)
    block = model.odeblock
    assert isinstance(block.func, ConvODEFunc)
    assert block.nfe_forward is None and block.nfe_backward is None
    assert block_nfe(model) == (None, None)
    # Time enters the dynamics as an extra channel: 64 features + 1 time channel.
    assert block.func.conv1.conv.in_channels == 65
    out = model(torch.rand(2, 1, 28, 28))
    assert block.nfe_forward == 16  # 4 RK4 steps
    assert block.nfe_backward is None  # no backward yet
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert block.nfe_backward is not None and block.nfe_backward >= 16
    assert block_nfe(model) == (16, block.nfe_backward)
    assert block_nfe(MLP()) == (None, None)  # no ODE block at all


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "rk45"}, "method='rk45'"),
    ({"gradient": "backprop"}, "gradient='backprop'"),
    ({"method": "rk4"}, "step_size"),
    ({"method": "rk4", "step_size": 0.0}, "step_size"),
    ({"method": "dopri5", "step_size": 0.1}, "step_size"),
    ({"rtol": 0.0}, "rtol"),
    ({"atol": -1e-3}, "atol"),
])
def test_odeblock_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ODEBlock(ConvODEFunc(8), **kwargs)


def test_adjoint_and_direct_gradients_agree_float64():
    # ReLU's kinks make the dynamics non-smooth, so the adaptive solver needs thousands of
    # steps before the two gradients meet; with a smooth activation in the same small
    # ODE-Net they agree to ~1e-8 at a practical tolerance.
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    y = torch.tensor([3, 7])
    grads = {}
    for gradient in ("direct", "adjoint"):
        torch.manual_seed(1)
        model = ODENet(channels=8, rtol=1e-8, atol=1e-8, gradient=gradient).double()
        model.odeblock.func.relu = torch.nn.Softplus()
        F.cross_entropy(model(x), y).backward()
        grads[gradient] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert model.odeblock.nfe_forward > 0
    scale = grads["direct"].abs().max()
    assert (grads["adjoint"] - grads["direct"]).abs().max() <= 1e-6 * scale
