"""Run folders (cnflow.runs) as every command that writes one uses them (fit, classify,
latent, compare): an out path under a file, an unwritable folder, a folder holding
another run (without --overwrite) or one another process is writing is refused with
one 'Error:' line, exit code != 0, no traceback, and nothing written or changed; a run
that fails leaves neither results nor an empty folder; two `cnflow fit` processes
racing into one folder: one wins, the other fails with one clear line, and the folder
holds only the winner's run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import (
    COMMANDS,
    NEEDS_WRITE_PERMISSION,
    TINY_FIT,
    assert_refused,
    check_run_folder,
    listed_files,
)
from click.testing import CliRunner
from cnflow.cli.main import cli

from cnflow.runs import run_directory
from cnflow.solvers import ODESolverError

# The file whose presence marks an earlier run of each command in its folder.
MARKERS = {"classify": "metrics.json", "latent": "metrics.json",
           "density-matching": "density_matching.json", "mle": "mle.json"}


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_path_under_a_file_is_refused(tmp_path, command):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    assert_refused(tmp_path, [*COMMANDS[command], str(out)], str(out), "Not a directory", code=1)


@NEEDS_WRITE_PERMISSION
@pytest.mark.parametrize("command", COMMANDS)
def test_an_unwritable_out_folder_is_refused(tmp_path, command):
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_refused(tmp_path, [*COMMANDS[command], str(locked / "run")], str(locked / "run"),
                 "Permission denied", code=1)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_holding_another_run_is_refused_without_overwrite(tmp_path, command):
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKERS[command]).write_text("{}")
    assert_refused(tmp_path, [*COMMANDS[command], str(out)], "already holds a run", "--overwrite",
             MARKERS[command], code=1)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_locked_by_another_run_is_refused(tmp_path, command):
    out = tmp_path / "run"
    with run_directory(out):
        output = assert_refused(tmp_path, [*COMMANDS[command], str(out)], str(out), code=1)
    assert "another process is writing" in output


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
    assert listed_files(out) == []  # neither results nor the lock file


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


# ------------------------------------------------------------------ concurrent fits

CNFLOW = str(Path(sys.executable).with_name("cnflow"))
RACE_SECONDS = 28  # the whole race must end within this


def test_two_fits_into_one_folder_at_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    seeds = (11, 12)
    start = time.monotonic()
    processes = [subprocess.Popen([CNFLOW, *TINY_FIT, "--out", str(out), "--seed", str(seed)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env, cwd=tmp_path) for seed in seeds]
    results = []
    try:
        for process in processes:
            left = max(RACE_SECONDS - (time.monotonic() - start), 1)
            stdout, stderr = process.communicate(timeout=left)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    codes = [code for code, _, _ in results]
    assert sorted(code == 0 for code in codes) == [False, True], results
    winner = codes.index(0)
    _, stdout, _ = results[winner]
    code, loser_out, loser_err = results[1 - winner]
    assert code != 0
    assert loser_out == ""
    lines = loser_err.strip().splitlines()
    assert len(lines) == 1, loser_err
    assert lines[0].startswith("Error: "), loser_err
    assert ("another process is writing a run" in lines[0]
            or "already holds a run" in lines[0]), loser_err
    assert str(out) in lines[0]
    check_run_folder(out, seeds[winner], stdout)
    assert {p.name for p in out.iterdir()} <= {".lock", "config.json", "metrics.json",
                                               "checkpoint.pt"}
