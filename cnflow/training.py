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

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
from tqdm.auto import tqdm

from cnflow import distributed
from cnflow.flows.base import Flow
from cnflow.objectives import MaximumLikelihood
from cnflow.runs import save_checkpoint
from cnflow.solvers import ODESolverError
from cnflow.validation import check_choice, check_float, check_int

LR_SCHEDULES = ("cosine", "exponential", "constant")
# Rows, or rows with their context: ``x`` of shape (n, dim) or ``(x, c)`` with c (n, k).
Rows = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainConfig:
    """Settings of the training loop.

    Args:
        epochs: maximum number of epochs (passes over the table; for endless samples,
            blocks of ``steps_per_epoch`` fresh batches).
        min_epoch_steps: on a small table an epoch repeats passes until it has at least
            this many steps (validation, patience and checkpoints count in epochs).
        batch_size: rows per minibatch.
        lr: Adam's learning rate.
        lr_schedule: ``"cosine"`` (a half cosine from ``lr`` to ``lr * lr_final`` over the
            run: ``epochs`` epochs, or the ``max_time`` budget if that comes first),
            ``"exponential"`` (geometric decay to ``lr * lr_final``) or ``"constant"``.
        lr_final: the learning rate at the end of the run relative to ``lr`` (0 is allowed
            for the cosine).
        weight_decay: Adam's L2 penalty.
        grad_clip: clip the gradient's global norm to this value; None for no clipping.
        patience: stop after this many validations without a new best; None never stops
            early.
        max_time: CPU-seconds budget of this process for the whole loop (validation
            included; under ``torchrun``, of each process: the run stops when the first
            rank has spent it); None for no budget.
        max_steps: stop after this many optimisation steps (the schedule then spans them);
            None for no limit.
        seed: seeds the weights' initialisation (by the caller), the shuffling and every
            random draw of the loop.
    """

    epochs: int = 100
    min_epoch_steps: int = 20
    batch_size: int = 512
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    lr_final: float = 0.01
    weight_decay: float = 0.0
    grad_clip: float | None = None
    patience: int | None = 10
    max_time: float | None = None
    max_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs)
        check_int("min_epoch_steps", self.min_epoch_steps)
        check_int("batch_size", self.batch_size)
        check_float("lr", self.lr)
        check_float("weight_decay", self.weight_decay, allow_minimum=True)
        check_float("grad_clip", self.grad_clip, optional=True)
        check_int("patience", self.patience, optional=True)
        check_float("max_time", self.max_time, optional=True)
        check_int("max_steps", self.max_steps, optional=True)
        check_int("seed", self.seed, minimum=0)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_float("lr_final", self.lr_final, maximum=1,
                    allow_minimum=self.lr_schedule != "exponential")

    def loop_settings(self) -> dict[str, Any]:
        """Only the fields of :class:`TrainConfig` (a subclass may add its own)."""
        return {f: getattr(self, f) for f in TrainConfig.__dataclass_fields__}


class EndlessSamples:
    """Fresh samples every step, for data sources that can draw as many points as asked.

    Args:
        sample: ``sample(n, seed)`` returning a ``(n, dim)`` tensor, or a pair ``(x, c)``
            with the context of each row; reproducible for a seed.
        steps_per_epoch: steps between two validations (and checkpoints).
        seed: the batch of step ``i`` is ``sample(batch_size, seed * 10**7 + first_step + i)``.
        steps: total number of steps; the last epoch is shorter where ``steps_per_epoch``
            does not divide it. Then :func:`fit` runs ``epochs`` epochs, whatever its
            config says.
        first_step: where the stream of batches starts (a second training phase continues
            the first one's stream instead of repeating it).
    """

    def __init__(self, sample: Callable[[int, int], Rows], steps_per_epoch: int,
                 seed: int = 0, steps: int | None = None, first_step: int = 0):
        check_int("steps_per_epoch", steps_per_epoch)
        check_int("steps", steps, optional=True)
        check_int("first_step", first_step, minimum=0)
        self.sample, self.steps_per_epoch, self.seed = sample, steps_per_epoch, seed
        self.steps, self.first_step = steps, first_step

    @property
    def epochs(self) -> int | None:
        return None if self.steps is None else math.ceil(self.steps / self.steps_per_epoch)

    def total_steps(self, epochs: int) -> int:
        total = epochs * self.steps_per_epoch
        return total if self.steps is None else min(total, self.steps)

    def batches(self, epoch: int, batch_size: int) -> Iterator[Rows]:
        first = epoch * self.steps_per_epoch
        last = self.total_steps(epoch + 1)
        for step in range(first, last):
            yield self.sample(batch_size, self.seed * 10**7 + self.first_step + step)


