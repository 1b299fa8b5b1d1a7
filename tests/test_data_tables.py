"""Tests for :mod:`cnflow.data.tables` and :mod:`cnflow.data.table_formats`, the reader of
users' CSV and .npy tables.

The property-based tests (hypothesis) of :func:`~cnflow.data.tables.read_table` and
:func:`~cnflow.data.tables.read_matching`: valid CSV/NPY tables round-trip exactly; one
corrupted cell is always a :class:`DataError` naming the file, line (or row) and column;
a first row mixing numbers and words is an error, never a dropped header; arbitrary
bytes raise nothing but DataError.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cnflow.data import table_formats
from cnflow.data.tables import (
    FLOAT32_MAX,
    DataError,
    Table,
    parse_columns,
    read_matching,
    read_table,
    split_rows,
)


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    """Write ``text`` to ``tmp_path / name`` and return the path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error(path: Path | str, columns=None) -> str:
    """The DataError message of reading ``path``."""
    with pytest.raises(DataError) as info:
        read_table(path, columns)
    return str(info.value)


# ------------------------------------------------------------------ header detection


def test_header_detected(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n1,2.5\n3,4\n")
    table = read_table(path)
    assert isinstance(table, Table)
    assert table.columns == ("a", "b")
    assert table.values.dtype == np.float64
    np.testing.assert_array_equal(table.values, [[1, 2.5], [3, 4]])
    assert table.source == str(path)


def test_no_header_when_first_row_is_numeric(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "1,2\n3,4.5\n5,6\n"))
    assert table.columns == ("x0", "x1")
    assert table.values.shape == (3, 2)


def test_nan_and_inf_first_row_is_data_not_header(tmp_path: Path) -> None:
    # "nan" and "inf" look like words but parse as floats, so the row is data.
    message = error(write(tmp_path, "nan,inf\n1,2\n3,4\n"))
    assert "data.csv" in message and "line 1" in message
    assert "'x0' (index 0)" in message and "NaN" in message
    assert "2 non-finite entries" in message


def test_nan_in_first_data_row_after_header(tmp_path: Path) -> None:
    message = error(write(tmp_path, "width,height\nnan,1\n2,3\n"))
    assert "line 2" in message and "'width' (index 0)" in message and "NaN" in message


def test_quoted_header_names_and_spaces(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, '"width, cm", "height"\n1, 2\n3, 4\n'))
    assert table.columns == ("width, cm", "height")
    np.testing.assert_array_equal(table.values, [[1, 2], [3, 4]])


def test_mixed_first_row_is_data_with_header_hint(tmp_path: Path) -> None:
    message = error(write(tmp_path, "a,1\n2,3\n4,5\n"))
    assert "line 1" in message and "'x0' (index 0)" in message and "'a'" in message
    assert "header row must contain no numeric cells" in message


def test_duplicate_and_empty_header_names(tmp_path: Path) -> None:
    message = error(write(tmp_path, "a,b,a\n1,2,3\n4,5,6\n"))
    assert "duplicate" in message and "'a'" in message and "line 1" in message
    message = error(write(tmp_path, "a,,b\n1,2,3\n4,5,6\n"))
    assert "empty name" in message and "column 1" in message


def test_blank_lines_skipped_but_line_numbers_real(tmp_path: Path) -> None:
    path = write(tmp_path, "\na,b\n\n1,2\n   \n3,4\nx,6\n")
    table = read_table(path, ["b"])
    assert table.columns == ("b",)
    np.testing.assert_array_equal(table.values[:, 0], [2, 4, 6])
    message = error(path)
    assert "line 7" in message and "'a' (index 0)" in message and "'x'" in message


def test_multiline_quoted_cell_keeps_line_numbers(tmp_path: Path) -> None:
    message = error(write(tmp_path, 'a,b\n"1\n",2\n3,4\nz,5\n'))
    assert "line 5" in message


def test_single_column_with_whitespace_line(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "v\n1\n  \n2\n3\n"))
    np.testing.assert_array_equal(table.values[:, 0], [1, 2, 3])


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffa,b\n1,2\n3,4\n".encode())
    assert read_table(path).columns == ("a", "b")


# ------------------------------------------------------------------ column selection


def test_parse_columns() -> None:
    assert parse_columns(None) is None
    assert parse_columns("") is None
    assert parse_columns("  ") is None
    assert parse_columns("a,b") == ["a", "b"]
    assert parse_columns("0, 2") == [0, 2]
    assert parse_columns("a,2,x1,-1") == ["a", 2, "x1", "-1"]
    with pytest.raises(DataError, match="empty"):
        parse_columns("a,,b")


