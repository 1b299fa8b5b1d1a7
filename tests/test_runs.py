"""`cnflow classify`, `cnflow latent` and `cnflow compare …` fail cleanly: one 'Error:' line
naming what is wrong, exit code != 0, no traceback, and no file written or changed.

Almost every case fails before training starts; the few that run use the tiniest settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from cnflow.cli.main import cli

from cnflow.experiments.latent_ode import MAX_SEED as LATENT_MAX_SEED
from cnflow.runs import run_directory
from cnflow.solvers import ODESolverError

# The smallest settings of each command that write a run folder; the output option last.
COMMANDS = {
    "classify": ["classify", "--model", "mlp", "--data", "digits", "--epochs", "1",
                 "--device", "cpu", "--out"],
    "latent": ["latent", "--n-obs", "30", "--iterations", "2", "--rnn-iterations", "2",
               "--batch-size", "8", "--time-subsample", "4", "--no-figures", "--out"],
    "density-matching": ["compare", "density-matching", "--quick", "--targets", "U1",
                         "--out"],
    "mle": ["compare", "mle", "--quick", "--datasets", "two_moons", "--out"],
}
# The file whose presence marks an earlier run of each command in its folder.
MARKERS = {"classify": "metrics.json", "latent": "metrics.json",
           "density-matching": "density_matching.json", "mle": "mle.json"}
FLOAT_OPTIONS = {
    "classify": ["--lr", "--rtol", "--atol", "--step-size"],
    "latent": ["--lr", "--final-lr-factor", "--rtol", "--atol"],
    "density-matching": ["--nf-lr", "--cnf-lr", "--box-wall"],
    "mle": ["--nf-lr", "--cnf-lr"],
}
SEEDS = {
    "classify": ("--seed", str(2**64)),
    "latent": ("--seed", str(LATENT_MAX_SEED + 1)),
    "density-matching": ("--seeds", f"0,{2**64}"),
    "mle": ("--seed", "429"),  # its batch seeds seed * 10**7 + step must stay below 2**32
}
NEEDS_WRITE_PERMISSION = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refused(root: Path, args: list[str], *names: str, code: int | None = None) -> str:
    """Run ``args``: it must fail with one clean error naming ``names`` and touch nothing."""
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    listing = _files(root)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and (code is None or result.exit_code == code), result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output, \
        result.output
    for name in names:
        assert name in result.output, (name, result.output)
    assert _files(root) == listing
    assert all(p.read_bytes() == data for p, data in before.items())
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_non_finite_numbers_are_refused_while_parsing(tmp_path, command):
    for option in FLOAT_OPTIONS[command]:
        for value in ("nan", "inf", "-inf"):
            _refused(tmp_path, [*COMMANDS[command], str(tmp_path / "run"), option, value],
                     f"'{option}'", code=2)


@pytest.mark.parametrize("command", COMMANDS)
def test_seeds_out_of_range_name_the_seed_option(tmp_path, command):
    option, value = SEEDS[command]
    _refused(tmp_path, [*COMMANDS[command], str(tmp_path / "run"), option, value],
             f"'{option}'", code=2)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_path_under_a_file_is_refused(tmp_path, command):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    _refused(tmp_path, [*COMMANDS[command], str(out)], str(out), "Not a directory", code=1)


@NEEDS_WRITE_PERMISSION
@pytest.mark.parametrize("command", COMMANDS)
def test_an_unwritable_out_folder_is_refused(tmp_path, command):
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused(tmp_path, [*COMMANDS[command], str(locked / "run")], str(locked / "run"),
                 "Permission denied", code=1)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_holding_another_run_is_refused_without_overwrite(tmp_path, command):
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKERS[command]).write_text("{}")
    _refused(tmp_path, [*COMMANDS[command], str(out)], "already holds a run", "--overwrite",
             MARKERS[command], code=1)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_locked_by_another_run_is_refused(tmp_path, command):
    out = tmp_path / "run"
    with run_directory(out):
        output = _refused(tmp_path, [*COMMANDS[command], str(out)], str(out), code=1)
    assert "another process is writing" in output


def test_latent_md_under_a_file_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("x")
    md = tmp_path / "file" / "report.md"
    _refused(tmp_path, [*COMMANDS["latent"], str(tmp_path / "run"), "--md", str(md)], str(md),
             code=1)


@NEEDS_WRITE_PERMISSION
def test_latent_md_in_an_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused(tmp_path, [*COMMANDS["latent"], str(tmp_path / "run"), "--md",
                            str(locked / "report.md")], str(locked / "report.md"), code=1)
    finally:
        locked.chmod(0o700)


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
    _refused(tmp_path, ["compare", "report", "--out", str(out), "--md", str(md)],
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
    _refused(tmp_path, ["compare", "report", "--out", str(out), "--md",
                        str(tmp_path / "comparisons.md")], str(out / "mle" / "mle.json"), problem,
             code=1)


@pytest.mark.parametrize("command, target", [
    ("classify", "cnflow.experiments.odenet.train_classifier"),
    ("latent", "cnflow.experiments.latent_ode.experiment.train_model"),
    ("mle", "cnflow.experiments.compare.mle.train_flow"),
])
def test_a_solve_that_blows_up_is_one_message_and_leaves_no_results(tmp_path, monkeypatch,
                                                                    command, target):
    def blow_up(*args, **kwargs):
        raise ODESolverError("dopri5: the state became NaN/inf")

    monkeypatch.setattr(target, blow_up)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [*COMMANDS[command], str(out)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.count("Error:") == 1 and "became NaN/inf" in result.output
    assert _files(out) == []  # neither results nor the lock file


def _strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_classify_overwrite_replaces_the_run_and_leaves_only_its_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": true}')
    (out / "old.png").write_bytes(b"")
    result = CliRunner().invoke(cli, [*COMMANDS["classify"], str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert _files(out) == ["checkpoint.pt", "metrics.json"]
    assert _strict_json(out / "metrics.json")["model"] == "mlp"


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
    assert _files(out) == ["config.json", "density_matching.json", "density_matching.png",
                           "mle.json", "mle.md", "mle.png", "mle_snapshots.png"]
    assert (out / "density_matching.png").read_bytes() == b"kept"
    assert _strict_json(out / "mle.json")["experiment"] == "mle"


def test_a_run_that_fails_before_writing_leaves_no_empty_folder(tmp_path):
    from cnflow.runs import run_directory

    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError), run_directory(out):
        raise RuntimeError("the solver blew up")
    assert not out.exists()
    with pytest.raises(RuntimeError), run_directory(out):
        (out / "checkpoint.pt").write_bytes(b"resumable")
        raise RuntimeError("later")
    assert (out / "checkpoint.pt").exists()  # kept: a resume can use it
