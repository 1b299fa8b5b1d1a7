"""``cnflow benchmark flow-matching``'s one run function: the measurements (cached), then
the report."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cnflow.experiments import tabular
from cnflow.experiments.flow_matching.config import (
    ASSIGNMENT_REPEATS,
    ASSIGNMENT_SIZES,
    COMMAND,
    NAME,
    SEEDED_VARIANTS,
    TABULAR_MODELS,
    TWO_D_SETS,
    TWO_D_VARIANTS,
    FlowMatchingBenchConfig,
)
from cnflow.experiments.flow_matching.report import (
    anchor_section,
    conditional_section,
    defaults_section,
    learning_curves,
    tabular_section,
    timing_section,
    two_d_section,
)
from cnflow.experiments.flow_matching.runs import (
    anchor_run,
    assignment_timing,
    conditional_run,
    two_d_run,
)
from cnflow.experiments.tabular.fits import pool
from cnflow.report import command_line, report_beside
from cnflow.runs import environment, write_json, write_text

#: Where the run folders go by default; the tabular fits' cache is the tabular benchmark's
#: (``tabular`` beside it).
DEFAULT_WORK = "results/runs/flow_matching"
FIGURE, CONDITIONAL_FIGURE = f"{NAME}.png", f"{NAME}_conditional.png"
ANCHOR_MATCHERS = ("cnflow", "torchcfm")


def run(config: FlowMatchingBenchConfig, out_dir: str | Path, *,
        work: str | Path = DEFAULT_WORK, reuse: bool = True,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the measurements (with ``reuse``, finished runs in ``work`` — run folders of the
    same config, anchor files, the tabular cache — are read instead of being run again) and
    write ``config.json``, its figures and ``flow_matching.json`` into ``out_dir`` and
    the report beside it (``results/flow_matching.md`` for ``results/flow_matching``).

    Returns:
        The dictionary written to ``flow_matching.json``.
    """
    start, load = time.time(), os.getloadavg()[0]
    out, work = Path(out_dir), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    command = command_line(COMMAND, config, work=work, out=out_dir)
    echo(f"2-D runs, the conditional run and the anchors ({config.jobs} at a time)")
    with pool(config.jobs) as workers:
        futures = [workers.submit(two_d_run, d, v, config.two_d_settings(v), str(work), reuse)
                   for d in TWO_D_SETS for v in TWO_D_VARIANTS]
        seeded_futures = [workers.submit(two_d_run, "two_moons", variant,
                                         {**config.two_d_settings(variant), "seed": seed},
                                         str(work), reuse)
                          for variant in SEEDED_VARIANTS for seed in config.seeds if seed]
        conditional_future = workers.submit(conditional_run, config.conditional_rows,
                                            config.conditional_epochs, str(work), reuse)
        anchor_futures = [workers.submit(anchor_run, m, config.anchor_settings(seed),
                                         str(work), reuse)
                          for m in ANCHOR_MATCHERS for seed in config.anchor_seeds]
        two_d = [f.result() for f in futures]
        seeded = [r for r in two_d if r["dataset"] == "two_moons"
                  and r["variant"] in SEEDED_VARIANTS and 0 in config.seeds]
        seeded += [f.result() for f in seeded_futures]
        conditional = conditional_future.result()
        anchor = [f.result() for f in anchor_futures]
    for r in two_d:
        echo(f"  {r['dataset']} {r['variant']}: gap {r['gap']:+.4f}, {r['cpu_seconds']:.1f} CPU-s")
    tab_config = tabular.TabularConfig(sets=config.sets, models=TABULAR_MODELS,
                                       seeds=config.seeds, budget=config.budget,
                                       jobs=config.jobs, sweep=False, full_runs=False)
    tab_results = tabular.run_fits(tab_config, work.parent / "tabular", reuse=reuse, echo=echo)
    out.mkdir(parents=True, exist_ok=True)
    learning_curves(two_d, out / FIGURE)
    shutil.copyfile(conditional["figure"], out / CONDITIONAL_FIGURE)
    timing = assignment_timing(ASSIGNMENT_SIZES, ASSIGNMENT_REPEATS)
    env = environment()
    lines = ["# Flow matching and conditional CNFs", "", f"Regenerate: `{command}`", "",
             ("Flow matching trains the same CNF (the gated layer, `cnflow fit`'s default "
              "dynamics) by regressing its vector field on straight noise-to-data paths: one "
              "field evaluation per point and step, no ODE solve. `otfm` pairs noise and data "
              "by the minibatch's exact optimal-transport assignment. After any objective the "
              "reported NLL is the exact likelihood (exact trace, eval tolerance)."), "",
             *two_d_section(two_d, seeded, f"{out.name}/{FIGURE}"), *tabular_section(tab_config, tab_results),
             *defaults_section(two_d, tab_config, tab_results),
             *conditional_section(conditional, f"{out.name}/{CONDITIONAL_FIGURE}"), *anchor_section(anchor),
             *timing_section(timing),
             "## Settings", "",
             (f"- Machine: {env['platform']}, torch {env['torch']}, load average {load:.1f} "
              f"at the start; {(time.time() - start) / 60:.0f} min wall (cached tabular "
              "fits reused)."), ""]
    result = {"config": asdict(config), "command": command, "two_d": two_d,
              "seeded_runs": seeded,
              "conditional": conditional, "anchor": anchor, "assignment_ms": timing,
              "tabular_fits": list(tab_results.values()), "environment": env}
    write_text("\n".join(lines), report_beside(out))
    write_json(asdict(config), out / "config.json")
    write_json(result, out / f"{NAME}.json")
    return result
