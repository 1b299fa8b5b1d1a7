"""`cnflow fit / sample / logprob / datasets` (cli/flows.py) through click's test runner,
bad input included: on the built-in datasets; on the user's own tables (`cnflow fit
FILE`, then `logprob` and `sample` on the run; every bad table gives one message naming
file, line and column, exit 1, nothing written); and with `--objective` and `--context`
(a conditional model of a table, sampled and evaluated through the CLI, and every bad
context input refused with one message)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cnflow.cli.main import cli

import toydata
from cnflow.density import load_checkpoint


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


# --- the user's own tables: `cnflow fit FILE` -------------------------------------

TINY = ["--width", "4", "--hidden", "4", "--epochs", "2", "--batch-size", "64",
        "--eval-tol", "1e-5"]


def _write_csv(path, rows, header="a,b,c"):
    lines = ([header] if header else []) + [",".join(f"{v:.6g}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    x[:, 1] = x[:, 0] ** 2 + 0.3 * x[:, 1]
    return x


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    data = _write_csv(folder / "measurements.csv", _rows())
    out = folder / "run"
    result = CliRunner().invoke(cli, ["fit", str(data), *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return data, out


def test_fit_on_a_csv_writes_metrics_and_figures(table_run):
    _, out = table_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dim"] == 3 and metrics["columns"] == ["a", "b", "c"]
    assert (metrics["train_rows"], metrics["val_rows"], metrics["test_rows"]) == (240, 30, 30)
    assert metrics["epochs_run"] == 2 and 1 <= metrics["best_epoch"] <= 2
    assert metrics["test_nll_per_dim"] == pytest.approx(metrics["test_nll"] / 3)
    assert metrics["val_nll"] == min(r["val_nll"] for r in metrics["history"])
    assert metrics["entropy_floor"] is None and metrics["cpu_seconds"] > 0
    assert metrics["train_nll_per_dim"] == pytest.approx(metrics["train_nll"] / 3)
    for name in ("config.json", "checkpoint.pt", "learning_curves.png", "pairs.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*"))


def test_logprob_reads_columns_by_name_and_sample_writes_them(table_run, tmp_path):
    _data, out = table_run
    rows = _rows(20, seed=5)
    reordered = _write_csv(tmp_path / "new.csv", rows[:, [2, 0, 1]], header="c,a,b")
    plain = _write_csv(tmp_path / "plain.csv", rows, header=None)
    values = []
    for file in (reordered, plain):
        target = tmp_path / f"logp-{file.stem}.npy"
        result = CliRunner().invoke(cli, ["logprob", "-c", str(out), str(file), "-o",
                                          str(target)])
        assert result.exit_code == 0, result.output
        values.append(np.load(target))
    np.testing.assert_array_equal(values[0], values[1])
    from cnflow.density import load_checkpoint

    flow, _, _ = load_checkpoint(out)
    expected = flow.log_prob(torch.as_tensor(rows, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(values[0], expected, atol=1e-4)

    samples = tmp_path / "samples.csv"
    result = CliRunner().invoke(cli, ["sample", "-c", str(out), "-n", "40", "--out",
                                      str(samples), "--plot", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert samples.read_text().splitlines()[0] == "a,b,c"
    assert np.loadtxt(samples, delimiter=",", skiprows=1).shape == (40, 3)
    assert (tmp_path / "s.png").is_file()


def test_columns_val_and_test_files_and_one_dimension(tmp_path):
    rows = _rows(200)
    train = _write_csv(tmp_path / "train.csv", rows)
    val = _write_csv(tmp_path / "val.csv", _rows(50, 1))
    test = _write_csv(tmp_path / "test.csv", _rows(60, 2))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["fit", str(train), "--val", str(val), "--test", str(test),
                                      "--columns", "b", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["columns"] == ["b"] and metrics["dim"] == 1
    assert (metrics["train_rows"], metrics["val_rows"], metrics["test_rows"]) == (200, 50, 60)
    assert (out / "pairs.png").is_file()

    result = CliRunner().invoke(cli, ["fit", str(train), "--columns", "2,0", "--no-figures",
                                      *TINY, "--out", str(tmp_path / "run2")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run2" / "metrics.json").read_text())["columns"] == ["c", "a"]


def test_integer_columns_warn_and_dequantize_accounts_for_the_bins(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.normal(size=400), rng.poisson(3.0, size=400) * 2.0])
    file = _write_csv(tmp_path / "counts.csv", rows, header="x,count")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["fit", str(file), *TINY, "--no-figures", "--out",
                                      str(out)])
    assert result.exit_code == 0 and "warning" in result.output
    assert "'count'" in result.output and "--dequantize" in result.output
    result = CliRunner().invoke(cli, ["fit", str(file), *TINY, "--no-figures", "--dequantize",
                                      "--out", str(tmp_path / "deq")])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    metrics = json.loads((tmp_path / "deq" / "metrics.json").read_text())
    assert metrics["integer_columns"] == [1] and metrics["bin_widths"] == [2.0]
    assert metrics["test_nll_discrete"] == pytest.approx(metrics["test_nll"] - np.log(2.0))


@pytest.mark.parametrize("content, expected", [
    ("a,b\n1,2\n3,x\n" + "1,2\n" * 30, ["bad.csv", "line 3", "'b'", "'x'"]),
    ("a,b\n1,2\n3,nan\n" + "1,2\n" * 30, ["bad.csv", "line 3", "'b'", "NaN"]),
    ("a,b\n1,2\n3,1e39\n" + "4,2\n" * 30, ["bad.csv", "line 3", "float32"]),
    ("a,b\n1,2\n1,3\n" + "1,2\n" * 30, ["bad.csv", "'a'", "constant", "degenerate"]),
    ("a,b\n1,2\n3\n" + "1,2\n" * 30, ["bad.csv", "line 3", "1 cells", "expected 2"]),
    ("a,b\n1,2\n3,4\n", ["bad.csv", "rows"]),
    ("", ["bad.csv", "empty"]),
])
def test_bad_tables_give_one_message_and_write_nothing(tmp_path, content, expected):
    file = tmp_path / "bad.csv"
    file.write_text(content)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["fit", str(file), *TINY, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for part in expected:
        assert part in result.output, (part, result.output)
    assert not out.exists()


def test_bad_arguments(tmp_path):
    file = _write_csv(tmp_path / "t.csv", _rows(50))
    cases = [
        (["fit", "three_moons"], 2, "neither a built-in dataset"),
        (["fit", str(tmp_path / "missing.csv")], 1, "file not found"),
        (["fit", str(file), "--columns", "a,zz"], 1, "'zz'"),
        (["fit", str(file), "--columns", "7"], 1, "index 7"),
        (["fit", str(file), "--val-fraction", "0.6", "--test-fraction", "0.5"], 2,
         "val_fraction + test_fraction"),
        (["fit", str(file), "--val", str(tmp_path / "t.txt")], 1, "t.txt"),
    ]
    (tmp_path / "t.txt").write_text("1,2,3\n")
    for args, code, message in cases:
        out = tmp_path / "run"
        result = CliRunner().invoke(cli, [*args, *TINY, "--out", str(out)])
        assert result.exit_code == code and message in result.output, (args, result.output)
        assert not out.exists()
    other = _write_csv(tmp_path / "two.csv", _rows(50)[:, :2], header="a,b")
    result = CliRunner().invoke(cli, ["fit", str(file), "--val", str(other), *TINY, "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 1 and "lacks the columns ['c']" in result.output
    assert not (tmp_path / "run").exists()


def test_a_run_folder_holding_another_run_is_refused_unless_overwritten(tmp_path):
    file = _write_csv(tmp_path / "t.csv", _rows(100))
    out = tmp_path / "run"
    args = ["fit", str(file), *TINY, "--out", str(out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes()
    result = CliRunner().invoke(cli, [*args, "--seed", "1"])
    assert result.exit_code == 1 and "already holds a run" in result.output
    assert "--overwrite" in result.output and (out / "checkpoint.pt").read_bytes() == before
    (out / "old.png").write_bytes(b"")
    result = CliRunner().invoke(cli, [*args, "--seed", "1", "--overwrite", "--no-figures"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert not (out / "old.png").exists() and not (out / "pairs.png").exists()


def test_a_run_folder_being_written_is_locked(tmp_path):
    from cnflow.runs import run_directory

    file = _write_csv(tmp_path / "t.csv", _rows(100))
    with run_directory(tmp_path / "run"):
        result = CliRunner().invoke(cli, ["fit", str(file), *TINY, "--out",
                                          str(tmp_path / "run")])
    assert result.exit_code == 1 and "another process is writing" in result.output
    assert not (tmp_path / "run" / "config.json").exists()


def test_non_finite_options_and_checkpoints_are_refused(table_run, tmp_path):
    data, out = table_run
    for option in ("--lr", "--rtol", "--kinetic", "--max-time", "--val-fraction"):
        for value in ("nan", "inf"):
            result = CliRunner().invoke(cli, ["fit", str(data), option, value, "--out",
                                              str(tmp_path / "r")])
            assert result.exit_code == 2 and option in result.output, result.output
            assert "finite" in result.output or "range" in result.output
            assert not (tmp_path / "r").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["model"]["shift"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    result = CliRunner().invoke(cli, ["sample", "-c", str(tmp_path / "nan.pt"), "-n", "5",
                                      "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 1 and "non-finite values in ['shift']" in result.output
    assert not (tmp_path / "s.csv").exists()


def test_a_diverging_fit_stops_with_a_message_and_finite_weights(tmp_path):
    from cnflow.density import load_checkpoint

    file = _write_csv(tmp_path / "t.csv", _rows(200))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["fit", str(file), *TINY, "--lr", "1e6", "--grad-clip",
                                      "0", "--epochs", "20", "--no-figures", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning: training stopped at step" in result.output
    assert "non-finite loss" in result.output
    flow, _, _ = load_checkpoint(out)  # refuses non-finite weights: these are the best ones
    assert all(torch.isfinite(p).all() for p in flow.parameters())


# --- `--objective` and `--context`: a conditional model of a table ----------------

TINY_CTX = ["--width", "8", "--hidden", "8", "--epochs", "2", "--eval-tol", "1e-5",
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
                                      "otfm", "--finetune", "10", *TINY_CTX, "--out", str(out)])
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
    result = CliRunner().invoke(cli, ["fit", str(data), *args, *TINY_CTX, "--out", str(out)])
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


def _tiny_unconditional_fit(out) -> None:
    """A two-step unconditional fit of two_moons into ``out``."""
    result = CliRunner().invoke(cli, ["fit", "two_moons", "--iterations", "2", "--width", "4",
                                      "--hidden", "4", "--test-size", "100", "--val-size",
                                      "100", "--no-figures", "--out", str(out)])
    assert result.exit_code == 0, result.output


def test_context_for_an_unconditional_model_is_refused(tmp_path):
    out = tmp_path / "run"
    _tiny_unconditional_fit(out)
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
    _tiny_unconditional_fit(out)
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
