"""`cnflow fit FILE` on the user's own tables, then `logprob` and `sample` on the run;
every bad table gives one message naming file, line and column, exit 1, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cnflow.cli.main import cli

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
