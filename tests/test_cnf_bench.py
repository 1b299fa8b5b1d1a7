"""The CNF benchmark end to end on tiny settings: every table comes from a measurement, the
report says how to regenerate it, and config.json rebuilds the settings."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from cnflow.cli.benchmark import benchmark

from cnflow.density import FitConfig, fit_run
from cnflow.experiments.cnf_bench import FITS, CNFBenchConfig, run


def test_settings_are_checked():
    with pytest.raises(ValueError, match="warmup must be an integer >= 0"):
        CNFBenchConfig(warmup=-1)
    with pytest.raises(ValueError, match="points must not be empty"):
        CNFBenchConfig(points=())
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        CNFBenchConfig(batch=0)


def test_the_command_line_refuses_bad_settings():
    result = CliRunner().invoke(benchmark, ["cnf", "--iterations", "0"])
    assert result.exit_code == 2 and "iterations must be an integer >= 1" in result.output


def test_a_tiny_run_writes_the_report_and_its_record(tmp_path):
    pytest.importorskip("torchdiffeq")
    runs = tmp_path / "fits"
    for dataset in FITS:  # tiny finished fits, reused instead of the default ones
        fit_run(FitConfig(dataset=dataset, iterations=2, val_size=50, test_size=50, width=4,
                          hidden=4), runs / dataset, device="cpu", progress=False,
                figures=False)
    config = CNFBenchConfig(iterations=1, warmup=0, batch=16, points=(50, 100), repeats=1)
    out = tmp_path / "cnf.md"
    text = run(config, out, runs, refit=False)
    assert out.read_text() == text
    assert (f"Regenerate with `cnflow benchmark cnf --iterations 1 --warmup 0 --batch 16 "
            f"--points 50,100 --repeats 1 --runs {runs} --out {out}`") in text
    assert "| torchdiffeq reference |" in text and "| two_circles |" in text
    assert "| cpu | 100 |" in text
    assert "Goal not judged: this run has no CPU row at 100,000 points." in text
    assert "[two_moons](fits/two_moons/density.png)" in text
    assert "settings are in [cnf/config.json](cnf/config.json)" in text
    record = json.loads((tmp_path / "cnf" / "config.json").read_text())
    assert CNFBenchConfig(**record) == config
