"""The one training loop: any objective (maximum likelihood, flow matching) for any flow,
and for any other model with its own objective (a classifier, a latent ODE), on a finite
table or on endless fresh samples, with or without a context per row.

:func:`fit` is a plain function: give it a model, training data, a validation score and a
:class:`TrainConfig`; it returns a :class:`History`. What it does, in order of the loop:

* **epochs** over shuffled minibatches (a torch ``DataLoader`` over the table, reshuffled
  from a generator seeded by ``(seed, epoch)``), or, for :class:`EndlessSamples`, "epochs" of
  ``steps_per_epoch`` fresh batches (the infinite-data regime of the paper's toy runs);
* Adam with cosine decay to 1 % of the learning rate over the run, and optional
  gradient-norm clipping. The run's progress is the larger of the share of steps done and,
  with ``max_time``, the share of the CPU budget spent, so a run cut short by its budget
  still anneals (such a run is then reproducible only up to its timing);
* before the first epoch and after every epoch, the **validation score** in eval mode: for
  a flow the exact NLL (exact trace, the flow's eval tolerance), whatever the objective; the
  best-validation weights (the initial ones included) are kept, and restored at the end;
* **early stopping** after ``patience`` validations without improvement, a **CPU-time
  budget** (``max_time``, CPU seconds of this process, so it means the same on a loaded
  machine), and a clean stop when the loss becomes non-finite;
* an atomically written **checkpoint** after every epoch holding everything needed to
  continue: weights (best and last), optimizer, schedule, loop counters, history and the
  torch RNG state. Resuming from an epoch's checkpoint repeats the uninterrupted run bit for
  bit on CPU; a run its budget stopped inside an epoch resumes at the next batch of it;
* under ``torchrun`` (:mod:`cnflow.distributed`), every rank takes its share of each
  batch, ``DistributedDataParallel`` averages the gradients, validation is shared out and
  reduced, every stop is decided by all ranks together, and only rank 0 writes the
  checkpoint and shows the progress bar.

Example:
    >>> import torch
    >>> from cnflow.flows.cnf import CNF, GatedHyperDynamics
    >>> flow = CNF(GatedHyperDynamics(dim=3, width=4, hidden=4), dim=3)
    >>> x = torch.randn(64, 3)
    >>> history = fit(flow, x[:48], x[48:], TrainConfig(epochs=1, batch_size=16),
    ...               progress=False)
    >>> history.epochs_run
    1
"""

from cnflow.training.config import LR_SCHEDULES, MAX_SEED, History, Rows, TrainConfig
from cnflow.training.data import EndlessSamples, check_batch_shares, shard_batch
from cnflow.training.evaluation import evaluate
from cnflow.training.loop import fit, training_objective

__all__ = ["LR_SCHEDULES", "MAX_SEED", "EndlessSamples", "History", "Rows", "TrainConfig",
           "check_batch_shares", "evaluate", "fit", "shard_batch", "training_objective"]
