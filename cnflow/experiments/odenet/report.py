"""The Markdown report of the ODE-Net results run (``results/odenet.md``).

Every number comes from the results dict of :func:`cnflow.experiments.odenet.run`; the
tables go through :func:`cnflow.report.markdown_table`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cnflow.experiments.odenet.memory import MiB
from cnflow.experiments.odenet.sweep import FIGURE3_FILES
from cnflow.report import markdown_table, pyplot, save_figure
from cnflow.runs import relative_path, write_text

__all__ = ["GOAL_GAP_POINTS", "GOAL_PARAMETER_RATIO", "HALF_BACKWARD", "PAPER_TABLE1",
           "PLATEAU_EPOCHS", "plateau", "plot_learning_curves", "write_markdown"]

#: The Table 1 goal: ODE-Net's test error at most this many points above ResNet's...
GOAL_GAP_POINTS = 0.3
#: ... with at most this share of its parameters (the paper: about a third).
GOAL_PARAMETER_RATIO = 0.4
#: The band of backward / forward NFE taken as the paper's "roughly half".
HALF_BACKWARD = (0.35, 0.65)
#: The paper's Table 1 (full MNIST, 60,000 training images): test error (%), parameters (M).
PAPER_TABLE1 = {"mlp": (1.60, 0.24), "resnet": (0.41, 0.60), "rknet": (0.47, 0.22),
                "odenet": (0.42, 0.22)}
#: A model has plateaued when its test error fell by at most one standard error over this
#: many final epochs.
PLATEAU_EPOCHS = 3

_DATA_NOTES = {
    "offline": ("This is *not* full MNIST: the 60,000 training images are not available "
                "offline, so the official 10,000-image MNIST test set is split into train and "
                "test parts, stratified by label (scikit-learn's `train_test_split(..., "
                "stratify=labels, random_state=0)`). Numbers here are not comparable to the "
                "paper's full-MNIST numbers."),
    "digits": ("sklearn's 8x8 digits, split stratified by label: a quick run, not comparable "
               "to the paper's MNIST numbers."),
}


def _mib(n: float) -> str:
    return f"{n / MiB:.2f}"


def _opt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def _error(p: float, n: int) -> str:
    """A test error in percent with its binomial standard error ``sqrt(p (1 - p) / n)``."""
    return f"{100 * p:.2f} ± {100 * math.sqrt(p * (1 - p) / n):.2f}"


def plateau(errors: list[float], n: int) -> tuple[float, float, bool] | None:
    """How a test-error curve moved over its last :data:`PLATEAU_EPOCHS` epochs: the change
    and the last error's binomial standard error (both in points), and whether it fell by
    at most that error. None when the curve is too short to judge."""
    if len(errors) <= PLATEAU_EPOCHS:
        return None
    change = 100 * (errors[-1] - errors[-1 - PLATEAU_EPOCHS])
    se = 100 * math.sqrt(errors[-1] * (1 - errors[-1]) / n)
    return change, se, -change <= se


def _plateau_text(row: dict[str, Any], n: int) -> tuple[str, bool]:
    errors = [e["test_error"] for e in row["epochs"]]
    judged = plateau(errors, n)
    if judged is None:
        return f"{row['model']}: {len(errors)} epochs, too few to judge a plateau", False
    change, se, flat = judged
    best = int(np.argmin(errors))
    text = (f"{row['model']}: {change:+.2f} points over the last {PLATEAU_EPOCHS} epochs "
            f"(standard error {se:.2f}; {'plateau' if flat else 'still improving'}), best "
            f"{100 * errors[best]:.2f} at epoch {best + 1}")
    return text, flat


def _table1(results: dict[str, Any], rel: Path) -> list[str]:
    s, n = results["config"], results["n_test"]
    rows = {r["key"]: r for r in results["table1"]}
    table = markdown_table(
        ["model", "test error (%) ± stderr", "paper, full MNIST (%)", "parameters",
         "paper (M)", "peak training memory (MiB)", "of which saved for backward (MiB)",
         "time / epoch (s)", "NFE fwd / bwd (train mean)"],
        [[r["model"], _error(r["test_error"], n), f"{PAPER_TABLE1[r['key']][0]:.2f}",
          f"{r['parameters']:,} ({r['parameters'] / 1e6:.3f} M)",
          f"{PAPER_TABLE1[r['key']][1]:.2f}", _mib(r["peak_training_bytes"]),
          _mib(r["peak_saved_bytes"]), f"{r['time_per_epoch_s']:.2f}",
          "–" if r["nfe_forward_train"] is None else
          f"{r['nfe_forward_train']:.1f} / {_opt(r['nfe_backward_train'])}"]
         for r in results["table1"]])
    ode, res = rows["odenet"], rows["resnet"]
    gap = 100 * (ode["test_error"] - res["test_error"])
    ratio = ode["parameters"] / res["parameters"]
    met_error, met_params = gap <= GOAL_GAP_POINTS, ratio <= GOAL_PARAMETER_RATIO
    verdict = "**met**" if met_error and met_params else "**not met**"
    plateaus = [_plateau_text(r, n) for r in results["table1"]]
    all_flat = all(flat for _, flat in plateaus)
    paper_gap = PAPER_TABLE1["odenet"][0] - PAPER_TABLE1["resnet"][0]
    return [
        f"## Table 1 analog ({results['data_name']})", "", table, "",
        f"![test error per epoch]({rel}/test_error_per_epoch.png)", "",
        ("Test error per epoch (%): " + "; ".join(
            f"{r['model']} " + ", ".join(f"{100 * e['test_error']:.2f}" for e in r["epochs"])
            for r in results["table1"]) + f". The standard error is binomial, "
         f"sqrt(p (1 − p) / {n:,})."),
        "",
        (f"Plateau (test error down by at most one standard error over the last "
         f"{PLATEAU_EPOCHS} epochs): **{'every model' if all_flat else 'not every model'}**. "
         + "; ".join(text for text, _ in plateaus) + "."),
        "",
        (f"**Goal** (ODE-Net's test error at most {GOAL_GAP_POINTS} percentage points above "
         f"ResNet's, with about a third of its parameters): {verdict}. ODE-Net minus ResNet "
         f"test error: {gap:+.2f} points ({'within' if met_error else 'outside'} "
         f"{GOAL_GAP_POINTS}; the paper: {paper_gap:+.2f}); parameter ratio {ratio:.3f} "
         f"({ode['parameters']:,} / {res['parameters']:,}). With {s['epochs']} epochs on "
         f"{results['n_train']:,} images and a {n:,}-image test set, one test image is "
         f"{100 / n:.2f} points, so a {GOAL_GAP_POINTS}-point gap is "
         f"{GOAL_GAP_POINTS / 100 * n:.0f} images. The paper's errors are on full MNIST "
         f"(60,000 training images, 10,000 test) and stand beside ours for orientation "
         f"only: this split trains on {results['n_train'] / 60_000:.0%} as many images."),
        "",
        "### How memory is measured",
        "",
        ("Peak training memory = parameters + gradients + Adam state (two moments), plus the "
         "peak of the bytes that autograd holds for the backward pass. The latter is measured, "
         "not estimated: every training step runs inside "
         "`torch.autograd.graph.saved_tensors_hooks` (`cnflow.report.SavedTensorMemory`, the "
         "step context of `cnflow.training.fit`). Each tensor saved for backward is counted "
         "once per underlying storage when it is saved and uncounted when autograd frees it; "
         "graphs built *during* backward (the adjoint's vector-Jacobian products) pass through "
         "the same hooks, so the peak covers the backward pass too. The peak is the maximum "
         "over all training steps. Not counted: temporaries freed at once and tensors alive but "
         "not saved for backward (the input batch, the solver's current stage values), none of "
         "which grows with depth. On CUDA, `torch.cuda.max_memory_allocated` is recorded as "
         "well."),
        "",
    ]


def _memory(results: dict[str, Any], rel: Path) -> list[str]:
    s, rows = results["config"], results["memory_vs_depth"]
    multipliers = ", ".join(f"{m}×" for m in s["memory_multipliers"])
    base_blocks = next(r["depth"] for r in rows if r["model"] == "ResNet")
    table = markdown_table(
        ["model", "multiplier", "depth", "peak training memory (MiB)",
         "saved for backward (MiB)", "NFE fwd / bwd", "step time (s)"],
        [[r["model"], f"{r['multiplier']}×", r["depth"], _mib(r["peak_training_bytes"]),
          _mib(r["peak_saved_bytes"]),
          "–" if r["nfe_forward"] is None else
          f"{r['nfe_forward']} / {_opt(r['nfe_backward'], 'd')}", f"{r['time_s']:.2f}"]
         for r in rows])
    lines = [
        "## Memory vs depth", "",
        (f"One training step on {s['memory_batch']} training images from a fresh "
         f"initialisation. ODE-Net and RK-Net integrate with fixed-step `{s['memory_method']}` "
         f"in {multipliers} a base of {s['memory_base_steps']} steps; ResNet has {multipliers} "
         f"a base of {base_blocks}."),
        "", table, "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        growth = mine[-1]["peak_training_bytes"] / mine[0]["peak_training_bytes"]
        lines.append(f"- {model}: peak memory at {mine[-1]['multiplier']}× depth is "
                     f"{growth:.2f}× that at {mine[0]['multiplier']}×.")
    return lines + ["", f"![memory vs depth]({rel / 'memory_vs_depth.png'})", ""]


def _figure3(results: dict[str, Any], rel: Path) -> list[str]:
    s = results["config"]
    sweep, semi = results["figure3_sweep"], results["figure3_sweep_seminorm"]
    table = markdown_table(
        ["tol", "NFE fwd", "NFE bwd", "NFE bwd (seminorm)", "bwd / fwd",
         "relative error of h(1)", "forward time (s)", "batch error (%)"],
        [[f"{r['tol']:.0e}", r["nfe_forward"], r["nfe_backward"], q["nfe_backward"],
          f"{r['nfe_backward'] / r['nfe_forward']:.2f}", f"{r['relative_error']:.2e}",
          f"{r['forward_time_s']:.3f}", f"{100 * r['test_error']:.2f}"]
         for r, q in zip(sweep, semi)])
    lines = [
        f"## Figure 3 analogs (trained ODE-Net, {results['data_name']})", "",
        (f"Tolerance sweep on {s['sweep_batch']} test images: the trained ODE block is solved "
         f"with `{s['method']}` at rtol = atol = tol; the error is the relative L2 distance of "
         f"h(1) from a reference solve (`{s['method']}` at rtol = atol = "
         f"{s['reference_tol']:g}); forward time is a no-grad solve on {s['threads']} "
         "thread(s); the backward NFE comes from a separate solve with the adjoint gradient of "
         "the loss (default norm, and with the seminorm `adjoint_options={'norm': "
         "'seminorm'}`)."),
        "", table,
    ]
    steps = [b for b in results["odenet_steps"] if b["nfe_backward"] is not None]
    if steps:
        ratios = [b["nfe_backward"] / b["nfe_forward"] for b in steps]
        sweep_ratio = np.mean([r["nfe_backward"] / r["nfe_forward"] for r in sweep])
        semi_ratio = np.mean([r["nfe_backward"] / r["nfe_forward"] for r in semi])
        low, high = HALF_BACKWARD
        agrees = low <= np.mean(ratios) <= high
        lines += [
            "",
            f"During training, backward NFE / forward NFE averaged {np.mean(ratios):.2f} "
            f"(range {min(ratios):.2f}–{max(ratios):.2f}) over {len(ratios)} steps; over the "
            f"tolerance sweep it averaged {sweep_ratio:.2f} with the default norm and "
            f"{semi_ratio:.2f} with the seminorm. The paper reports the backward pass needing "
            "roughly half the forward evaluations; during training this run "
            + (f"agrees (ratio within {low}–{high})." if agrees else
               f"does not (ratio outside {low}–{high})."),
        ]
    odenet = next(r for r in results["table1"] if r["key"] == "odenet")
    a, b, c, d = (rel / name for name in FIGURE3_FILES)
    return lines + [
        "",
        f"![(a) NFE vs error]({a}) ![(b) NFE vs time]({b})",
        "",
        f"![(c) backward vs forward NFE]({c}) ![(d) NFE over training]({d})",
        "",
        "Mean forward NFE per training epoch: "
        + ", ".join(_opt(e["nfe_forward"]) for e in odenet["epochs"]) + ".",
        "",
    ]


def write_markdown(results: dict[str, Any], md_path: str | Path,
                   figure_dir: str | Path) -> Path:
    """Write the report of a results run as Markdown (every number from ``results``).

    Args:
        results: What :func:`cnflow.experiments.odenet.run` returns.
        md_path: The report file.
        figure_dir: Folder holding the figures (linked relative to the report).

    Returns:
        ``md_path``.
    """
    md_path = Path(md_path)
    rel = Path(relative_path(Path(figure_dir), md_path.parent))
    s, train = results["config"], results["train"]
    lines = [
        "# ODE-Net classifiers: Table 1 and Figure 3 analogs (paper Section 3)",
        "",
        f"**Data: {results['data']}.** {_DATA_NOTES[s['data']]}",
        "",
        (f"Regenerate everything on this page (report, `{rel}/results.json`, `{rel}/config.json`, "
         "figures):"),
        "",
        "```",
        results["command"],
        "```",
        "",
        (f"Settings: {s['epochs']} epochs for every model, batch size {s['batch_size']}, Adam "
         f"from lr {s['lr']:g} with a {train['lr_schedule']} decay to {train['lr_final']:g} × "
         f"lr over all steps (`cnflow.training.fit`; no early stopping, the last weights are "
         f"kept), seed {s['seed']}; ODE-Net and RK-Net use `{s['method']}` with rtol = atol = "
         f"{s['tol']:g}; ODE-Net backpropagates with the adjoint (default norm), RK-Net "
         "directly through the solver's operations."),
        (f"All timings on **{s['threads']} CPU thread(s)** (`torch.set_num_threads"
         f"({s['threads']})`), processor `{results['processor']}`, torch "
         f"{results['environment']['torch']}, on a shared machine (other jobs ran alongside, so "
         "timings are indicative); time / epoch is the training steps' forward and backward "
         "passes."),
        (f"The whole run took {results['total_seconds'] / 60:.1f} min "
         f"(training {results['train_seconds'] / 60:.1f} min)."),
        "",
        *_table1(results, rel),
        *_memory(results, rel),
        *_figure3(results, rel),
    ]
    write_text("\n".join(lines), md_path)
    return md_path


def plot_learning_curves(table: list[dict[str, Any]], path: str | Path) -> Path:
    """Test error against epoch, one line per Table 1 model."""
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    plt = pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for i, row in enumerate(table):
        errors = [100 * e["test_error"] for e in row["epochs"]]
        ax.plot(range(1, len(errors) + 1), errors, "o-", ms=3, color=f"C{i}",
                label=row["model"])
    ax.set(yscale="log", xlabel="epoch", ylabel="test error (%)",
           title="Test error per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return path