class _Table:
    """Shuffled minibatches of a finite table through a torch ``DataLoader``.

    An epoch is one pass, or as many passes as give at least ``min_steps`` steps: on a small
    table one pass is one or two steps, and validating (and counting patience) after every
    step would stop a run before it has learnt anything.
    """

    def __init__(self, data: tuple[torch.Tensor, ...], batch_size: int, seed: int,
                 min_steps: int):
        self.dataset = TensorDataset(*data)
        data = data[0]
        self.seed = seed
        # A small last batch would give a noisy step; drop it whenever a full batch exists.
        self.drop_last = len(data) > batch_size
        per_pass = len(data) // batch_size if self.drop_last else 1
        self.passes = math.ceil(min_steps / per_pass)
        self.rows = self.passes * len(data)
        self.steps_per_epoch = (self.rows // batch_size if self.drop_last else self.passes)

    def total_steps(self, epochs: int) -> int:
        return epochs * self.steps_per_epoch

    def batches(self, epoch: int, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        # Without replacement, num_samples = k rows draws k/n permutations back to back.
        rows = RandomSampler(self.dataset, num_samples=self.rows, generator=generator)
        sampler = BatchSampler(rows, min(batch_size, len(self.dataset)),
                               drop_last=self.drop_last)
        # batch_size=None: the sampler yields whole index lists, fetched in one indexing.
        yield from DataLoader(self.dataset, sampler=sampler, batch_size=None)


@dataclass
class History:
    """What :func:`fit` did.

    Attributes:
        records: one dict per epoch: ``epoch``, ``step``, ``train_loss`` (mean over the
            epoch), ``val_nll``, ``lr``, ``nfe_forward``/``nfe_backward`` (means),
            ``cpu_seconds``, ``wall_seconds`` (cumulative).
        best_epoch: the epoch whose weights were restored (1-based; 0: the initial ones).
        best_val_nll: its validation NLL (nats per row), None without validation data.
        initial_val_nll: the validation NLL of the starting weights.
        stop_reason: ``"epochs"``, ``"steps"`` (``max_steps``), ``"early stopping"``,
            ``"time budget"`` or ``"non-finite loss"`` (None while a run goes on).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_nll: float | None = None
    initial_val_nll: float | None = None
    stop_reason: str | None = None
    steps: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.records)

    def summary(self) -> dict[str, Any]:
        """Scalars for a metrics file (the per-epoch records stay in ``records``)."""
        def mean(key: str) -> float | None:
            values = [r[key] for r in self.records if r[key] is not None]
            return float(np.mean(values)) if values else None

        return {"best_epoch": self.best_epoch, "best_val_nll": self.best_val_nll,
                "initial_val_nll": self.initial_val_nll,
                "epochs_run": self.epochs_run, "steps": self.steps,
                "stop_reason": self.stop_reason, "train_cpu_seconds": self.cpu_seconds,
                "train_wall_seconds": self.wall_seconds,
                "nfe_forward_mean": mean("nfe_forward"),
                "nfe_backward_mean": mean("nfe_backward")}


def _rows(flow: Flow, rows: Rows, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, context)`` of ``rows``, checked against the flow (a context iff it is
    conditional, one row of it per point)."""
    x, context = rows if isinstance(rows, tuple) else (rows, None)
    x = flow.check_points(x, name)
    if context is None and flow.context_dim == 0:
        return x, None
    if context is None:
        raise ValueError(f"{name} must be a pair (x, context) for a conditional flow "
                         f"(context_dim={flow.context_dim})")
    context = flow.check_context(context)
    if context.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"{name}: x has {tuple(x.shape[:-1])} rows but its context "
                         f"{tuple(context.shape[:-1])}")
    return x, context


@torch.no_grad()
def evaluate(flow: Flow, rows: Rows, batch: int = 10000) -> tuple[np.ndarray, int]:
    """Per-row NLL of ``rows`` (``x`` or ``(x, context)``) in eval mode (exact trace, eval
    tolerance) and the forward NFE spent.

    Under ``torchrun`` this is a collective: each rank evaluates its share of the rows and
    every rank gets all of them back (NFE summed over the ranks); a solver failure on any
    rank raises :class:`~cnflow.solvers.ODESolverError` on every rank.
    """
    x, context = _rows(flow, rows, "rows")
    part = distributed.shard(len(x))
    x = x[part]
    context = None if context is None else context[part]
    was_training = flow.training
    flow.eval()
    nll, nfe, failure = [], 0, None
    try:
        for start in range(0, len(x), batch):
            chunk = x[start: start + batch]
            if context is None:
                nll.append(-flow.log_prob(chunk))
            else:
                nll.append(-flow.log_prob(chunk, context[start: start + batch]))
            stats = getattr(flow, "last_stats", None)
            nfe += stats.forward.nfe if stats is not None else 0
    except ODESolverError as error:
        if distributed.world_size() == 1:
            raise
        failure = str(error)  # raised below on every rank, so none waits for this one
    finally:
        flow.train(was_training)
    values = torch.cat(nll).double().cpu().numpy() if nll else np.zeros(0)
    if distributed.world_size() > 1:
        gathered = distributed.all_gather((values, nfe, failure))
        failures = [f for _, _, f in gathered if f is not None]
        if failures:
            raise ODESolverError(failures[0])
        values = np.concatenate([v for v, _, _ in gathered])
        nfe = sum(n for _, n, _ in gathered)
    return values, nfe


class _ObjectiveModule(nn.Module):
    """The objective on the model as a module: DistributedDataParallel wraps a forward."""

    def __init__(self, model: nn.Module, objective: Callable):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, *batch: torch.Tensor):
        return self.objective(self.model, *batch)


