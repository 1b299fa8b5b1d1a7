"""The tolerance sweep and the Figure 3 plots (cnflow.experiments.odenet.sweep)."""

from __future__ import annotations

import pytest
import torch

from cnflow.experiments.odenet.sweep import FIGURE3_FILES, plot_figure3, tolerance_sweep
from cnflow.models.odenet import ODENet


def test_tolerance_sweep_spends_more_evaluations_for_smaller_errors():
    torch.manual_seed(0)
    model = ODENet(channels=8)
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    rows = tolerance_sweep(model, x, y, (1e-2, 1e-5), reference_tol=1e-8)
    assert [r["tol"] for r in rows] == [1e-2, 1e-5]
    assert rows[1]["nfe_forward"] > rows[0]["nfe_forward"]
    assert rows[1]["relative_error"] < rows[0]["relative_error"]
    assert all(r["nfe_backward"] > 0 and 0 <= r["test_error"] <= 1 for r in rows)
    assert all(p.grad is None for p in model.parameters())  # the adjoint solves leave none
    with pytest.raises(ValueError, match="tolerances entries"):
        tolerance_sweep(model, x, y, (0.0,))


def test_plot_figure3_writes_four_pngs(tmp_path):
    sweep = [{"tol": tol, "nfe_forward": n, "nfe_backward": n // 2, "relative_error": tol,
              "forward_time_s": n / 100, "test_error": 0.1}
             for tol, n in ((1e-2, 20), (1e-3, 32), (1e-4, 50))]
    steps = [{"epoch": e, "step": 3 * (e - 1) + s, "nfe_forward": 26 + e,
              "nfe_backward": 14 + s} for e in (1, 2) for s in (1, 2, 3)]
    paths = plot_figure3(sweep, steps, tmp_path, sweep_seminorm=sweep)
    assert [p.name for p in paths] == list(FIGURE3_FILES)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
