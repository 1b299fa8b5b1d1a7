"""The flow-matching benchmark's markdown sections and its learning-curve figure, all from
the measured numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnflow.density import DEFAULT_FINETUNE, DEFAULT_OBJECTIVE
from cnflow.experiments.flow_matching.config import (
    ASSIGNMENT_REPEATS,
    CONTROL_VARIANT,
    DEFAULTS_REASON,
    GAP_TARGET,
    GOAL_CPU_SECONDS,
    GOAL_VARIANT,
    TWO_D_SETS,
)
from cnflow.experiments.tabular import TabularConfig
from cnflow.experiments.tabular.report import bold_best, difference, main_fits, summarize
from cnflow.report import markdown_table, mean_and_stderr, plus_minus, pyplot, save_figure

# Gaps below this are drawn at it: the curves' axis is logarithmic.
SMALLEST_GAP = 1e-3


def learning_curves(results: list[dict[str, Any]], path: Path) -> None:
    """Validation NLL − floor against training CPU time, one panel per 2-D set."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(TWO_D_SETS), figsize=(5.5 * len(TWO_D_SETS), 4),
                             squeeze=False)
    for ax, dataset in zip(axes[0], TWO_D_SETS):
        for r in (r for r in results if r["dataset"] == dataset):
            cpu, _, gap = zip(*r["curve"])
            ax.plot(cpu, np.maximum(gap, SMALLEST_GAP), marker=".", label=r["variant"])
        ax.axhline(GAP_TARGET, color="black", linestyle=":", label=f"{GAP_TARGET} nats")
        ax.set(yscale="log", xlabel="training CPU seconds (one thread)",
               ylabel="validation NLL − entropy floor (nats)", title=dataset)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _describe(settings: dict[str, Any]) -> str:
    """A 2-D fit's training in words: its steps, batch and rate, and its fine-tune."""
    text = (f"{settings['iterations']} steps of {settings['batch_size']} at lr "
            f"{settings['lr']:g}")
    if settings["finetune"]:
        text += (f", then {settings['finetune']} maximum-likelihood steps at lr "
                 f"{settings['finetune_lr']:g}")
    return text


def two_d_section(results: list[dict[str, Any]], seeded: list[dict[str, Any]],
                  figure_name: str) -> list[str]:
    """The whole ``cnflow fit`` of each objective in 2-D (seed 0), and the 2-D goal judged
    on ``seeded``'s runs of the goal variant on two_moons, one per seed, beside its control
    (the fine-tune alone) on the same seeds where ``seeded`` has it."""
    goal_runs = [r for r in seeded if r["variant"] == GOAL_VARIANT]
    # The settings of each variant (the same for both data sets: both are built in).
    settings = {r["variant"]: r["settings"] for r in results}
    some = next(iter(settings.values()))
    rows = [[r["dataset"], r["variant"], plus_minus(r["test_nll"], r["test_nll_stderr"], 4),
             f"{r['gap']:+.4f}", plus_minus(r["kl"], r["kl_stderr"], 4),
             f"{r['cpu_seconds']:.1f}",
             "not reached" if r["reached_cpu"] is None else f"{r['reached_cpu']:.0f}",
             r["steps"], r["eval_nfe"]] for r in results]
    header = ["data", "objective", "test NLL", "gap to floor", "KL", "CPU s",
              f"reached {GAP_TARGET} at CPU s", "steps", "NFE"]
    met = [r["gap"] <= GAP_TARGET and r["cpu_seconds"] <= GOAL_CPU_SECONDS for r in goal_runs]
    per_seed = "; ".join(f"seed {r['seed']}: {r['gap']:+.3f} nats in {r['cpu_seconds']:.1f} "
                         f"CPU s ({'met' if ok else 'not met'})"
                         for r, ok in zip(goal_runs, met, strict=True))
    return [
        "## 2-D: the whole command, objective by objective", "",
        ("`cnflow fit NAME --objective …` with every other setting at its default ("
         + "; ".join(f"{v}: {_describe(s)}" for v, s in settings.items()) + "), one thread. "
         "CPU s: the whole run (training, validations, the exact test NLL on "
         f"{some['test_size']:,} points, figures), without the interpreter's start-up. "
         "Reached: the training CPU time at which the validation NLL "
         f"({some['val_size']:,} points) first came within {GAP_TARGET} nats of the floor. "
         "NFE: one `log_prob` solve of the trained model at the eval tolerance "
         f"{some['eval_tol']:g}."), "",
        markdown_table(header, rows), "",
        (f"**Goal (`cnflow fit two_moons --objective otfm` within {GAP_TARGET} nats of the "
         f"floor in at most {GOAL_CPU_SECONDS:g} CPU seconds, the {GOAL_VARIANT} row; judged on "
         f"every seed): " + ("met" if all(met) else f"not met ({sum(met)} of {len(met)} seeds)")
         + f".** {per_seed}."), "",
        *_control(goal_runs, [r for r in seeded if r["variant"] == CONTROL_VARIANT]),
        f"![learning curves]({figure_name})", "",
        (f"{GOAL_VARIANT}'s flow-matching phase is a run of its own "
         f"({settings[GOAL_VARIANT]['iterations']} steps, its learning rate decayed over "
         "them), not the otfm row's."), ""]


