"""What the tabular benchmark runs: its sets, models, the defaults sweep's variants, the
full-length runs, and :class:`TabularConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnflow.validation import check_choices, check_float, check_int, check_ints

#: Folder stem of the benchmark's files and the command that writes them (its options are
#: :class:`TabularConfig`'s fields).
NAME = "tabular"
COMMAND = ("cnflow", "benchmark", "tabular")
SETS = ("wine", "breast_cancer", "digits", "mnist_pca16", "mix4", "mix8", "mix16")
MODELS = ("cnflow", "zuko_nsf", "zuko_maf", "zuko_cnf", "cnflow_mle", "cnflow_fm",
          "cnflow_otfm", "cnflow_otfm_ft")
#: Maximum-likelihood steps after otfm in ``cnflow_otfm_ft`` (and in the flow-matching
#: benchmark's "otfm + fine-tune").
FINETUNE_STEPS = 300
#: cnflow with a given objective (FitConfig overrides); "cnflow" is the default fit.
OBJECTIVE_MODELS: dict[str, dict[str, Any]] = {
    "cnflow": {}, "cnflow_mle": {"objective": "mle"}, "cnflow_fm": {"objective": "fm"},
    "cnflow_otfm": {"objective": "otfm", "finetune": 0},
    "cnflow_otfm_ft": {"objective": "otfm", "finetune": FINETUNE_STEPS},
}
#: The defaults sweep: ``cnflow fit``'s settings for files against the alternatives that
#: were candidates (FitConfig overrides; {} is the default itself, listed first).
VARIANTS: dict[str, dict[str, Any]] = {
    "default (gated M=128, hypernet 64, lr 3e-3, kinetic 0.01, clip 5)": {},
    "lr 1e-2": {"lr": 1e-2},
    "no kinetic regulariser": {"kinetic": 0.0},
    "M=64, hypernet 32": {"width": 64, "hidden": 32},
    "concat-squash 3x64": {"dynamics": "concat_squash", "width": 64},
    "training tolerance 1e-3": {"rtol": 1e-3, "atol": 1e-3},
}
DEFAULT_VARIANT = next(iter(VARIANTS))
SWEEP_SETS = ("mix8", "mnist_pca16", "breast_cancer", "digits")
#: The whole default command, run to its end, against the same without its stabilisers.
FULL_RUNS: dict[str, dict[str, Any]] = {
    "default": {},
    "no kinetic regulariser": {"kinetic": 0.0},
    "no kinetic regulariser, no clipping": {"kinetic": 0.0, "grad_clip": None},
}
FULL_RUN_ROWS = 20000
#: The issue's goal for the whole default run on the full-run table, in CPU seconds.
FULL_RUN_GOAL_CPU_SECONDS = 300.0
#: zuko's models: their size, and Adam's rate and batch as in zuko's tutorials.
ZUKO_TRANSFORMS, ZUKO_HIDDEN = 3, (64, 64)
ZUKO_LR, ZUKO_BATCH = 1e-3, 256


@dataclass
class TabularConfig:
    """What ``cnflow benchmark tabular`` runs.

    Attributes:
        sets: benchmark sets (wine, breast_cancer, digits, mnist_pca16, mix4, mix8, mix16).
        models: models; cnflow is cnflow fit's default, zuko_* zuko's flows, cnflow_* cnflow
            fit with one objective.
        seeds: one split and one initialisation per seed.
        budget: CPU seconds per fit (training + validation).
        jobs: fits run in parallel, one thread each.
        sweep: also run the defaults sweep (cnflow fit's settings against the alternatives
            that were candidates, seed 0 only).
        sweep_sets: sets of the defaults sweep.
        full_runs: also run the whole default cnflow fit FILE.csv (no budget) on a
            20,000 x 6 table, with and without its stabilisers.
    """

    sets: tuple[str, ...] = SETS
    models: tuple[str, ...] = MODELS
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: float = 60.0
    jobs: int = 2
    sweep: bool = True
    sweep_sets: tuple[str, ...] = SWEEP_SETS
    full_runs: bool = True

    def __post_init__(self) -> None:
        self.sets = check_choices("sets", self.sets, SETS)
        self.models = check_choices("models", self.models, MODELS)
        self.sweep_sets = check_choices("sweep_sets", self.sweep_sets, SETS)
        self.seeds = check_ints("seeds", self.seeds, minimum=0)
        check_float("budget", self.budget)
        check_int("jobs", self.jobs)
