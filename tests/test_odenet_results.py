"""The results run (cnflow.experiments.odenet.results) and its report
(cnflow.experiments.odenet.report)."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from cnflow.experiments.odenet.report import PLATEAU_EPOCHS, plateau
from cnflow.experiments.odenet.results import (
    DEFAULT_OUT,
    OdenetResultsConfig,
    command_line,
    default_md,
    run,
)
from cnflow.experiments.odenet.sweep import FIGURE3_FILES

# A run in seconds: the digits, one epoch of three steps, two depths, two tolerances.
QUICK = OdenetResultsConfig(data="digits", epochs=1, batch_size=512, memory_batch=8,
                            memory_multipliers=(1, 2), sweep_batch=8,
                            sweep_tolerances=(1e-2, 1e-3), reference_tol=1e-5)


def test_the_defaults_are_the_committed_run():
    config = OdenetResultsConfig()
    assert (config.data, config.epochs, config.batch_size, config.lr, config.seed) == \
        ("offline", 20, 32, 1e-3, 0)
    assert (config.method, config.tol, config.threads) == ("dopri5", 1e-3, 1)
    assert command_line(config) == "cnflow odenet-results --overwrite"
    assert default_md(DEFAULT_OUT) == Path("results/odenet.md")


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"data": "mnist"}, "data='mnist' is not one of"),
    ({"method": "rk4"}, "method='rk4' is not one of"),
    ({"memory_method": "dopri5"}, "memory_method='dopri5' is not one of"),
    ({"memory_multipliers": (1, 1)}, "memory_multipliers has repeated entries"),
    ({"memory_batch": 1}, "memory_batch must be an integer >= 2, got 1"),
    ({"sweep_tolerances": ()}, "sweep_tolerances must not be empty"),
    ({"sweep_tolerances": (1e-3, -1.0)}, "sweep_tolerances entries must be a finite number"),
    ({"reference_tol": 1e-5}, "reference_tol must be a finite number > 0 and < 1e-05"),
    ({"seed": 2**32}, "seed must be an integer in"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        OdenetResultsConfig(**kwargs)


def test_the_command_line_spells_out_the_changed_settings(tmp_path):
    text = command_line(QUICK, tmp_path / "out", tmp_path / "report.md")
    args = shlex.split(text)
    assert args[:2] == ["cnflow", "odenet-results"] and args[-1] == "--overwrite"
    assert "--memory-multipliers" in args and args[args.index("--memory-multipliers") + 1] == "1,2"
    assert "--epochs" in args and "--lr" not in args  # the default lr is left out
    assert args[args.index("--md") + 1] == str(tmp_path / "report.md")
    assert "--md" not in shlex.split(command_line(QUICK, tmp_path / "out",
                                                  default_md(tmp_path / "out")))


def test_a_quick_run_writes_its_config_results_figures_and_report(tmp_path):
    out = tmp_path / "odenet"
    results = run(QUICK, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "results.json", "memory_vs_depth.png", "test_error_per_epoch.png",
         *FIGURE3_FILES])
    saved = json.loads((out / "config.json").read_text())
    assert OdenetResultsConfig(**saved) == QUICK  # the record that reproduces the run
    assert json.loads((out / "results.json").read_text())["command"] == results["command"]
    assert [r["model"] for r in results["table1"]] == ["1-layer MLP", "ResNet", "RK-Net",
                                                       "ODE-Net"]
    assert results["train"]["lr_final"] == 0.0 and results["train"]["patience"] is None
    assert len(results["odenet_steps"]) == 2  # 1438 images in full batches of 512
    assert len(results["memory_vs_depth"]) == 6 and len(results["figure3_sweep"]) == 2
    md = default_md(out).read_text()
    assert results["command"] in md and "--data digits" in md
    assert "| ODE-Net |" in md and "## Memory vs depth" in md
    assert "](odenet/fig3a_nfe_vs_error.png)" in md  # figures linked relative to the report


def test_a_batch_larger_than_the_data_is_refused_before_writing(tmp_path):
    config = dataclasses.replace(QUICK, sweep_batch=10_000)
    with pytest.raises(ValueError, match="sweep_batch must be an integer in \\[1, 359\\]"):
        run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_curve_has_plateaued_when_its_last_epochs_gain_at_most_one_standard_error():
    assert PLATEAU_EPOCHS == 3
    # 2,000 test images at 1 % error: one standard error is sqrt(0.01 * 0.99 / 2000) = 0.22
    # points.
    change, se, flat = plateau([0.05, 0.012, 0.011, 0.0105, 0.010], 2000)
    assert change == pytest.approx(-0.2) and se == pytest.approx(0.2225, abs=1e-4) and flat
    assert not plateau([0.05, 0.02, 0.015, 0.0125, 0.010], 2000)[2]  # down 1.0 point
    assert plateau([0.05, 0.01, 0.011, 0.012, 0.013], 2000)[2]  # rising is no improvement
    assert plateau([0.05, 0.02, 0.01], 2000) is None  # too short to judge
