"""The two file formats of :mod:`cnflow.data.tables` (described there), read into the selected
columns' values: CSV through :mod:`csv`, ``.npy`` through :func:`numpy.load`; and the error
every problem with a file raises, :class:`DataError`."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence

import numpy as np

_CHUNK_ROWS = 65536  # CSV rows converted to float in one go
_PREVIEW_CHARS = 30  # how much of an offending cell a message quotes
_MAX_LISTED_NAMES = 20  # how many available column names an error lists
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_HINT = (
    " (the first row was read as data because some of its cells are numeric; a header row must"
    " contain no numeric cells)"
)


class DataError(ValueError):
    """A data file is missing, malformed, or unusable for density estimation."""


# --------------------------------------------------------------------------------------------
# CSV


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _is_blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _preview(text: str) -> str:
    if len(text) > _PREVIEW_CHARS:
        text = text[:_PREVIEW_CHARS] + "..."
    return repr(text)


class _CellErrors:
    """The first unparseable cell of the selected columns, and how many there are of each kind."""

    def __init__(self) -> None:
        self.first: tuple[int, int, str] | None = None  # (row, file column, cell text)
        self.counts = {"non-numeric": 0, "empty": 0}

    @staticmethod
    def kind(cell: str) -> str:
        return "empty" if not cell.strip() else "non-numeric"

    def convert(self, cells: np.ndarray, selection: list[int], row0: int) -> np.ndarray:
        """Convert an object array of cell strings; on failure record the bad cells."""
        try:
            return cells.astype(np.float64)
        except (ValueError, TypeError):
            pass
        out = np.full(cells.shape, np.nan)
        for k, j in enumerate(selection):
            column = cells[:, k]
            try:
                out[:, k] = column.astype(np.float64)
                continue
            except (ValueError, TypeError):
                pass
            for i, cell in enumerate(column):
                try:
                    out[i, k] = float(cell)
                except ValueError:
                    self.counts[self.kind(cell)] += 1
                    first = self.first
                    if first is None or (row0 + i, j) < (first[0], first[1]):
                        self.first = (row0 + i, j, cell)
        return out


def read_csv_columns(
    source: str, columns: Sequence[str | int] | None
) -> tuple[np.ndarray, list[str], list[int], Callable[[int], str]]:
    try:
        handle = open(source, newline="", encoding="utf-8-sig")  # noqa: SIM115
    except OSError as exc:
        raise DataError(f"{source}: cannot open the file: {exc.strerror or exc}") from exc
    reader = csv.reader(handle, skipinitialspace=True)
    try:
        with handle:
            return _parse_csv(reader, source, columns)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{source}{_locate_decode_error(source)}: the file is not UTF-8 text ({exc.reason}); "
            "is it really a CSV file? If so, re-save it with UTF-8 encoding."
        ) from exc
    except csv.Error as exc:
        raise DataError(f"{source}, line {reader.line_num}: malformed CSV: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{source}: cannot read the file: {exc.strerror or exc}") from exc


def _locate_decode_error(source: str) -> str:
    """``", line N"`` for the first byte that is not UTF-8 (text is decoded in blocks, so the
    reader's own line count is not where the bad byte is); ``""`` if it cannot be found."""
    try:
        with open(source, "rb") as handle:
            data = handle.read()
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f", line {line}"
    except OSError:
        pass
    return ""


def _parse_csv(
    reader, source: str, columns: Sequence[str | int] | None
) -> tuple[np.ndarray, list[str], list[int], Callable[[int], str]]:
    # Each row starts on the line after the previous row ended (rows may span lines).
    previous_end = 0
    first: list[str] | None = None
    first_line = 0
    for row in reader:
        line, previous_end = previous_end + 1, reader.line_num
        if not _is_blank(row):
            first, first_line = row, line
            break
    if first is None:
        raise DataError(f"{source}: the file is empty (no data rows)")
    d = len(first)
    has_header = not any(_is_number(cell) for cell in first)
    if has_header:
        names = [cell.strip() for cell in first]
        _check_header(names, source, first_line)
        no_header_note = ""
    else:
        names = [f"x{j}" for j in range(d)]
        no_header_note = (
            f" (the file has no header row: its first row, line {first_line}, has numeric cells,"
            f" so the columns are named x0 to x{d - 1}; select them by 0-based index or name)"
        )
    selection = resolve_selection(columns, names, source, no_header_note)
    take_all = selection == list(range(d))

    lines: list[int] = []
    rows: list[list[str]] = []
    chunks: list[np.ndarray] = []
    errors = _CellErrors()

    def flush() -> None:
        cells = np.array(rows, dtype=object).reshape(len(rows), d)
        if not take_all:
            cells = cells[:, selection]
        chunks.append(errors.convert(cells, selection, len(lines) - len(rows)))
        rows.clear()

    if not has_header:
        rows.append(first)
        lines.append(first_line)
    check_blank = d == 1
    for row in reader:
        line, previous_end = previous_end + 1, reader.line_num
        if len(row) != d or check_blank:
            if _is_blank(row):
                continue
            if len(row) != d:
                what = "the header" if has_header else "the first row"
                raise DataError(
                    f"{source}, line {line}: the row has {len(row)} cells, expected {d} like "
                    f"{what} (line {first_line}); every row needs the same number of "
                    "comma-separated cells"
                )
        rows.append(row)
        lines.append(line)
        if len(rows) >= _CHUNK_ROWS:
            flush()
    if rows:
        flush()
    if not lines:
        raise DataError(f"{source}: has a header row (line {first_line}) but no data rows")

    if errors.first is not None:
        i, j, cell = errors.first
        kind = errors.kind(cell)
        where = f"{source}, line {lines[i]}, column {names[j]!r} (index {j})"
        if kind == "empty":
            message = f"{where}: the cell is empty; every selected cell needs a number"
        else:
            message = f"{where}: cannot read {_preview(cell)} as a number"
            if i == 0 and not has_header:
                message += _HEADER_HINT
        total = errors.counts[kind]
        if total > 1:
            message += f"; {total} {kind} cells in total in the selected columns"
        rows_word = "those rows" if total > 1 else "that row"
        raise DataError(
            f"{message}. Fix or remove {rows_word}, or leave the column out with --columns."
        )
    values = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return values, names, selection, lambda i: f"line {lines[i]}"


def _check_header(names: list[str], source: str, line: int) -> None:
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        if not name:
            raise DataError(
                f"{source}, line {line}: header column {j} (0-based) has an empty name; every "
                "column needs a distinct name (a trailing comma adds an empty column)"
            )
        if name in seen:
            raise DataError(
                f"{source}, line {line}: duplicate header name {name!r} for columns {seen[name]} "
                f"and {j} (0-based); column names must be distinct"
            )
        seen[name] = j


# --------------------------------------------------------------------------------------------
# npy


def read_npy_columns(
    source: str, columns: Sequence[str | int] | None
) -> tuple[np.ndarray, list[str], list[int], Callable[[int], str]]:
    try:
        with open(source, "rb") as handle:
            magic = handle.read(len(_NPY_MAGIC))
            if magic != _NPY_MAGIC:
                raise DataError(
                    f"{source}: not a .npy file (it lacks the NumPy format header); save arrays "
                    "with numpy.save"
                )
            handle.seek(0)
            array = np.load(handle, allow_pickle=False)
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{source}: holds an object array (Python objects), which is not loaded because "
                "that would run pickled code; save a numeric array, e.g. "
                "numpy.save(path, array.astype(float))"
            ) from exc
        raise DataError(f"{source}: corrupt or unreadable .npy file: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{source}: cannot read the file: {exc.strerror or exc}") from exc
    except Exception as exc:  # truncated or otherwise damaged files raise assorted errors
        raise DataError(f"{source}: corrupt or unreadable .npy file: {exc}") from exc

    dtype = array.dtype
    if dtype.names is not None or dtype.kind not in "iuf":
        kinds = {"b": "boolean", "c": "complex", "O": "object", "U": "string", "S": "bytes",
                 "M": "datetime", "m": "timedelta", "V": "structured/void"}
        what = "structured" if dtype.names is not None else kinds.get(dtype.kind, dtype.kind)
        raise DataError(
            f"{source}: the array has {what} dtype {dtype}; only integer or floating arrays are "
            "accepted"
        )
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    elif array.ndim != 2:
        raise DataError(
            f"{source}: the array has shape {array.shape}; expected 1-D (one column) or 2-D "
            "(rows, columns)"
        )
    if array.shape[0] == 0:
        raise DataError(f"{source}: the array has shape {array.shape}: no data rows")
    if array.shape[1] == 0:
        raise DataError(f"{source}: the array has shape {array.shape}: no columns")
    names = [f"x{j}" for j in range(array.shape[1])]
    note = f" (.npy columns are named x0 to x{len(names) - 1}; or select by 0-based index)"
    selection = resolve_selection(columns, names, source, note)
    values = array[:, selection].astype(np.float64)
    return values, names, selection, lambda i: f"row {i} (0-based)"


