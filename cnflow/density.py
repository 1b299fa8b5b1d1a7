"""``cnflow fit``: a CNF density model of a table (CSV/NPY, any number of columns) or of a
built-in toy dataset, written to a run directory.

:func:`fit_run` resolves the data (a built-in name draws endless fresh samples, as in the
paper's toy experiments; a file is split into training, validation and test rows), builds
the CNF, trains it with :func:`cnflow.training.fit`, evaluates the exact test NLL and writes
``config.json``, ``checkpoint.pt``, ``metrics.json`` and the figures.

Every NLL is in the caller's coordinates: the standardisation is part of the flow, with its
log-determinant. With ``dequantize`` the integer-valued columns get uniform noise over their
grid step ``w`` (1 for plain integers); the reported ``test_nll`` is then the continuous
density of the dequantised values, and ``test_nll_discrete`` = ``test_nll − Σ log w`` is an
upper bound on the discrete negative log-probability ``−log P(x)`` (Jensen's inequality).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

import toydata
from cnflow import distributed
from cnflow.data.run_data import RunData, dequantizer, load_data
from cnflow.flows.cnf import CNF, ConcatSquashMLP, GatedHyperDynamics
from cnflow.objectives import OBJECTIVES, make_objective
from cnflow.report import mean_and_stderr
from cnflow.runs import (
    RunDirectoryError,
    environment,
    failure_message,
    resolve_device,
    run_directory,
    write_json,
)
from cnflow.training import (
    EndlessSamples,
    History,
    TrainConfig,
    check_batch_shares,
    evaluate,
    fit,
)
from cnflow.validation import check_choice, check_float, check_int

CHECKPOINT_FORMAT = "cnflow-cnf"
CHECKPOINT_VERSION = 3
# Version 2 (before conditional models and flow matching) reads as an unconditional MLE run.
_READABLE_VERSIONS = (2, 3)
DYNAMICS = ("gated", "concat_squash")
# The objective for each kind of data, and the fine-tune after flow matching, chosen by the
# measurements of results/flow_matching.md. On 2-D data flow matching alone ends far from the
# entropy floor and a maximum-likelihood fine-tune takes it most of the way; there a short
# flow-matching phase with a longer fine-tune (300 steps, then 400 at 5e-3) came closer to
# the floor, in less time, than 1000 steps with 300 at 3e-3. The same fine-tune from the
# initial weights came as close, faster (the report's control): in 2-D the flow-matching
# phase buys nothing as an initialisation.
DEFAULT_OBJECTIVE = {"builtin": "mle", "file": "mle"}
DEFAULT_FINETUNE = {"builtin": 400, "file": 0}
DEFAULT_FINETUNE_LR = {"builtin": 5e-3, "file": 3e-3}
# Built-in datasets: training steps of each objective before any fine-tune.
DEFAULT_ITERATIONS = {"mle": 800, "flow matching": 1000, "flow matching before a fine-tune": 300}
@dataclass
class FitConfig(TrainConfig):
    """Everything that defines a ``cnflow fit`` run (saved as ``config.json``).

    The loop settings are those of :class:`~cnflow.training.TrainConfig`. For a built-in
    dataset, ``iterations`` fresh batches are drawn and validated ten times; for a file,
    ``epochs`` passes over its training rows with early stopping.
    """

    dataset: str = "two_moons"
    # "mle", "fm" or "otfm"; None: the measured default for the kind of data (see
    # DEFAULT_OBJECTIVE and results/flow_matching.md).
    objective: str | None = None
    # Maximum-likelihood steps after a flow-matching objective (0: none), at finetune_lr;
    # None: DEFAULT_FINETUNE and DEFAULT_FINETUNE_LR for the kind of data.
    finetune: int | None = None
    finetune_lr: float | None = None
    # None, by objective: for mle, 1e-2 for the built-in datasets (800 fresh batches) and
    # 3e-3 for files (better than 1e-2 on 3 of the 4 sets of results/tabular.md's defaults
    # sweep); 3e-3 for flow matching.
    lr: float | None = None
    # None, by objective: 512 for mle; 256 for flow matching (the exact OT assignment's
    # cost grows as the cube of the batch).
    batch_size: int | None = None
    # None, by objective: 20 for mle; 200 for flow matching, whose steps cost a field
    # evaluation each, so that the exact validation NLL does not dominate the run.
    min_epoch_steps: int | None = None
    # A guard against gradient spikes (typical norms are 1-3); on the 20,000 x 6 table of
    # results/tabular.md it did not, alone, prevent the blow-up that the kinetic
    # regulariser prevents.
    grad_clip: float | None = 5.0
    # -- data files
    columns: str | None = None
    context: str | None = None  # columns the others are modelled given
    val: str | None = None
    val_fraction: float = 0.1
    test: str | None = None
    test_fraction: float = 0.1
    dequantize: bool = False
    # -- built-in datasets (endless samples); None: DEFAULT_ITERATIONS
    iterations: int | None = None
    val_size: int = 5000
    test_size: int = 20000
    # -- the model
    dynamics: str = "gated"
    width: int = 128
    hidden: int = 64
    depth: int = 3
    trace: str = "auto"
    time: float = 1.0
    # Training solves can be loose: validation and test NLL are computed separately, at
    # eval_tol with the exact trace.
    rtol: float = 1e-4
    atol: float = 1e-4
    method: str = "dopri5"
    gradient: str = "adjoint"
    eval_tol: float = 1e-7
    # None: 0 for the built-in datasets; 0.01 for files (RNODE's weight, Finlay et al. 2020).
    # Without it the full default run on the 20,000 x 6 table of results/tabular.md
    # stiffened late in training (NFE per step up tenfold, validation NLL rising), stopped
    # early with a worse test NLL and took 1.6-2x the CPU time.
    kinetic: float | None = None
    jacobian: float = 0.0

    def __post_init__(self) -> None:
        if self.objective is None:
            self.objective = DEFAULT_OBJECTIVE["builtin" if self.builtin else "file"]
        check_choice("objective", self.objective, OBJECTIVES)
        mle = self.objective == "mle"
        kind = "builtin" if self.builtin else "file"
        if self.finetune is None:
            self.finetune = 0 if mle else DEFAULT_FINETUNE[kind]
        if self.finetune_lr is None:
            self.finetune_lr = DEFAULT_FINETUNE_LR[kind]
        if self.finetune and mle:
            raise ValueError("finetune adds maximum-likelihood steps after flow matching; "
                             "it needs objective 'fm' or 'otfm', not 'mle'")
        if self.lr is None:
            self.lr = (1e-2 if self.builtin else 3e-3) if mle else 3e-3
        if self.batch_size is None:
            self.batch_size = 512 if mle else 256
        if self.min_epoch_steps is None:
            self.min_epoch_steps = 20 if mle else 200
        if self.iterations is None:
            self.iterations = DEFAULT_ITERATIONS[
                "mle" if mle else "flow matching before a fine-tune" if self.finetune
                else "flow matching"]
        if self.kinetic is None:
            self.kinetic = 0.0 if self.builtin else 0.01
        super().__post_init__()
        check_int("finetune", self.finetune, minimum=0)
        check_float("finetune_lr", self.finetune_lr)
        check_int("iterations", self.iterations)
        if self.context is not None and self.builtin:
            raise ValueError(f"context columns need a table; {self.dataset!r} is a built-in "
                             "dataset")
        check_choice("dynamics", self.dynamics, DYNAMICS)
        for name in ("val_fraction", "test_fraction"):
            check_float(name, getattr(self, name), allow_minimum=True, maximum=1,
                        allow_maximum=False)
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got "
                             f"{self.val_fraction} + {self.test_fraction}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}")
        return cls(**data)

    @property
    def builtin(self) -> bool:
        """Whether ``dataset`` names a built-in dataset rather than a file."""
        return self.dataset in toydata.names()


# Settings that may differ when a run is resumed: they change when it stops or how it is
# scored afterwards, not what it computes on the way. Everything else (the number of epochs
# or iterations included, which sets the length of the learning-rate schedule) must match.
_RESUMABLE_CHANGES = ("max_time", "patience", "test_size")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or not a cnflow CNF checkpoint."""


