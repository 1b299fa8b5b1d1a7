"""The Markdown report of a latent-ODE run, computed from its summary alone."""

from __future__ import annotations

from dataclasses import asdict

from cnflow.experiments.latent_ode import LatentConfig, markdown_report


def _summary():
    run = {"iterations": 1, "train_seconds": 1.0, "loss_first": 2.0, "loss_last": 1.0,
           "nfe_forward_mean": None, "nfe_backward_mean": None, "n_parameters": 10,
           "rmse_extrapolation_noisy": 0.3}
    runs = {
        "latent-ode/n=30": {**run, "model": "latent-ode", "n_obs": 30, "rmse_extrapolation": 0.1,
                            "rmse_extrapolation_stderr": 0.01, "rmse_window": 0.1,
                            "nfe_forward_mean": 20.0, "nfe_backward_mean": 40.0},
        "rnn/n=30": {**run, "model": "rnn", "n_obs": 30, "rmse_extrapolation": 0.5},
        "latent-ode/n=50": {**run, "model": "latent-ode", "n_obs": 50, "rmse_extrapolation": 0.2},
        "rnn/n=50": {**run, "model": "rnn", "n_obs": 50, "rmse_extrapolation": 0.1},
    }
    return {"command": "cnflow latent --seed 0", "config": asdict(LatentConfig()), "runs": runs,
            "environment": {"cpu_threads": "1"}, "total_seconds": 60.0}


def test_markdown_goal_is_computed():
    text = markdown_report(_summary(), "results/latent_ode")
    assert "0.1000 ± 0.0100 (0.1642)" in text and "| rnn | 0.5000 (0.3937) |" in text
    assert "n = 30: latent ODE 0.1000 vs paper 0.1642: **met**" in text
    assert "n = 50: latent ODE 0.2000 vs paper 0.1502: **not met**" in text
    assert "**not reproduced**" in text
    assert "cnflow latent --seed 0" in text


def test_markdown_tables_are_well_formed():
    text = markdown_report(_summary(), "results/latent_ode")
    tables = [line for line in text.splitlines() if line.startswith("|")]
    assert "| model | n = 30 | n = 50 |" in tables and "|---|---|---|" in tables
    assert "| latent-ode/n=30 | 1 | 1 | 2 → 1 | 20.0 / 40.0 | 0.1000 | 10 |" in tables
    assert "| rnn/n=30 | 1 | 1 | 2 → 1 | – | – | 10 |" in tables
    # Every row of a table has as many cells as its header.
    assert all(line.count("|") in (4, 8) for line in tables)


def test_figure_links_are_relative_to_the_report(tmp_path):
    out = tmp_path / "runs" / "latent"
    out.mkdir(parents=True)
    (out / "learning_curves.png").write_bytes(b"png")
    (out / "predictions_n30.png").write_bytes(b"png")
    text = markdown_report(_summary(), out, tmp_path / "docs" / "latent.md")
    assert "![learning curves](../runs/latent/learning_curves.png)" in text
    assert "![predictions n=30](../runs/latent/predictions_n30.png)" in text
    assert "interpolation_n30" not in text  # only the figures that exist


def test_runs_are_listed_by_n_then_model_whatever_the_summary_order():
    summary = _summary()
    summary["runs"] = dict(sorted(summary["runs"].items(), reverse=True))
    text = markdown_report(summary, "results/latent_ode")
    rows = [line.split(" | ")[0] for line in text.splitlines()
            if line.startswith(("| latent-ode/", "| rnn/"))]
    assert rows == ["| latent-ode/n=30", "| rnn/n=30", "| latent-ode/n=50", "| rnn/n=50"]