# --------------------------------------------------------------------------------------------
# shared checks


def _list_names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_MAX_LISTED_NAMES])
    if len(names) > _MAX_LISTED_NAMES:
        shown += f", ... ({len(names)} in all)"
    return shown


def resolve_selection(
    columns: Sequence[str | int] | None, names: list[str], source: str, note: str
) -> list[int]:
    d = len(names)
    if columns is None:
        return list(range(d))
    if len(columns) == 0:
        raise DataError(f"{source}: the column selection is empty; select at least one column")
    lookup = {name: j for j, name in enumerate(names)}
    chosen: dict[int, str | int] = {}
    for item in columns:
        if isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            j = int(item)
            if not 0 <= j < d:
                raise DataError(
                    f"{source}: column index {j} is out of range: the file has {d} column"
                    f"{'s' if d != 1 else ''} (0-based indices 0 to {d - 1})"
                )
        elif isinstance(item, str):
            if item not in lookup:
                hint = ""
                if re.fullmatch(r"[+-]?[0-9]+", item.strip()):
                    hint = " (indices are 0-based non-negative integers)"
                raise DataError(
                    f"{source}: no column named {item!r}{hint}; available columns: "
                    f"{_list_names(names)}{note}"
                )
            j = lookup[item]
        else:
            raise DataError(
                f"{source}: cannot select column {item!r}: give a name (str) or a 0-based index "
                "(int)"
            )
        if j in chosen:
            raise DataError(
                f"{source}: column {names[j]!r} (index {j}) is selected twice (as "
                f"{chosen[j]!r} and {item!r}); list each column once"
            )
        chosen[j] = item
    return list(chosen)