def build_cnf(config: FitConfig, dim: int = 2, context_dim: int = 0) -> CNF:
    """The model a config describes (untrained), for ``dim``-dimensional data given a
    ``context_dim``-dimensional context (0: unconditional)."""
    if config.dynamics == "gated":
        dynamics = GatedHyperDynamics(dim=dim, width=config.width, hidden=config.hidden,
                                      context_dim=context_dim)
    else:
        dynamics = ConcatSquashMLP(dim, hidden=(config.width,) * config.depth,
                                   context_dim=context_dim)
    return CNF(dynamics, dim=dim, context_dim=context_dim, time=config.time,
               method=config.method, rtol=config.rtol, atol=config.atol, eval_rtol=config.eval_tol, eval_atol=config.eval_tol,
               gradient=config.gradient, trace=config.trace, kinetic=config.kinetic,
               jacobian=config.jacobian)


def checkpoint_path(path: str | Path) -> Path:
    """Accept a run directory or a checkpoint file."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu"
                    ) -> tuple[CNF, FitConfig, dict[str, Any]]:
    """Load a CNF written by ``cnflow fit``: the flow (eval mode, best-validation weights),
    its config, the raw state (``state["data"]`` describes the columns).

    Raises:
        CheckpointError: missing file, unreadable or foreign content.
    """
    file = checkpoint_path(path)
    if not file.exists():
        raise CheckpointError(f"checkpoint {str(file)!r} does not exist")
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged file raises many types
        raise CheckpointError(f"checkpoint {str(file)!r} cannot be read "
                              f"({type(error).__name__}); it is corrupt or not a "
                              "checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(file)!r} is not a cnflow CNF checkpoint (expected "
                              f"format {CHECKPOINT_FORMAT!r})")
    if state.get("version") not in _READABLE_VERSIONS:
        raise CheckpointError(f"{str(file)!r} has checkpoint version {state.get('version')!r}; "
                              f"this cnflow reads versions {list(_READABLE_VERSIONS)}")
    try:
        state["data"].setdefault("context_columns", [])
        if state["version"] == 2:  # every version-2 run was maximum likelihood
            state["config"].update(objective="mle", finetune=0)
        config = FitConfig.from_dict(state["config"])
        flow = build_cnf(config, int(state["data"]["dim"]),
                         len(state["data"]["context_columns"]))
        flow.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{str(file)!r} does not hold a valid CNF: {error}") from None
    bad = [name for name, value in flow.state_dict().items()
           if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise CheckpointError(f"{str(file)!r} holds non-finite values in {bad[:5]}; it cannot "
                              "give densities or samples")
    return flow.to(device).eval(), config, state


# ----------------------------------------------------------------------------- the data


# ----------------------------------------------------------------------------- the run


def _check_resume(config: FitConfig, state: dict[str, Any], resume: str | Path) -> None:
    previous = FitConfig.from_dict(state["config"])
    changed = [f.name for f in fields(FitConfig) if f.name not in _RESUMABLE_CHANGES
               and getattr(previous, f.name) != getattr(config, f.name)]
    if changed:
        raise ValueError(f"cannot resume {str(resume)!r}: it was trained with different "
                         f"{changed}; only {list(_RESUMABLE_CHANGES)} may change on resume. "
                         "Use the same settings or start a new run")


@contextmanager
def _claim_run_directory(out_dir: str | Path, *, resuming: bool, overwrite: bool
                         ) -> Iterator[Path]:
    """:func:`~cnflow.runs.run_directory` on rank 0, which alone writes; under ``torchrun``
    the other ranks learn whether it could claim the folder, and fail with it if not."""
    if distributed.world_size() == 1:
        with run_directory(out_dir, resuming=resuming, overwrite=overwrite) as out:
            yield out
        return
    with ExitStack() as stack:
        refusal = None
        if distributed.is_main():
            try:
                stack.enter_context(run_directory(out_dir, resuming=resuming,
                                                  overwrite=overwrite))
            except (RunDirectoryError, OSError) as error:
                refusal = failure_message(error)
                distributed.broadcast(refusal)
                raise
        refusal = distributed.broadcast(refusal)
        if refusal is not None:
            raise RunDirectoryError(refusal)
        yield Path(out_dir)


def fit_run(config: FitConfig, out_dir: str | Path, device: str = "auto",
            resume: str | Path | None = None, progress: bool | None = None,
            figures: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train a CNF on ``config.dataset`` (by ``config.objective``, then its fine-tune) and
    write a run directory.

    Args:
        config: the run's settings.
        out_dir: run directory (created); receives config.json, checkpoint.pt,
            metrics.json and the figures.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        resume: a run directory or checkpoint to continue from (same settings; only
            ``max_time``, ``patience`` and ``test_size`` may change). A run that had ended
            is evaluated again, not trained further.
        progress: show a progress bar; None shows it only on a terminal.
        figures: write the PNG figures.
        overwrite: replace another run in ``out_dir`` (refused otherwise, unless it is the
            run being resumed).

    Under ``torchrun`` (after :func:`cnflow.distributed.setup`) every rank calls this with
    the same arguments; they train together and only rank 0 writes the run directory.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        DataError: bad data (nothing is written then).
        CheckpointError, ValueError: a bad resume checkpoint or setting.
        RunDirectoryError: ``out_dir`` holds another run, or another run is writing there.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    data = load_data(config)  # every data error is raised before anything is written
    check_batch_shares(config.batch_size, None if isinstance(data.train, EndlessSamples)
                       else _count(data.train))
    dev = resolve_device(device)
    state = None
    if resume is not None:
        _, _, state = load_checkpoint(resume, dev)
        _check_resume(config, state, resume)
    torch.manual_seed(config.seed)
    flow = build_cnf(config, data.dim, data.context_dim).to(dev)
    flow.set_normalization(data.normalization.to(dev), None if data.context_normalization
                           is None else data.context_normalization.to(dev))
    resuming = resume is not None and checkpoint_path(resume).resolve().parent == \
        Path(out_dir).resolve()
    main = distributed.is_main()
    with _claim_run_directory(out_dir, resuming=resuming, overwrite=overwrite) as out:
        if main:
            write_json(asdict(config), out / "config.json")
        description = {"dim": data.dim, "columns": list(data.columns),
                       "context_columns": list(data.context_columns),
                       "integer_columns": list(data.integer_columns),
                       "bin_widths": list(data.bin_widths)}
        history = train_phases(config, data, flow, state, out / "checkpoint.pt", progress,
                               {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                "config": asdict(config), "data": description})
        test_nll, eval_nfe = evaluate(flow, data.test)
        train_nll = None
        if not isinstance(data.train, EndlessSamples):
            # Exact, as the test NLL, on as many training rows as there are test rows (the
            # split is already shuffled): beside the test NLL, it shows the overfitting.
            first = _first_rows(data.train, len(data.test_points))
            train_nll = float(evaluate(flow, first)[0].mean())
        metrics = _metrics(config, data, flow, history, test_nll, train_nll, eval_nfe,
                           description, dev)
        metrics["wall_seconds"] = time.perf_counter() - start
        metrics["cpu_seconds"] = time.process_time() - cpu_start
        if not main:
            return metrics
        write_json(metrics, out / "metrics.json")
        if figures:
            metrics["figures"] = _figures(flow, data, history, out)
            metrics["wall_seconds"] = time.perf_counter() - start
            metrics["cpu_seconds"] = time.process_time() - cpu_start
            write_json(metrics, out / "metrics.json")
    return metrics


def _count(rows) -> int:
    return len(rows[0] if isinstance(rows, tuple) else rows)


def _first_rows(rows, n: int):
    return tuple(part[:n] for part in rows) if isinstance(rows, tuple) else rows[:n]


def train_phases(config: FitConfig, data: RunData, flow: CNF, state: dict[str, Any] | None,
                 checkpoint: Path | None, progress: bool | None,
                 extra_state: dict[str, Any]) -> History:
    """Train by ``config.objective``, then (``finetune``) by maximum likelihood.

    Each phase is one :func:`cnflow.training.fit`; the checkpoint records the phase, so a
    resumed run continues in the phase it stopped in. The records of both phases come back
    as one history, the fine-tune's steps and times counted after the first phase's.
    """
    phase = "main" if state is None else state.get("phase", "main")
    name = Path(config.dataset).name
    main_config = config
    if config.finetune and config.max_time is not None:
        # One budget for the whole run: half for flow matching, the rest for the fine-tune.
        main_config = TrainConfig(**{**config.loop_settings(), "max_time": config.max_time / 2})
    if phase == "main":
        main = fit(flow, data.train, data.val, main_config,
                   objective=make_objective(config.objective), checkpoint=checkpoint,
                   resume=state, progress=progress, augment=dequantizer(data),
                   desc=f"fit {name} ({config.objective})",
                   extra_state={**extra_state, "phase": "main"})
        state = None
    else:
        main = History(**state["main_history"])
    for record in main.records:
        record["objective"] = config.objective
    if not config.finetune or main.stop_reason == "non-finite loss":
        return main
    # The fine-tune is maximum likelihood: its batch and epoch length are mle's defaults.
    settings = {**config.loop_settings(), "lr": config.finetune_lr, "batch_size": 512,
                "min_epoch_steps": 20, "max_steps": config.finetune}
    if config.max_time is not None:
        # What the first phase left; a fine-tune without any left takes one step.
        settings["max_time"] = max(config.max_time - main.cpu_seconds, 1e-9)
    train = data.train
    if isinstance(train, EndlessSamples):
        # Five validations, on batches that continue the first phase's stream.
        train = EndlessSamples(train.sample, max(1, math.ceil(config.finetune / 5)),
                               seed=train.seed, steps=config.finetune,
                               first_step=config.iterations)
    tuned = fit(flow, train, data.val, TrainConfig(**settings), checkpoint=checkpoint,
                resume=state, progress=progress, augment=dequantizer(data),
                desc=f"fit {name} (mle fine-tune)",
                extra_state={**extra_state, "phase": "finetune",
                             "main_history": asdict(main)})
    for record in tuned.records:
        record.update(objective="mle", epoch=record["epoch"] + main.epochs_run,
                      step=record["step"] + main.steps,
                      cpu_seconds=record["cpu_seconds"] + main.cpu_seconds,
                      wall_seconds=record["wall_seconds"] + main.wall_seconds)
    improved = tuned.best_epoch > 0
    return History(
        records=main.records + tuned.records,
        best_epoch=tuned.best_epoch + main.epochs_run if improved else main.best_epoch,
        best_val_nll=tuned.best_val_nll, initial_val_nll=main.initial_val_nll,
        stop_reason=f"{main.stop_reason}, then fine-tune: {tuned.stop_reason}",
        steps=main.steps + tuned.steps, cpu_seconds=main.cpu_seconds + tuned.cpu_seconds,
        wall_seconds=main.wall_seconds + tuned.wall_seconds)


def _metrics(config: FitConfig, data: RunData, flow: CNF, history, test_nll: np.ndarray,
             train_nll: float | None, eval_nfe: int, description: dict[str, Any],
             dev: torch.device) -> dict[str, Any]:
    nll, stderr = mean_and_stderr(test_nll)
    dim = data.dim
    kl = kl_stderr = None
    if data.true_log_prob is not None:
        # KL(p || q) from the same points: log p − log q varies far less than −log q alone,
        # so this pins the gap down much more tightly than test NLL − floor does.
        kl, kl_stderr = mean_and_stderr(data.true_log_prob(data.test_points.double().numpy())
                                        + test_nll)
    train_loss = next((r["train_loss"] for r in reversed(history.records)
                       if r["train_loss"] is not None), None)
    log_bins = float(np.sum(np.log(data.bin_widths))) if data.bin_widths else 0.0
    return {
        "dataset": config.dataset, **description,
        "train_nll": train_nll, "train_nll_per_dim": None if train_nll is None else train_nll / dim,
        "objective": config.objective, "finetune": config.finetune,
        "train_rows": None if isinstance(data.train, EndlessSamples) else _count(data.train),
        "val_rows": None if data.val is None else _count(data.val),
        "test_rows": len(data.test_points),
        "test_nll": nll, "test_nll_stderr": stderr, "test_nll_per_dim": nll / dim,
        "test_nll_discrete": nll - log_bins if data.bin_widths else None,
        "val_nll": history.best_val_nll,
        "val_nll_per_dim": None if history.best_val_nll is None else history.best_val_nll / dim,
        "train_loss": train_loss,
        "train_loss_per_dim": None if train_loss is None else train_loss / dim,
        "entropy_floor": data.floor, "gap": None if data.floor is None else nll - data.floor,
        "kl_estimate": kl, "kl_stderr": kl_stderr,
        "eval_tol": config.eval_tol, "eval_nfe": eval_nfe,
        **history.summary(), "history": history.records,
        "device": str(dev), "processes": distributed.world_size(),
        "environment": environment(),
        "parameters": sum(p.numel() for p in flow.parameters()),
    }


def _figures(flow: CNF, data: RunData, history, out: Path) -> list[str]:
    from cnflow import plots

    names = ["learning_curves.png"]
    plots.learning_curves(history.records, out / names[0], floor=data.floor)
    reference = data.test_points.numpy()
    if data.context_dim:
        plots.conditional_panels(flow, reference, data.test[1].numpy(), data.columns,
                                 data.context_columns, out / "conditional.png")
        names.append("conditional.png")
    elif data.dim == 2:
        plots.density_panels(flow, reference, out / "density.png")
        plots.flow_snapshots(flow, out / "snapshots.png")
        names += ["density.png", "snapshots.png"]
    else:
        plots.pair_plot(flow, reference, data.columns, out / "pairs.png")
        names.append("pairs.png")
    return names
