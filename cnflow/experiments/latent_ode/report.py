"""The Markdown report of a run (``results/latent_ode.md``), written from its summary alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cnflow.experiments.latent_ode.baselines import RNN_GRAD_CLIP
from cnflow.experiments.latent_ode.config import MODELS, PAPER_RMSE, WINDOW
from cnflow.report import markdown_table
from cnflow.runs import relative_path, write_text

MISSING = "–"
# The loss columns average the first and the last this many steps (one step is noisy).
LOSS_STEPS = 20


def fmt(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals; a dash for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}"


def rmse_cell(run: dict[str, Any] | None, key: str, paper: float | None = None) -> str:
    """One cell of an RMSE table: the value, its standard error over the test spirals where
    known, and the paper's value in parentheses."""
    if run is None:
        return MISSING
    text = fmt(run[key])
    stderr = run.get(f"{key}_stderr")
    if stderr is not None and not math.isnan(stderr):
        text += f" ± {stderr:.4f}"
    return text + (f" ({paper:.4f})" if paper is not None else "")


def goal_lines(runs: dict[str, Any], ns: list[int]) -> list[str]:
    """Per ``n``: whether the latent ODE meets the paper's RMSE and the RNN is worse."""
    lines = []
    for n in ns:
        ode, rnn = runs.get(f"latent-ode/n={n}"), runs.get(f"rnn/n={n}")
        parts = []
        if ode is not None and n in PAPER_RMSE["latent-ode"]:
            paper = PAPER_RMSE["latent-ode"][n]
            met = ode["rmse_extrapolation"] <= paper
            parts.append(f"latent ODE {fmt(ode['rmse_extrapolation'])} vs paper {paper:.4f}: "
                         + ("**met**" if met else "**not met**"))
        if ode is not None and rnn is not None:
            worse = rnn["rmse_extrapolation"] > ode["rmse_extrapolation"]
            parts.append(f"RNN {fmt(rnn['rmse_extrapolation'])} "
                         + ("worse than the latent ODE: **reproduced**" if worse
                            else "not worse than the latent ODE: **not reproduced**"))
        if parts:
            lines.append(f"- n = {n}: " + "; ".join(parts) + ".")
    return lines or ["- (needs both models to judge)"]


def setup_lines(config: dict[str, Any]) -> list[str]:
    """The protocol in words, from the run's config."""
    future = config.get("train_future", True)
    targets = ("the observed points and the 100 following points of the training spirals (the "
               "test spirals' are only scored); `--no-train-future` trains on the window alone."
               if future else
               "the observed points of the training spirals only, so every extrapolated time is "
               "beyond anything seen in training (the paper's 'time points extending beyond "
               "those that were used for training').")
    return [
        (f"- Data: `cnflow.data.spirals.generate_spirals` — {config['n_spirals']} Archimedean "
         "spirals r = 0.3 θ around the origin, half clockwise and half counter-clockwise, "
         "random start angle θ0 ~ U[π, 3π], 200 points at t = 0, 0.05, …, 9.95 (one turn), "
         f"Gaussian noise std {config['noise_std']}; the first {config['n_train']} spirals "
         f"train, the other {config['n_spirals'] - config['n_train']} test. For each n, every "
         f"spiral keeps one fixed random subset of n of its first {WINDOW} points (without "
         f"replacement); the targets are its points {WINDOW + 1}–{2 * WINDOW}."),
        ("- Latent ODE: GRU recognition network (25 hidden) reading (x_i, Δt_i) backwards in "
         "time → mean and log-variance of z0 ∈ R^4; latent dynamics MLP 4→20→20→4 (ELU); "
         "decoder MLP 4→20→2 (ReLU); Gaussian likelihood with the data's noise std; KL to "
         f"N(0, I); one posterior sample per spiral; gradients by `{config['gradient']}` "
         f"through `cnflow.solve` (dopri5, rtol {config['rtol']}, atol {config['atol']}); "
         f"Poisson-process term: {'on' if config['poisson'] else 'off'}. Each step estimates "
         f"the ELBO's sums over time on {config['time_subsample'] or 'all'} random grid times "
         "(plus the window's first and last), weighted by the inverse inclusion probability "
         "(unbiased); predictions use the posterior mean of z0."),
        ("- RNN baseline: GRU with 25 hidden units fed (x_i, time to the next point); "
         "teacher-forced on the observed points, then free-running on its own predictions "
         "over the 100 targets; trained on the squared error of both; gradient norm clipped "
         f"at {RNN_GRAD_CLIP:g}."),
        (f"- Both: trained by `cnflow.training.fit`, Adam, batch {config['batch_size']} "
         "(shuffled spirals), learning rate "
         f"{config['lr']} decaying geometrically to {config['lr'] * config['final_lr_factor']:.2g}"
         f"; latent ODE {config['iterations']} steps, RNN {config['rnn_iterations']} steps; "
         f"seed {config['seed']}; no validation set, the last weights are scored. Both see "
         "the same observations and are trained on the same targets: " + targets),
    ]


