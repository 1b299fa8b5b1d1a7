"""ODE-Net classifiers (paper Section 3): models, IDX reader, training loop, CLI."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from cnflow.cli.classify import classify

from cnflow.data.mnist import load_digits
from cnflow.experiments.odenet import (
    measure_training_step,
    plot_figure3,
    train_classifier,
)
from cnflow.models.odenet import (
    MLP,
    ConvODEFunc,
    ODEBlock,
    ODENet,
    ResNet,
    RKNet,
    build_classifier,
    count_parameters,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The machine is shared: every test here runs on one CPU thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- models --------------------------------------------------------------------------------

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
    # Time enters the dynamics as an extra channel: 64 features + 1 time channel.
    assert block.func.conv1.conv.in_channels == 65
    out = model(torch.rand(2, 1, 28, 28))
    assert block.nfe_forward == 16  # 4 RK4 steps
    assert block.nfe_backward is None  # no backward yet
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert block.nfe_backward is not None and block.nfe_backward >= 16


def test_rknet_backpropagates_directly():
    model = RKNet(method="rk4", step_size=0.5)
    assert model.odeblock.gradient == "direct"
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    assert model.odeblock.nfe_forward == 8
    assert model.odeblock.nfe_backward is None  # direct mode: no re-evaluation
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "rk45"}, "method"),
    ({"gradient": "backprop"}, "gradient"),
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


def test_odenet_training_lowers_loss_on_digits():
    data = load_digits()
    torch.manual_seed(0)
    model = build_classifier("odenet", image_size=data.image_size)
    x, y = data.x_train[:960], data.y_train[:960]
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(30):
        index = slice(32 * step, 32 * (step + 1))
        optimizer.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert after < 0.8 * before


def test_train_classifier_records_history():
    data = load_digits()
    torch.manual_seed(0)
    model = build_classifier("odenet", image_size=8, method="rk4", step_size=0.5)
    calls = []
    result = train_classifier(model, data, epochs=1, batch_size=512, seed=0,
                              on_epoch=lambda epoch, summary: calls.append(epoch))
    assert calls == [1]
    (epoch,) = result["epochs"]
    assert 0.0 <= epoch["test_error"] <= 1.0
    assert epoch["nfe_forward_train"] == 8 and epoch["nfe_backward_train"] >= 8
    assert len(result["batches"]) == 3
    assert result["peak_training_bytes"] > result["state_bytes"] > 0
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        train_classifier(model, data, epochs=0)


# --- memory ------------------------------------------------------------------------------

def test_adjoint_memory_is_flat_in_steps_while_direct_grows():
    x = torch.rand(4, 1, 12, 12)
    y = torch.tensor([0, 1, 2, 3])
    peaks = {}
    for gradient in ("adjoint", "direct"):
        for steps in (2, 8):
            torch.manual_seed(0)
            model = ODENet(channels=8, method="rk4", step_size=1 / steps, gradient=gradient)
            peaks[gradient, steps] = measure_training_step(model, x, y)["peak_saved_bytes"]
    assert peaks["adjoint", 8] == peaks["adjoint", 2]
    assert peaks["direct", 8] > 1.5 * peaks["direct", 2]


def test_plot_figure3_writes_four_pngs(tmp_path):
    sweep = [{"tol": tol, "nfe_forward": n, "nfe_backward": n // 2, "relative_error": tol,
              "forward_time_s": n / 100, "test_error": 0.1}
             for tol, n in ((1e-2, 20), (1e-3, 32), (1e-4, 50))]
    batches = [{"epoch": e, "step": s, "nfe_forward": 26 + e, "nfe_backward": 14 + s}
               for e in (1, 2) for s in (1, 2, 3)]
    paths = plot_figure3(sweep, batches, tmp_path)
    assert [p.name[:5] for p in paths] == ["fig3a", "fig3b", "fig3c", "fig3d"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


# --- IDX reader and data ------------------------------------------------------------------

def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    code = 0x08
    magic = (code << 8 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(">u1").tobytes()


def _write_mnist_dir(root, n_train=6, n_test=4, gz=True):
    rng = np.random.RandomState(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (("images-idx3", rng.randint(0, 256, (n, 28, 28))),
                            ("labels-idx1", rng.randint(0, 10, n))):
            data = _idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte" + (".gz" if gz else "")
            (root / name).write_bytes(gzip.compress(data) if gz else data)
    return root


# --- CLI ---------------------------------------------------------------------------------

def test_cli_smoke_odenet_on_digits(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(classify, [
        "--model", "odenet", "--data", "digits", "--epochs", "1", "--batch-size", "512",
        "--method", "rk4", "--step-size", "0.5", "--threads", "1", "--device", "cpu",
        "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "odenet" and metrics["parameters"] == 208266
    assert metrics["data_name"].startswith("sklearn digits")
    assert metrics["epochs"][0]["nfe_forward_train"] == 8
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    model = build_classifier("odenet", **{k: v for k, v in checkpoint["config"].items()
                                          if k != "model"})
    model.load_state_dict(checkpoint["model_state"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json"]


def test_cli_smoke_mlp(tmp_path):
    result = CliRunner().invoke(classify, ["--model", "mlp", "--data", "digits", "--epochs",
                                           "2", "--output-dir", str(tmp_path / "mlp")])
    assert result.exit_code == 0, result.output
    assert "test error" in result.output


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg"], "'vgg' is not one of"),
    (["--epochs", "0"], "--epochs"),
    (["--data", "idx"], "--data-dir"),
    (["--data", "digits", "--data-dir", "."], "--data-dir is only used"),
    (["--method", "rk4"], "--step-size"),
    (["--model", "mlp", "--method", "rk4", "--step-size", "0.5"], "--step-size is only"),
    (["--device", "tpu"], "device='tpu'"),
])
def test_cli_rejects_bad_arguments(tmp_path, args, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(classify, [*args, "--output-dir", str(out)])
    assert result.exit_code != 0
    assert message in result.output
    assert not out.exists()


def test_cli_rejects_missing_or_corrupt_idx_dir(tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(classify, ["--data", "idx", "--data-dir", str(tmp_path / "none"),
                                      "--output-dir", str(out)])
    assert result.exit_code != 0 and "does not exist" in result.output
    data_dir = _write_mnist_dir(tmp_path / "mnist" if (tmp_path / "mnist").mkdir() is None
                                else tmp_path)
    labels = data_dir / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.zeros(3, dtype=np.uint8))))
    result = runner.invoke(classify, ["--data", "idx", "--data-dir", str(data_dir),
                                      "--output-dir", str(out)])
    assert result.exit_code != 0 and "count mismatch" in result.output
    assert not out.exists()
