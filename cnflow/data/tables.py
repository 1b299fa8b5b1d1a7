"""Users' own tables for density estimation: the reader behind ``cnflow fit measurements.csv``.

Two formats are accepted, chosen by the file's suffix (case-insensitive):

* ``.csv``: comma-separated text, UTF-8 (a leading byte-order mark is ignored), read with Python's
  :mod:`csv` module (``skipinitialspace=True``, so spaces after a comma are ignored; quoted cells
  may contain commas). Lines that are empty or hold only whitespace are skipped, but every line
  number in a message is the file's real 1-based line number.
* ``.npy``: one numeric array saved with :func:`numpy.save`, loaded with ``allow_pickle=False``.
  A 1-D array is one column; a 2-D array is ``(rows, columns)``. Integer and floating dtypes are
  accepted; bool, complex, string, date/time, object and structured arrays are rejected. Its
  columns are named ``x0``, ``x1``, ... and messages give positions as 0-based ``row i``.

Header rule (CSV): the first non-blank row is a header if and only if none of its cells parses as
a number with Python's ``float()`` (so ``nan``, ``inf`` and ``1e5`` count as numbers, and an empty
cell does not). If every cell parses, the row is data. A first row with some numeric and some
non-numeric cells is also data, so it fails with the non-numeric-cell error, whose message adds
the hint that a header row must contain no numeric cells. Header names are stripped of
surrounding whitespace and must be non-empty and distinct. Without a header the columns are named
``x0``, ``x1``, ... . Because a header name is never numeric, a column name can never be mistaken
for a column index.

Every problem raises :class:`DataError` (a :class:`ValueError`) with one message that names the
file, the line (CSV) or 0-based row (npy), the column by name and 0-based index, and the offending
value. Checks run in this order:

1. the file: missing, a directory, wrong suffix, unreadable, not UTF-8, corrupt ``.npy``;
2. structure: empty file, no data rows, bad header names, a ragged row (reported at once);
3. the column selection (``--columns``): unknown name, index out of range, duplicates;
4. cells of the selected columns: non-numeric or empty (the first one in file order, and how many
   there are when more than one);
5. values of the selected columns: NaN or +-inf, magnitude beyond ``float32`` (the model computes
   in float32), a constant column (a point mass: it has no density).

Cell and value checks apply only to the selected columns, so a bad or non-numeric column (an id,
a label) can be left out with ``--columns``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cnflow.data.table_formats import (
    DataError,  # raised by every check here too: part of this module's API
    read_csv_columns,
    read_npy_columns,
)

#: File suffixes :func:`read_table` accepts.
ACCEPTED_SUFFIXES = (".csv", ".npy")
#: Largest magnitude a value may have: the model computes in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)
_INDEX_RE = re.compile(r"[0-9]+")


@dataclass(frozen=True, eq=False)
class Table:
    """A table of samples read by :func:`read_table`.

    Attributes:
        values: float64 array of shape ``(n, d)``; every entry is finite and within float32 range.
        columns: the selected columns' names: the header's, or ``"x0"``, ``"x1"``, ... (the
            file's column indices) without one.
        source: the path as given to :func:`read_table`.
        integer_columns: indices into ``values``' columns whose values are all integers (counts,
            pixel intensities, ...), candidates for dequantisation.
    """

    values: np.ndarray
    columns: tuple[str, ...]
    source: str
    integer_columns: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        """Number of rows (samples)."""
        return int(self.values.shape[0])

    @property
    def n_columns(self) -> int:
        """Number of columns (dimensions)."""
        return int(self.values.shape[1])


def parse_columns(spec: str | None) -> list[str | int] | None:
    """Parse a ``--columns`` option value.

    Items are separated by commas and stripped of whitespace. An item that is a non-negative
    integer literal (digits only) is a 0-based column index; anything else is a column name.

    Args:
        spec: e.g. ``"a,b"``, ``"0,2"`` or ``"a,2"``; ``None`` or a blank string selects all.

    Returns:
        ``['a', 'b']``, ``[0, 2]``, ``['a', 2]``, ...; ``None`` for ``None`` or a blank string.

    Raises:
        DataError: if an item is empty (as in ``"a,,b"`` or ``"a,"``).
    """
    if spec is None or not spec.strip():
        return None
    items: list[str | int] = []
    for position, raw in enumerate(spec.split(",")):
        item = raw.strip()
        if not item:
            raise DataError(
                f"--columns {spec!r}: item {position + 1} is empty; give column names or 0-based"
                " indices separated by single commas, e.g. --columns a,b or --columns 0,2"
            )
        items.append(int(item) if _INDEX_RE.fullmatch(item) else item)
    return items


def read_table(path: str | os.PathLike, columns: Sequence[str | int] | None = None, *,
               for_fitting: bool = True) -> Table:
    """Read a CSV or ``.npy`` table for density estimation and check that it is usable.

    See the module docstring for the formats, the header rule and the checks.

    Args:
        path: a ``.csv`` or ``.npy`` file.
        columns: the columns to keep, in this order: names (str) or 0-based indices (int), as
            :func:`parse_columns` returns them; a str is parsed with :func:`parse_columns`.
            ``None`` keeps all columns.
        for_fitting: reject constant columns (a model cannot be fitted to them); False for
            rows that are only evaluated, such as the input of ``cnflow logprob``.

    Returns:
        The selected columns as a :class:`Table`.

    Raises:
        DataError: the file is missing, unreadable or malformed, the selection is invalid, or a
            selected column holds a non-numeric, empty, non-finite, out-of-range or constant
            value set. The message names the file, line or row, and column.
    """
    source = os.fspath(path)
    source = source if isinstance(source, str) else os.fsdecode(source)
    if isinstance(columns, str):
        columns = parse_columns(columns)
    if not os.path.exists(source):
        raise DataError(f"{source}: file not found")
    if os.path.isdir(source):
        raise DataError(f"{source}: is a directory, not a data file")
    suffix = os.path.splitext(source)[1].lower()
    if suffix == ".csv":
        values, names, selection, locate = read_csv_columns(source, columns)
    elif suffix == ".npy":
        values, names, selection, locate = read_npy_columns(source, columns)
    else:
        raise DataError(
            f"{source}: unsupported file type {suffix or '(no suffix)'!r}; accepted are "
            + " and ".join(ACCEPTED_SUFFIXES)
            + " (comma-separated text, or an array saved with numpy.save)"
        )
    _check_values(values, names, selection, locate, source, from_text=suffix == ".csv",
                  constant_check=for_fitting)
    integer = np.flatnonzero((values == np.round(values)).all(axis=0))
    return Table(
        values=np.ascontiguousarray(values, dtype=np.float64),
        columns=tuple(names[j] for j in selection),
        source=source,
        integer_columns=tuple(int(k) for k in integer),
    )


def _default_names(names: Sequence[str]) -> bool:
    return tuple(names) == tuple(f"x{j}" for j in range(len(names)))


def read_matching(path: str | os.PathLike, columns: Sequence[str], *, role: str = "the file",
                  for_fitting: bool = False) -> Table:
    """Read a table that must hold the given columns (a model's, or a training file's).

    Columns are matched by name when both sides have real names (a header), so a file
    may hold them in any order and hold others besides; otherwise by position, and then the
    number of columns must agree.

    Args:
        path: a ``.csv`` or ``.npy`` file.
        columns: the names to find, in the order wanted.
        role: what the file is, for messages (e.g. ``"--val"``).
        for_fitting: as in :func:`read_table`.

    Raises:
        DataError: as :func:`read_table`, or the columns do not match.
    """
    table = read_table(path, for_fitting=for_fitting)
    wanted = list(columns)
    if not _default_names(wanted) and not _default_names(table.columns):
        missing = [c for c in wanted if c not in table.columns]
        if missing:
            raise DataError(f"{table.source}: {role} lacks the columns {missing}; it has "
                            f"{list(table.columns)}, expected {wanted}")
        return table if list(table.columns) == wanted else \
            read_table(path, wanted, for_fitting=for_fitting)
    if table.n_columns != len(wanted):
        raise DataError(f"{table.source}: {role} has {table.n_columns} columns "
                        f"{list(table.columns)}; expected {len(wanted)}: {wanted}")
    return table


def split_rows(
    n: int,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    source: str = "data",
    min_train: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``n`` rows at random into training, validation and test rows.

    The split sizes are ``round(n * fraction)`` (halves round up) for validation and test; the
    training split gets the rest. The rows are a permutation drawn from
    ``numpy.random.default_rng(seed)``, so a seed always gives the same split.

    Args:
        n: number of rows.
        val_fraction: fraction of rows for validation, in ``[0, 1)``; 0 gives an empty split.
        test_fraction: fraction of rows for testing, in ``[0, 1)``; 0 gives an empty split.
        seed: seed of the permutation.
        source: what to call the data in messages (e.g. the file name).
        min_train: fewest rows the training split may have.

    Returns:
        ``(train, val, test)``: disjoint int64 index arrays that together cover ``range(n)``.

    Raises:
        ValueError: for a negative ``n``, fractions outside ``[0, 1)`` or summing to 1 or more.
        DataError: when the rows are fewer than the splits need: each requested (non-zero
            fraction) split needs at least 2 rows and training at least ``min_train``.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (math.isfinite(fraction) and 0.0 <= fraction < 1.0):
            raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 to leave rows for training, got "
            f"{val_fraction} + {test_fraction}"
        )
    n_val = math.floor(n * val_fraction + 0.5)
    n_test = math.floor(n * test_fraction + 0.5)
    n_train = n - n_val - n_test
    too_few = n_train < min_train or any(
        fraction > 0 and size < 2
        for fraction, size in ((val_fraction, n_val), (test_fraction, n_test)))
    if too_few:
        raise DataError(
            f"{source}: {n} row{'s are' if n != 1 else ' is'} too few to split into training "
            f"(needs at least {min_train}), validation and test rows (at least 2 each) with "
            f"--val-fraction {val_fraction:g} and --test-fraction {test_fraction:g}: they "
            f"would get {n_train}, {n_val} and {n_test}. Supply more rows, or separate "
            "--val/--test files."
        )
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def _check_values(
    values: np.ndarray,
    names: list[str],
    selection: list[int],
    locate: Callable[[int], str],
    source: str,
    *,
    from_text: bool,
    constant_check: bool = True,
) -> None:
    def where(flat: int) -> tuple[str, int]:
        i, k = divmod(int(flat), values.shape[1])
        j = selection[k]
        return f"{source}, {locate(i)}, column {names[j]!r} (index {j})", k

    def in_total(count: int, what: str) -> str:
        return f"; {count} {what} in total in the selected columns" if count > 1 else ""

    bad = ~np.isfinite(values)
    if bad.any():
        flat = np.flatnonzero(bad)
        place, k = where(flat[0])
        value = values.flat[flat[0]]
        text = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
        extra = ""
        if from_text and np.isinf(value):
            extra = " (a number too large for float64 also reads as inf)"
        raise DataError(
            f"{place}: the value is {text}{extra}; a density needs finite values"
            f"{in_total(flat.size, 'non-finite entries')}. Remove or fill in "
            f"{'those rows' if flat.size > 1 else 'that row'}, or "
            "leave the column out with --columns."
        )
    big = np.abs(values) > FLOAT32_MAX
    if big.any():
        flat = np.flatnonzero(big)
        place, k = where(flat[0])
        value = float(values.flat[flat[0]])
        # The power of ten as text: 10.0 ** 309 (for values above 1e308) overflows a float.
        exponent = math.ceil(math.log10(float(np.abs(values[:, k]).max())))
        raise DataError(
            f"{place}: the value {value:.6g} exceeds the float32 range (+-{FLOAT32_MAX:.7g}), "
            f"and the model computes in float32{in_total(flat.size, 'such entries')}. Rescale the "
            f"column (e.g. divide it by 1e{exponent:+03d}) or leave it out with --columns."
        )
    if values.shape[0] < 2 or not constant_check:
        return  # one row: too few rows for anything, which split_rows reports
    constant = np.flatnonzero((values == values[0]).all(axis=0))
    if constant.size:
        k = int(constant[0])
        j = selection[k]
        others = [selection[int(c)] for c in constant[1:]]
        also = ""
        if others:
            also = " (also constant: " + ", ".join(repr(names[o]) for o in others) + ")"
        constant_columns = {selection[int(c)] for c in constant}
        keep = [c for c in selection if c not in constant_columns]
        by_index = names == [f"x{c}" for c in range(len(names))]  # no header: suggest indices
        example = ",".join(str(c) if by_index else names[c] for c in keep)
        suggestion = (f"e.g. --columns {example}" if example else
                      "no selected column varies, so there is nothing to fit")
        raise DataError(
            f"{source}: column {names[j]!r} (index {j}) is constant: all {values.shape[0]} rows "
            f"are {values[0, k]:g}{also}. Its density is degenerate (a point mass, which has no "
            f"density), so it cannot be fitted; drop it with --columns ({suggestion})."
        )