@pytest.fixture
def abc(tmp_path: Path) -> Path:
    return write(tmp_path, "a,b,c\n1,10,100\n2,20,200\n3,30,301\n")


def test_select_by_name_index_and_mixed(abc: Path) -> None:
    table = read_table(abc, ["c", "a"])
    assert table.columns == ("c", "a")
    np.testing.assert_array_equal(table.values[:, 1], [1, 2, 3])
    assert read_table(abc, [1]).columns == ("b",)
    assert read_table(abc, ["c", 0]).columns == ("c", "a")
    assert read_table(abc, "b,0").columns == ("b", "a")  # a str is parsed like --columns


def test_select_without_header(tmp_path: Path) -> None:
    path = write(tmp_path, "1,2,3\n4,5,6\n7,8,10\n")
    assert read_table(path, [2, "x0"]).columns == ("x2", "x0")
    message = error(path, ["a"])
    assert "no column named 'a'" in message and "'x0', 'x1', 'x2'" in message
    assert "no header row" in message


def test_unknown_column_name(abc: Path) -> None:
    message = error(abc, ["a", "d"])
    assert "data.csv" in message and "'d'" in message and "'a', 'b', 'c'" in message


def test_column_index_out_of_range(abc: Path) -> None:
    message = error(abc, [3])
    assert "index 3" in message and "3 columns" in message
    assert "3 columns" in error(abc, [-1])


def test_duplicate_selection(abc: Path) -> None:
    message = error(abc, ["a", 0])
    assert "twice" in message and "'a' (index 0)" in message
    assert "twice" in error(abc, ["b", "b"])


def test_empty_selection(abc: Path) -> None:
    assert "empty" in error(abc, [])


def test_bad_column_can_be_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "id,x,k,y\nA1,1,5,nan\nB2,2,5,3\nC3,3,5,4\n")
    table = read_table(path, ["x"])
    assert table.columns == ("x",)
    assert "'A1'" in error(path)  # unselected, the text column is an error


# ------------------------------------------------------------------ file-level errors


def test_missing_file_directory_and_suffix(tmp_path: Path) -> None:
    assert "not found" in error(tmp_path / "nope.csv") and "nope.csv" in error(tmp_path / "nope.csv")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert "directory" in error(folder)
    message = error(write(tmp_path, "1,2\n", "data.txt"))
    assert "data.txt" in message and ".csv" in message and ".npy" in message


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    assert "empty" in error(write(tmp_path, ""))
    assert "empty" in error(write(tmp_path, "\n  \n\n"))
    message = error(write(tmp_path, "a,b\n\n"))
    assert "no data rows" in message and "data.csv" in message


def test_ragged_row(tmp_path: Path) -> None:
    message = error(write(tmp_path, "a,b\n1,2\n3,4,5\n6,7\n"))
    assert "data.csv" in message and "line 3" in message
    assert "3 cells" in message and "expected 2" in message


def test_non_numeric_cell_quoted_and_truncated(tmp_path: Path) -> None:
    long = "y" * 80
    message = error(write(tmp_path, f"a,b\n1,2\n3,{long}\n5,zz\n"))
    assert "line 3" in message and "'b' (index 1)" in message
    assert "'" + "y" * 30 + "...'" in message and long not in message
    assert "2 non-numeric cells" in message


def test_empty_cell(tmp_path: Path) -> None:
    message = error(write(tmp_path, "a,b\n1,2\n3,\n"))
    assert "line 3" in message and "'b' (index 1)" in message and "empty" in message
    assert "empty" in error(write(tmp_path, "1,2,\n3,4,\n"))  # trailing commas


def test_infinite_values(tmp_path: Path) -> None:
    message = error(write(tmp_path, "a,b\n1,2\n3,-inf\n4,inf\n"))
    assert "line 3" in message and "'b' (index 1)" in message and "-inf" in message
    assert "2 non-finite entries" in message
    assert "+inf" in error(write(tmp_path, "a,b\n1,2\n3,1e400\n"))  # overflows float64


def test_beyond_float32_range(tmp_path: Path) -> None:
    message = error(write(tmp_path, "a,big\n1,2\n3,5e38\n"))
    assert "line 3" in message and "'big' (index 1)" in message and "5e+38" in message
    assert "float32" in message and "Rescale" in message


