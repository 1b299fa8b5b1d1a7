"""Where the loop's batches come from: a finite table (shuffled through a ``DataLoader``) or
endless fresh samples; the checks of a table's rows; each process's share of a batch under
``torchrun``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from cnflow import distributed
from cnflow.flows.base import Flow
from cnflow.training.config import Rows
from cnflow.validation import check_int


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


class Table:
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


def flow_rows(flow: Flow, rows: Rows, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
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


def table_tensors(model: nn.Module, rows: Rows | tuple[torch.Tensor, ...], name: str
           ) -> tuple[torch.Tensor, ...]:
    """The tensors of a table, one row per example: ``(x,)`` or ``(x, context)`` checked
    against a flow; for any other model, tensors of equal length."""
    if isinstance(model, Flow):
        x, context = flow_rows(model, rows, name)
        return (x,) if context is None else (x, context)
    rows = (rows,) if isinstance(rows, torch.Tensor) else tuple(rows)
    if not rows or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in rows):
        raise TypeError(f"{name} must be a tensor or a tuple of tensors, one row per example")
    lengths = {len(t) for t in rows}
    if len(lengths) != 1:
        raise ValueError(f"{name}: its tensors have different numbers of rows "
                         f"{[len(t) for t in rows]}")
    return rows


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


def check_batch_shares(batch_size: int, rows: int | None = None) -> None:
    """Refuse a batch (of at most ``rows`` rows, for a table) too small to give every
    process under ``torchrun`` at least one row."""
    batch, ranks = min(batch_size, rows or batch_size), distributed.world_size()
    if batch < ranks:
        raise ValueError(f"batch_size={batch} gives fewer rows than the {ranks} processes; "
                         f"use a batch of at least {ranks} rows")


def rank_seed(seed: int) -> int:
    """The seed of this rank's random draws (noise, flow-matching times): rank 0 draws what
    a single process would."""
    return seed + 1_000_003 * distributed.rank()
