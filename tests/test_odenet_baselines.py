"""The Table 1 baselines (cnflow.experiments.odenet.baselines) beside ODE-Net: parameter
counts, output shapes, RK-Net's direct backpropagation and argument checks."""

from __future__ import annotations

import pytest
import torch

from cnflow.experiments.odenet.baselines import MLP, ResNet, RKNet, build_classifier
from cnflow.models.odenet import ODEBlock, count_parameters


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


def test_rknet_backpropagates_directly():
    model = RKNet(method="rk4", step_size=0.5)
    assert model.odeblock.gradient == "direct"
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    assert model.odeblock.nfe_forward == 8
    assert model.odeblock.nfe_backward is None  # direct mode: no re-evaluation
    assert all(p.grad is not None for p in model.parameters())


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
