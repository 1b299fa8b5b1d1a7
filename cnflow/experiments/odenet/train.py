"""Training and evaluation of the Section 3 classifiers, through :func:`cnflow.training.fit`.

* :func:`classifier_training` is the training protocol of the ODE-Net experiment as a
  :class:`~cnflow.training.TrainConfig`: Adam, a cosine decay of the learning rate to 0
  over all steps, one pass over the shuffled training images per epoch, no early stopping.
* :func:`train_classifier` trains with it, recording every step (loss, accuracy,
  forward/backward NFE of the ODE blocks, time) and the test set's loss, error and NFE after
  every epoch; every step runs inside one :class:`~cnflow.report.SavedTensorMemory`, so the
  result carries the measured peak training memory.
* :func:`measure_training_step` is one such step (``max_steps=1``) from the current weights:
  the memory-versus-depth measurement.
* :func:`evaluate` scores a classifier on images and labels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from cnflow.data.mnist import ClassificationData
from cnflow.models.odenet import block_nfe
from cnflow.report import SavedTensorMemory, state_bytes
from cnflow.training import MAX_SEED, History, TrainConfig, fit
from cnflow.validation import check_int

__all__ = ["MAX_SEED", "classifier_training", "cross_entropy", "evaluate", "mean_of",
           "measure_training_step", "train_classifier"]


def classifier_training(*, epochs: int, batch_size: int, lr: float, seed: int = 0
                        ) -> TrainConfig:
    """The ODE-Net experiment's training protocol as loop settings for :func:`fit`.

    Adam from ``lr``, decayed by a half cosine to 0 over all steps; every epoch is one pass
    over the shuffled training images (the last, incomplete batch is dropped); no
    validation and no early stopping, so the last weights are kept (never chosen on the
    test set).
    """
    check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                       lr_schedule="cosine", lr_final=0.0, patience=None, min_epoch_steps=1)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The classification objective of :func:`fit`: mean cross-entropy of a batch, and its
    accuracy for the step records."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    accuracy = (logits.detach().argmax(1) == y).float().mean()
    return loss, {"loss": loss.detach(), "accuracy": accuracy}


def mean_of(records: Sequence[dict[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over the records that have a value for it (None if none has)."""
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             batch_size: int = 500) -> dict[str, float | None]:
    """Mean cross-entropy, error rate and mean forward NFE of ``model`` on ``(x, y)``.

    Args:
        model: Classifier; the images go to its device.
        x: Images.
        y: Labels.
        batch_size: Images per forward pass.

    Returns:
        ``{"loss", "error", "nfe_forward"}``; ``nfe_forward`` is None for models without
        ODE blocks.
    """
    check_int("batch_size", batch_size)
    device = _device(model)
    was_training = model.training
    model.eval()
    loss_sum, wrong, nfes = 0.0, 0, []
    try:
        for start in range(0, len(y), batch_size):
            xb = x[start:start + batch_size].to(device)
            yb = y[start:start + batch_size].to(device)
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            wrong += (logits.argmax(1) != yb).sum().item()
            nfes.append(block_nfe(model)[0])
    finally:
        model.train(was_training)
    n = max(len(y), 1)
    nfes = [v for v in nfes if v is not None]
    return {"loss": loss_sum / n, "error": wrong / n,
            "nfe_forward": float(np.mean(nfes)) if nfes else None}


