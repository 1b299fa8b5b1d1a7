"""The Markdown report of a latent-ODE run, computed from its summary alone."""

from __future__ import annotations

from dataclasses import asdict

from cnflow.experiments.latent_ode import LatentConfig, markdown_report


def _run(model, n, seed, rmse, **extra):
    return {"model": model, "n_obs": n, "seed": seed, "iterations": 1, "train_seconds": 1.0,
            "loss_first": 2.0, "loss_last": 1.0, "nfe_forward_mean": None,
            "nfe_backward_mean": None, "n_parameters": 10, "rmse_extrapolation": rmse,
            "rmse_extrapolation_noisy": 0.3, **extra}


def _summary(seeds=(0,)):
    runs = {}
    for seed in seeds:
        shift = 0.02 * seed
        runs.update({
            f"latent-ode/n=30/seed={seed}": _run(
                "latent-ode", 30, seed, 0.1 + shift, rmse_extrapolation_stderr=0.01,
                rmse_window=0.1, nfe_forward_mean=20.0, nfe_backward_mean=40.0,
                per_spiral_rmse_extrapolation=[0.05, 0.1, 0.2, 0.4]),
            f"rnn/n=30/seed={seed}": _run("rnn", 30, seed, 0.5 + shift),
            f"latent-ode/n=50/seed={seed}": _run("latent-ode", 50, seed, 0.2 + shift),
            f"rnn/n=50/seed={seed}": _run("rnn", 50, seed, 0.1 + shift),
        })
    config = asdict(LatentConfig(seeds=seeds))
    return {"command": "cnflow latent --seeds 0", "config": config, "runs": runs,
            "environment": {"cpu_threads": "1"}, "total_seconds": 60.0}


def test_markdown_goal_is_computed():
    text = markdown_report(_summary(), "results/latent_ode")
    assert "0.1000 ± 0.0100 (0.1642)" in text and "| rnn | 0.5000 (0.3937) |" in text
    assert "n = 30: latent ODE 0.1000 vs paper 0.1642: **met**" in text
    assert "n = 50: latent ODE 0.2000 vs paper 0.1502: **not met**" in text
    assert "**not reproduced**" in text
    assert "cnflow latent --seeds 0" in text
    assert "Trained on the observation window only, the paper's protocol" in text


def test_several_seeds_are_averaged_and_judged_on_their_mean():
    text = markdown_report(_summary(seeds=(0, 1)), "results/latent_ode")
    # Mean of 0.10 and 0.12 ± their standard deviation 0.02 / sqrt(2).
    assert "| latent-ode | 0.1100 ± 0.0141 (0.1642) | 0.2100 ± 0.0141 (0.1502) |" in text
    assert "the mean over 2 seeds ± their standard deviation" in text
    assert "n = 30: latent ODE 0.1100 vs paper 0.1642: **met**" in text
    assert "RNN 0.5100 worse than the latent ODE: **reproduced**" in text
    # The spirals' own errors pooled over both seeds: median, quartiles, 90th percentile.
    assert "| latent-ode | 0.1500 [0.0875–0.2500], 90 %: 0.400 | – |" in text
    assert "| latent-ode/n=30/seed=1 | 0.1200 ± 0.0100 |" in text


def test_the_easier_protocol_says_so():
    summary = _summary()
    summary["config"]["train_future"] = True
    text = markdown_report(summary, "results/latent_ode")
    assert "**Trained on the training spirals' points after the window too**" in text


def test_markdown_tables_are_well_formed():
    text = markdown_report(_summary(), "results/latent_ode")
    tables = [line for line in text.splitlines() if line.startswith("|")]
    assert "| model | n = 30 | n = 50 |" in tables and "|---|---|---|" in tables
    assert ("| latent-ode/n=30/seed=0 | 0.1000 ± 0.0100 | 1 | 1 | 2 → 1 | 20.0 / 40.0 | "
            "0.1000 | 10 |") in tables
    assert "| rnn/n=30/seed=0 | 0.5000 | 1 | 1 | 2 → 1 | – | – | 10 |" in tables
    # Every row of a table has as many cells as its header.
    assert all(line.count("|") in (4, 9) for line in tables)


def test_figure_links_are_relative_to_the_report(tmp_path):
    out = tmp_path / "runs" / "latent"
    out.mkdir(parents=True)
    (out / "learning_curves.png").write_bytes(b"png")
    (out / "predictions_n30.png").write_bytes(b"png")
    text = markdown_report(_summary(), out, tmp_path / "docs" / "latent.md")
    assert "![learning curves](../runs/latent/learning_curves.png)" in text
    assert "![predictions n=30](../runs/latent/predictions_n30.png)" in text
    assert "interpolation_n30" not in text  # only the figures that exist


def test_runs_are_listed_by_n_then_model_then_seed_whatever_the_summary_order():
    summary = _summary(seeds=(0, 1))
    summary["runs"] = dict(sorted(summary["runs"].items(), reverse=True))
    text = markdown_report(summary, "results/latent_ode")
    rows = [line.split(" | ")[0] for line in text.splitlines()
            if line.startswith(("| latent-ode/", "| rnn/"))]
    assert rows == [f"| {model}/n={n}/seed={seed}" for n in (30, 50)
                    for model in ("latent-ode", "rnn") for seed in (0, 1)]
