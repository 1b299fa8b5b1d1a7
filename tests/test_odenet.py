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

from cnflow.data.mnist import (
    IDXFormatError,
    load_digits,
    load_idx_pair,
    load_mnist,
    load_mnist_offline,
    read_idx,
)
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


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = _idx_bytes(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    np.testing.assert_array_equal(read_idx(path), array)


def test_load_mnist_dir(tmp_path):
    data = load_mnist(_write_mnist_dir(tmp_path))
    assert data.name == "MNIST"
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (4, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and 0 <= data.x_train.min() <= 1
    assert data.y_train.dtype == torch.int64
    assert load_mnist(_write_mnist_dir(tmp_path / "..", gz=False)).x_train.shape[0] == 6


def test_idx_reader_rejects_truncated_file(tmp_path):
    data = _idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))
    path = tmp_path / "images"
    path.write_bytes(data[:-100])
    with pytest.raises(IDXFormatError, match="truncated"):
        read_idx(path)
    path.write_bytes(data[:10])
    with pytest.raises(IDXFormatError, match="truncated header"):
        read_idx(path)
    gz = tmp_path / "images.gz"
    gz.write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(gz)


def test_idx_reader_rejects_bad_magic_and_swapped_files(tmp_path):
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.write_bytes(_idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)))
    labels.write_bytes(_idx_bytes(np.zeros(3, dtype=np.uint8)))
    junk = tmp_path / "junk"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(IDXFormatError, match="bad magic number"):
        read_idx(junk)
    with pytest.raises(IDXFormatError, match="magic number 2049.*expected 2051"):
        load_idx_pair(labels, images)
    with pytest.raises(IDXFormatError, match="magic number"):
        load_idx_pair(junk, labels)


def test_idx_reader_rejects_count_mismatch_and_bad_labels(tmp_path):
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.write_bytes(_idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)))
    labels.write_bytes(_idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(IDXFormatError, match="count mismatch.*3 images.*4 labels"):
        load_idx_pair(images, labels)
    labels.write_bytes(_idx_bytes(np.array([1, 2, 12], dtype=np.uint8)))
    with pytest.raises(IDXFormatError, match="label 12"):
        load_idx_pair(images, labels)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train images"):
        load_mnist(tmp_path)


def test_offline_split_is_fixed_and_named():
    data = load_mnist_offline()
    assert data.name == "MNIST-t10k split 8000/2000"
    assert data.x_train.shape == (8000, 1, 28, 28) and data.x_test.shape == (2000, 1, 28, 28)
    again = load_mnist_offline()
    assert torch.equal(data.y_test, again.y_test)
    # Every class appears in both parts, and together they hold the whole test set.
    assert set(data.y_test.tolist()) == set(range(10))
    total = torch.bincount(torch.cat([data.y_train, data.y_test]), minlength=10)
    assert total.sum() == 10000 and total.min() > 800
    with pytest.raises(ValueError, match=r"n_train must be an integer in \[1, 9999\], got 10000"):
        load_mnist_offline(10000)


def test_digits_loader():
    data = load_digits()
    assert data.x_train.shape[1:] == (1, 8, 8)
    assert len(data.y_train) + len(data.y_test) == 1797
    assert data.name.startswith("sklearn digits 8x8 split")
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(1.5)


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