def test_constant_column(tmp_path: Path) -> None:
    message = error(write(tmp_path, "a,b,c\n1,7,3\n2,7,4\n3,7,5\n"))
    assert "'b' (index 1)" in message and "constant" in message
    assert "point mass" in message and "--columns a,c" in message
    assert "--columns 0,2" in error(write(tmp_path, "1,7,3\n2,7,4\n3,7,5\n"))


def test_single_row_is_not_called_constant(tmp_path: Path) -> None:
    assert read_table(write(tmp_path, "a,b\n1,2\n")).values.shape == (1, 2)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"a,b\n1,2\n3,\xe9\n")
    message = error(path)
    assert "latin.csv" in message and "UTF-8" in message and "line 3" in message


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "a,b\n1,2\n")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(table_formats, "open", refuse, raising=False)  # works even when run as root
    message = error(path)
    assert "data.csv" in message and "cannot open" in message and "Permission denied" in message


# ------------------------------------------------------------------ npy


def test_npy_1d_and_2d(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.array([1.0, 2.0, 3.5]))
    table = read_table(tmp_path / "one.npy")
    assert table.columns == ("x0",) and table.values.shape == (3, 1)
    np.save(tmp_path / "two.npy", np.arange(12, dtype=np.int32).reshape(4, 3))
    table = read_table(tmp_path / "two.npy", [2, 0])
    assert table.columns == ("x2", "x0") and table.values.dtype == np.float64
    np.testing.assert_array_equal(table.values[:, 0], [2, 5, 8, 11])


@pytest.mark.parametrize(
    "array",
    [
        np.array([True, False, True]),
        np.array([1 + 2j, 3j]),
        np.array(["1", "2"]),
        np.zeros(3, dtype=[("a", "f8"), ("b", "f8")]),
        np.zeros((2, 2, 2)),
        np.zeros((0, 2)),
    ],
    ids=["bool", "complex", "str", "structured", "3d", "no-rows"],
)
def test_npy_rejected(tmp_path: Path, array: np.ndarray) -> None:
    np.save(tmp_path / "bad.npy", array)
    assert "bad.npy" in error(tmp_path / "bad.npy")


def test_npy_object_array_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([1.0, "two", None], dtype=object), allow_pickle=True)
    message = error(path)
    assert "obj.npy" in message and "object" in message


def test_npy_corrupt_and_not_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "cut.npy", np.arange(100.0))
    data = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    assert "cut.npy" in error(tmp_path / "cut.npy")
    (tmp_path / "text.npy").write_text("1,2\n3,4\n")
    assert "not a .npy file" in error(tmp_path / "text.npy")


def test_npy_error_positions(tmp_path: Path) -> None:
    array = np.arange(10.0).reshape(5, 2)
    array[3, 1] = np.nan
    np.save(tmp_path / "n.npy", array)
    message = error(tmp_path / "n.npy")
    assert "row 3 (0-based)" in message and "'x1' (index 1)" in message and "NaN" in message
    assert read_table(tmp_path / "n.npy", [0]).values.shape == (5, 1)  # dropped the NaN column


# ------------------------------------------------------------------ integer columns


def test_integer_columns(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "count,x,pixel\n1,0.5,0\n2,1.5,255\n10,2,128\n"))
    assert table.integer_columns == (0, 2)
    assert read_table(write(tmp_path, "count,x,pixel\n1,0.5,0\n2,1.5,255\n"),
                      ["pixel", "x"]).integer_columns == (0,)


# ------------------------------------------------------------------ split_rows


