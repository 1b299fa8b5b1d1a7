"""Peak training memory against depth (cnflow.experiments.odenet.memory)."""

from __future__ import annotations

import pytest
import torch

from cnflow.experiments.odenet.memory import memory_vs_depth, plot_memory_vs_depth
from cnflow.experiments.odenet.train import measure_training_step
from cnflow.models.odenet import ODENet

X = torch.rand(4, 1, 12, 12)
Y = torch.tensor([0, 1, 2, 3])


def test_adjoint_memory_is_flat_in_steps_while_direct_grows():
    peaks = {}
    for gradient in ("adjoint", "direct"):
        for steps in (2, 8):
            torch.manual_seed(0)
            model = ODENet(channels=8, method="rk4", step_size=1 / steps, gradient=gradient)
            peaks[gradient, steps] = measure_training_step(model, X, Y)["peak_saved_bytes"]
    assert peaks["adjoint", 8] == peaks["adjoint", 2]
    assert peaks["direct", 8] > 1.5 * peaks["direct", 2]


def test_memory_vs_depth_rows_and_figure(tmp_path):
    rows = memory_vs_depth(X, Y, multipliers=(1, 2), channels=8, progress=False)
    assert [(r["model"], r["multiplier"]) for r in rows] == [
        ("ODE-Net (adjoint)", 1), ("RK-Net (direct)", 1), ("ResNet", 1),
        ("ODE-Net (adjoint)", 2), ("RK-Net (direct)", 2), ("ResNet", 2)]
    assert [r["depth"] for r in rows[:3]] == ["2 rk4 steps", "2 rk4 steps", "6 blocks"]
    ode = [r for r in rows if r["model"] == "ODE-Net (adjoint)"]
    resnet = [r for r in rows if r["model"] == "ResNet"]
    assert ode[0]["peak_training_bytes"] == ode[1]["peak_training_bytes"]
    assert resnet[1]["peak_training_bytes"] > resnet[0]["peak_training_bytes"]
    assert [r["nfe_forward"] for r in ode] == [8, 16]
    path = plot_memory_vs_depth(rows, tmp_path / "memory.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kwargs, match", [({"multipliers": ()}, "multipliers"),
                                           ({"method": "dopri5"}, "method='dopri5'"),
                                           ({"base_steps": 0}, "base_steps")])
def test_memory_vs_depth_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        memory_vs_depth(X, Y, **kwargs)
