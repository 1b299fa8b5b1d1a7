"""The solver benchmark: the memory meter's rows grow as each gradient mode should, and a
tiny run writes every table, the regenerating command and config.json."""

from __future__ import annotations

import json

import pytest

from cnflow.experiments.solver_bench import SolverBenchConfig, graph_memory, run

STATE_BYTES = 256 * 8 * 4  # the memory table's batch of 256 float32 8-d states


def test_settings_are_checked():
    with pytest.raises(ValueError, match="methods has unknown entries"):
        SolverBenchConfig(methods=("tsit5",))
    with pytest.raises(ValueError, match="tolerances entries must be a finite number"):
        SolverBenchConfig(tolerances=(0.0,))
    with pytest.raises(ValueError, match="seminorm_tolerances must not be empty"):
        SolverBenchConfig(seminorm_tolerances=())


def test_memory_grows_with_steps_for_direct_and_checkpoint_only():
    rows = {(r["steps"], r["gradient"]): r for r in graph_memory((2, 4, 6))}
    direct = [rows[(n, "direct")]["graph_mib"] for n in (2, 4, 6)]
    # Backpropagation keeps every step's graph: the same bytes for each further step.
    assert direct[2] - direct[1] == pytest.approx(direct[1] - direct[0])
    assert direct[1] - direct[0] > 0
    # The adjoint's backward pass holds the graph of one step at a time.
    assert rows[(2, "adjoint")]["graph_mib"] == rows[(6, "adjoint")]["graph_mib"] > 0
    for n in (2, 4, 6):
        checkpoint = rows[(n, "checkpoint")]
        assert checkpoint["states_mib"] == n * STATE_BYTES / 2**20
        assert checkpoint["saved_mib"] == rows[(2, "checkpoint")]["saved_mib"] > 0
        assert checkpoint["graph_mib"] == checkpoint["saved_mib"] + checkpoint["states_mib"]
        assert rows[(n, "direct")]["states_mib"] == 0


def test_a_tiny_run_writes_the_report_and_its_record(tmp_path):
    pytest.importorskip("torchdiffeq")
    config = SolverBenchConfig(repeats=1, methods=("dopri5",), tolerances=(1e-5,),
                               steps=(2, 4), seminorm_tolerances=(1e-4,))
    out = tmp_path / "solver.md"
    text = run(config, out)
    assert out.read_text() == text
    assert ("Regenerate with `cnflow benchmark solver --repeats 1 --methods dopri5 "
            f"--tolerances 1e-05 --steps 2,4 --seminorm-tolerances 0.0001 --out {out}`") in text
    assert "| Lotka–Volterra, 2 states, 50 outputs | dopri5 | 1e-05 |" in text
    assert "| 4 |" in text and "| 1e-04 |" in text
    assert "From 2 to 4 steps the adjoint's memory changes by a factor 1.00" in text
    record = json.loads((tmp_path / "solver" / "config.json").read_text())
    assert SolverBenchConfig(**record) == config
