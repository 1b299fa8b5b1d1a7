"""``cnflow.density``: the settings of a ``cnflow fit`` run and their data-dependent
defaults, and the resume rule of `cnflow fit` (``cnflow.density._RESUMABLE_CHANGES``):
a changed setting that changes what is computed is refused and leaves the run folder
untouched; a changed stopping or scoring setting is accepted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_checks import TINY_FIT, check_run_folder
from click.testing import CliRunner
from cnflow.cli.main import cli

from cnflow.density import DEFAULT_FINETUNE, DEFAULT_FINETUNE_LR, DEFAULT_ITERATIONS, FitConfig


@pytest.mark.parametrize("objective", ["fm", "otfm"])
def test_flow_matching_on_builtin_data_defaults_to_a_maximum_likelihood_fine_tune(objective):
    config = FitConfig(dataset="two_moons", objective=objective)
    assert config.iterations == DEFAULT_ITERATIONS["flow matching before a fine-tune"] == 300
    assert config.finetune == DEFAULT_FINETUNE["builtin"] == 400
    assert config.finetune_lr == DEFAULT_FINETUNE_LR["builtin"] == 5e-3
    # Without a fine-tune flow matching runs longer; a given rate is kept.
    alone = FitConfig(dataset="two_moons", objective=objective, finetune=0, finetune_lr=0.1)
    assert (alone.iterations, alone.finetune_lr) == (DEFAULT_ITERATIONS["flow matching"], 0.1)


def test_maximum_likelihood_and_files_have_no_fine_tune_by_default(tmp_path):
    mle = FitConfig(dataset="two_moons")
    assert (mle.objective, mle.iterations, mle.finetune) == ("mle", 800, 0)
    table = tmp_path / "t.csv"
    table.write_text("a,b\n1,2\n")
    on_file = FitConfig(dataset=str(table), objective="otfm")
    assert on_file.finetune == DEFAULT_FINETUNE["file"] == 0
    assert on_file.finetune_lr == DEFAULT_FINETUNE_LR["file"] == 3e-3


# ------------------------------------------------------------------ the resume rule

def _fit(out: Path, *options: str):
    return CliRunner().invoke(cli, [*TINY_FIT, "--seed", "3", "--out", str(out), *options])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny run that ended by itself (all its iterations)."""
    out = tmp_path_factory.mktemp("resume") / "finished"
    result = _fit(out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A tiny run stopped by its CPU-time budget after its first validation round."""
    out = tmp_path_factory.mktemp("resume") / "interrupted"
    result = _fit(out, "--max-time", "1e-6")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["stop_reason"] == "time budget"
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target, copy_function=shutil.copy2)
    return target


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("option, value, field", [
    ("--lr", "0.02", "lr"),
    ("--width", "5", "width"),
    ("--iterations", "40", "iterations"),
])
def test_resume_with_a_changed_setting_is_refused_and_changes_nothing(
        finished_run: Path, tmp_path: Path, option: str, value: str, field: str) -> None:
    run = _copy(finished_run, tmp_path)
    before = _snapshot(run)
    result = _fit(run, "--resume", str(run), option, value)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot resume"), result.output
    assert f"different [{field!r}]" in lines[0]
    assert str(run) in lines[0]
    assert _snapshot(run) == before


@pytest.mark.parametrize("option, value", [("--max-time", "1000"), ("--patience", "3"),
                                           ("--test-size", "300")])
def test_resume_with_a_changed_stopping_or_scoring_setting_is_accepted(
        finished_run: Path, tmp_path: Path, option: str, value: str) -> None:
    run = _copy(finished_run, tmp_path)
    old = json.loads((run / "metrics.json").read_text())
    result = _fit(run, "--resume", str(run), option, value)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config[option[2:].replace("-", "_")] == float(value)
    # The run had ended: it is evaluated again, not trained further.
    assert metrics["steps"] == old["steps"] == 30
    assert metrics["history"] == old["history"]
    if option != "--test-size":
        assert metrics["test_nll"] == old["test_nll"]
    else:
        assert metrics["test_rows"] == 300


def test_resume_with_a_larger_time_budget_continues_the_run(interrupted_run: Path,
                                                            tmp_path: Path) -> None:
    run = _copy(interrupted_run, tmp_path)
    old = json.loads((run / "metrics.json").read_text())
    assert old["steps"] < 30
    result = _fit(run, "--resume", str(run), "--max-time", "1000")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stop_reason"] == "epochs"
    assert metrics["steps"] > old["steps"]
    # The epochs before the cut are kept; the cut epoch's record is replaced by the one of
    # the same epoch completed after the resume.
    kept = len(old["history"]) - 1
    assert metrics["history"][:kept] == old["history"][:kept]
    assert metrics["history"][kept]["epoch"] == old["history"][kept]["epoch"]
    assert metrics["history"][kept]["step"] > old["history"][kept]["step"]
    assert json.loads((run / "config.json").read_text())["max_time"] == 1000


def test_a_run_resumed_after_its_time_budget_takes_all_its_iterations(
        interrupted_run: Path, tmp_path: Path) -> None:
    run = _copy(interrupted_run, tmp_path)
    result = _fit(run, "--resume", str(run), "--max-time", "1000")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 30
    check_run_folder(run, 3)
