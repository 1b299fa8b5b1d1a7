"""Flow matching against maximum likelihood for the same CNFs: ``cnflow benchmark
flow-matching`` runs :func:`~cnflow.experiments.flow_matching.benchmark.run`, which writes
``config.json``, its figures and ``flow_matching.json`` into its output folder and
``flow_matching.md`` beside it.

Three measurements:

* **2-D** (two_moons, two_circles): the whole ``cnflow fit NAME --objective …`` of each
  objective (training, test evaluation and figures, one thread), its test NLL against the
  entropy floor, the CPU time at which its validation NLL first came within 0.05 nats of
  the floor, and the NFE of one ``log_prob`` solve of the trained model at the eval
  tolerance (straighter paths need fewer evaluations). Learning curves in one figure.
* **Tables**: each objective on the sets of the tabular benchmark beside zuko's NSF at the
  same CPU budget, through the tabular benchmark's own protocol and cache.
* **A conditional model**: ``cnflow fit moons.csv --context label`` on two moons labelled
  by their moon, its samples for each label beside the data, and its KL to each moon's exact
  density.

And a small timing of the exact minibatch OT assignment: scipy's ``linear_sum_assignment``
against POT's ``emd``, and a correctness anchor: torchcfm's exact-OT matcher in place of
cnflow's ``otfm`` on the same network (where torchcfm is installed).

Modules: :mod:`.config` (what runs), :mod:`.runs` (the measurements), :mod:`.report` (the
markdown sections and the figure) and :mod:`.benchmark` (the run function).
"""

from cnflow.experiments.flow_matching.benchmark import run
from cnflow.experiments.flow_matching.config import (
    TABULAR_MODELS,
    TWO_D_SETS,
    TWO_D_VARIANTS,
    FlowMatchingBenchConfig,
)

__all__ = ["TABULAR_MODELS", "TWO_D_SETS", "TWO_D_VARIANTS", "FlowMatchingBenchConfig", "run"]
