"""`cnflow fit --objective` and `--context`: a conditional model of a table, sampled and
evaluated through the CLI, and every bad context input refused with one message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cnflow.cli.main import cli

import toydata
from cnflow.density import load_checkpoint

TINY = ["--width", "8", "--hidden", "8", "--epochs", "2", "--eval-tol", "1e-5",
        "--min-epoch-steps", "10"]


def _moons_csv(path, n=600, seed=0):
    x, label = toydata.get("two_moons").sample_with_labels(n, seed)
    np.savetxt(path, np.column_stack([x, label]), delimiter=",", header="x,y,label",
               comments="", fmt=["%.8g", "%.8g", "%d"])
    return path


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conditional")
    data = _moons_csv(folder / "moons.csv")
    out = folder / "run"
    result = CliRunner().invoke(cli, ["fit", str(data), "--context", "label", "--objective",
                                      "otfm", "--finetune", "10", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return data, out


def test_fit_with_context_writes_a_conditional_run(conditional_run):
    _, out = conditional_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["columns"] == ["x", "y"] and metrics["context_columns"] == ["label"]
    assert metrics["objective"] == "otfm" and metrics["finetune"] == 10
    # Two flow-matching epochs, then the fine-tune's ten steps, counted after them.
    objectives = [r["objective"] for r in metrics["history"]]
    assert objectives[:2] == ["otfm", "otfm"] and set(objectives[2:]) == {"mle"}
    assert metrics["steps"] == metrics["history"][1]["step"] + 10
    assert (out / "conditional.png").is_file() and (out / "learning_curves.png").is_file()
    flow, config, _ = load_checkpoint(out)
    assert flow.context_dim == 1 and config.context == "label"


def test_sample_per_context_then_logprob_reads_the_context_from_the_file(conditional_run,
                                                                         tmp_path):
    _, out = conditional_run
    samples = tmp_path / "samples.csv"
    result = CliRunner().invoke(cli, ["sample", "-c", str(out), "-n", "25", "--context", "0",
                                      "--context", "1", "--out", str(samples)])
    assert result.exit_code == 0, result.output
    assert samples.read_text().splitlines()[0] == "x,y,label"
    rows = np.loadtxt(samples, delimiter=",", skiprows=1)
    assert rows.shape == (50, 3) and (rows[:25, 2] == 0).all() and (rows[25:, 2] == 1).all()
    # logprob matches columns by name: reorder them in the input file.
    shuffled = tmp_path / "input.csv"
    np.savetxt(shuffled, rows[:, [2, 1, 0]], delimiter=",", header="label,y,x", comments="")
    logp = tmp_path / "logp.npy"
    result = CliRunner().invoke(cli, ["logprob", "-c", str(out), str(shuffled), "--out",
                                      str(logp)])
    assert result.exit_code == 0, result.output
    flow, _, _ = load_checkpoint(out)
    with torch.no_grad():
        expected = flow.log_prob(torch.as_tensor(rows[:, :2], dtype=torch.float32),
                                 torch.as_tensor(rows[:, 2:], dtype=torch.float32))
    np.testing.assert_allclose(np.load(logp), expected.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--context", "7"], "0"),  # an unknown column index
    (["--context", "nope"], "nope"),
    (["--context", "x,y,label"], "no column is left to model"),
    (["--context", "label", "--columns", "x,label"], "both modelled"),
    (["--objective", "mle", "--finetune", "5"], "finetune"),
    (["--objective", "sgd"], "sgd"),
    (["--finetune-lr", "nan"], "finetune-lr"),
])
def test_bad_fit_options_are_refused_with_nothing_written(tmp_path, args, message):
    data = _moons_csv(tmp_path / "moons.csv", n=100)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["fit", str(data), *args, *TINY, "--out", str(out)])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_context_of_a_builtin_dataset_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["fit", "two_moons", "--context", "0", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2 and "built-in" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    ([], "conditional on ['label']"),
    (["--context", "0,1"], "1 finite comma-separated"),
    (["--context", "nan"], "1 finite"),
    (["--context", "a"], "1 finite"),
])
def test_bad_sample_contexts_are_refused(conditional_run, tmp_path, args, message):
    _, out = conditional_run
    target = tmp_path / "s.csv"
    result = CliRunner().invoke(cli, ["sample", "-c", str(out), "-n", "5", *args, "--out",
                                      str(target)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not target.exists()


def test_logprob_input_without_the_context_column_is_refused(conditional_run, tmp_path):
    _, out = conditional_run
    rows = tmp_path / "rows.csv"
    rows.write_text("x,y\n0.1,0.2\n")
    result = CliRunner().invoke(cli, ["logprob", "-c", str(out), str(rows)])
    assert result.exit_code == 2 and "label" in result.output, result.output


def test_context_for_an_unconditional_model_is_refused(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["fit", "two_moons", "--iterations", "2", "--width", "4",
                                      "--hidden", "4", "--test-size", "100", "--val-size",
                                      "100", "--no-figures", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["sample", "-c", str(out), "-n", "5", "--context", "1",
                                      "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and "unconditional" in result.output


def test_a_fine_tune_stopped_by_its_budget_resumes_in_its_own_phase(tmp_path):
    out = tmp_path / "run"
    common = ["fit", "two_moons", "--objective", "otfm", "--iterations", "20", "--finetune",
              "6", "--width", "4", "--hidden", "4", "--test-size", "200", "--val-size", "200",
              "--no-figures", "--out", str(out)]
    result = CliRunner().invoke(cli, [*common, "--max-time", "0.001"])
    assert result.exit_code == 0, result.output
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["phase"] == "finetune" and state["loop"]["stop_reason"] == "time budget"
    result = CliRunner().invoke(cli, [*common, "--resume", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    # One flow-matching step (the budget), then all six fine-tune steps: its first epoch
    # (two steps), cut after one by the budget, continues at its second.
    assert metrics["steps"] == 1 + 6
    assert metrics["stop_reason"] == "time budget, then fine-tune: epochs"
    assert [r["objective"] for r in metrics["history"]] == ["otfm", "mle", "mle", "mle"]


def test_a_version_2_checkpoint_still_loads_as_an_unconditional_mle_run(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["fit", "two_moons", "--iterations", "2", "--width", "4",
                                      "--hidden", "4", "--test-size", "100", "--val-size",
                                      "100", "--no-figures", "--out", str(out)])
    assert result.exit_code == 0, result.output
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["version"] = 2  # what cnflow wrote before objectives and contexts existed
    del state["data"]["context_columns"]
    for key in ("objective", "finetune", "finetune_lr", "context"):
        del state["config"][key]
    torch.save(state, out / "checkpoint.pt")
    flow, config, _ = load_checkpoint(out)
    assert flow.context_dim == 0 and config.objective == "mle" and config.finetune == 0
    result = CliRunner().invoke(cli, ["sample", "-c", str(out), "-n", "5", "--out",
                                      str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
