"""The Markdown report of a run (``results/latent_ode.md``), written from its summary alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cnflow.data.spirals import ANGULAR_SPEED, SPIRAL_A, SPIRAL_B, TIME_STEP
from cnflow.experiments.latent_ode.baselines import RNN_GRAD_CLIP, RNNBaseline
from cnflow.experiments.latent_ode.config import MODELS, PAPER_RMSE, WINDOW
from cnflow.experiments.latent_ode.data import TEST_THETA0, TRAIN_THETA0
from cnflow.models.latent_ode import LatentODE
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


def by_model_and_n(runs: dict[str, Any]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The runs of every (model, n), in the order of their seeds."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in sorted(runs.values(), key=lambda r: r.get("seed", 0)):
        groups.setdefault((run["model"], run["n_obs"]), []).append(run)
    return groups


def seed_mean(group: list[dict[str, Any]] | None, key: str) -> float | None:
    """The mean of ``key`` over a group's seeds (None without runs)."""
    return float(np.mean([run[key] for run in group])) if group else None


def rmse_cell(group: list[dict[str, Any]] | None, key: str, paper: float | None = None) -> str:
    """One cell of an RMSE table: the mean over the seeds ± their standard deviation (with one
    seed: the value ± its standard error over the test spirals, where known), and the paper's
    value in parentheses."""
    if not group:
        return MISSING
    values = [run[key] for run in group]
    text = fmt(float(np.mean(values)))
    if len(values) > 1:
        text += f" ± {np.std(values, ddof=1):.4f}"
    elif group[0].get(f"{key}_stderr") is not None and not math.isnan(
            group[0][f"{key}_stderr"]):
        text += f" ± {group[0][f'{key}_stderr']:.4f}"
    return text + (f" ({paper:.4f})" if paper is not None else "")


def spread_cell(group: list[dict[str, Any]] | None) -> str:
    """The median of the test spirals' own extrapolation RMSEs pooled over the seeds, with
    the 25th–75th and the 90th percentile."""
    if not group or any("per_spiral_rmse_extrapolation" not in run for run in group):
        return MISSING
    errors = np.concatenate([run["per_spiral_rmse_extrapolation"] for run in group])
    q25, median, q75, q90 = np.percentile(errors, [25, 50, 75, 90])
    return f"{median:.4f} [{q25:.4f}–{q75:.4f}], 90 %: {q90:.3f}"


def goal_lines(groups: dict[tuple[str, int], list[dict[str, Any]]], ns: list[int]) -> list[str]:
    """Per ``n``: whether the latent ODE's mean over the seeds meets the paper's RMSE and the
    RNN's is worse."""
    lines = []
    for n in ns:
        ode = seed_mean(groups.get(("latent-ode", n)), "rmse_extrapolation")
        rnn = seed_mean(groups.get(("rnn", n)), "rmse_extrapolation")
        parts = []
        if ode is not None and n in PAPER_RMSE["latent-ode"]:
            paper = PAPER_RMSE["latent-ode"][n]
            parts.append(f"latent ODE {fmt(ode)} vs paper {paper:.4f}: "
                         + ("**met**" if ode <= paper else "**not met**"))
        if ode is not None and rnn is not None:
            parts.append(f"RNN {fmt(rnn)} " + (
                "worse than the latent ODE: **reproduced**" if rnn > ode
                else "not worse than the latent ODE: **not reproduced**"))
        if parts:
            lines.append(f"- n = {n}: " + "; ".join(parts) + ".")
    return lines or ["- (needs both models to judge)"]


def widths(net: nn.Module) -> str:
    """The layer widths of an MLP, ``"4→20→2"``."""
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return "→".join(str(n) for n in [layers[0].in_features, *(m.out_features for m in layers)])


def times_pi(angle: float) -> str:
    """An angle as a multiple of π: ``"π"``, ``"3π"``."""
    multiple = angle / math.pi
    return "π" if multiple == 1 else f"{multiple:g}π"