def training_objective(model: nn.Module, objective: Callable) -> Callable:
    """``objective(model, *batch)`` as :func:`fit` calls it, ``step(*batch)``: under
    ``torchrun`` through ``DistributedDataParallel`` (which broadcasts rank 0's weights now
    and averages the gradients in every ``backward``), the plain function otherwise."""
    if distributed.world_size() == 1:
        return lambda *batch: objective(model, *batch)
    device = _device_and_dtype(model)[0]
    devices = [device] if device.type == "cuda" else None
    # The buffers (the normalisation) are set from the same data on every rank and never
    # change while training: synced once here, not before every forward.
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
               inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})  # torch before 2.13
    return DistributedDataParallel(_ObjectiveModule(model, objective), device_ids=devices,
                                   **no_sync)


def shard_batch(batch: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], float]:
    """This rank's rows of a global batch (every tensor of it) and the weight of its loss.

    DistributedDataParallel averages the ranks' gradients; weighting each rank's mean loss
    by ``rows_here * ranks / rows`` makes that average the gradient of the mean over the
    whole batch, also when the rows do not divide evenly.
    """
    rows = len(batch[0])
    part = distributed.shard(rows)
    weight = (part.stop - part.start) * distributed.world_size() / rows
    return tuple(t[part] for t in batch), weight


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    if isinstance(model, Flow):
        return model.device, model.dtype
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError(f"{type(model).__name__} has no parameters to train")
    return parameter.device, parameter.dtype


