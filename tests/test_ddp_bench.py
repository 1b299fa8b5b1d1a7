"""The DDP benchmark's report from given runs (the runs themselves are whole `cnflow fit`
commands under torchrun, minutes each): tables, verdicts, figure, JSON and config.json."""

from __future__ import annotations

import json

import pytest

from cnflow.experiments.ddp_bench import CASES, GOAL_RATIO, DDPBenchConfig, write_report


def _run(processes: int, threads: int, wall: float, nll: float) -> dict:
    return {"processes": processes, "threads": threads, "wall_seconds": wall,
            "train_wall_seconds": wall - 1, "test_nll": nll, "test_nll_stderr": 0.01,
            "steps": 10, "curve": [(1.0, nll + 1), (wall - 1, nll)],
            "wall_seconds_all": [wall, wall + 1]}


def test_settings_are_checked():
    with pytest.raises(ValueError, match="processes must be an integer >= 2"):
        DDPBenchConfig(processes=1)


def test_the_report_judges_each_case_against_the_faster_single_process_run(tmp_path):
    config = DDPBenchConfig(processes=3, repeats=2)
    fast = GOAL_RATIO * 10 - 1  # the processes beat the goal in the first case only
    results = {case: [_run(1, 1, 10.0, 1.0), _run(1, 3, 12.0, 1.0),
                      _run(3, 1, fast if i == 0 else 10.0, 1.01)]
               for i, (case, _, _) in enumerate(CASES)}
    out = tmp_path / "ddp.md"
    text = write_report(config, results, out)
    assert out.read_text() == text
    assert f"Regenerate: `cnflow benchmark ddp --processes 3 --repeats 2 --out {out}`" in text
    assert "| 1 x 3 | 12.0 | 11.0 | 10 | 1.0000 ± 0.0100 | 1.00 |" in text
    assert text.count("goal **met**") == 1 and text.count("goal **not met**") == len(CASES) - 1
    assert "![validation NLL against training wall time](ddp.png)" in text
    assert (tmp_path / "ddp.png").stat().st_size > 0
    assert json.loads((tmp_path / "ddp.json").read_text())["goals_met"] == \
        [True] + [False] * (len(CASES) - 1)
    assert DDPBenchConfig(**json.loads((tmp_path / "ddp" / "config.json").read_text())) == config
