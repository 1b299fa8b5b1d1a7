"""``cnflow benchmark tabular``'s one run function: every fit (cached), then the report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cnflow.density import FitConfig
from cnflow.experiments.tabular.config import (
    COMMAND,
    NAME,
    ZUKO_BATCH,
    ZUKO_HIDDEN,
    ZUKO_LR,
    ZUKO_TRANSFORMS,
    TabularConfig,
)
from cnflow.experiments.tabular.fits import run_fits, run_full
from cnflow.experiments.tabular.report import (
    figure,
    full_section,
    main_fits,
    results_section,
    summarize,
    sweep_section,
)
from cnflow.report import command_line, report_beside
from cnflow.runs import environment, write_json, write_text

#: Where the splits and the cache of finished fits go by default.
DEFAULT_WORK = "results/runs/tabular"
FIGURE = f"{NAME}.png"


def run(config: TabularConfig, out_dir: str | Path, *, work: str | Path = DEFAULT_WORK,
        reuse: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark (fits already in ``work``'s cache are reused with ``reuse``) and
    write ``config.json``, the figure and ``tabular.json`` (every fit) into ``out_dir`` and
    the report beside it (``results/tabular.md`` for ``results/tabular``).

    Returns:
        The dictionary written to ``tabular.json``: the config, the command, every fit and
        the full runs.
    """
    start, load = time.time(), os.getloadavg()[0]
    out = Path(out_dir)
    command = command_line(COMMAND, config, work=work, out=out_dir)
    results = run_fits(config, work, reuse=reuse, echo=echo)
    table = summarize(main_fits(results))
    figure(table, config.sets, config.models, out / FIGURE)
    lines = [
        "# Tabular density estimation: cnflow vs zuko", "",
        f"Regenerate: `{command}`", "",
        (f"Every fit gets the same budget, **{config.budget:g} CPU seconds** on one thread "
         "for training and validation, on the same splits, through the same training loop "
         f"(`cnflow.training.fit`: early stopping with patience {FitConfig().patience} on "
         "the validation NLL, "
         "best weights restored, cosine schedule over the budget). Test NLL in nats per row "
         f"(lower is better), mean ± standard error over {len(config.seeds)} seeds (each "
         "seed: its own split and initialisation); the floor is the true density's entropy "
         "where it is known. See `cnflow/experiments/tabular/__init__.py` for the "
         "protocol."), "",
        *results_section(config, table, f"{out.name}/{FIGURE}")]
    if config.sweep:
        lines += sweep_section(config, results)
    full = run_full(work, config.jobs, reuse=reuse, echo=echo) if config.full_runs else {}
    if full:
        lines += full_section(full)
    env = environment()
    lines += ["", "## Settings", "",
              ("- cnflow: `cnflow fit FILE`'s defaults (`FitConfig`) with the budget; zuko "
               f"(`zuko.flows.NSF`, `MAF`: {ZUKO_TRANSFORMS} transforms, hidden {ZUKO_HIDDEN}; "
               f"`CNF`: hidden {ZUKO_HIDDEN}, exact trace): Adam {ZUKO_LR:g}, batch "
               f"{ZUKO_BATCH}."),
              (f"- Machine: {env['platform']}, torch {env['torch']}, load average "
               f"{load:.1f} at the start; {(time.time() - start) / 60:.0f} min wall for the "
               "fits run now (cached fits are reused)."), ""]
    result = {"config": asdict(config), "command": command, "fits": list(results.values()),
              "full_runs": full, "environment": env}
    write_text("\n".join(lines), report_beside(out))
    write_json(asdict(config), out / "config.json")
    write_json(result, out / f"{NAME}.json")
    return result