def setup_lines(config: dict[str, Any]) -> list[str]:
    """The protocol in words, from the run's config, the data's constants and the models as
    built (so the text cannot drift from the code)."""
    ode, rnn = LatentODE(), RNNBaseline()
    points = 2 * WINDOW
    turns = ANGULAR_SPEED * points * TIME_STEP / (2 * math.pi)
    radius = f"{SPIRAL_B:g} θ" if SPIRAL_A == 0 else f"{SPIRAL_A:g} + {SPIRAL_B:g} θ"
    future = config["train_future"]
    targets = (f"the observed points and the {WINDOW} following points of the training "
               "spirals (the test spirals' are only scored); `--no-train-future` trains on the "
               "window alone, the paper's protocol." if future else
               "the observed points of the training spirals only, so no spiral's own "
               "extrapolated times are seen in training (the paper's 'time points extending "
               "beyond those that were used for training'); `--train-future` trains on the "
               "training spirals' later points too, an easier task.")
    n_test = config["n_spirals"] - config["n_train"]
    return [
        (f"- Data: `cnflow.data.spirals.generate_spirals` — Archimedean spirals r = {radius} "
         "around the origin, half clockwise and half counter-clockwise, "
         f"{points} points at t = 0, {TIME_STEP:g}, …, "
         f"{(points - 1) * TIME_STEP:g} ({turns:g} turn), Gaussian noise std "
         f"{config['noise_std']}; {config['n_train']} training spirals with start angle "
         f"θ0 ~ U[{times_pi(TRAIN_THETA0[0])}, {times_pi(TRAIN_THETA0[1])}] and {n_test} test "
         f"spirals with θ0 ~ U[{times_pi(TEST_THETA0[0])}, {times_pi(TEST_THETA0[1])}], so "
         "that the training windows together show every angle that a test target reaches "
         "(as torchdiffeq's example, which cuts its windows anywhere along one long spiral). "
         f"For each n, every spiral keeps one fixed random subset of n of its first {WINDOW} "
         f"points (without replacement); the targets are its points {WINDOW + 1}–{points}."),
        (f"- Latent ODE: GRU recognition network ({ode.encoder.rnn.hidden_size} hidden) reading "
         "(x_i, Δt_i) backwards in time → mean and log-variance of z0 ∈ "
         f"R^{ode.latent_dim}; latent dynamics MLP {widths(ode.dynamics)} (ELU); decoder MLP "
         f"{widths(ode.decoder)} (ReLU); Gaussian likelihood with the data's noise std; KL to "
         f"N(0, I); one posterior sample per spiral; gradients by `{config['gradient']}` "
         f"through `cnflow.solve` ({ode.method}, rtol {config['rtol']}, atol "
         f"{config['atol']}); Poisson-process term: {'on' if config['poisson'] else 'off'}. "
         f"Each step estimates the ELBO's sums over time on {config['time_subsample'] or 'all'} "
         "random grid times (plus the window's first and last), weighted by the inverse "
         "inclusion probability (unbiased); predictions use the posterior mean of z0."),
        (f"- RNN baseline: GRU with {rnn.rnn.hidden_size} hidden units fed (x_i, time to the "
         "next point); teacher-forced on the observed points, then free-running on its own "
         f"predictions over the {WINDOW} targets; trained on the squared error of both; "
         f"gradient norm clipped at {RNN_GRAD_CLIP:g}."),
        (f"- Both: trained by `cnflow.training.fit`, Adam, batch {config['batch_size']} "
         f"(shuffled spirals), learning rate {config['lr']} decaying geometrically to "
         f"{config['lr'] * config['final_lr_factor']:.2g}; latent ODE {config['iterations']} "
         f"steps, RNN {config['rnn_iterations']} steps; seeds "
         f"{', '.join(map(str, config['seeds']))} (each draws its own data, observations, "
         "initialisation and batches); no validation set, the last weights are scored. "
         "Both see the same observations and are trained on the same targets: " + targets),
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

    groups = by_model_and_n(runs)
    seeds = sorted({run.get("seed", 0) for run in runs.values()})
    several = len(seeds) > 1
    over = (f"the mean over {len(seeds)} seeds ± their standard deviation" if several
            else "one seed, ± its standard error over the test spirals (the test set's "
                 "sampling noise, not the spread between training runs)")
    protocol = ("**Trained on the training spirals' points after the window too**: an easier "
                "task than the paper's, whose protocol (`--no-train-future`) trains on the "
                "window only." if config["train_future"] else
                "Trained on the observation window only, the paper's protocol: no spiral's "
                "extrapolated times are seen in training.")
    header = ["model", *(f"n = {n}" for n in ns)]

    def table(cell) -> str:
        return markdown_table(header, [[name, *(cell(groups.get((name, n)), name, n)
                                                for n in ns)] for name in names])

    lines = [
        "# Latent ODE vs RNN on irregularly sampled spirals (Chen et al. 2018, Section 5)", "",
        f"Regenerate everything in this file and in `{out_dir.as_posix()}/` with:", "",
        "```", summary["command"] or "(command not recorded)", "```", "",
        f"## Table 2 analog: predictive RMSE on the {WINDOW} points after the observation window",
        "", protocol, "",
        (f"RMSE over the {config['n_spirals'] - config['n_train']} test spirals, the {WINDOW} "
         f"extrapolated times and both coordinates, against the noise-free spiral: {over}. "
         "Paper values in parentheses."), "",
        table(lambda g, name, n: rmse_cell(g, "rmse_extrapolation", PAPER_RMSE[name].get(n))),
        "",
        ("Each test spiral's own extrapolation RMSE" + (", pooled over the seeds" if several
                                                         else "")
         + ": median [25th–75th percentile] and 90th percentile. A mean far above the median "
         "is a few spirals that leave the spiral, not a uniformly poor fit."), "",
        table(lambda g, name, n: spread_cell(g)), "",
        ("Against the noisy targets (this includes the observation noise, "
         f"std {config['noise_std']}):"), "",
        table(lambda g, name, n: rmse_cell(g, "rmse_extrapolation_noisy")),
        "", "## Goal", "",
        ("The paper's RMSE reached by the latent ODE" + ("'s mean over the seeds" if several
                                                          else "")
         + ", and the RNN worse than it:"), "", *goal_lines(groups, ns),
    ]
    if (out_dir / "learning_curves.png").exists():
        lines += ["", "## Learning curves", "",
                  (f"Test extrapolation RMSE every {config.get('eval_every')} training steps, "
                   "one line per seed; the tables above are the ends of these curves."), "",
                  f"![learning curves]({link('learning_curves.png')})"]
    rows = []
    # By n, then model, then seed: the order of the runs, whether the summary was read back
    # from JSON (sorted keys) or not.
    for key, run in sorted(runs.items(), key=lambda item: (
            item[1]["n_obs"], MODELS.index(item[1]["model"]), item[1].get("seed", 0))):
        nfe = (f"{fmt(run['nfe_forward_mean'], 1)} / {fmt(run['nfe_backward_mean'], 1)}"
               if run["nfe_forward_mean"] is not None else MISSING)
        rows.append([key, rmse_cell([run], "rmse_extrapolation"), run["iterations"],
                     f"{run['train_seconds']:.0f}",
                     f"{run['loss_first']:.4g} → {run['loss_last']:.4g}", nfe,
                     fmt(run.get("rmse_window")), run["n_parameters"]])
    env = summary["environment"]
    lines += [
        "", "## Runs", "",
        markdown_table(["run", "extrapolation RMSE", "iterations", "train time (s)",
                        f"loss first → last (mean of {LOSS_STEPS} steps)",
                        "NFE fwd / bwd per step", "window RMSE", "parameters"], rows), "",
        (f"Total wall-clock time of the run: {summary['total_seconds'] / 60:.1f} min on "
         f"{env.get('cpu_threads', '?')} CPU thread(s) (torch {env.get('torch')}, "
         f"{env.get('platform')})."),
        "", "## Setup", "", *setup_lines(config), "", "## Figures", "",
    ]
    if several:
        lines += [f"Of the models of seed {seeds[0]}.", ""]
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