def markdown_report(summary: dict[str, Any], out_dir: str | Path,
                    md_path: str | Path | None = None) -> str:
    """The text of ``results/latent_ode.md`` for a summary written by
    :func:`~cnflow.experiments.latent_ode.experiment.run`; figure links are relative to ``md_path``'s
    folder (by default the one holding ``out_dir``)."""
    runs, config = summary["runs"], summary["config"]
    ns = sorted({r["n_obs"] for r in runs.values()})
    names = [m for m in MODELS if any(r["model"] == m for r in runs.values())]
    out_dir = Path(out_dir)
    md_dir = Path(md_path).parent if md_path is not None else out_dir.parent

    def link(name: str) -> str:
        return relative_path(out_dir / name, md_dir)

    header = ["model", *(f"n = {n}" for n in ns)]
    lines = [
        "# Latent ODE vs RNN on irregularly sampled spirals (Chen et al. 2018, Section 5)", "",
        f"Regenerate everything in this file and in `{out_dir.as_posix()}/` with:", "",
        "```", summary["command"] or "(command not recorded)", "```", "",
        "## Table 2 analog: predictive RMSE on the 100 points after the observation window", "",
        (f"RMSE over the {config['n_spirals'] - config['n_train']} test spirals, the 100 "
         "extrapolated times and both coordinates, against the noise-free spiral, ± its "
         "standard error over the test spirals (the test set's sampling noise, not the spread "
         "between training runs). Paper values in parentheses."), "",
        markdown_table(header, [[name, *(rmse_cell(runs.get(f"{name}/n={n}"),
                                                   "rmse_extrapolation", PAPER_RMSE[name].get(n))
                                         for n in ns)] for name in names]), "",
        ("Against the noisy targets (this includes the observation noise, "
         f"std {config['noise_std']}):"), "",
        markdown_table(header, [[name, *(rmse_cell(runs.get(f"{name}/n={n}"),
                                                   "rmse_extrapolation_noisy") for n in ns)]
                                for name in names]),
        "", "## Goal", "", *goal_lines(runs, ns),
    ]
    if (out_dir / "learning_curves.png").exists():
        lines += ["", "## Learning curves", "",
                  (f"Test extrapolation RMSE every {config.get('eval_every')} training steps; "
                   "one seed, so the table above is one point on each curve."), "",
                  f"![learning curves]({link('learning_curves.png')})"]
    rows = []
    for key, run in runs.items():
        nfe = (f"{fmt(run['nfe_forward_mean'], 1)} / {fmt(run['nfe_backward_mean'], 1)}"
               if run["nfe_forward_mean"] is not None else MISSING)
        rows.append([key, run["iterations"], f"{run['train_seconds']:.0f}",
                     f"{run['loss_first']:.4g} → {run['loss_last']:.4g}", nfe,
                     fmt(run.get("rmse_window")), run["n_parameters"]])
    env = summary["environment"]
    lines += [
        "", "## Runs", "",
        markdown_table(["run", "iterations", "train time (s)",
                        f"loss first → last (mean of {LOSS_STEPS} steps)",
                        "NFE fwd / bwd per step", "window RMSE", "parameters"], rows), "",
        (f"Total wall-clock time of the run: {summary['total_seconds'] / 60:.1f} min on "
         f"{env.get('cpu_threads', '?')} CPU thread(s) (torch {env.get('torch')}, "
         f"{env.get('platform')})."),
        "", "## Setup", "", *setup_lines(config), "", "## Figures", "",
    ]
    for n in ns:
        for kind, caption in (
            ("predictions", ("observed points (black), reconstruction (blue) and extrapolation "
                             "(red, dashed) of four test spirals")),
            ("interpolation", ("decoded paths along a line in z0 space from a clockwise to a "
                               "counter-clockwise spiral")),
        ):
            if (out_dir / f"{kind}_n{n}.png").exists():
                lines += [f"n = {n}: {caption}.", "",
                          f"![{kind} n={n}]({link(f'{kind}_n{n}.png')})", ""]
    return "\n".join(lines)


def write_markdown(summary: dict[str, Any], path: str | Path, out_dir: str | Path) -> None:
    """Write :func:`markdown_report` to ``path`` atomically."""
    write_text(markdown_report(summary, out_dir, path), path)
