"""The rows of a ``cnflow fit`` run (:class:`RunData`): endless fresh samples of a built-in
toy dataset, or a user's table split into training, validation and test rows, with an
optional context, and the dequantisation noise of its integer columns."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import toydata
from cnflow.data.tables import DataError, parse_columns, read_matching, read_table, split_rows
from cnflow.training import EndlessSamples

if TYPE_CHECKING:  # the config's module imports this one
    from cnflow.density import FitConfig

# Fixed seeds keep training batches, the normalisation sample, the validation sample and
# the test sample of the built-in datasets disjoint.
_NORMALIZATION_SEED = 10**6
_TEST_SEED = 2 * 10**6
_VAL_SEED = 3 * 10**6



@dataclass
class RunData:
    """The rows of one run: float32 tensors, and what describes their columns."""

    train: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | EndlessSamples
    val: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
    test: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    normalization: torch.Tensor  # rows the standardisation is estimated from
    columns: tuple[str, ...]
    context_columns: tuple[str, ...] = ()
    context_normalization: torch.Tensor | None = None
    integer_columns: tuple[int, ...] = ()
    bin_widths: tuple[float, ...] = ()  # grid step of each dequantised column
    floor: float | None = None  # entropy of the true density, where it is known
    true_log_prob: Any = None  # x (n, D) float64 -> log p(x), where it is known

    @property
    def dim(self) -> int:
        return len(self.columns)

    @property
    def context_dim(self) -> int:
        return len(self.context_columns)

    @property
    def test_points(self) -> torch.Tensor:
        """The test rows without their context."""
        return self.test[0] if isinstance(self.test, tuple) else self.test


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


def _read_model_and_context(config: FitConfig):
    """The modelled columns and the context columns (None without ``context``)."""
    columns, context = parse_columns(config.columns), parse_columns(config.context)
    if context is None:
        return read_table(config.dataset, columns), None
    # A context column is an input, not a modelled variable: integers (labels) are fine.
    context_table = read_table(config.dataset, context)
    table = read_table(config.dataset, columns)
    if columns is None:
        keep = [j for j, name in enumerate(table.columns) if name not in context_table.columns]
        if not keep:
            raise DataError(f"{table.source}: --context {config.context} names every column; "
                            "no column is left to model")
        table = replace(table, values=table.values[:, keep],
                        columns=tuple(table.columns[j] for j in keep),
                        integer_columns=tuple(keep.index(j) for j in table.integer_columns
                                              if j in keep))
    overlap = sorted(set(table.columns) & set(context_table.columns))
    if overlap:
        raise DataError(f"{table.source}: columns {overlap} are both modelled (--columns) and "
                        "context (--context)")
    return table, context_table


def _file_data(config: FitConfig) -> RunData:
    table, context_table = _read_model_and_context(config)
    n = len(table.values)
    if context_table is not None:
        # One array while splitting; the context is cut off again below.
        table = replace(table, values=np.hstack([table.values, context_table.values]),
                        columns=table.columns + context_table.columns)
    k = 0 if context_table is None else len(context_table.columns)
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

    d = len(table.columns) - k

    def as_rows(rows: np.ndarray):
        """Float32 rows, or (rows, context) for a conditional model."""
        rows = torch.as_tensor(rows, dtype=torch.float32)
        return (rows[:, :d], rows[:, d:]) if k else rows

    normalization = parts["train"][:, :d].copy()
    if widths:
        normalization[:, list(integer)] += 0.5 * np.asarray(widths)
    return RunData(train=as_rows(parts["train"]),
                   val=as_rows(parts["val"]) if len(parts["val"]) else None,
                   test=as_rows(parts["test"]),
                   normalization=torch.as_tensor(normalization, dtype=torch.float32),
                   columns=table.columns[:d], context_columns=table.columns[d:],
                   context_normalization=torch.as_tensor(parts["train"][:, d:],
                                                         dtype=torch.float32) if k else None,
                   integer_columns=integer if widths else (), bin_widths=widths)


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
