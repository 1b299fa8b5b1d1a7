"""``cnflow classify`` and ``cnflow odenet-results`` (cli/classify.py): options generated from
the configs, runs, and bad input refused with one message and nothing written."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shlex

import numpy as np
import pytest
import torch
from cli_checks import COMMANDS, listed_files, strict_json
from click.testing import CliRunner
from cnflow.cli.classify import classify, odenet_results
from cnflow.cli.main import cli
from mnist_files import idx_bytes, write_mnist_dir

from cnflow.experiments.odenet import (
    ClassifyConfig,
    OdenetResultsConfig,
    build_classifier,
    command_line,
)


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
    assert metrics["epochs"][0]["nfe_forward"] == 8 and metrics["stop_reason"] == "epochs"
    assert ClassifyConfig(**metrics["config"]).step_size == 0.5  # the settings, complete
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    classifier = checkpoint["classifier"]
    model = build_classifier(classifier["name"], **classifier["kwargs"])
    model.load_state_dict(checkpoint["model"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json"]


def test_cli_smoke_mlp(tmp_path):
    result = CliRunner().invoke(classify, ["--model", "mlp", "--data", "digits", "--epochs",
                                           "2", "--output-dir", str(tmp_path / "mlp")])
    assert result.exit_code == 0, result.output
    assert "epoch 2/2" in result.output and "test error" in result.output


@pytest.mark.parametrize("command, config", [(classify, ClassifyConfig),
                                             (odenet_results, OdenetResultsConfig)])
def test_the_options_are_the_config_fields_with_its_defaults(command, config):
    defaults = {p.name: p.default for p in command.params}
    for field in dataclasses.fields(config):
        value = getattr(config(), field.name)
        # Lists are given (and shown) comma-separated.
        assert defaults.pop(field.name) == (",".join(map(str, value))
                                            if isinstance(value, tuple) else value)
    assert set(defaults) <= {"output_dir", "out", "md", "overwrite", "progress", "help"}


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg"], "'vgg' is not one of"),
    (["--epochs", "0"], "--epochs"),
    (["--data", "idx"], "data_dir=None with data='idx'"),
    (["--data", "digits", "--data-dir", "."], "data_dir='.' with data='digits'"),
    (["--method", "rk4"], "give step_size"),
    (["--model", "mlp", "--method", "rk4", "--step-size", "0.5"], "step_size=0.5 is only"),
    (["--device", "tpu"], "device='tpu'"),
    (["--seed", str(2**32)], "--seed"),
])
def test_cli_rejects_bad_arguments(tmp_path, args, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(classify, [*args, "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_cli_rejects_missing_or_corrupt_idx_dir(tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(classify, ["--data", "idx", "--data-dir", str(tmp_path / "none"),
                                      "--output-dir", str(out)])
    assert result.exit_code != 0 and "does not exist" in result.output
    data_dir = tmp_path / "mnist"
    data_dir.mkdir()
    write_mnist_dir(data_dir)
    labels = data_dir / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(3, dtype=np.uint8))))
    result = runner.invoke(classify, ["--data", "idx", "--data-dir", str(data_dir),
                                      "--output-dir", str(out)])
    assert result.exit_code != 0 and "count mismatch" in result.output
    assert not out.exists()


# --- odenet-results --------------------------------------------------------------------------

@pytest.fixture
def runs(monkeypatch):
    """Replace the results run by a recorder of its arguments (the CLI calls it through the
    package)."""
    calls = []

    def record(config, out_dir, *, md_path, progress):
        calls.append((config, out_dir, md_path))
        return {"table1": [], "total_seconds": 0.0}

    monkeypatch.setattr("cnflow.experiments.odenet.run", record)
    return calls


def test_odenet_results_defaults_are_the_config_and_the_committed_paths(runs, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(odenet_results, [])
    assert result.exit_code == 0, result.output
    ((config, out, md),) = runs
    assert config == OdenetResultsConfig()
    assert (str(out), str(md)) == ("results/odenet", "results/odenet.md")


def test_odenet_results_command_line_reproduces_the_config(runs, tmp_path):
    config = OdenetResultsConfig(data="digits", epochs=1, memory_multipliers=(1, 2),
                                 sweep_tolerances=(1e-2, 1e-4), reference_tol=1e-6, seed=3)
    args = shlex.split(command_line(config, tmp_path / "out", tmp_path / "report.md"))[2:]
    result = CliRunner().invoke(odenet_results, args)
    assert result.exit_code == 0, result.output
    assert runs == [(config, tmp_path / "out", tmp_path / "report.md")]


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "'--epochs'"),
    (["--lr", "nan"], "'--lr'"),
    (["--sweep-tolerances", "1e-3,x"], "not a list of float"),
    (["--sweep-tolerances", "1e-3,-1"], "sweep_tolerances entries must be a finite number"),
    (["--reference-tol", "0.5"], "reference_tol must be a finite number > 0 and < 1e-05"),
    (["--memory-method", "dopri5"], "'--memory-method'"),
])
def test_odenet_results_refuses_bad_settings_and_writes_nothing(runs, tmp_path, args,
                                                                  message):
    out = tmp_path / "out"
    result = CliRunner().invoke(odenet_results, [*args, "--out", str(out)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert runs == [] and list(tmp_path.iterdir()) == []


def test_odenet_results_refuses_earlier_results_and_an_unwritable_report(runs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    result = CliRunner().invoke(odenet_results, ["--out", str(out)])
    assert result.exit_code == 1 and "already holds a run" in result.output
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(odenet_results, ["--out", str(out), "--overwrite", "--md",
                                                 str(tmp_path / "file" / "report.md")])
    assert result.exit_code == 2 and "is not a writable folder" in result.output
    assert runs == [] and (out / "results.json").read_text() == "{}"
    result = CliRunner().invoke(odenet_results, ["--out", str(out), "--overwrite"])
    assert result.exit_code == 0 and len(runs) == 1, result.output


def test_classify_overwrite_replaces_the_run_and_leaves_only_its_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": true}')
    (out / "old.png").write_bytes(b"")
    result = CliRunner().invoke(cli, [*COMMANDS["classify"], str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert listed_files(out) == ["checkpoint.pt", "metrics.json"]
    assert strict_json(out / "metrics.json")["model"] == "mlp"
