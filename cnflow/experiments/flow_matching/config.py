"""What the flow-matching benchmark measures, and :class:`FlowMatchingBenchConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnflow.density import DEFAULT_FINETUNE, DEFAULT_FINETUNE_LR, DEFAULT_OBJECTIVE, FitConfig
from cnflow.experiments.tabular.config import SETS as TABULAR_SETS
from cnflow.validation import check_choices, check_float, check_int, check_ints

#: Stem of the benchmark's files and the command that writes them (its options are
#: :class:`FlowMatchingBenchConfig`'s fields).
NAME = "flow_matching"
COMMAND = ("cnflow", "benchmark", "flow-matching")
TWO_D_SETS = ("two_moons", "two_circles")
#: FitConfig overrides of each 2-D variant; every other setting is `cnflow fit`'s default.
#: "otfm + fine-tune" is `cnflow fit NAME --objective otfm` as it stands (its fine-tune
#: length the config's ``finetune``, or the command's default). The control is that
#: fine-tune's schedule alone, from the initial weights: what the flow-matching phase buys.
GOAL_VARIANT = "otfm + fine-tune"
CONTROL_VARIANT = "mle, the fine-tune alone"
TWO_D_VARIANTS: dict[str, dict[str, Any]] = {
    "mle": {"objective": "mle"},
    "fm": {"objective": "fm", "finetune": 0},
    "otfm": {"objective": "otfm", "finetune": 0},
    GOAL_VARIANT: {"objective": "otfm"},
    CONTROL_VARIANT: {"objective": "mle", "iterations": DEFAULT_FINETUNE["builtin"],
                      "lr": DEFAULT_FINETUNE_LR["builtin"]},
}
#: The variants run once per seed of ``seeds`` on two_moons: the goal's, and its control.
SEEDED_VARIANTS = (GOAL_VARIANT, CONTROL_VARIANT)
#: The anchor's protocol: torchcfm's matcher against cnflow's otfm, this many steps each.
ANCHOR_ITERATIONS = 2000
#: The tabular section's models: cnflow_mle only where the default is not already maximum
#: likelihood.
TABULAR_MODELS = ("cnflow", "zuko_nsf",
                  *(("cnflow_mle",) if DEFAULT_OBJECTIVE["file"] != "mle" else ()),
                  "cnflow_fm", "cnflow_otfm", "cnflow_otfm_ft")
#: The 2-D goal: ``cnflow fit two_moons --objective otfm`` within GAP_TARGET nats of the
#: entropy floor in at most GOAL_CPU_SECONDS, for every seed.
GAP_TARGET = 0.05
GOAL_CPU_SECONDS = 25.0
#: Sizes and repeats of the OT assignment timing.
ASSIGNMENT_SIZES = (128, 256, 512)
ASSIGNMENT_REPEATS = 9
#: Why DEFAULT_OBJECTIVE is what it is, in words; the numbers beside it are this run's.
DEFAULTS_REASON = (
    "Maximum likelihood stays the default for both kinds of data: with the gated layer, flow "
    "matching alone ends far from the floor in 2-D, and even with its fine-tune it ends "
    "further from the floor than maximum likelihood; on the tables maximum likelihood has "
    "the lowest NLL on most sets. In 2-D a flow-matching objective gets the fine-tune by "
    "default, because flow matching alone ends far from the floor and the fine-tune takes it "
    "most of the way; the control row (the same fine-tune from the initial weights, no flow "
    "matching) shows how much of that the flow-matching phase contributes.")


@dataclass
class FlowMatchingBenchConfig:
    """What ``cnflow benchmark flow-matching`` runs.

    Attributes:
        sets: sets of the tabular section (those of the tabular benchmark).
        seeds: seeds of the tabular section (one split and initialisation each) and of
            the 2-D goal's runs.
        budget: CPU seconds per tabular fit.
        jobs: runs in parallel, one thread each.
        iterations: training steps of each 2-D fit and anchor fit; None for cnflow fit's
            default of its objective.
        finetune: maximum-likelihood steps of the 2-D otfm + fine-tune, and the steps of
            its control; None for cnflow fit's default.
        val_size, test_size: validation and test points of each 2-D fit.
        anchor_seeds: seeds of the torchcfm anchor (one fit per seed and matcher).
        conditional_rows: labelled two-moons rows of the conditional fit.
        conditional_epochs: most epochs of the conditional fit.
    """

    sets: tuple[str, ...] = TABULAR_SETS
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: float = 60.0
    jobs: int = 2
    iterations: int | None = None
    finetune: int | None = None
    val_size: int = FitConfig.val_size
    test_size: int = FitConfig.test_size
    anchor_seeds: tuple[int, ...] = (0, 1, 2)
    conditional_rows: int = 20000
    conditional_epochs: int = FitConfig.epochs

    def __post_init__(self) -> None:
        self.sets = check_choices("sets", self.sets, TABULAR_SETS)
        self.seeds = check_ints("seeds", self.seeds, minimum=0)
        self.anchor_seeds = check_ints("anchor_seeds", self.anchor_seeds, minimum=0)
        check_float("budget", self.budget)
        check_int("iterations", self.iterations, optional=True)
        for name in ("jobs", "conditional_epochs"):
            check_int(name, getattr(self, name))
        check_int("finetune", self.finetune, optional=True)
        # A standard error needs two points; a split of the conditional table ten
        # (a tenth each for validation and test).
        for name in ("val_size", "test_size"):
            check_int(name, getattr(self, name), minimum=2)
        check_int("conditional_rows", self.conditional_rows, minimum=20)

    def two_d_settings(self, variant: str) -> dict[str, Any]:
        """The FitConfig overrides of one 2-D variant's fit."""
        settings = {**TWO_D_VARIANTS[variant], "val_size": self.val_size,
                    "test_size": self.test_size}
        if self.iterations is not None and variant != CONTROL_VARIANT:
            settings["iterations"] = self.iterations
        if self.finetune is not None:
            if variant == GOAL_VARIANT:
                settings["finetune"] = self.finetune
            elif variant == CONTROL_VARIANT:
                settings["iterations"] = self.finetune
        return settings

    def anchor_settings(self, seed: int) -> dict[str, Any]:
        """The FitConfig of an anchor fit: `cnflow fit two_moons --objective otfm` without
        its fine-tune, for ANCHOR_ITERATIONS steps."""
        return {"dataset": "two_moons", "objective": "otfm", "finetune": 0, "seed": seed,
                "iterations": ANCHOR_ITERATIONS if self.iterations is None else self.iterations}