def _table(model: nn.Module, rows: Rows | tuple[torch.Tensor, ...], name: str
           ) -> tuple[torch.Tensor, ...]:
    """The tensors of a table, one row per example: ``(x,)`` or ``(x, context)`` checked
    against a flow; for any other model, tensors of equal length."""
    if isinstance(model, Flow):
        x, context = _rows(model, rows, name)
        return (x,) if context is None else (x, context)
    rows = (rows,) if isinstance(rows, torch.Tensor) else tuple(rows)
    if not rows or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in rows):
        raise TypeError(f"{name} must be a tensor or a tuple of tensors, one row per example")
    lengths = {len(t) for t in rows}
    if len(lengths) != 1:
        raise ValueError(f"{name}: its tensors have different numbers of rows "
                         f"{[len(t) for t in rows]}")
    return rows


def _nfe(model: nn.Module) -> tuple[int | None, int | None]:
    stats = getattr(model, "last_stats", None)
    if stats is None:
        return None, None
    return stats.forward.nfe, stats.backward.nfe if stats.backward else 0


def fit(model: nn.Module, train: Rows | tuple[torch.Tensor, ...] | EndlessSamples,
        val: Rows | Callable[[nn.Module], float] | None, config: TrainConfig, *,
        objective: Callable | None = None, checkpoint: str | Path | None = None,
        resume: dict[str, Any] | None = None, extra_state: dict[str, Any] | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_epoch: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        step_context: Callable[[], contextlib.AbstractContextManager] | None = None,
        progress: bool | None = None, desc: str = "fit") -> History:
    """Train ``model``; restore its best-validation weights.

    Args:
        model: a :class:`~cnflow.flows.base.Flow` (already on its device and normalised),
            or any module with an ``objective``.
        train: a table: a tensor or a tuple of tensors with one row per example (for a
            flow ``x``, or ``(x, context)`` for a conditional one), shuffled into
            minibatches every epoch; or :class:`EndlessSamples`.
        val: the validation score, lower is better: for a flow, rows (as ``train``) whose
            exact NLL it is; for any model, a callable ``val(model) -> float`` (called in
            eval mode, without a graph). None: no validation, the last weights are kept.
        config: loop settings.
        objective: ``objective(model, *batch) -> (loss, report)`` with the batch's tensors
            (for a flow ``x`` and its context), for example
            :class:`~cnflow.objectives.FlowMatching`; a flow's default is maximum likelihood.
            ``report`` is the step's loss as a number, or a dict of numbers with a
            ``"loss"`` entry (an accuracy, say) that the step records carry.
        checkpoint: file rewritten atomically after every epoch.
        resume: a checkpoint dict written by this function; the loop continues after its
            last completed epoch.
        extra_state: entries stored in every checkpoint beside the loop's own (for
            example, what is needed to rebuild the model).
        augment: applied to the first tensor of every training batch (for example
            dequantisation noise).
        on_epoch: called with each epoch's record before its checkpoint is written; a
            dict it returns (a test score, say) is added to the record.
        on_step: called after every optimiser step with that step's record: ``epoch``,
            ``step``, ``loss``, ``lr``, ``seconds`` (wall, the step's forward and backward), the
            solver's ``nfe_forward`` and ``nfe_backward`` and the entries of a dict report.
        step_context: makes a context manager entered around each step's forward and
            backward pass (a memory meter, say).
        progress: show a progress bar; None shows it only on a terminal.
        desc: the progress bar's label.

    Returns:
        The :class:`History` (``best_val_nll`` and the records' ``val_nll`` hold the
        validation score); ``model`` holds the best-validation weights, in train mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    is_flow = isinstance(model, Flow)
    if objective is None and not is_flow:
        raise TypeError(f"{type(model).__name__} is not a cnflow Flow: give its objective")
    if isinstance(train, (torch.Tensor, tuple)):
        table = _table(model, train, "train")
        if len(table[0]) < 2:
            raise ValueError(f"train must hold at least 2 rows, got {len(table[0])}")
        source = _Table(tuple(t.cpu() for t in table), config.batch_size, config.seed,
                        config.min_epoch_steps)
    elif isinstance(train, EndlessSamples):
        source = train
        if train.epochs is not None:
            config = TrainConfig(**{**config.loop_settings(), "epochs": train.epochs})
    else:
        raise TypeError(f"train must be a tensor, a tuple of tensors or EndlessSamples, got "
                        f"{type(train).__name__}")
    if val is not None and not callable(val):
        if not is_flow:
            raise TypeError(f"val must be a callable score for {type(model).__name__} (rows "
                            "are scored by their NLL only for a flow)")
        val = _rows(model, val, "val")
    objective = MaximumLikelihood() if objective is None else objective
    device, dtype = _device_and_dtype(model)
    ranks, main = distributed.world_size(), distributed.is_main()
    check_batch_shares(config.batch_size, len(source.dataset) if isinstance(source, _Table)
                       else None)
    step_objective = training_objective(model, objective)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    total_steps = source.total_steps(config.epochs)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    def lr_factor(_: int) -> float:
        # Progress is the larger of the share of steps done and the share of the CPU budget
        # spent, so a run its budget cuts short still anneals.
        if config.lr_schedule == "constant":
            return 1.0
        progress = history.steps / total_steps
        if config.max_time is not None:
            progress = max(progress, (time.process_time() - cpu_start) / config.max_time)
        progress = min(progress, 1.0)
        if config.lr_schedule == "exponential":
            return config.lr_final ** progress
        return config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))

    history = History()
    best_weights = copy.deepcopy(model.state_dict())
    best_val, bad_rounds, first_epoch = math.inf, 0, 0
    skip = 0  # batches of the first epoch already trained (a resume inside an epoch)
    if resume is not None:
        loop = resume["loop"]
        model.load_state_dict(resume["last_model"])
        optimizer.load_state_dict(resume["optimizer"])
        best_weights = resume["model"]
        best_val = loop["best_val"] if loop["best_val"] is not None else math.inf
        bad_rounds, first_epoch = loop["bad_rounds"], loop["epoch"]
        skip = loop.get("epoch_step", 0)
        history = History(records=list(loop["records"]), best_epoch=loop["best_epoch"],
                          best_val_nll=loop["best_val"], steps=loop["steps"],
                          initial_val_nll=loop.get("initial_val"),
                          cpu_seconds=loop["cpu_seconds"], wall_seconds=loop["wall_seconds"])
        torch.set_rng_state(resume["rng"].cpu())
        if ranks > 1:
            # Each rank continues its own stream (a job resumed on another number of
            # processes starts new ones).
            saved = resume.get("rank_rngs") or []
            if len(saved) == ranks:
                torch.set_rng_state(saved[distributed.rank()].cpu())
            else:
                torch.manual_seed(_rank_seed(config.seed) + loop["steps"])
    cpu_start = time.process_time() - history.cpu_seconds
    wall_start = time.perf_counter() - history.wall_seconds
    for group in optimizer.param_groups:
        group["initial_lr"] = config.lr  # the schedule's base, also for a resumed optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    def out_of_time() -> bool:
        # Every rank calls this at the same points, so they all stop together.
        return config.max_time is not None and distributed.any_rank(
            time.process_time() - cpu_start >= config.max_time)

    def save(epoch: int, epoch_step: int = 0) -> None:
        """``epoch``: the next epoch to run; ``epoch_step``: its batches already trained."""
        if checkpoint is None:
            return
        rank_rngs = distributed.all_gather(torch.get_rng_state()) if ranks > 1 else None
        if not main:
            return
        save_checkpoint({
            **(extra_state or {}), "model": best_weights, "last_model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "rank_rngs": rank_rngs,
            "train_config": config.loop_settings(),
            "loop": {"epoch": epoch, "epoch_step": epoch_step, "steps": history.steps,
                     "best_val": history.best_val_nll,
                     "best_epoch": history.best_epoch, "bad_rounds": bad_rounds,
                     "initial_val": history.initial_val_nll,
                     "records": history.records, "cpu_seconds": history.cpu_seconds,
                     "wall_seconds": history.wall_seconds,
                     "stop_reason": history.stop_reason},
        }, checkpoint)

    def validate() -> float:
        try:
            if not callable(val):
                return float(evaluate(model, val)[0].mean())
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    return float(val(model))
            finally:
                model.train(was_training)
        except ODESolverError:
            return math.nan

    if resume is None:
        torch.manual_seed(_rank_seed(config.seed))
        if val is not None:
            # The starting weights compete too: a second phase (a fine-tune) that never
            # improves on them keeps them.
            history.initial_val_nll = validate()
            if math.isfinite(history.initial_val_nll):
                best_val = history.best_val_nll = history.initial_val_nll
    model.train()
    bar = tqdm(total=total_steps, initial=history.steps, desc=desc, unit="step",
               disable=(not progress or not main) if progress is not None else
               (None if main else True), dynamic_ncols=True)
    # A resumed run that had ended by itself stays ended; one stopped by its time budget
    # continues if the budget now allows.
    stop = resume["loop"]["stop_reason"] if resume is not None else None
    stop = None if stop == "time budget" else stop
    val_nll = None
    for epoch in range(first_epoch, config.epochs):
        # A fresh run always takes its first step (and so leaves a checkpoint), however
        # much of a tiny budget its setup and first validation used.
        if stop is None and history.steps > 0 and out_of_time():
            stop = "time budget"
        if stop is not None:
            break
        losses, nfe_f, nfe_b = [], [], []
        batches = source.batches(epoch, config.batch_size)
        # A run cut inside this epoch by its budget continues where it stopped: the epoch's
        # batches are reproducible, so the ones already trained are skipped.
        continued, done, skip = skip > 0, skip, 0
        batches = itertools.islice(batches, done, None) if continued else batches
        finished = False
        for batch in batches:
            if history.steps >= total_steps:
                stop = "steps"
                break
            batch, weight = shard_batch((batch,) if isinstance(batch, torch.Tensor)
                                        else tuple(batch))
            # Floating-point tensors in the model's dtype; labels and indices stay as they are.
            batch = tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device)
                          for t in batch)
            if augment is not None:
                batch = (augment(batch[0]), *batch[1:])
            optimizer.zero_grad(set_to_none=True)
            step_start = time.perf_counter()
            with step_context() if step_context is not None else contextlib.nullcontext():
                try:
                    loss, report = step_objective(*batch)
                    failed = not torch.isfinite(loss)
                except ODESolverError:
                    failed = True  # a blown-up field: stop like a non-finite loss
                if distributed.any_rank(failed):  # all ranks stop, keeping the best weights
                    stop = "non-finite loss"
                    break
                try:
                    (loss * weight).backward()
                except ODESolverError:
                    if ranks > 1:
                        # The other ranks wait in the gradient reduction for this one: the
                        # job ends (torchrun stops them) and resumes from the last checkpoint.
                        raise
                    stop = "non-finite loss"
                    break
                del loss  # the graph goes inside the context (a meter sees it freed)
            step_seconds = time.perf_counter() - step_start
            norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), config.grad_clip if config.grad_clip is not None else math.inf)
            if not torch.isfinite(norm):
                stop = "non-finite loss"  # a step now would write NaN into the weights
                break
            rate = optimizer.param_groups[0]["lr"]
            optimizer.step()
            history.steps += 1
            scheduler.step()
            done += 1
            report = ({k: float(v) for k, v in report.items()} if isinstance(report, dict)
                      else {"loss": float(report)})
            losses.append(report["loss"])
            forward, backward = _nfe(model)
            if forward is not None:
                nfe_f.append(forward)
                nfe_b.append(backward)
            if on_step is not None:
                on_step({"epoch": epoch + 1, "step": history.steps, **report,
                         "lr": rate, "seconds": step_seconds, "nfe_forward": forward,
                         "nfe_backward": backward})
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}", val=f"{val_nll:.4f}" if val_nll else "-",
                            nfe_f=forward, nfe_b=backward, refresh=False)
            if out_of_time():
                stop = "time budget"
                break
        else:
            finished = True
        # Cut by the budget: the epoch is not over, and its validation below counts no
        # round of patience (the rest of the epoch, after a resume, validates again).
        cut = stop == "time budget" and not finished
        if val is not None:
            val_nll = validate()
            if not math.isfinite(val_nll):
                stop = "non-finite loss"
            if val_nll < best_val:
                best_val, bad_rounds = val_nll, 0
                best_weights = copy.deepcopy(model.state_dict())
                history.best_epoch, history.best_val_nll = epoch + 1, val_nll
            elif not cut:
                bad_rounds += 1
        else:
            best_weights = copy.deepcopy(model.state_dict())
            history.best_epoch = epoch + 1
        history.cpu_seconds = time.process_time() - cpu_start
        history.wall_seconds = time.perf_counter() - wall_start
        train_loss = float(np.mean(losses)) if losses else None
        if ranks > 1:
            shares = [v for v in distributed.all_gather(train_loss) if v is not None]
            train_loss = float(np.mean(shares)) if shares else None
        record = {
            "epoch": epoch + 1, "step": history.steps,
            "train_loss": train_loss, "val_nll": val_nll,
            "lr": optimizer.param_groups[0]["lr"],
            "nfe_forward": float(np.mean(nfe_f)) if nfe_f else None,
            "nfe_backward": float(np.mean(nfe_b)) if nfe_b else None,
            "cpu_seconds": history.cpu_seconds, "wall_seconds": history.wall_seconds,
        }
        if on_epoch is not None:
            record.update(on_epoch(record) or {})
        if continued and history.records and history.records[-1]["epoch"] == epoch + 1:
            history.records.pop()  # the cut epoch's record: this one completes it
        history.records.append(record)
        if stop is None and config.patience is not None and bad_rounds >= config.patience:
            stop = "early stopping"
        if stop is None and out_of_time():
            stop = "time budget"
        if stop is None and epoch + 1 == config.epochs:
            stop = "epochs"
        if stop is None and history.steps >= total_steps:
            stop = "steps"
        history.stop_reason = stop  # None while the run goes on
        if cut:
            save(epoch, epoch_step=done)
        else:
            save(epoch + 1)
        if stop is not None:
            break
    bar.close()
    history.stop_reason = stop or "epochs"
    if history.stop_reason == "non-finite loss" and main:
        warnings.warn(f"training stopped at step {history.steps + 1}: the loss or its gradient "
                      f"became non-finite (or the solver failed); the best weights (epoch "
                      f"{history.best_epoch}) are kept. Try a lower learning rate, gradient "
                      "clipping or tighter training tolerances.", stacklevel=2)
    # The last checkpoint already holds these weights as "model" (and the current ones as
    # "last_model", so a resumed run continues from where this one stopped).
    model.load_state_dict(best_weights)
    return history


def check_batch_shares(batch_size: int, rows: int | None = None) -> None:
    """Refuse a batch (of at most ``rows`` rows, for a table) too small to give every
    process under ``torchrun`` at least one row."""
    batch, ranks = min(batch_size, rows or batch_size), distributed.world_size()
    if batch < ranks:
        raise ValueError(f"batch_size={batch} gives fewer rows than the {ranks} processes; "
                         f"use a batch of at least {ranks} rows")


def _rank_seed(seed: int) -> int:
    """The seed of this rank's random draws (noise, flow-matching times): rank 0 draws what
    a single process would."""
    return seed + 1_000_003 * distributed.rank()


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error (``scipy.stats.sem``; NaN for fewer than two values)."""
    from scipy.stats import sem

    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(sem(values)) if len(values) > 1 else math.nan
