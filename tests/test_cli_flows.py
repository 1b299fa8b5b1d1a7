"""`cnflow fit / sample / logprob / datasets` through click's test runner, bad input included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cnflow.cli.main import cli

import toydata


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One short fit shared by the tests that need a trained checkpoint."""
    out = tmp_path_factory.mktemp("fit") / "run"
    result = CliRunner().invoke(cli, [
        "fit", "two_moons", "--iterations", "4", "--batch-size", "128", "--width", "8",
        "--hidden", "8", "--test-size", "300", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_fit_writes_a_complete_run_directory(run_dir):
    for name in ("config.json", "checkpoint.pt", "metrics.json", "density.png", "snapshots.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["entropy_floor"] == pytest.approx(toydata.get("two_moons").entropy())
    assert metrics["gap"] == pytest.approx(metrics["test_nll"] - metrics["entropy_floor"])
    assert metrics["steps"] == 4 and metrics["nfe_forward_mean"] > 0
    assert metrics["nfe_backward_mean"] > 0 and "torch" in metrics["environment"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["width"] == 8 and config["dataset"] == "two_moons"
    assert not list(run_dir.glob(".*tmp*"))


def test_resume_continues_a_run_stopped_by_its_time_budget(run_dir, tmp_path):
    out = tmp_path / "resumed"
    common = ["fit", "two_moons", "--iterations", "4", "--batch-size", "128", "--width", "8",
              "--hidden", "8", "--test-size", "300", "--out", str(out), "--no-figures"]
    result = CliRunner().invoke(cli, [*common, "--max-time", "0.001"])
    assert result.exit_code == 0, result.output
    assert "time budget" in result.output
    stopped = torch.load(out / "checkpoint.pt", weights_only=True)["loop"]
    assert stopped["steps"] == 1 and stopped["stop_reason"] == "time budget"
    result = CliRunner().invoke(cli, [*common, "--resume", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["stop_reason"] == "epochs"
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3, 4]

    for changed, name in ((["--width", "16"], "width"), (["--iterations", "6"], "iterations")):
        args = [*common[:-3], "--out", str(tmp_path / "x"), "--resume", str(run_dir), *changed]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and f"different ['{name}'" in result.output, result.output
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_sample_then_logprob(run_dir, tmp_path, suffix):
    samples = tmp_path / f"samples{suffix}"
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", str(run_dir), "-n", "50",
                                      "--out", str(samples), "--plot", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    points = np.load(samples) if suffix == ".npy" else np.loadtxt(samples, delimiter=",",
                                                                  skiprows=1)
    assert points.shape == (50, 2) and np.isfinite(points).all()
    assert (tmp_path / "s.png").is_file()

    out = tmp_path / f"logp{suffix}"
    result = CliRunner().invoke(cli, ["logprob", "--checkpoint", str(run_dir / "checkpoint.pt"),
                                      str(samples), "--out", str(out)])
    assert result.exit_code == 0, result.output
    values = np.load(out) if suffix == ".npy" else np.loadtxt(out, skiprows=1)
    assert values.shape == (50,) and np.isfinite(values).all()

    from cnflow.density import load_checkpoint

    flow, _, _ = load_checkpoint(run_dir)
    expected = flow.log_prob(torch.as_tensor(points, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(values, expected, atol=1e-4)


def test_logprob_to_stdout(run_dir, tmp_path):
    file = tmp_path / "points.csv"
    file.write_text("x,y\n0.0,0.5\n1.0,-0.2\n")
    result = CliRunner().invoke(cli, ["logprob", "-c", str(run_dir), str(file)])
    assert result.exit_code == 0, result.output
    assert len(result.output.split()) == 2


def test_datasets_lists_every_floor():
    result = CliRunner().invoke(cli, ["datasets", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == set(toydata.names())
    assert rows["two_moons"]["entropy_floor"] == pytest.approx(toydata.get("two_moons").entropy())


# --- bad input: one clear message, non-zero exit, nothing half-written --------------------

def test_unknown_dataset_lists_the_choices(tmp_path):
    result = CliRunner().invoke(cli, ["fit", "three_moons", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "three_moons" in result.output and "two_moons" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a checkpoint at all", "cannot be read"),
    ("foreign", "is not a cnflow CNF checkpoint"),
])
def test_bad_checkpoints(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content == "foreign":
        torch.save({"state_dict": {}}, path)
    elif content is not None:
        path.write_bytes(content)
    out = tmp_path / "s.npy"
    result = CliRunner().invoke(cli, ["sample", "-c", str(path), "-n", "5", "--out", str(out)])
    assert result.exit_code != 0 and message in result.output
    assert not out.exists()


@pytest.mark.parametrize("rows, message", [
    (np.zeros((4, 3)), r"has 3 columns \[.x0., .x1., .x2.\]; expected 2"),
    (np.array([[0.0, 1.0], [np.nan, 0.0]]), (r"row 1 \(0-based\), column 'x0' \(index 0\): the "
                                            r"value is NaN")),
])
def test_logprob_bad_input(run_dir, tmp_path, rows, message):
    file = tmp_path / "in.npy"
    np.save(file, rows)
    out = tmp_path / "out.npy"
    result = CliRunner().invoke(cli, ["logprob", "-c", str(run_dir), str(file), "-o", str(out)])
    assert result.exit_code == 2
    assert pytest.importorskip("re").search(message, result.output), result.output
    assert not out.exists()


def test_logprob_missing_or_unreadable_input(run_dir, tmp_path):
    result = CliRunner().invoke(cli, ["logprob", "-c", str(run_dir), str(tmp_path / "no.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\nthree,four\n")
    result = CliRunner().invoke(cli, ["logprob", "-c", str(run_dir), str(bad)])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_unwritable_output(run_dir, tmp_path):
    target = tmp_path / "missing" / "s.npy"
    result = CliRunner().invoke(cli, ["sample", "-c", str(run_dir), "--out", str(target)])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(cli, ["sample", "-c", str(run_dir), "--out",
                                      str(tmp_path / "s.txt")])
    assert result.exit_code == 2 and ".npy, .csv" in result.output



def test_failed_write_is_one_clear_message(run_dir, tmp_path, monkeypatch):
    import cnflow.runs

    def disk_full(data, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cnflow.runs, "write_bytes", disk_full)
    out = tmp_path / "s.npy"
    result = CliRunner().invoke(cli, ["sample", "-c", str(run_dir), "--out", str(out)])
    assert result.exit_code == 1
    assert "cannot write" in result.output and "No space left on device" in result.output
    assert not out.exists()
