"""`cnflow compare`: both comparisons run end to end in --quick mode; bad arguments fail clearly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from cnflow.cli.main import cli

from cnflow.experiments.compare import DensityMatchingConfig, MLEConfig, reverse_kl


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["compare", *args], catch_exceptions=False)


def test_density_matching_quick_writes_table_figure_and_json(tmp_path):
    out = tmp_path / "cmp"
    result = _invoke("density-matching", "--quick", "--targets", "U1,U3", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "density_matching.json").read_text())
    assert {(r["target"], r["model"]) for r in data["runs"]} == {
        ("U1", "NF"), ("U1", "CNF"), ("U3", "NF"), ("U3", "CNF")}
    assert all(r["kl"] == r["kl"] and r["iterations"] >= 1 for r in data["runs"])
    assert data["command"].startswith("cnflow compare density-matching --targets U1,U3 ")
    assert "--quick" not in data["command"]  # the recorded command spells every setting
    table = (out / "density_matching.md").read_text()
    assert "| U1 |" in table and "NF K=2" in table and "CNF M=2" in table
    assert (out / "density_matching.png").stat().st_size > 0


def test_mle_quick_and_report(tmp_path):
    out = tmp_path / "cmp"
    result = _invoke("mle", "--quick", "--datasets", "two_moons", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "mle.json").read_text())
    assert [r["model"] for r in data["runs"]] == ["NF", "CNF"]
    assert all(r["test_nll"] > r["entropy_floor"] - 0.5 for r in data["runs"])
    for name in ("mle.png", "mle_snapshots.png", "mle.md"):
        assert (out / name).stat().st_size > 0
    md = tmp_path / "comparisons.md"
    result = _invoke("report", "--out", str(out), "--md", str(md))
    assert result.exit_code == 0, result.output
    text = md.read_text()
    assert "Maximum likelihood" in text and "cnflow compare mle" in text
    assert "](cmp/mle.png)" in text and "Density matching" not in text


def test_quick_keeps_explicit_options(tmp_path):
    out = tmp_path / "cmp"
    result = _invoke("density-matching", "--quick", "--targets", "U2", "--nf-layers", "3",
                     "--cnf-widths", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "density_matching.json").read_text())
    assert data["config"]["nf_layers"] == [3] and data["config"]["cnf_widths"] == [1]
    assert data["config"]["nf_iterations"] == 3  # the quick value where none was given


@pytest.mark.parametrize(("args", "message"), [
    (["density-matching", "--targets", "U9"], "unknown 'U9'; choose from U1, U2, U3, U4"),
    (["density-matching", "--nf-layers", "0"], "0 is not allowed: every entry must be >= 1"),
    (["density-matching", "--cnf-widths", "2,,8"], "without empty entries"),
    (["density-matching", "--seeds", ""], "non-empty list"),
    (["density-matching", "--targets", "U1,U1"], "repeated entries"),
    (["density-matching", "--nf-layers", "two"], "'two' is not an integer"),
    (["density-matching", "--nf-iterations", "0"], "0 is not in the range x>=1"),
    (["mle", "--datasets", "moons"], "unknown 'moons'; choose from"),
    (["mle", "--nf-layers", "0"], "0 is not in the range x>=1"),
    (["mle", "--datasets", ""], "non-empty list"),
])
def test_bad_arguments_give_clear_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["compare", *args, "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "density_matching.json").exists()


def test_report_without_results_fails_clearly(tmp_path):
    result = CliRunner().invoke(cli, ["compare", "report", "--out", str(tmp_path),
                                      "--md", str(tmp_path / "x.md")])
    assert result.exit_code == 1
    assert "no density_matching.json or mle.json" in result.output


def test_configs_validate_their_arguments():
    with pytest.raises(ValueError, match="nf_layers entries must be an integer >= 1, got 0"):
        DensityMatchingConfig(nf_layers=(0,))
    with pytest.raises(ValueError, match="targets must not be empty"):
        DensityMatchingConfig(targets=())
    with pytest.raises(ValueError, match=r"targets has unknown entries \['U7'\]"):
        DensityMatchingConfig(targets=("U7",))
    with pytest.raises(ValueError, match="datasets has unknown entries"):
        MLEConfig(datasets=("spiral",))
    with pytest.raises(ValueError, match="nf_lr must be a finite number > 0, got -1"):
        MLEConfig(nf_lr=-1)


def test_reverse_kl_is_zero_for_a_flow_that_matches_its_target():
    """A Gaussian target through the same machinery: KL(N(0,I)‖N(0,I)) = 0 (up to the box)."""
    from cnflow.flows import PlanarFlow

    class Gauss:
        box = ((-9.0, 9.0), (-9.0, 9.0))

        @staticmethod
        def energy(x):
            return 0.5 * x.pow(2).sum(-1)

        @staticmethod
        def log_normalizer():
            return math.log(2 * math.pi)

    flow = PlanarFlow(2, layers=1, direction="generative").double()
    with torch.no_grad():
        flow.layers[0].w.zero_()
        flow.layers[0].u.zero_()
    estimate = reverse_kl(flow, Gauss, n=2000, seed=0)
    assert estimate["kl"] == pytest.approx(0.0, abs=1e-12)
    assert estimate["outside_box"] == 0.0