def _control(goal_runs: list[dict[str, Any]], control_runs: list[dict[str, Any]]
             ) -> list[str]:
    """What the goal variant's flow-matching phase bought: its runs beside the control's
    (the same fine-tune from the initial weights) on the seeds both have."""
    control = {r["seed"]: r for r in control_runs}
    pairs = [(g, control[g["seed"]]) for g in goal_runs if g["seed"] in control]
    if not pairs:
        return []
    gap = np.mean([c["gap"] - g["gap"] for g, c in pairs])
    cpu = np.mean([c["cpu_seconds"] - g["cpu_seconds"] for g, c in pairs])
    return [(f"Control, {CONTROL_VARIANT} (`--objective mle` with the fine-tune's steps and "
             "learning rate, no flow matching), on the same seeds: "
             + "; ".join(f"seed {c['seed']}: {c['gap']:+.3f} nats in {c['cpu_seconds']:.1f} "
                         "CPU s" for _, c in pairs)
             + f". The control minus {GOAL_VARIANT}, mean over these seeds: {gap:+.3f} nats "
             f"(what the flow-matching phase bought, where positive) and {cpu:+.1f} CPU s."),
            ""]


def _default_file_fit() -> str:
    """``cnflow fit FILE``'s default objective, with its fine-tune steps if any."""
    finetune = DEFAULT_FINETUNE["file"]
    return DEFAULT_OBJECTIVE["file"] + (f" + {finetune} fine-tune steps" if finetune else "")


def tabular_section(config: TabularConfig, results: dict) -> list[str]:
    """Each objective on the tables beside zuko's NSF, through the tabular protocol."""
    from cnflow.experiments.tabular import OBJECTIVE_MODELS

    table = summarize(main_fits(results))
    models, rows, behind = config.models, [], []
    for name in config.sets:
        entries = [table[(name, m)] for m in models]
        d, se = difference(table[(name, "cnflow")], table[(name, "zuko_nsf")])
        if d > 0:
            behind.append(f"{name} by {d:.3f} ± {se:.3f}")
        rows.append([name, entries[0]["dim"],
                     *bold_best([plus_minus(e["mean"], e["stderr"]) for e in entries],
                                [e["mean"] for e in entries]), f"{d:+.3f} ± {se:.3f}"])
    wins = {m: sum(table[(s, m)]["mean"] <= table[(s, "zuko_nsf")]["mean"] for s in config.sets)
            for m in models if m != "zuko_nsf"}
    return [
        "## Tables: each objective beside zuko's NSF", "",
        ("The protocol of the tabular benchmark (same splits, loop and cache): "
         f"{config.budget:g} CPU seconds per fit on one thread, test NLL in nats per row, mean "
         f"± standard error over {len(config.seeds)} seeds. `cnflow` is `cnflow fit FILE`'s "
         f"default ({_default_file_fit()}); `cnflow_otfm_ft` spends half the budget on otfm "
         "and the rest on a maximum-likelihood fine-tune (at most "
         f"{OBJECTIVE_MODELS['cnflow_otfm_ft']['finetune']} steps)."), "",
        markdown_table(["set", "D", *models, "default − NSF"], rows), "",
        ("**Goal (cnflow's default fit at or below NSF's test NLL on every set): "
         + ("met" if not behind else "not met") + ".**"
         + ("" if not behind else " Behind on " + ", ".join(behind) + ".")
         + " Sets at or below NSF, per model: "
         + ", ".join(f"{m} {n}/{len(config.sets)}" for m, n in wins.items()) + "."), ""]


