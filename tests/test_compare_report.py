"""The comparisons' markdown: tables from the JSON results, and the merged report."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest

from cnflow.experiments.compare.density_matching import DensityMatchingConfig
from cnflow.experiments.compare.mle import MLEConfig
from cnflow.experiments.compare.report import (
    density_goal,
    density_matching_markdown,
    mle_markdown,
    write_report,
)
from cnflow.runs import write_json


def _density_result() -> dict:
    config = asdict(DensityMatchingConfig(targets=("U1",), nf_layers=(8,), cnf_widths=(8,)))
    summary = [{"target": "U1", "model": "NF", "size": 8, "kl_mean": 0.3, "kl_std": 0.1,
                "outside_box_max": 0.01, "seeds": 2},
               {"target": "U1", "model": "CNF", "size": 8, "kl_mean": 0.05,
                "kl_std": math.nan, "outside_box_max": 0.0, "seeds": 2}]
    runs = [{"kl_stderr": 0.002, "cpu_seconds": 30.0, "stop_reason": "steps"}] * 4
    return {"command": "cnflow compare density-matching --targets U1", "config": config,
            "summary": summary, "runs": runs, "log_normalizers": {"U1": 1.8775},
            "cpu_seconds": 1.0, "wall_seconds": 60.0}


def test_density_markdown_is_a_table_of_means_and_spreads():
    text = density_matching_markdown(_density_result())
    assert text.startswith("Regenerate: `cnflow compare density-matching --targets U1`")
    assert "| target | NF K=8 | CNF M=8 |\n|---|---|---|\n| U1 | 0.300 ± 0.100 | 0.050 |" \
        in text
    assert "**met**" in text and "2.0 CPU-minutes in the fits" in text


def test_the_goal_needs_both_a_small_kl_and_a_margin_over_the_planar_flow():
    config = {"targets": ["U1", "U2"], "nf_layers": [32], "cnf_widths": [32]}
    table = {("U1", "NF", 32): {"kl_mean": 0.3}, ("U1", "CNF", 32): {"kl_mean": 0.05},
             ("U2", "NF", 32): {"kl_mean": 0.15}, ("U2", "CNF", 32): {"kl_mean": 0.09}}
    text = density_goal(config, table)
    assert "**not met**" in text and "Largest CNF KL 0.090 (U2)" in text
    assert "ratio 1.7" in text


def test_mle_markdown_shows_nll_beside_the_floor():
    config = asdict(MLEConfig(datasets=("two_moons",)))
    runs = [{"dataset": "two_moons", "model": "CNF", "size": 64, "test_nll": 1.03,
             "test_nll_stderr": 0.005, "entropy_floor": 1.0, "kl": 0.03, "kl_stderr": 0.001,
             "cpu_seconds": 12.0, "stop_reason": "steps"}]
    text = mle_markdown({"command": "cnflow compare mle", "config": config, "runs": runs,
                         "test_seed": 3, "cpu_seconds": 12.0, "wall_seconds": 13.0})
    assert ("| two_moons | CNF (M=64) | 1.0300 ± 0.0050 | 1.0000 | 0.0300 | "
            "0.0300 ± 0.0010 | 0.2 |") in text


def test_the_report_merges_both_runs_and_links_their_figures(tmp_path):
    write_json({**_density_result(), "experiment": "density_matching"},
               tmp_path / "runs" / "density_matching" / "density_matching.json")
    text = write_report(tmp_path / "runs", tmp_path / "out" / "comparisons.md")
    assert "## Density matching (Figure 4)" in text and "Maximum likelihood" not in text
    assert "](../runs/density_matching/density_matching.png)" in text
    assert (tmp_path / "out" / "comparisons.md").read_text() == text


def test_a_result_without_what_the_report_shows_is_named(tmp_path):
    write_json({"command": "x"}, tmp_path / "mle" / "mle.json")
    with pytest.raises(ValueError, match="is not a result of `cnflow compare mle`: it has no"):
        write_report(tmp_path, tmp_path / "comparisons.md")
