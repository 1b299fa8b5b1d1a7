"""The tabular benchmark: its settings, its report sections and one tiny run end to end
(through ``run`` and through ``cnflow benchmark tabular``)."""

from __future__ import annotations

import json
import math
import shlex

import pytest
from click.testing import CliRunner
from cnflow.cli.benchmark import tabular as tabular_command
from cnflow.cli.main import cli
from cnflow.cli.options import build_config

from cnflow.experiments.tabular import TabularConfig, run
from cnflow.experiments.tabular.config import COMMAND, DEFAULT_VARIANT, VARIANTS
from cnflow.experiments.tabular.report import full_section, summarize, sweep_section


def test_unknown_names_and_empty_lists_are_refused():
    with pytest.raises(ValueError, match="unknown entries \\['nope'\\]"):
        TabularConfig(sets=("nope",))
    with pytest.raises(ValueError, match="models"):
        TabularConfig(models=("realnvp",))
    with pytest.raises(ValueError, match="sweep_sets must not be empty"):
        TabularConfig(sweep_sets=())
    with pytest.raises(ValueError, match="budget must be a finite number > 0"):
        TabularConfig(budget=0.0)


def _row(name, model, seed, nll, **extra):
    return {"set": name, "model": model, "seed": seed, "test_nll": nll, "dim": 2,
            "floor": None, "train_rows": 10, "epochs": 3, "parameters": 7, "overrides": {},
            **extra}


def test_summary_is_mean_and_standard_error_over_seeds():
    table = summarize([_row("wine", "cnflow", 0, 1.0), _row("wine", "cnflow", 1, 2.0),
                       _row("wine", "zuko_nsf", 0, 1.5),
                       _row("wine", "cnflow", 0, 9.0, overrides={"lr": 1e-2})])
    assert table[("wine", "cnflow")]["mean"] == 1.5 and table[("wine", "cnflow")]["n"] == 2
    assert table[("wine", "cnflow")]["stderr"] == pytest.approx(0.5)
    assert math.isnan(table[("wine", "zuko_nsf")]["stderr"])  # one seed


def test_the_sweep_marks_the_best_variant_per_set():
    config = TabularConfig(sets=("wine",), sweep_sets=("wine",))
    results = {("wine", "cnflow", 0, "" if v == DEFAULT_VARIANT else v): {"test_nll": 1.0 + i}
               for i, v in enumerate(VARIANTS)}
    text = "\n".join(sweep_section(config, results))
    assert f"| {DEFAULT_VARIANT} | **1.000** |" in text and "| lr 1e-2 | 2.000 |" in text
    assert "best of these on 1 of 1 sets" in text


def test_the_full_runs_section_states_the_goal():
    run_ = {"test_nll": 1.2, "test_nll_stderr": 0.01, "floor": 1.0, "cpu_seconds": 250.0,
            "epochs_run": 40, "best_epoch": 38, "stop_reason": "early stopping",
            "nfe_forward_max": 80.0, "val_nll_last": 1.21}
    text = "\n".join(full_section({"default": run_}))
    assert "| default | 1.200 ± 0.010 | 0.200 | 250 | 40 (38) | early stopping | 80 | 1.210 |" \
        in text
    assert "Default: 250 CPU seconds, goal met." in text


def test_a_tiny_benchmark_writes_its_report_and_reuses_its_cache(tmp_path):
    config = TabularConfig(sets=("wine",), models=("cnflow",), seeds=(0, 1), budget=0.5,
                           jobs=1, sweep=False, full_runs=False)
    lines = []
    result = run(config, tmp_path / "out", work=tmp_path / "work", echo=lines.append)
    text = (tmp_path / "out.md").read_text()
    assert "(out/tabular.png)" in text  # the figure from beside its folder
    assert "| wine | 13 | 142 |" in text and (tmp_path / "out" / "tabular.png").is_file()
    assert f"Regenerate: `{result['command']}`" in text
    fits = json.loads((tmp_path / "out" / "tabular.json").read_text())["fits"]
    assert len(fits) == 2 and all(f["fit_cpu_seconds"] < 5 for f in fits)
    assert TabularConfig(**json.loads((tmp_path / "out" / "config.json").read_text())) \
        == config
    assert lines[0].startswith("0 fits cached, 2 to run")
    run(config, tmp_path / "out", work=tmp_path / "work", echo=lines.append)
    assert lines[-1].startswith("2 fits cached, 0 to run")
    # The recorded command is the CLI's, and parses back into the same settings.
    args = shlex.split(result["command"])
    assert args[:len(COMMAND)] == list(COMMAND)
    ctx = tabular_command.make_context("tabular", args[len(COMMAND):])
    assert build_config(TabularConfig, ctx.params) == config


def test_the_command_refuses_bad_settings_before_running(tmp_path):
    result = CliRunner().invoke(cli, ["benchmark", "tabular", "--sets", "wine,nope",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "sets has unknown entries ['nope']" in result.output
    assert not (tmp_path / "out").exists()
