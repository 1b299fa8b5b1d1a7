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
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

import toydata
from cnflow.data.tables import DataError, parse_columns, read_matching, read_table, split_rows
from cnflow.flows.cnf import CNF, ConcatSquashMLP, GatedHyperDynamics
from cnflow.runs import environment, resolve_device, run_directory, write_json
from cnflow.training import EndlessSamples, TrainConfig, evaluate, fit, mean_and_stderr

CHECKPOINT_FORMAT = "cnflow-cnf"
CHECKPOINT_VERSION = 2
DYNAMICS = ("gated", "concat_squash")
# Fixed seeds keep training batches, the normalisation sample, the validation sample and
# the test sample of the built-in datasets disjoint.
_NORMALIZATION_SEED = 10**6
_TEST_SEED = 2 * 10**6
_VAL_SEED = 3 * 10**6


@dataclass
class FitConfig(TrainConfig):
    """Everything that defines a ``cnflow fit`` run (saved as ``config.json``).

    The loop settings are those of :class:`~cnflow.training.TrainConfig`. For a built-in
    dataset, ``iterations`` fresh batches are drawn and validated ten times; for a file,
    ``epochs`` passes over its training rows with early stopping.
    """

    dataset: str = "two_moons"
    # None: 1e-2 for the built-in datasets (800 fresh batches), 3e-3 for files, better than
    # 1e-2 on 3 of the 4 sets of results/tabular.md's defaults sweep.
    lr: float | None = None
    # A guard against gradient spikes (typical norms are 1-3); on the 20,000 x 6 table of
    # results/tabular.md it did not, alone, prevent the blow-up that the kinetic
    # regulariser prevents.
    grad_clip: float | None = 5.0
    # -- data files
    columns: str | None = None
    val: str | None = None
    val_fraction: float = 0.1
    test: str | None = None
    test_fraction: float = 0.1
    dequantize: bool = False
    # -- built-in datasets (endless samples)
    iterations: int = 800
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
        if self.lr is None:
            self.lr = 1e-2 if self.builtin else 3e-3
        if self.kinetic is None:
            self.kinetic = 0.0 if self.builtin else 0.01
        super().__post_init__()
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"dynamics={self.dynamics!r} is not one of {list(DYNAMICS)}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
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


def build_cnf(config: FitConfig, dim: int = 2) -> CNF:
    """The model a config describes (untrained), for ``dim``-dimensional data."""
    if config.dynamics == "gated":
        dynamics = GatedHyperDynamics(dim=dim, width=config.width, hidden=config.hidden)
    else:
        dynamics = ConcatSquashMLP(dim, hidden=(config.width,) * config.depth)
    return CNF(dynamics, dim=dim, time=config.time, method=config.method, rtol=config.rtol,
               atol=config.atol, eval_rtol=config.eval_tol, eval_atol=config.eval_tol,
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
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{str(file)!r} has checkpoint version {state.get('version')!r}; "
                              f"this cnflow reads version {CHECKPOINT_VERSION}")
    try:
        config = FitConfig.from_dict(state["config"])
        flow = build_cnf(config, int(state["data"]["dim"]))
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


@dataclass
class RunData:
    """The rows of one run: float32 tensors, and what describes their columns."""

    train: torch.Tensor | EndlessSamples
    val: torch.Tensor | None
    test: torch.Tensor
    normalization: torch.Tensor  # rows the standardisation is estimated from
    columns: tuple[str, ...]
    integer_columns: tuple[int, ...] = ()
    bin_widths: tuple[float, ...] = ()  # grid step of each dequantised column
    floor: float | None = None  # entropy of the true density, where it is known
    true_log_prob: Any = None  # x (n, D) float64 -> log p(x), where it is known

    @property
    def dim(self) -> int:
        return len(self.columns)


def _toy_data(config: FitConfig) -> RunData:
    dataset = toydata.get(config.dataset)

    def draw(n: int, seed: int) -> torch.Tensor:
        return torch.as_tensor(dataset.sample(n, seed=seed), dtype=torch.float32)

    steps_per_epoch = max(1, math.ceil(config.iterations / 10))
    return RunData(
        train=EndlessSamples(draw, steps_per_epoch, seed=config.seed,
                             steps=config.iterations),
        val=draw(config.val_size, _VAL_SEED + config.seed),
        test=draw(config.test_size, _TEST_SEED + config.seed),
        normalization=draw(20000, _NORMALIZATION_SEED),
        columns=tuple(f"x{i}" for i in range(dataset.dim)),
        floor=dataset.entropy(), true_log_prob=dataset.log_prob)


