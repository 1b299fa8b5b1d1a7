"""The comparisons' markdown: each run's table and settings from its JSON result, and
:func:`write_report`, which merges both runs into one document (``results/comparisons.md``).
No number in them is typed by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnflow.experiments.compare import density_matching, mle
from cnflow.experiments.compare.common import model_label, stopped_early
from cnflow.report import command_line, markdown_table, plus_minus
from cnflow.runs import relative_path, write_text

#: The command that merges the two runs (its options are :func:`write_report`'s arguments).
COMMAND = ("cnflow", "compare", "report")


def density_goal(config: dict[str, Any], table: dict[tuple, dict[str, Any]]) -> str:
    """The goal of the paper reproduction: the widest CNF at KL <= GOAL_KL on every target
    and at least 2x below the deepest planar flow."""
    m, k = max(config["cnf_widths"]), max(config["nf_layers"])
    cnf = {t: table[(t, "CNF", m)]["kl_mean"] for t in config["targets"]}
    nf = {t: table[(t, "NF", k)]["kl_mean"] for t in config["targets"]}
    goal = density_matching.GOAL_KL
    met = all(cnf[t] <= goal and 2 * cnf[t] <= nf[t] for t in config["targets"])
    worst = max(config["targets"], key=lambda t: cnf[t])
    ratio = min(nf[t] / cnf[t] for t in config["targets"])
    return (f"**Goal** (CNF M = {m} at KL ≤ {goal} on every target and at least 2x below "
            f"the planar flow K = {k}): **{'met' if met else 'not met'}**. Largest CNF KL "
            f"{cnf[worst]:.3f} ({worst}); smallest planar/CNF KL ratio {ratio:.1f}.")


def density_matching_markdown(result: dict[str, Any]) -> str:
    """The KL table and settings of a density-matching result, as markdown."""
    command, config = result["command"], result["config"]
    models = [("NF", k) for k in config["nf_layers"]] + \
        [("CNF", m) for m in config["cnf_widths"]]
    table = {(s["target"], s["model"], s["size"]): s for s in result["summary"]}
    rows = [[name, *(plus_minus(table[(name, *model)]["kl_mean"],
                                table[(name, *model)]["kl_std"]) for model in models)]
            for name in config["targets"]]
    outside = max(s["outside_box_max"] for s in result["summary"])
    cpu = sum(r["cpu_seconds"] for r in result["runs"])
    text = [
        f"Regenerate: `{command}`", "",
        density_goal(config, table), "",
        ("KL(q_B‖p) in nats, mean ± sample std over seeds "
         f"{', '.join(map(str, config['seeds']))}; each estimate from "
         f"{config['eval_samples']} samples of q "
         f"(largest standard error of one estimate: "
         f"{max(r['kl_stderr'] for r in result['runs']):.3g} nats)."),
        "",
        markdown_table(["target", *(model_label(*model) for model in models)], rows),
        "",
        (f"- Training: Adam with cosine decay to lr/100, batch {config['batch_size']}; "
         f"NF (planar, generative direction) {config['nf_iterations']} steps at lr "
         f"{config['nf_lr']:g}; CNF (gated hypernetwork layer, hypernetwork width "
         f"{config['hidden']}) {config['cnf_iterations']} steps at lr {config['cnf_lr']:g}, "
         f"dopri5 rtol {config['rtol']:g} / atol {config['atol']:g}, adjoint gradients; "
         f"KL estimates and figures at solver tolerance {config['eval_tol']:g}."),
        (f"- Training energy: U + {config['box_wall']:g}·Σ_i relu(|x_i| − 4)² (a soft wall "
         "at the box; 0 = none). U2–U4 do not decay along z1, so without it the loss "
         "rewards spilling q's mass along the ridges past the box. The KL column uses U "
         "alone."),
        "- log Z of each target on the box [-4, 4]²: " + ", ".join(
            f"{k} {v:.4f}" for k, v in result["log_normalizers"].items()) + ".",
        (f"- The KL is that of q conditioned on the box, KL(q_B‖p) = E_q|B[log q + U] + "
         f"log Z − log q(B): the target is zero outside the box, and a fit may spill a little "
         f"mass past it (largest share of q's samples outside in any run: {outside:.2g}), "
         "which −log q(B) charges."),
        ("- Fits stopped by a non-finite loss (last finite weights kept): "
         f"{stopped_early(result['runs'])}."),
        (f"- Time: {cpu / 60:.1f} CPU-minutes in the fits (training, KL estimate and "
         f"density grid, summed over {config['jobs']} worker process(es) with "
         f"{config['threads']} thread(s) each), plus {result['cpu_seconds'] / 60:.1f} in the "
         f"main process; {result['wall_seconds'] / 60:.1f} wall-minutes on a shared machine."),
    ]
    return "\n".join(text) + "\n"


def mle_markdown(result: dict[str, Any]) -> str:
    """The NLL table and settings of a maximum-likelihood result, as markdown."""
    command, config = result["command"], result["config"]
    rows = []
    for r in result["runs"]:
        label = f"NF (planar, K={r['size']})" if r["model"] == "NF" else f"CNF (M={r['size']})"
        rows.append([r["dataset"], label, plus_minus(r["test_nll"], r["test_nll_stderr"], 4),
                     f"{r['entropy_floor']:.4f}", f"{r['test_nll'] - r['entropy_floor']:.4f}",
                     plus_minus(r["kl"], r["kl_stderr"], 4), f"{r['cpu_seconds'] / 60:.1f}"])
    header = ["data", "model", "test NLL (nats)", "entropy floor", "NLL − floor",
              "KL(p‖q) from the same points", "CPU-min"]
    text = [
        f"Regenerate: `{command}`", "",
        (f"Test NLL ± standard error on {config['test_size']} held-out points "
         f"(seed {result['test_seed']}), one training seed ({config['seed']})."),
        "",
        markdown_table(header, rows),
        "",
        (f"- Training: fresh batches of {config['batch_size']} points per step, the same "
         "batch for both models at the same step; Adam with cosine decay to lr/100. NF: "
         f"{config['nf_layers']} planar layers, normalizing direction, "
         f"{config['nf_iterations']} steps at lr {config['nf_lr']:g}. CNF: gated "
         f"hypernetwork layer M={config['cnf_width']} (hypernetwork width "
         f"{config['hidden']}), {config['cnf_iterations']} steps at lr {config['cnf_lr']:g}, "
         f"dopri5 rtol {config['rtol']:g} / atol {config['atol']:g}, adjoint gradients; "
         f"test NLL and figures at solver tolerance {config['eval_tol']:g}."),
        (f"- Both models standardise the data by the mean and standard deviation of "
         f"{mle.NORMALIZATION_POINTS} separate points; the log-det of that map is part of "
         "every density."),
        ("- Fits stopped by a non-finite loss (last finite weights kept): "
         f"{stopped_early(result['runs'])}."),
        (f"- Time: {result['cpu_seconds'] / 60:.1f} CPU-minutes on {config['threads']} "
         f"thread(s), {result['wall_seconds'] / 60:.1f} wall-minutes on a shared machine."),
    ]
    return "\n".join(text) + "\n"


# Each comparison: its module, the report's section title and its markdown.
SECTIONS = ((density_matching, "Density matching (Figure 4)", density_matching_markdown),
            (mle, "Maximum likelihood (Figure 5)", mle_markdown))

CAVEATS = [
    ("- Budget: the paper's fits ran orders of magnitude more steps (see its appendix) than "
     "the step counts above, which keep each full command within about half an hour of CPU "
     "time on one thread. Every number here is from a short fit; the planar NFs, which "
     "learn slowly, are the furthest from convergence, so the table compares the flows at "
     "small budgets, not at their best."),
    ("- Seeds: density matching reports mean ± sample std over the seeds listed (a std from "
     "two seeds is a rough spread, not a confidence interval); maximum likelihood uses one "
     "training seed, its ± is the standard error over test points only."),
    ("- Snapshots: for the NF the intermediate states are the outputs after that many of the "
     "NF's layers on the way noise → data; they may leave the plotted window (set by the "
     "first and last panel), where the CNF's states stay near the data at all times."),
]


def null_as_nan(obj: Any) -> Any:
    """A result read back from its strict JSON, where a non-finite number became null."""
    if obj is None:
        return float("nan")
    if isinstance(obj, dict):
        return {k: null_as_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [null_as_nan(v) for v in obj]
    return obj


def write_report(out_dir: str | Path, md_path: str | Path) -> str:
    """Merge the runs in ``out_dir/density_matching`` and ``out_dir/mle`` (either may be
    missing) into the markdown file ``md_path``; returns its text.

    Raises:
        FileNotFoundError: if neither result exists.
        ValueError: a result file is not valid JSON or lacks what the report shows.
    """
    out, md_path = Path(out_dir), Path(md_path)
    parts = ["# CNF vs planar normalizing flows (paper Figures 4 and 5)", "",
             ("Generated by `cnflow compare report` from the JSON results; no number here "
              "is typed by hand."), ""]
    found = []
    for module, title, render in SECTIONS:
        file = out / module.NAME / module.RESULT_FILE
        if not file.exists():
            continue
        found.append(file)
        try:
            result = null_as_nan(json.loads(file.read_text()))
            env = result.get("environment", {})
            links = Path(relative_path(file.parent, md_path.parent))
            parts += [f"## {title}", "", render(result),
                      *[f"![{f}]({(links / f).as_posix()})" for f in module.FIGURES],
                      "", (f"Environment: torch {env.get('torch', '?')}, python "
                           f"{env.get('python', '?')}."), ""]
        except (json.JSONDecodeError, KeyError) as error:
            problem = f"it has no {error}" if isinstance(error, KeyError) else \
                f"it is not JSON ({error})"
            raise ValueError(f"{str(file)!r} is not a result of `{' '.join(module.COMMAND)}`: "
                             f"{problem}") from None
    if not found:
        raise FileNotFoundError(
            f"no {density_matching.NAME}/{density_matching.RESULT_FILE} or "
            f"{mle.NAME}/{mle.RESULT_FILE} in {str(out)!r}; run "
            "`cnflow compare density-matching` / `mle` with --out in that folder first")
    parts += ["## Caveats", "", *CAVEATS, "", "This file was written by:", "", "```",
              command_line(COMMAND, None, out=out, md=md_path), "```", ""]
    text = "\n".join(parts)
    write_text(text, md_path)
    return text