def test_split_sizes_disjoint_and_cover() -> None:
    train, val, test = split_rows(100, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    everything = np.concatenate([train, val, test])
    assert np.array_equal(np.sort(everything), np.arange(100))


def test_split_reproducible_and_seed_dependent() -> None:
    first = split_rows(50, val_fraction=0.2, test_fraction=0.2, seed=3)
    again = split_rows(50, val_fraction=0.2, test_fraction=0.2, seed=3)
    other = split_rows(50, val_fraction=0.2, test_fraction=0.2, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


def test_split_zero_fractions() -> None:
    train, val, test = split_rows(20, val_fraction=0.0, test_fraction=0.0, seed=1)
    assert len(train) == 20 and len(val) == 0 and len(test) == 0
    train, val, test = split_rows(20, val_fraction=0.25, test_fraction=0.0, seed=1)
    assert (len(train), len(val), len(test)) == (15, 5, 0)


def test_split_too_few_rows() -> None:
    with pytest.raises(DataError) as info:
        split_rows(12, val_fraction=0.1, test_fraction=0.1, seed=0, source="m.csv")
    message = str(info.value)
    assert "m.csv" in message and "12 rows" in message
    assert "would get 10, 1 and 1" in message
    with pytest.raises(DataError, match="would get 5, 3 and 2"):
        split_rows(10, val_fraction=0.3, test_fraction=0.2, seed=0)
    with pytest.raises(ValueError):
        split_rows(10, val_fraction=0.6, test_fraction=0.5, seed=0)


# ------------------------------------------------------------------ property-based tests

# No example database: the tests write no files outside their temporary folders.
SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
BOM = "\ufeff"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def _file(name: str, data: bytes):
    """A fresh folder holding one file ``name`` with ``data``; yields its path (a str)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as handle:
            handle.write(data)
        yield path


# ------------------------------------------------------------------ CSV tables


# Finite values well inside float32's range: 3 significant digits of any of them stay in range.
VALUES = st.one_of(
    st.floats(-3e38, 3e38, allow_nan=False, allow_infinity=False),
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    st.integers(-10**6, 10**6).map(float),
)
FORMATS = {
    "repr": repr,
    "%.6g": lambda v: f"{v:.6g}",
    "%.17g": lambda v: f"{v:.17g}",
    "%.10e": lambda v: f"{v:.10e}",
    "%+.3E": lambda v: f"{v:+.3E}",
    "int": lambda v: str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v),
}
# How a number's text is placed in its cell: spaces after the comma are skipped, trailing
# whitespace is ignored by float(), and quotes are removed by the csv module.
DECORATIONS = ("{}", "  {}", "{}  ", "{}\t", '"{}"', ' "{}"')
# Header names: anything a user might type (commas, quotes and \n are quoted) but a number.
# Excluded: \r (a lone \r inside a quoted cell is counted as a line break by Python's reader),
# NUL, the BOM (a leading one is the encoding's), and surrogates (not encodable).
NAME_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\r\x00\ufeff")
NAMES = st.text(NAME_CHARS, min_size=1, max_size=8).filter(
    lambda s: bool(s.strip()) and not _is_number(s))
BLANKS = st.sampled_from(["", "   ", "\t", " \t "])


def _quote(cell: str) -> str:
    """``cell`` as a CSV field (quoted where it must be)."""
    if any(c in cell for c in ',"\n\r') or cell != cell.lstrip(" "):
        return '"' + cell.replace('"', '""') + '"'
    return cell


@dataclass
class CsvTable:
    """A valid CSV table, and how its text is laid out."""

    values: list[list[float]]  # the numbers as written (after formatting)
    texts: list[list[str]]  # each cell's field text, decorated
    header: list[str] | None
    blanks: list[list[str]]  # blank lines before each row (the header included)
    trailing: list[str]  # blank lines after the last row
    newline: str
    bom: bool
    final_newline: bool

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def d(self) -> int:
        return len(self.values[0])

    @property
    def names(self) -> tuple[str, ...]:
        if self.header is None:
            return tuple(f"x{j}" for j in range(self.d))
        return tuple(name.strip() for name in self.header)

    def render(self, texts: list[list[str]] | None = None) -> tuple[bytes, list[int]]:
        """The file's bytes, and the 1-based line on which each data row starts."""
        texts = self.texts if texts is None else texts
        rows = ([[_quote(name) for name in self.header]] if self.header else []) + texts
        parts, starts, line = [], [], 1
        for k, row in enumerate(rows):
            for blank in self.blanks[k]:
                parts.append(blank + self.newline)
                line += 1
            starts.append(line)
            text = ",".join(row)
            parts.append(text)
            line += text.count("\n")
            if k < len(rows) - 1 or self.final_newline or self.trailing:
                parts.append(self.newline)
                line += 1
        parts.extend(blank + self.newline for blank in self.trailing)
        data = (BOM if self.bom else "") + "".join(parts)
        return data.encode("utf-8"), starts[1:] if self.header else starts


@st.composite
def csv_tables(draw, min_d: int = 1, max_d: int = 4, header: bool | None = None) -> CsvTable:
    d = draw(st.integers(min_d, max_d))
    n = draw(st.integers(1, 7))
    values, texts = [], []
    for _ in range(n):
        row_values, row_texts = [], []
        for _ in range(d):
            value = draw(VALUES)
            text = FORMATS[draw(st.sampled_from(sorted(FORMATS)))](value)
            row_values.append(float(text))
            row_texts.append(draw(st.sampled_from(DECORATIONS)).format(text))
        values.append(row_values)
        texts.append(row_texts)
    with_header = draw(st.booleans()) if header is None else header
    names = draw(st.lists(NAMES, min_size=d, max_size=d, unique_by=str.strip)) \
        if with_header else None
    blank_lists = st.lists(BLANKS, max_size=2)
    blanks = [draw(blank_lists) for _ in range(n + with_header)]
    return CsvTable(values=values, texts=texts, header=names, blanks=blanks,
                    trailing=draw(blank_lists), newline=draw(st.sampled_from(["\n", "\r\n"])),
                    bom=draw(st.booleans()), final_newline=draw(st.booleans()))


def _constant_columns(values: np.ndarray) -> list[int]:
    if len(values) < 2:
        return []
    return [j for j in range(values.shape[1]) if (values[:, j] == values[0, j]).all()]


@SETTINGS
@given(table=csv_tables())
def test_csv_round_trips_exactly_with_its_column_names(table: CsvTable) -> None:
    data, _ = table.render()
    expected = np.array(table.values, dtype=np.float64)
    with _file("data.csv", data) as path:
        read = read_table(path, for_fitting=False)
        assert read.values.dtype == np.float64
        assert read.values.shape == (table.n, table.d)
        assert np.array_equal(read.values, expected)
        assert np.array_equal(np.signbit(read.values), np.signbit(expected))  # -0.0 too
        assert read.columns == table.names
        assert read.source == path
        assert read.integer_columns == tuple(
            j for j in range(table.d) if all(v.is_integer() for v in expected[:, j]))
        # Fitting refuses a constant column (the first one, by name and index), nothing else.
        constant = _constant_columns(expected)
        if constant:
            j = constant[0]
            with pytest.raises(DataError) as info:
                read_table(path)
            assert f"column {table.names[j]!r} (index {j}) is constant" in str(info.value)
        else:
            assert np.array_equal(read_table(path).values, expected)


@SETTINGS
@given(table=csv_tables(), data=st.data())
def test_column_selection_by_name_and_index(table: CsvTable, data) -> None:
    """A selection returns those columns in that order; an unknown name, an index out of
    range or a column selected twice is a DataError; a bad cell outside it does not matter."""
    names = table.names
    items = st.one_of(st.integers(0, table.d), st.sampled_from(names), NAMES)
    selection = data.draw(st.lists(items, min_size=1, max_size=4))
    # Spoil one cell of a column that is not selected: it must not matter.
    indices = [names.index(c) if isinstance(c, str) and c in names else c for c in selection]
    texts = [row[:] for row in table.texts]
    unselected = [j for j in range(table.d) if j not in indices]
    if unselected:
        j = data.draw(st.sampled_from(unselected))
        i = data.draw(st.integers(0, table.n - 1))
        texts[i][j] = data.draw(st.sampled_from(["oops", "", "nan", "1e40", "-inf"]))
        assume(not (table.header is None and i == 0 and texts[i][j] == "oops"
                    and table.d == 1))
    raw, _ = table.render(texts)
    unknown = [c for c in selection
               if (isinstance(c, int) and c >= table.d) or (isinstance(c, str) and c not in names)]
    with _file("data.csv", raw) as path:
        if unknown:
            with pytest.raises(DataError, match=re.escape(path)):
                read_table(path, selection, for_fitting=False)
            return
        if len(set(indices)) < len(indices):
            with pytest.raises(DataError, match="selected twice"):
                read_table(path, selection, for_fitting=False)
            return
        read = read_table(path, selection, for_fitting=False)
        assert np.array_equal(read.values, np.array(table.values)[:, indices])
        assert read.columns == tuple(names[j] for j in indices)
        if not any("," in names[j] for j in indices):  # the --columns string form agrees
            spec = ",".join(str(c) for c in selection)
            if all(isinstance(c, int) or c == c.strip() for c in selection):
                again = read_table(path, spec, for_fitting=False)
                assert np.array_equal(again.values, read.values)


@SETTINGS
@given(table=csv_tables(header=True), data=st.data())
def test_read_matching_finds_named_columns_in_any_order(table: CsvTable, data) -> None:
    names = table.names
    # Names spelled like the default ones (x0, x1, ...) are matched by position instead.
    assume(not any(re.fullmatch(r"x[0-9]+", name) for name in names))
    wanted = data.draw(st.permutations(names).flatmap(
        lambda p: st.integers(1, len(p)).map(lambda k: list(p[:k]))))
    missing = data.draw(st.one_of(st.none(), NAMES.filter(lambda s: s not in names)))
    raw, _ = table.render()
    with _file("data.csv", raw) as path:
        if missing is not None:
            with pytest.raises(DataError, match="lacks the columns"):
                read_matching(path, [*wanted, missing], role="INPUT")
            return
        read = read_matching(path, wanted, role="INPUT")
        assert read.columns == tuple(wanted)
        assert np.array_equal(read.values,
                              np.array(table.values)[:, [names.index(c) for c in wanted]])
        # Default names on either side: by position, and the number of columns must agree.
        positional = [f"x{j}" for j in range(table.d)]
        assert np.array_equal(read_matching(path, positional).values, np.array(table.values))
        with pytest.raises(DataError, match=f"expected {table.d + 1}"):
            read_matching(path, [*positional, f"x{table.d}"])


# Cells that are not numbers (csv-quoted where needed when written).
WORDS = st.one_of(
    st.sampled_from(["NA", "n/a", "?", "abc", "1.2.3", "--", "1,5", 'x"y', "nanx", "inff",
                     "1e", "e5", "0x10", "1_", "_1", "True", "1 2", "\u0661\u0662a", "-"]),
    st.text(NAME_CHARS, min_size=1, max_size=6).filter(
        lambda s: bool(s.strip()) and not _is_number(s)),
)
EMPTIES = st.sampled_from(["", "  ", '""', ' ""'])
# Numbers that read but are not usable: (text, what the message says).
BAD_NUMBERS = st.sampled_from(["nan", "NaN", "-nan", "inf", "-Infinity", "1e400", "1e40",
                               "-1e39", "3.5e38", "1e300", "-1.7e308", "1.7976931348623157e308"])


@SETTINGS
@given(table=csv_tables(), data=st.data())
def test_one_bad_cell_is_a_data_error_naming_file_line_and_column(table: CsvTable, data) -> None:
    i = data.draw(st.integers(0, table.n - 1), label="row")
    j = data.draw(st.integers(0, table.d - 1), label="column")
    kind = data.draw(st.sampled_from(["word", "empty", "number", "ragged"]), label="kind")
    texts = [row[:] for row in table.texts]
    headerless_first = table.header is None and i == 0
    if kind == "word":
        texts[i][j] = _quote(data.draw(WORDS))
        # A one-column file's first row that is a word is a header by the rule.
        assume(not (headerless_first and table.d == 1))
    elif kind == "empty":
        texts[i][j] = data.draw(EMPTIES)
        assume(table.d > 1)  # a one-column row with an empty cell is a blank line: skipped
    elif kind == "number":
        texts[i][j] = data.draw(BAD_NUMBERS)
    elif table.d > 1 and data.draw(st.booleans()):
        del texts[i][j]
    else:
        texts[i].insert(j, data.draw(st.sampled_from(["1", "x", ""])))
    raw, starts = table.render(texts)
    line = starts[i]
    if kind == "ragged" and headerless_first:
        # The first row sets the number of cells: the next row is the ragged one.
        assume(table.n > 1)
        line = starts[1]
    for_fitting = data.draw(st.booleans(), label="for_fitting")
    with _file("data.csv", raw) as path, pytest.raises(DataError) as info:
        read_table(path, for_fitting=for_fitting)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}")
    assert message[len(f"{path}, line {line}")] in ",:"
    if kind == "ragged":
        assert "cells, expected" in message
    else:
        assert f"column {table.names[j]!r} (index {j})" in message
    if kind == "word" and headerless_first:
        assert "a header row must contain no numeric cells" in message
    assert "\n" not in message  # one line: the offending cell is quoted with repr()


@SETTINGS
@given(data=st.data())
def test_a_first_row_mixing_numbers_and_words_is_an_error_not_a_header(data) -> None:
    d = data.draw(st.integers(2, 4))
    is_word = data.draw(st.lists(st.booleans(), min_size=d, max_size=d))
    word, number = data.draw(st.permutations(range(d)))[:2]
    is_word[word], is_word[number] = True, False
    first = [_quote(data.draw(WORDS)) if w else FORMATS["repr"](data.draw(VALUES))
             for w in is_word]
    rows = [[repr(float(k + j)) for j in range(d)] for k in range(data.draw(st.integers(0, 4)))]
    lead = data.draw(st.lists(BLANKS, max_size=2))
    text = "".join(b + "\n" for b in lead) + "\n".join(",".join(r) for r in [first, *rows])
    j = is_word.index(True)
    name = f"x{j}"
    with _file("data.csv", text.encode()) as path:
        for read in (lambda: read_table(path), lambda: read_table(path, [j]),
                     lambda: read_matching(path, [f"x{k}" for k in range(d)])):
            with pytest.raises(DataError) as info:
                read()
            message = str(info.value)
            assert message.startswith(f"{path}, line {len(lead) + 1}, column {name!r} "
                                      f"(index {j}): cannot read ")
            assert "a header row must contain no numeric cells" in message


def test_na_first_row_examples() -> None:
    for text, line in (("NA,1\n2,3\n", 1), ("\n\nid, 0.5\n", 3), ("a,b,1e5\n", 1),
                       ("x,nan\n1,2\n", 1), ("\ufeffNA,inf\n", 1)):
        with _file("data.csv", text.encode()) as path, pytest.raises(
                DataError, match=re.escape(f"{path}, line {line}, column 'x0'")):
            read_table(path)


@SETTINGS
@given(table=csv_tables(min_d=2, header=True), data=st.data())
def test_bad_header_names_are_an_error_naming_the_header_line(table: CsvTable, data) -> None:
    names = list(table.header)
    k = data.draw(st.integers(1, len(names) - 1))
    problem = data.draw(st.sampled_from(["duplicate", "empty"]))
    names[k] = names[0] if problem == "duplicate" else data.draw(st.sampled_from(["", "  ",
                                                                                  "\t"]))
    spoilt = CsvTable(**{**table.__dict__, "header": names})
    raw, _ = spoilt.render()
    with _file("data.csv", raw) as path, pytest.raises(DataError) as info:
        read_table(path)
    header_line = len(table.blanks[0]) + 1
    assert str(info.value).startswith(f"{path}, line {header_line}: ")
    assert ("duplicate header name" if problem == "duplicate" else "empty name") \
        in str(info.value)


def test_empty_and_header_only_files() -> None:
    for text in ("", "\n\n", "  \n\t\n", "\ufeff", "\ufeff\n  \n"):
        with _file("data.csv", text.encode()) as path, pytest.raises(
                DataError, match="the file is empty"):
            read_table(path)
    for text in ("a,b\n", "a,b\n\n  \n", "a\n"):
        with _file("data.csv", text.encode()) as path, pytest.raises(
                DataError, match=r"has a header row \(line 1\) but no data rows"):
            read_table(path)


# ------------------------------------------------------------------ .npy tables


NPY_DTYPES = ["<f2", "<f4", "<f8", ">f8", ">f4", "|i1", "<i2", "<i4", "<i8", ">i8", "|u1",
              "<u2", "<u4", "<u8"]


@st.composite
def npy_arrays(draw, dtypes: list[str] = NPY_DTYPES) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(st.one_of(st.tuples(st.integers(1, 6)),
                           st.tuples(st.integers(1, 6), st.integers(1, 4))))
    if dtype.kind == "f":
        bound = float(dtype.type(min(float(np.finfo(dtype).max), 3e38)))
        elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False,
                             width=8 * dtype.itemsize)
    else:
        elements = None
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    return np.asfortranarray(array) if draw(st.booleans()) else array


