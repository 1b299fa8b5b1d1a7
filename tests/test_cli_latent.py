"""`cnflow latent`: options generated from LatentConfig, one usage error for a bad value,
a --md report path it cannot write refused before anything is written, and a tiny run
that writes the run folder and a report whose command reproduces it."""

from __future__ import annotations

import json
import shlex

import pytest
import torch
from cli_checks import COMMANDS, NEEDS_WRITE_PERMISSION, assert_refused
from click.testing import CliRunner
from cnflow.cli.latent import config_from, latent
from cnflow.cli.main import cli

from cnflow.experiments.latent_ode import LatentConfig
from cnflow.models.latent_ode import LatentODE
from cnflow.solvers import ODESolverError

TINY = ["latent", "--n-obs", "10", "--iterations", "2", "--rnn-iterations", "2",
        "--batch-size", "8", "--time-subsample", "4"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-obs", "101"], "n_obs entries must be an integer in [1, 100], got 101"),
        (["--n-obs", "0"], "n_obs entries must be an integer in [1, 100], got 0"),
        (["--model", "transformer"], "transformer"),
        (["--iterations", "0"], "iterations must be an integer >= 1, got 0"),
        (["--time-subsample", "150"], "time_subsample must be an integer in [0, 98], got 150"),
        (["--seeds", "0,-1"], "seeds entries must be an integer in [0, 4294967295], got -1"),
        (["--seeds", "1,1"], "seeds has repeated entries: [1, 1]"),
        (["--seeds", "a"], "'a' is not a list of int"),
        (["--eval-every", "-1"], "eval_every must be an integer >= 0, got -1"),
        (["--final-lr-factor", "2"], "final_lr_factor must be a finite number > 0 and <= 1"),
        (["--lr", "nan"], "'--lr'"),
        (["--gradient", "backprop"], "gradient='backprop' is not one of"),
        (["--device", "tpu"], "device='tpu' is not one of"),
    ],
)
def test_cli_rejects_bad_input_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    md = tmp_path / "report.md"
    result = CliRunner().invoke(cli, ["latent", *args, "--out", str(out), "--md", str(md)])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("Error:") == 1
    assert not out.exists() and not md.exists()


def test_every_config_field_is_an_option_with_the_config_default():
    ctx = latent.make_context("latent", [])
    assert config_from(ctx.params) == LatentConfig()


def test_cli_tiny_run_writes_everything_and_its_command_reproduces_it(tmp_path):
    out = tmp_path / "latent_ode"
    md = tmp_path / "latent_ode.md"
    result = CliRunner().invoke(cli, [*TINY, "--seeds", "3,4", "--out", str(out), "--md",
                                      str(md)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {f"{model}/n=10/seed={seed}" for model in ("latent-ode", "rnn") for seed in (3, 4)}
    assert set(metrics["runs"]) == keys and metrics["complete"]
    assert metrics["runs"]["rnn/n=10/seed=3"]["curve"]["step"] == [2]
    assert metrics["runs"]["latent-ode/n=10/seed=4"]["stop_reason"] == "steps"
    assert len(metrics["runs"]["rnn/n=10/seed=4"]["per_spiral_rmse_extrapolation"]) == 200
    # Each seed its own data and weights.
    assert metrics["runs"]["rnn/n=10/seed=3"]["rmse_extrapolation"] \
        != metrics["runs"]["rnn/n=10/seed=4"]["rmse_extrapolation"]
    for name in ("checkpoints/latent-ode_n10_seed3.pt", "checkpoints/rnn_n10_seed4.pt",
                 "predictions_n10.png", "interpolation_n10.png", "learning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    # config.json is the config; the recorded command, parsed again, gives the same one.
    config = LatentConfig(**json.loads((out / "config.json").read_text()))
    assert config == LatentConfig(**metrics["config"]) and config.seeds == (3, 4)
    command = shlex.split(metrics["command"])
    assert command[:2] == ["cnflow", "latent"] and command[-1] == "--overwrite"
    ctx = latent.make_context("latent", command[2:])
    assert config_from(ctx.params) == config
    assert ctx.params["out"] == out and ctx.params["md"] == md and ctx.params["threads"] == 1
    text = md.read_text()
    assert "Table 2 analog" in text and metrics["command"] in text
    # The figures are embedded in the report, with paths relative to it.
    assert "![learning curves](latent_ode/learning_curves.png)" in text
    assert "![predictions n=10](latent_ode/predictions_n10.png)" in text
    assert "the mean over 2 seeds ± their standard deviation" in text
    checkpoint = torch.load(out / "checkpoints" / "latent-ode_n10_seed3.pt", weights_only=False)
    LatentODE().load_state_dict(checkpoint["state_dict"])
    # Rerunning the recorded command replaces the run (it carries --overwrite).
    again = CliRunner().invoke(cli, [*command[1:-3], "--no-figures", "--overwrite"])
    assert again.exit_code == 0, again.output
    rerun = json.loads((out / "metrics.json").read_text())["runs"]
    assert rerun["rnn/n=10/seed=4"]["rmse_extrapolation"] \
        == metrics["runs"]["rnn/n=10/seed=4"]["rmse_extrapolation"]


def test_a_solve_that_blows_up_leaves_no_results(tmp_path, monkeypatch):
    def blow_up(*args, **kwargs):
        raise ODESolverError("dopri5: the state became NaN/inf")

    monkeypatch.setattr("cnflow.experiments.latent_ode.experiment.train_model", blow_up)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [*TINY, "--no-figures", "--out", str(out)])
    assert result.exit_code == 1 and "became NaN/inf" in result.output
    assert not out.exists()  # neither config.json, results nor the lock file


def test_latent_md_under_a_file_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("x")
    md = tmp_path / "file" / "report.md"
    assert_refused(tmp_path, [*COMMANDS["latent"], str(tmp_path / "run"), "--md", str(md)], str(md),
             code=1)


@NEEDS_WRITE_PERMISSION
def test_latent_md_in_an_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_refused(tmp_path, [*COMMANDS["latent"], str(tmp_path / "run"), "--md",
                            str(locked / "report.md")], str(locked / "report.md"), code=1)
    finally:
        locked.chmod(0o700)