def _grid_step(values: np.ndarray) -> float:
    """The spacing of an integer-valued column: gcd of the gaps between its values."""
    gaps = np.diff(np.unique(values)).astype(np.int64)
    return float(np.gcd.reduce(gaps)) if gaps.size else 1.0


def _file_data(config: FitConfig) -> RunData:
    columns = parse_columns(config.columns)
    table = read_table(config.dataset, columns)
    n = len(table.values)
    val_fraction = 0.0 if config.val else config.val_fraction
    test_fraction = 0.0 if config.test else config.test_fraction
    train_rows, val_rows, test_rows = split_rows(
        n, val_fraction=val_fraction, test_fraction=test_fraction, seed=config.seed,
        source=table.source)
    parts = {"train": table.values[train_rows], "val": table.values[val_rows],
             "test": table.values[test_rows]}
    for option in ("val", "test"):
        path = getattr(config, option)
        if path:
            # Evaluation rows only: a column constant in them is no reason to refuse them.
            parts[option] = read_matching(path, table.columns, role=f"the --{option} file").values
    if len(parts["test"]) == 0:
        raise DataError(f"no test rows for {table.source!r}: give --test FILE or a "
                        "--test-fraction above 0")
    integer = table.integer_columns
    widths: tuple[float, ...] = ()
    if integer and config.dequantize:
        widths = tuple(_grid_step(table.values[:, j]) for j in integer)
        rng = np.random.default_rng([config.seed, 17])
        for name in ("val", "test"):
            noise = rng.uniform(size=(len(parts[name]), len(integer))) * np.asarray(widths)
            parts[name] = parts[name].copy()
            parts[name][:, list(integer)] += noise
    elif integer:
        names = [table.columns[j] for j in integer]
        warnings.warn(f"{table.source}: columns {names} hold only integers; a continuous "
                      "density on them is degenerate (the NLL can fall without bound). Use "
                      "--dequantize to add uniform noise over each value's bin.", stacklevel=2)

    def as_tensor(rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(rows, dtype=torch.float32)

    normalization = parts["train"].copy()
    if widths:
        normalization[:, list(integer)] += 0.5 * np.asarray(widths)
    return RunData(train=as_tensor(parts["train"]),
                   val=as_tensor(parts["val"]) if len(parts["val"]) else None,
                   test=as_tensor(parts["test"]), normalization=as_tensor(normalization),
                   columns=table.columns, integer_columns=integer if widths else (),
                   bin_widths=widths)


def load_data(config: FitConfig) -> RunData:
    """The rows a config names (a built-in dataset or a file), split and checked.

    Raises:
        DataError: the file is missing, malformed or too small for the splits.
    """
    return _toy_data(config) if config.builtin else _file_data(config)


def dequantizer(data: RunData):
    """Uniform noise over each integer column's bin, drawn afresh for every batch."""
    if not data.integer_columns:
        return None
    columns = list(data.integer_columns)

    def augment(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        widths = torch.tensor(data.bin_widths, dtype=x.dtype, device=x.device)
        x[:, columns] += torch.rand(len(x), len(columns), dtype=x.dtype, device=x.device) * widths
        return x

    return augment


# ----------------------------------------------------------------------------- the run


def _check_resume(config: FitConfig, state: dict[str, Any], resume: str | Path) -> None:
    previous = FitConfig.from_dict(state["config"])
    changed = [f.name for f in fields(FitConfig) if f.name not in _RESUMABLE_CHANGES
               and getattr(previous, f.name) != getattr(config, f.name)]
    if changed:
        raise ValueError(f"cannot resume {str(resume)!r}: it was trained with different "
                         f"{changed}; only {list(_RESUMABLE_CHANGES)} may change on resume. "
                         "Use the same settings or start a new run")


def fit_run(config: FitConfig, out_dir: str | Path, device: str = "auto",
            resume: str | Path | None = None, progress: bool | None = None,
            figures: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train a CNF on ``config.dataset`` by maximum likelihood and write a run directory.

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

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        DataError: bad data (nothing is written then).
        CheckpointError, ValueError: a bad resume checkpoint or setting.
        RunDirectoryError: ``out_dir`` holds another run, or another run is writing there.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    data = load_data(config)  # every data error is raised before anything is written
    dev = resolve_device(device)
    state = None
    if resume is not None:
        _, _, state = load_checkpoint(resume, dev)
        _check_resume(config, state, resume)
    torch.manual_seed(config.seed)
    flow = build_cnf(config, data.dim).to(dev)
    flow.set_normalization(data.normalization.to(dev))
    resuming = resume is not None and checkpoint_path(resume).resolve().parent == \
        Path(out_dir).resolve()
    with run_directory(out_dir, resuming=resuming, overwrite=overwrite) as out:
        write_json(asdict(config), out / "config.json")
        description = {"dim": data.dim, "columns": list(data.columns),
                       "integer_columns": list(data.integer_columns),
                       "bin_widths": list(data.bin_widths)}
        history = fit(flow, data.train, data.val, config,
                      checkpoint=out / "checkpoint.pt", resume=state, progress=progress,
                      augment=dequantizer(data), desc=f"fit {Path(config.dataset).name}",
                      extra_state={"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                   "config": asdict(config), "data": description})
        test_nll, eval_nfe = evaluate(flow, data.test.to(dev))
        train_nll = None
        if isinstance(data.train, torch.Tensor):
            # Exact, as the test NLL, on as many training rows as there are test rows (the
            # split is already shuffled): beside the test NLL, it shows the overfitting.
            train_nll = float(evaluate(flow, data.train[: len(data.test)].to(dev))[0].mean())
        metrics = _metrics(config, data, flow, history, test_nll, train_nll, eval_nfe,
                           description, dev)
        metrics["wall_seconds"] = time.perf_counter() - start
        metrics["cpu_seconds"] = time.process_time() - cpu_start
        write_json(metrics, out / "metrics.json")
        if figures:
            metrics["figures"] = _figures(flow, data, history, out)
            metrics["wall_seconds"] = time.perf_counter() - start
            metrics["cpu_seconds"] = time.process_time() - cpu_start
            write_json(metrics, out / "metrics.json")
    return metrics


def _metrics(config: FitConfig, data: RunData, flow: CNF, history, test_nll: np.ndarray,
             train_nll: float | None, eval_nfe: int, description: dict[str, Any],
             dev: torch.device) -> dict[str, Any]:
    nll, stderr = mean_and_stderr(test_nll)
    dim = data.dim
    kl = kl_stderr = None
    if data.true_log_prob is not None:
        # KL(p || q) from the same points: log p − log q varies far less than −log q alone,
        # so this pins the gap down much more tightly than test NLL − floor does.
        kl, kl_stderr = mean_and_stderr(data.true_log_prob(data.test.double().numpy())
                                        + test_nll)
    train_loss = next((r["train_loss"] for r in reversed(history.records)
                       if r["train_loss"] is not None), None)
    log_bins = float(np.sum(np.log(data.bin_widths))) if data.bin_widths else 0.0
    return {
        "dataset": config.dataset, **description,
        "train_nll": train_nll, "train_nll_per_dim": None if train_nll is None else train_nll / dim,
        "train_rows": None if isinstance(data.train, EndlessSamples) else len(data.train),
        "val_rows": None if data.val is None else len(data.val), "test_rows": len(data.test),
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
        "device": str(dev), "environment": environment(),
        "parameters": sum(p.numel() for p in flow.parameters()),
    }


def _figures(flow: CNF, data: RunData, history, out: Path) -> list[str]:
    from cnflow import plots

    names = ["learning_curves.png"]
    plots.learning_curves(history.records, out / names[0], floor=data.floor)
    reference = data.test.numpy()
    if data.dim == 2:
        plots.density_panels(flow, reference, out / "density.png")
        plots.flow_snapshots(flow, out / "snapshots.png")
        names += ["density.png", "snapshots.png"]
    else:
        plots.pair_plot(flow, reference, data.columns, out / "pairs.png")
        names.append("pairs.png")
    return names
