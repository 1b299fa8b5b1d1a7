"""`cnflow compare`: both comparisons run end to end in --quick mode, their options are
their configs' fields, bad arguments fail clearly before anything is written, `compare
report` reads null numbers and names a result file it cannot use, and --overwrite
replaces only the comparison's own results."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from cli_checks import assert_refused, listed_files, strict_json
from click.testing import CliRunner
from cnflow.cli.compare import density_matching as density_command
from cnflow.cli.compare import mle as mle_command
from cnflow.cli.main import cli
from cnflow.cli.options import build_config

from cnflow.experiments.compare import density_matching, mle
from cnflow.report import command_line


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["compare", *args], catch_exceptions=False)


def test_density_matching_quick_writes_config_table_figure_and_json(tmp_path):
    out = tmp_path / "cmp" / "density_matching"
    result = _invoke("density-matching", "--quick", "--targets", "U1,U3", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "density_matching.json").read_text())
    assert {(r["target"], r["model"]) for r in data["runs"]} == {
        ("U1", "NF"), ("U1", "CNF"), ("U3", "NF"), ("U3", "CNF")}
    assert all(r["kl"] == r["kl"] and r["iterations"] >= 1 for r in data["runs"])
    assert data["command"].startswith("cnflow compare density-matching --targets U1,U3 ")
    assert "--quick" not in data["command"]  # the recorded command spells every setting
    assert json.loads((out / "config.json").read_text()) == data["config"]
    table = (out / "density_matching.md").read_text()
    assert f"Regenerate: `{data['command']}`" in table
    assert "| U1 |" in table and "NF K=2" in table and "CNF M=2" in table
    assert (out / "density_matching.png").stat().st_size > 0


def test_mle_quick_and_report(tmp_path):
    out = tmp_path / "cmp"
    result = _invoke("mle", "--quick", "--datasets", "two_moons", "--out", str(out / "mle"))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "mle" / "mle.json").read_text())
    assert [r["model"] for r in data["runs"]] == ["NF", "CNF"]
    assert all(r["test_nll"] > r["entropy_floor"] - 0.5 for r in data["runs"])
    for name in ("config.json", "mle.png", "mle_snapshots.png", "mle.md"):
        assert (out / "mle" / name).stat().st_size > 0
    md = tmp_path / "comparisons.md"
    result = _invoke("report", "--out", str(out), "--md", str(md))
    assert result.exit_code == 0, result.output
    text = md.read_text()
    assert "Maximum likelihood" in text and "cnflow compare mle" in text
    assert "](cmp/mle/mle.png)" in text and "Density matching" not in text
    assert shlex.join(["cnflow", "compare", "report", "--out", str(out), "--md", str(md)]) \
        in text


def test_quick_keeps_explicit_options(tmp_path):
    out = tmp_path / "cmp"
    result = _invoke("density-matching", "--quick", "--targets", "U2", "--nf-layers", "3",
                     "--cnf-widths", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "density_matching.json").read_text())
    assert data["config"]["nf_layers"] == [3] and data["config"]["cnf_widths"] == [1]
    assert data["config"]["nf_iterations"] == 3  # the quick value where none was given


@pytest.mark.parametrize(("module", "command", "config"), [
    (density_matching, density_command,
     density_matching.DensityMatchingConfig(targets=("U2", "U4"), seeds=(3, 5), nf_lr=1e-4,
                                            box_wall=0.0, jobs=2)),
    (mle, mle_command, mle.MLEConfig(datasets=("two_moons",), seed=7, eval_tol=3e-7)),
])
def test_the_recorded_command_parses_back_into_its_config(module, command, config):
    """The reproduction line and the generated options agree on every field."""
    args = shlex.split(command_line(module.COMMAND, config, out="x", overwrite=True))
    assert args[:len(module.COMMAND)] == list(module.COMMAND)
    ctx = command.make_context(module.COMMAND[-1], args[len(module.COMMAND):])
    assert build_config(type(config), ctx.params) == config
    assert ctx.params["out"] == "x" and ctx.params["overwrite"]


def test_every_setting_is_an_option_with_the_configs_default():
    for command, config in ((density_command, density_matching.DensityMatchingConfig()),
                            (mle_command, mle.MLEConfig())):
        ctx = command.make_context(command.name, [])
        assert build_config(type(config), ctx.params) == config


@pytest.mark.parametrize(("args", "message"), [
    (["density-matching", "--targets", "U9"],
     "targets has unknown entries ['U9']; choose from ['U1', 'U2', 'U3', 'U4']"),
    (["density-matching", "--nf-layers", "0"], "nf_layers entries must be an integer >= 1"),
    (["density-matching", "--cnf-widths", "2,,8"], "without empty entries"),
    (["density-matching", "--seeds", ""], "without empty entries"),
    (["density-matching", "--targets", "U1,U1"], "targets has repeated entries"),
    (["density-matching", "--nf-layers", "two"], "'two' is not a list of int"),
    (["density-matching", "--nf-iterations", "0"], "nf_iterations must be an integer >= 1"),
    (["density-matching", "--eval-samples", "1"], "eval_samples must be an integer >= 2"),
    (["density-matching", "--jobs", "0"], "jobs must be an integer >= 1"),
    (["mle", "--datasets", "moons"], "datasets has unknown entries ['moons']"),
    (["mle", "--nf-layers", "0"], "nf_layers must be an integer >= 1, got 0"),
    (["mle", "--datasets", ""], "without empty entries"),
    (["mle", "--cnf-lr", "nan"], "cnf_lr must be a finite number > 0, got nan"),
])
def test_bad_arguments_give_clear_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["compare", *args, "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_report_without_results_fails_clearly(tmp_path):
    result = CliRunner().invoke(cli, ["compare", "report", "--out", str(tmp_path),
                                      "--md", str(tmp_path / "x.md")])
    assert result.exit_code == 1
    assert "no density_matching/density_matching.json or mle/mle.json" in result.output


def _mle_result(out: Path) -> None:
    """A strict-JSON mle.json whose fit diverged (non-finite numbers written as null)."""
    from dataclasses import asdict

    from cnflow.experiments.compare import MLEConfig
    from cnflow.runs import write_json

    run = {"dataset": "two_moons", "model": "NF", "size": 2, "test_nll": float("inf"),
           "test_nll_stderr": float("nan"), "kl": float("inf"), "kl_stderr": float("nan"),
           "entropy_floor": 1.0, "cpu_seconds": 1.0, "skipped_steps": 3}
    write_json({"experiment": "mle", "command": "cnflow compare mle", "runs": [run],
                "config": asdict(MLEConfig()), "test_seed": 0, "cpu_seconds": 1.0,
                "wall_seconds": 1.0}, out / "mle" / "mle.json")


def test_compare_report_reads_null_numbers_and_refuses_unwritable_md(tmp_path):
    out = tmp_path / "cmp"
    _mle_result(out)
    (tmp_path / "file").write_text("x")
    md = tmp_path / "file" / "comparisons.md"
    assert_refused(tmp_path, ["compare", "report", "--out", str(out), "--md", str(md)],
             f"{str(tmp_path / 'file')!r}: it is a file", code=1)
    result = CliRunner().invoke(cli, ["compare", "report", "--out", str(out), "--md",
                                      str(tmp_path / "comparisons.md")])
    assert result.exit_code == 0, result.output
    assert "| two_moons | NF (planar, K=2) | nan |" in (tmp_path / "comparisons.md").read_text()


@pytest.mark.parametrize("text, problem", [("{}", "it has no 'command'"),
                                           ("{", "it is not JSON")])
def test_compare_report_names_a_result_file_it_cannot_use(tmp_path, text, problem):
    out = tmp_path / "cmp"
    (out / "mle").mkdir(parents=True)
    (out / "mle" / "mle.json").write_text(text)
    assert_refused(tmp_path, ["compare", "report", "--out", str(out), "--md",
                        str(tmp_path / "comparisons.md")], str(out / "mle" / "mle.json"), problem,
             code=1)


def test_mle_overwrite_replaces_only_its_own_results(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "density_matching.json").write_text('{"kept": true}')
    (out / "density_matching.png").write_bytes(b"kept")
    (out / "mle.json").write_text('{"old": true}')
    (out / "mle_snapshots.png").write_bytes(b"old")
    args = ["compare", "mle", "--quick", "--datasets", "two_moons", "--nf-iterations", "1",
            "--cnf-iterations", "1", "--grid", "4", "--figure-samples", "20", "--out", str(out)]
    # Its own earlier results make the folder "another run"; the other comparison's do not.
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "(mle.json)" in result.output, result.output
    result = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert listed_files(out) == ["config.json", "density_matching.json", "density_matching.png",
                           "mle.json", "mle.md", "mle.png", "mle_snapshots.png"]
    assert (out / "density_matching.png").read_bytes() == b"kept"
    assert strict_json(out / "mle.json")["experiment"] == "mle"