def defaults_section(two_d: list[dict[str, Any]], config: TabularConfig,
                     results: dict) -> list[str]:
    """The evidence behind DEFAULT_OBJECTIVE and DEFAULT_FINETUNE, from this run's numbers."""
    lines = ["## Why the defaults", ""]
    for dataset in TWO_D_SETS:
        runs = {r["variant"]: r for r in two_d if r["dataset"] == dataset}
        lines.append(f"- {dataset}: " + "; ".join(
            f"{v} {r['gap']:+.3f} nats in {r['cpu_seconds']:.0f} CPU s" for v, r in runs.items()))
    table = summarize(main_fits(results))
    candidates = [m for m in config.models if m.startswith("cnflow_")]
    best = {m: [s for s in config.sets if table[(s, m)]["mean"]
                == min(table[(s, c)]["mean"] for c in candidates)] for m in candidates}
    lines.append("- tables, best of " + ", ".join(candidates) + " per set: " + "; ".join(
        f"{m} on {len(sets)} ({', '.join(sets) or 'none'})" for m, sets in best.items()))
    def after_flow_matching(kind: str) -> str:
        steps = DEFAULT_FINETUNE[kind]
        return (f"flow matching there is followed by {steps} maximum-likelihood fine-tune "
                "steps" if steps else "flow matching there has no fine-tune")

    return lines + ["", (f"Defaults chosen from these (`cnflow/density.py`): built-in "
                         f"datasets `{DEFAULT_OBJECTIVE['builtin']}` "
                         f"({after_flow_matching('builtin')}), files "
                         f"`{DEFAULT_OBJECTIVE['file']}` ({after_flow_matching('file')}). "
                         f"{DEFAULTS_REASON}"), ""]


def conditional_section(conditional: dict[str, Any], figure_name: str) -> list[str]:
    """The conditional fit and its KL to each moon's exact density."""
    kl = conditional["kl"]
    finetune = conditional["finetune"]
    return [
        "## A conditional model", "",
        (f"`{conditional['command']}` on {conditional['rows']:,} points of two moons labelled "
         f"by their moon (objective {conditional['objective']}"
         + (f" + {finetune} fine-tune steps" if finetune else "")
         + f"; {conditional['cpu_seconds']:.0f} CPU s). KL from each moon's exact density "
         "(toydata's `conditional_log_prob`) to the model's `log_prob(x, context=label)`, on "
         f"fresh points: outer moon {plus_minus(*kl[0])}, inner moon {plus_minus(*kl[1])} "
         "nats."), "", f"![samples given each label]({figure_name})", ""]


def anchor_section(runs: list[dict[str, Any] | None]) -> list[str]:
    """cnflow's otfm against torchcfm's matcher on the same network, per seed."""
    lines = ["## Correctness anchor: torchcfm's matcher on the same network", ""]
    if any(r is None for r in runs):
        return lines + [("torchcfm is not installed here; not measured. Install it with "
                         "`pip install --no-deps torchcfm` (its own requirements, torchdyn "
                         "among them, are not needed and could replace torch)."), ""]
    rows, summary = [], {}
    for matcher in ("cnflow", "torchcfm"):
        group = [r for r in runs if r["matcher"] == matcher]
        summary[matcher] = {"n": len(group), **dict(zip(
            ("mean", "stderr"), mean_and_stderr(np.array([r["test_nll"] for r in group]))))}
        rows.append([matcher, ", ".join(f"{r['losses'][-1]:.4f}" for r in group),
                     ", ".join(f"{r['test_nll']:.4f}" for r in group),
                     plus_minus(summary[matcher]["mean"], summary[matcher]["stderr"], 4)])
    d, se = difference(summary["cnflow"], summary["torchcfm"])
    return lines + [
        ("`cnflow fit two_moons --objective otfm`'s network, loop and settings, trained once "
         "with cnflow's `otfm` objective and once with torchcfm's "
         "`ExactOptimalTransportConditionalFlowMatcher(sigma=0)` in its place (torchcfm "
         "samples pairs from the minibatch OT plan with replacement; cnflow uses the optimal "
         "permutation). Flow-matching loss of the last epoch and exact test NLL, per seed."),
        "", markdown_table(["matcher", "last-epoch loss", "test NLL", "mean test NLL"], rows),
        "", (f"Difference cnflow − torchcfm: {d:+.4f} ± {se:.4f} nats, "
             + ("within" if abs(d) <= 2 * se else "beyond") + " two standard errors."), ""]


def timing_section(timing: list[dict[str, Any]]) -> list[str]:
    """The exact OT assignment by scipy and by POT."""
    rows = [[r["n"], f"{r['scipy']:.2f}", f"{r['pot']:.2f}", f"{r['scipy'] / r['pot']:.1f}"]
            for r in timing]
    return [
        "## The OT assignment: scipy or POT", "",
        ("Median CPU milliseconds of one exact assignment of n Gaussian noise points to n "
         "standardised two_moons points (otfm's minibatch problem), the two solvers in "
         f"alternating order, {ASSIGNMENT_REPEATS} repeats; both find the optimal cost. cnflow "
         "uses POT's `emd`, with scipy's assignment solver as the fallback."), "",
        markdown_table(["n", "scipy linear_sum_assignment", "POT emd", "scipy / POT"], rows),
        ""]
