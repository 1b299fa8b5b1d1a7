"""Section 3 of Chen et al. (2018): ODE-Net classifiers, Table 1 and Figure 3 analogs.

The modules, each wrapped by the command line (``cnflow classify``, ``cnflow
odenet-results``):

* :mod:`~cnflow.experiments.odenet.baselines`: RK-Net, ResNet and the 1-layer MLP beside
  ODE-Net (:mod:`cnflow.models.odenet`), and :func:`build_classifier` by name;
* :mod:`~cnflow.experiments.odenet.train`: training through :func:`cnflow.training.fit`
  with per-step NFE and measured peak memory, evaluation, one measured step;
* :mod:`~cnflow.experiments.odenet.classify`: the settings of one ``cnflow classify`` run;
* :mod:`~cnflow.experiments.odenet.memory`: peak training memory against depth;
* :mod:`~cnflow.experiments.odenet.sweep`: the tolerance sweep and the Figure 3 plots;
* :mod:`~cnflow.experiments.odenet.report`: the Markdown report;
* :mod:`~cnflow.experiments.odenet.results`: the whole results run, :func:`run` of an
  :class:`OdenetResultsConfig`.
"""

from cnflow.experiments.odenet.baselines import (
    MLP,
    MODEL_NAMES,
    ResBlock,
    ResNet,
    RKNet,
    build_classifier,
)
from cnflow.experiments.odenet.classify import SOLVER_MODELS, ClassifyConfig
from cnflow.experiments.odenet.memory import memory_vs_depth, plot_memory_vs_depth
from cnflow.experiments.odenet.report import write_markdown
from cnflow.experiments.odenet.results import (
    COMMAND,
    DEFAULT_OUT,
    OdenetResultsConfig,
    command_line,
    default_md,
    run,
)
from cnflow.experiments.odenet.sweep import plot_figure3, tolerance_sweep
from cnflow.experiments.odenet.train import (
    MAX_SEED,
    classifier_training,
    cross_entropy,
    evaluate,
    mean_of,
    measure_training_step,
    train_classifier,
)

__all__ = [
    "COMMAND",
    "DEFAULT_OUT",
    "MAX_SEED",
    "MLP",
    "MODEL_NAMES",
    "SOLVER_MODELS",
    "ClassifyConfig",
    "OdenetResultsConfig",
    "RKNet",
    "ResBlock",
    "ResNet",
    "build_classifier",
    "classifier_training",
    "command_line",
    "cross_entropy",
    "default_md",
    "evaluate",
    "mean_of",
    "measure_training_step",
    "memory_vs_depth",
    "plot_figure3",
    "plot_memory_vs_depth",
    "run",
    "tolerance_sweep",
    "train_classifier",
    "write_markdown",
]
