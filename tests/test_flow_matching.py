"""The flow-matching benchmark: its settings, the FitConfig of each measurement and the
report's sections (from made-up numbers: the measurements themselves are whole ``cnflow
fit`` runs, far too long for the suite)."""

from __future__ import annotations

import shlex

import pytest
from cnflow.cli.benchmark import flow_matching as flow_matching_command
from cnflow.cli.options import build_config

from cnflow.density import FitConfig
from cnflow.experiments.flow_matching.config import (
    COMMAND,
    CONTROL_VARIANT,
    TWO_D_VARIANTS,
    FlowMatchingBenchConfig,
)
from cnflow.experiments.flow_matching.report import (
    anchor_section,
    conditional_section,
    timing_section,
    two_d_section,
)
from cnflow.report import command_line


def test_settings_are_checked():
    with pytest.raises(ValueError, match="sets has unknown entries"):
        FlowMatchingBenchConfig(sets=("two_moons",))
    with pytest.raises(ValueError, match="iterations must be an integer >= 1 or None"):
        FlowMatchingBenchConfig(iterations=0)
    with pytest.raises(ValueError, match="anchor_seeds has repeated entries"):
        FlowMatchingBenchConfig(anchor_seeds=(1, 1))
    assert FlowMatchingBenchConfig().test_size == FitConfig().test_size


def test_each_measurement_is_cnflow_fit_with_the_configs_overrides():
    default = FlowMatchingBenchConfig()
    assert default.two_d_settings("otfm") == {**TWO_D_VARIANTS["otfm"], "val_size": 5000,
                                              "test_size": 20000}
    tiny = FlowMatchingBenchConfig(iterations=20, finetune=5, val_size=200)
    settings = tiny.two_d_settings("otfm + fine-tune")
    assert (settings["iterations"], settings["finetune"], settings["val_size"]) == (20, 5, 200)
    assert tiny.two_d_settings("mle")["objective"] == "mle"
    assert "finetune" not in tiny.two_d_settings("mle")
    assert "finetune" not in default.two_d_settings("otfm + fine-tune")  # the command's own
    # The control is the fine-tune's schedule alone: its steps follow the fine-tune's.
    control = FitConfig(**default.two_d_settings(CONTROL_VARIANT))
    goal = FitConfig(**default.two_d_settings("otfm + fine-tune"))
    assert (control.objective, control.iterations, control.lr, control.batch_size) == \
        ("mle", goal.finetune, goal.finetune_lr, 512)
    assert tiny.two_d_settings(CONTROL_VARIANT)["iterations"] == 5
    assert FitConfig(**default.anchor_settings(0)).iterations == 2000
    anchor = FitConfig(**tiny.anchor_settings(3))
    assert (anchor.objective, anchor.finetune, anchor.seed, anchor.iterations) == \
        ("otfm", 0, 3, 20)


def test_the_recorded_command_parses_back_into_the_config():
    config = FlowMatchingBenchConfig(sets=("wine",), seeds=(0,), budget=0.5, iterations=20)
    args = shlex.split(command_line(COMMAND, config, work="w", out="o"))
    ctx = flow_matching_command.make_context("flow-matching", args[len(COMMAND):])
    assert build_config(FlowMatchingBenchConfig, ctx.params) == config
    assert (ctx.params["work"], ctx.params["out"]) == ("w", "o")


def _two_d(dataset, variant, gap, cpu, seed=0):
    settings = {"objective": "otfm", "iterations": 2000, "batch_size": 256, "lr": 3e-3,
                "finetune": 0, "finetune_lr": 3e-3, "eval_tol": 1e-7, "val_size": 5000,
                "test_size": 20000}
    return {"dataset": dataset, "variant": variant, "seed": seed, "floor": 1.0,
            "test_nll": 1.0 + gap,
            "test_nll_stderr": 0.004, "gap": gap, "kl": gap, "kl_stderr": 0.001,
            "cpu_seconds": cpu, "reached_cpu": None, "steps": 2000, "eval_nfe": 26,
            "curve": [(1.0, 200, 0.3)], "settings": settings}


def test_the_2d_section_states_the_goal_on_every_seed_and_the_settings():
    goal = [_two_d("two_moons", "otfm + fine-tune", 0.02, 21.0),
            _two_d("two_moons", "otfm + fine-tune", 0.04, 24.0, seed=1)]
    rows = [goal[0], _two_d("two_circles", "otfm + fine-tune", 0.2, 30.0)]
    text = "\n".join(two_d_section(rows, goal, "fig.png"))
    assert "otfm + fine-tune: 2000 steps of 256 at lr 0.003" in text and "20,000 points" in text
    assert "| two_moons | otfm + fine-tune | 1.0200 ± 0.0040 | +0.0200 | 0.0200 ± 0.0010 | " \
        "21.0 | not reached | 2000 | 26 |" in text
    assert "every seed): met.** seed 0: +0.020 nats in 21.0 CPU s (met); seed 1: +0.040 " \
        "nats in 24.0 CPU s (met)." in text and "![learning curves](fig.png)" in text
    assert "Control" not in text
    missed = [goal[0], _two_d("two_moons", "otfm + fine-tune", 0.09, 24.0, seed=2)]
    text = "\n".join(two_d_section(rows, missed, "fig.png"))
    assert "every seed): not met (1 of 2 seeds).**" in text and "+0.090 nats" in text
    # The control on the goal's seeds: what flow matching bought, per seed and on average.
    control = [_two_d("two_moons", CONTROL_VARIANT, 0.05, 18.0),
               _two_d("two_moons", CONTROL_VARIANT, 0.03, 19.0, seed=1)]
    text = "\n".join(two_d_section(rows, goal + control, "fig.png"))
    assert "every seed): met." in text  # the control does not count for the goal
    assert "seed 0: +0.050 nats in 18.0 CPU s; seed 1: +0.030 nats in 19.0 CPU s. The " \
        "control minus otfm + fine-tune, mean over these seeds: +0.010 nats" in text
    assert "and -4.0 CPU s." in text


def test_the_anchor_section_compares_the_matchers():
    runs = [{"matcher": m, "seed": s, "test_nll": 1.0 + 0.01 * s + (m == "torchcfm") * 0.001,
             "losses": [0.5, 0.4]} for m in ("cnflow", "torchcfm") for s in range(3)]
    text = "\n".join(anchor_section(runs))
    assert "| cnflow | 0.4000, 0.4000, 0.4000 | 1.0000, 1.0100, 1.0200 |" in text
    assert "Difference cnflow − torchcfm: -0.0010" in text and "within two" in text
    assert "not installed" in "\n".join(anchor_section([None]))


def test_the_conditional_and_timing_sections():
    conditional = {"command": "cnflow fit moons-400.csv --context label --epochs 2",
                   "rows": 400, "kl": {0: (0.1, 0.01), 1: (0.2, 0.02)}, "objective": "mle",
                   "finetune": 0, "cpu_seconds": 3.0}
    text = "\n".join(conditional_section(conditional, "c.png"))
    assert "outer moon 0.100 ± 0.010, inner moon 0.200 ± 0.020" in text
    timing = "\n".join(timing_section([{"n": 128, "scipy": 2.0, "pot": 0.5}]))
    assert "| 128 | 2.00 | 0.50 | 4.0 |" in timing