def _npy_bytes(array: np.ndarray, **kwargs) -> bytes:
    with tempfile.TemporaryFile() as handle:
        np.save(handle, array, **kwargs)
        handle.seek(0)
        return handle.read()


@SETTINGS
@given(array=npy_arrays())
def test_npy_round_trips_exactly(array: np.ndarray) -> None:
    expected = array.reshape(len(array), -1).astype(np.float64)
    with _file("data.npy", _npy_bytes(array)) as path:
        read = read_table(path, for_fitting=False)
        assert read.values.dtype == np.float64
        assert np.array_equal(read.values, expected)
        assert read.columns == tuple(f"x{j}" for j in range(expected.shape[1]))
        assert read.integer_columns == tuple(
            j for j in range(expected.shape[1]) if (expected[:, j] == np.round(expected[:, j])).all())
        constant = _constant_columns(expected)
        if constant:
            with pytest.raises(DataError, match=f"column 'x{constant[0]}' .index "
                                                f"{constant[0]}. is constant"):
                read_table(path)
        else:
            assert np.array_equal(read_table(path).values, expected)


@SETTINGS
@given(array=npy_arrays([t for t in NPY_DTYPES if "f" in t]), data=st.data())
def test_npy_bad_value_names_row_and_column(array: np.ndarray, data) -> None:
    array = array.astype(np.float64).reshape(len(array), -1)
    i = data.draw(st.integers(0, array.shape[0] - 1))
    j = data.draw(st.integers(0, array.shape[1] - 1))
    array[i, j] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e40, -3.5e38,
                                             1e300, 1.7e308, -np.finfo(np.float64).max]))
    with _file("data.npy", _npy_bytes(array)) as path:
        with pytest.raises(DataError) as info:
            read_table(path)
        assert str(info.value).startswith(f"{path}, row {i} (0-based), column 'x{j}' "
                                          f"(index {j}): the value ")


