"""The loop's settings (:class:`TrainConfig`) and what it did (:class:`History`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cnflow.validation import check_choice, check_float, check_int

LR_SCHEDULES = ("cosine", "exponential", "constant")
# The loop seeds its shuffling with seed * 1_000_003 + epoch and each process's draws with
# seed + 1_000_003 * rank: below 2**32 both stay inside a generator's 64-bit seed.
MAX_SEED = 2**32 - 1
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
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_float("lr_final", self.lr_final, maximum=1,
                    allow_minimum=self.lr_schedule != "exponential")

    def loop_settings(self) -> dict[str, Any]:
        """Only the fields of :class:`TrainConfig` (a subclass may add its own)."""
        return {f: getattr(self, f) for f in TrainConfig.__dataclass_fields__}


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
