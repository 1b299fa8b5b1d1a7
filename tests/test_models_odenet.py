"""ODE-Net (cnflow.models.odenet) and the Table 1 baselines (cnflow.experiments.odenet.baselines):
sizes, shapes, NFE reporting, gradients and argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnflow.experiments.odenet.baselines import MLP, ResNet, RKNet, build_classifier
from cnflow.models.odenet import ConvODEFunc, ODEBlock, ODENet, block_nfe, count_parameters


def test_parameter_counts_match_the_paper():
    ode = count_parameters(build_classifier("odenet"))
    res = count_parameters(build_classifier("resnet"))
    mlp = count_parameters(build_classifier("mlp"))
    rk = count_parameters(build_classifier("rknet"))
    assert 0.20e6 <= ode <= 0.22e6
    assert 0.57e6 <= res <= 0.60e6
    assert 0.23e6 <= mlp <= 0.25e6
    assert rk == ode
    assert 0.3 <= ode / res <= 0.4


@pytest.mark.parametrize("name", ["mlp", "resnet", "rknet", "odenet"])
@pytest.mark.parametrize("size", [28, 8])
def test_output_shapes(name, size):
    model = build_classifier(name, image_size=size, method="rk4", step_size=0.5)
    x = torch.rand(3, 1, size, size)
    assert model(x).shape == (3, 10)


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


def test_rknet_backpropagates_directly():
    model = RKNet(method="rk4", step_size=0.5)
    assert model.odeblock.gradient == "direct"
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    assert model.odeblock.nfe_forward == 8
    assert model.odeblock.nfe_backward is None  # direct mode: no re-evaluation
    assert all(p.grad is not None for p in model.parameters())


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


def test_bad_model_arguments():
    with pytest.raises(TypeError, match="func"):
        ODEBlock(lambda t, h: h)
    with pytest.raises(ValueError, match="name='vgg'"):
        build_classifier("vgg")
    with pytest.raises(ValueError, match="num_blocks"):
        ResNet(num_blocks=0)
    with pytest.raises(ValueError, match="hidden"):
        MLP(hidden=0)
    with pytest.raises(ValueError, match="image_size"):
        build_classifier("mlp", image_size=0)


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