@pytest.mark.parametrize("array", [
    np.array([True, False]),
    np.array([1 + 2j, 3j]),
    np.array([1 + 2j, 3j], dtype=np.complex64),
    np.array(["1", "2"]),
    np.array([b"1", b"2"]),
    np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"),
    np.array([1, 2], dtype="timedelta64[s]"),
    np.zeros(3, dtype=[("a", "<f8"), ("b", "<i4")]),
    np.zeros(2, dtype="V8"),
], ids=lambda a: str(a.dtype))
def test_npy_unsupported_dtypes_are_refused(array: np.ndarray) -> None:
    with _file("data.npy", _npy_bytes(array)) as path, pytest.raises(
            DataError, match=re.escape(path) + ".*dtype .*only integer or floating"):
        read_table(path)


@pytest.mark.parametrize("array, problem", [
    (np.array([[1.0, 2.0]], dtype=object), "object array"),
    (np.float64(3.0), r"shape \(\)"),
    (np.zeros((2, 2, 2)), r"shape \(2, 2, 2\)"),
    (np.zeros((0,)), "no data rows"),
    (np.zeros((0, 3)), "no data rows"),
    (np.zeros((3, 0)), "no columns"),
])
def test_npy_unusable_arrays_are_refused(array: np.ndarray, problem: str) -> None:
    with _file("data.npy", _npy_bytes(array, allow_pickle=True)) as path, pytest.raises(
            DataError, match=problem):
        read_table(path)