class _StepRecorder:
    """:func:`fit`'s hooks for a classifier: every step inside one saved-tensor meter, a
    record per step with the ODE blocks' NFE, and the optimizer that fit made."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.device = _device(model)
        self.meter = SavedTensorMemory(exclude=list(model.parameters()))
        self.steps: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None

    def on_step(self, record: dict[str, Any]) -> None:
        # fit counts NFE only for a model with ``last_stats``; ODE blocks count their own.
        forward, backward = block_nfe(self.model)
        self.steps.append({**record, "nfe_forward": forward, "nfe_backward": backward})

    @contextlib.contextmanager
    def step_context(self) -> Iterator[None]:
        with self.meter:
            yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's seconds then cover its kernels

    def fit(self, rows: tuple[torch.Tensor, torch.Tensor], config: TrainConfig,
            **kwargs: Any) -> History:
        """:func:`fit` on ``rows`` with the cross-entropy objective and these hooks."""
        mine = {id(p) for p in self.model.parameters()}

        def find(optimizer: torch.optim.Optimizer, *_: Any) -> None:
            if self.optimizer is None and any(id(p) in mine for group in optimizer.param_groups
                                              for p in group["params"]):
                self.optimizer = optimizer

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        # fit builds its own Adam; a post-step hook finds it, so that the optimizer's state
        # in the memory figures is measured, not assumed.
        handle = register_optimizer_step_post_hook(find)
        try:
            return fit(self.model, rows, None, config, objective=cross_entropy,
                       on_step=self.on_step, step_context=self.step_context, **kwargs)
        finally:
            handle.remove()

    def memory(self) -> dict[str, int]:
        """Peak bytes saved for backward over all steps, the state (parameters, gradients,
        optimizer) and their sum; on CUDA also ``torch.cuda.max_memory_allocated``."""
        state = state_bytes(self.model, self.optimizer)
        out = {"peak_saved_bytes": self.meter.peak_bytes, "state_bytes": state,
               "peak_training_bytes": self.meter.peak_bytes + state}
        if self.device.type == "cuda":
            out["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated(self.device)
        return out


def train_classifier(model: nn.Module, data: ClassificationData, config: TrainConfig, *,
                     eval_batch_size: int = 500, progress: bool | None = None,
                     desc: str = "train", checkpoint: str | Path | None = None,
                     extra_state: dict[str, Any] | None = None,
                     on_epoch: Callable[[dict[str, Any]], None] | None = None,
                     ) -> dict[str, Any]:
    """Train a classifier on ``data``'s training images with :func:`fit`; evaluate it on
    the test images after every epoch.

    Args:
        model: Classifier, on the device to train on.
        data: Train and test tensors (on the CPU).
        config: Loop settings, usually :func:`classifier_training`.
        eval_batch_size: Images per forward pass when evaluating.
        progress: Show fit's progress bar; None: only on a terminal.
        desc: Label of the progress bar.
        checkpoint: File that fit rewrites atomically after every epoch (weights,
            optimizer and ``extra_state``).
        extra_state: Entries stored in the checkpoint beside fit's own.
        on_epoch: Called with each epoch's record, test scores included, before the
            checkpoint is written.

    Returns:
        ``{"epochs": [per-epoch records], "steps": [per-step records], "stop_reason",
        "train": config's settings}`` and the memory figures: ``peak_saved_bytes``,
        ``state_bytes``, ``peak_training_bytes``. An epoch's record holds fit's entries
        (``train_loss``, ``lr``, ...) and ``train_error``, ``test_loss``, ``test_error``,
        the training steps' mean ``nfe_forward`` and ``nfe_backward``, the test set's
        ``nfe_forward_test`` and ``time_s``, the seconds of its steps' forward and backward
        passes. A step's record holds ``epoch``, ``step`` (counted over the run), ``loss``,
        ``accuracy``, ``lr``, ``seconds``, ``nfe_forward`` and ``nfe_backward``.
    """
    recorder = _StepRecorder(model)

    def scores(record: dict[str, Any]) -> dict[str, Any]:
        steps = [s for s in recorder.steps if s["epoch"] == record["epoch"]]
        test = evaluate(model, data.x_test, data.y_test, batch_size=eval_batch_size)
        accuracy = mean_of(steps, "accuracy")  # None: the epoch's first step failed
        extra = {"train_error": None if accuracy is None else 1.0 - accuracy,
                 "test_loss": test["loss"],
                 "test_error": test["error"], "nfe_forward": mean_of(steps, "nfe_forward"),
                 "nfe_backward": mean_of(steps, "nfe_backward"),
                 "nfe_forward_test": test["nfe_forward"],
                 "time_s": sum(s["seconds"] for s in steps)}
        if on_epoch is not None:
            on_epoch({**record, **extra})
        return extra

    history = recorder.fit((data.x_train, data.y_train), config, on_epoch=scores,
                           checkpoint=checkpoint, extra_state=extra_state, progress=progress,
                           desc=desc)
    return {"epochs": history.records, "steps": recorder.steps,
            "stop_reason": history.stop_reason, "train": config.loop_settings(),
            **recorder.memory()}


def measure_training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          lr: float = 1e-3) -> dict[str, Any]:
    """Peak memory and time of one Adam training step of ``model`` on the batch ``(x, y)``.

    The step is :func:`fit` stopped after one step (``max_steps=1``), so it is measured
    exactly as every step of :func:`train_classifier` is.

    Args:
        model: Classifier, on the device to measure on.
        x: Images of one batch (at least two).
        y: Labels.
        lr: Adam learning rate.

    Returns:
        ``{"peak_saved_bytes", "state_bytes", "peak_training_bytes", "time_s",
        "nfe_forward", "nfe_backward"}``, plus ``"cuda_max_memory_allocated"`` on CUDA.
    """
    recorder = _StepRecorder(model)
    config = TrainConfig(epochs=1, batch_size=len(y), lr=lr, lr_schedule="constant",
                         patience=None, min_epoch_steps=1, max_steps=1)
    history = recorder.fit((x, y), config, progress=False, desc="one step")
    if not recorder.steps:
        raise RuntimeError(f"the training step did not complete: {history.stop_reason}")
    (step,) = recorder.steps
    return {"time_s": step["seconds"], "nfe_forward": step["nfe_forward"],
            "nfe_backward": step["nfe_backward"], **recorder.memory()}
