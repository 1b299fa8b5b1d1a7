"""Tabular density estimation benchmark: ``cnflow fit``'s default CNF against zuko's NSF, MAF
and CNF on the same splits at the same CPU-time budget. ``cnflow benchmark tabular`` runs
:func:`~cnflow.experiments.tabular.benchmark.run`, which writes ``config.json``, its figure
and ``tabular.json`` into its output folder and ``tabular.md`` beside it.

Protocol, the same for every model (so the comparison measures the models, not the loops):

* each set is split once per seed into training, validation and test rows, saved as
  ``.npy`` files, and every model reads them through :func:`cnflow.density.load_data` — the
  code path of ``cnflow fit train.npy --val val.npy --test test.npy`` — so standardisation,
  dequantisation noise (integer columns, fresh per training batch, one fixed draw for
  validation and test) and the reported coordinates are identical;
* every model trains in :func:`cnflow.training.fit` with its own usual learning rate and
  batch size (cnflow: ``FitConfig``'s defaults; zuko: Adam at 1e-3, batch 256, as in zuko's
  tutorials), the cosine schedule following the CPU budget, early stopping with patience 10
  and the best-validation weights restored; one thread per fit;
* the budget is CPU seconds of the fit's process for training and validation; the test NLL
  afterwards is exact for every model (cnflow: exact trace at the eval tolerance).

The sets: real tables that ship with scikit-learn (wine, breast cancer; digits with its
constant pixels dropped and dequantised), a PCA projection of the packaged MNIST test
images, and the known-density mixed-block sets of ``toydata`` (where the entropy floor is
exact).

Modules: :mod:`.config` (what runs), :mod:`.data` (the splits), :mod:`.fits` (one fit, the
cache, the parallel runs), :mod:`.report` (the markdown sections and the figure) and
:mod:`.benchmark` (the run function).
"""

from cnflow.experiments.tabular.benchmark import run
from cnflow.experiments.tabular.config import (
    FULL_RUNS,
    MODELS,
    OBJECTIVE_MODELS,
    SETS,
    SWEEP_SETS,
    VARIANTS,
    TabularConfig,
)
from cnflow.experiments.tabular.data import benchmark_split, mix6_table
from cnflow.experiments.tabular.fits import ZukoFlow, run_fits, zuko_model
from cnflow.experiments.tabular.report import summarize

__all__ = ["FULL_RUNS", "MODELS", "OBJECTIVE_MODELS", "SETS", "SWEEP_SETS", "VARIANTS",
           "TabularConfig", "ZukoFlow", "benchmark_split", "mix6_table", "run", "run_fits",
           "summarize", "zuko_model"]