# ------------------------------------------------------------------ arbitrary input


def _read_everything(path: str) -> None:
    """Read ``path`` every way the CLI does; only DataError may come out."""
    for read in (lambda: read_table(path), lambda: read_table(path, for_fitting=False),
                 lambda: read_table(path, "0"), lambda: read_table(path, [0, "a"]),
                 lambda: read_matching(path, ["x0", "x1"]),
                 lambda: read_matching(path, ["a", "b"], role="--val")):
        try:
            table = read()
        except DataError as error:
            assert str(error).startswith(path), str(error)
            continue
        assert np.isfinite(table.values).all()
        assert (np.abs(table.values) <= FLOAT32_MAX).all()
        assert table.values.ndim == 2 and len(table.columns) == table.values.shape[1]


CSVISH = st.text(st.sampled_from(list('0123456789.,e-+ \t\n\r"abNnIif_\ufeff\x00')), max_size=60)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=80).map(str.encode),
                      CSVISH.map(str.encode)),
       suffix=st.sampled_from([".csv", ".npy", ".CSV", ".Npy"]))
def test_random_files_raise_only_data_errors(data: bytes, suffix: str) -> None:
    with _file("data" + suffix, data) as path:
        _read_everything(path)


# numpy parses a damaged header with ast.literal_eval, which may warn about its escapes.
@pytest.mark.filterwarnings("ignore:invalid escape sequence")
@SETTINGS
@given(array=npy_arrays(), data=st.data())
def test_damaged_npy_files_raise_only_data_errors(array: np.ndarray, data) -> None:
    raw = bytearray(_npy_bytes(array))
    damage = data.draw(st.sampled_from(["truncate", "flip", "append"]))
    if damage == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif damage == "flip":
        # Any byte but the format version, the header length and the shape (which could
        # make numpy allocate gigabytes before it notices the damage).
        shape = raw.index(b"'shape'")
        spared = {*range(6, 10), *range(shape, raw.index(b")", shape))}
        k = data.draw(st.sampled_from([k for k in range(len(raw)) if k not in spared]))
        raw[k] ^= data.draw(st.integers(1, 255))
    else:
        raw += data.draw(st.binary(min_size=1, max_size=16))
    with _file("data.npy", bytes(raw)) as path:
        _read_everything(path)
