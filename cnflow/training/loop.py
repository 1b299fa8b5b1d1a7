"""The loop itself, :func:`fit` (described in :mod:`cnflow.training`)."""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from cnflow import distributed
from cnflow.flows.base import Flow
from cnflow.objectives import MaximumLikelihood
from cnflow.runs import save_checkpoint
from cnflow.solvers import ODESolverError
from cnflow.training.config import History, Rows, TrainConfig
from cnflow.training.data import (
    EndlessSamples,
    Table,
    check_batch_shares,
    flow_rows,
    rank_seed,
    shard_batch,
    table_tensors,
)
from cnflow.training.evaluation import evaluate


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


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    if isinstance(model, Flow):
        return model.device, model.dtype
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError(f"{type(model).__name__} has no parameters to train")
    return parameter.device, parameter.dtype


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
        table = table_tensors(model, train, "train")
        if len(table[0]) < 2:
            raise ValueError(f"train must hold at least 2 rows, got {len(table[0])}")
        source = Table(tuple(t.cpu() for t in table), config.batch_size, config.seed,
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
        val = flow_rows(model, val, "val")
    objective = MaximumLikelihood() if objective is None else objective
    device, dtype = _device_and_dtype(model)
    ranks, main = distributed.world_size(), distributed.is_main()
    check_batch_shares(config.batch_size, len(source.dataset) if isinstance(source, Table)
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
                torch.manual_seed(rank_seed(config.seed) + loop["steps"])
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
        torch.manual_seed(rank_seed(config.seed))
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
        if continued:
            # Starting a DataLoader draws its base seed from the global stream, which the
            # cut run had done before the state it saved: start it, then put that state
            # back, so that the objective's draws (flow matching, Hutchinson) continue as
            # in an uninterrupted run.
            rng = torch.get_rng_state()
            batches = itertools.islice(batches, done, None)
            first = next(batches, None)
            torch.set_rng_state(rng)
            batches = itertools.chain([] if first is None else [first], batches)
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
