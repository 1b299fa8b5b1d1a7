"""Reliability of what `cnflow fit` reads and where it writes.

* Property-based tests (hypothesis) of the table reader :func:`cnflow.data.tables.read_table`
  and :func:`~cnflow.data.tables.read_matching`: valid CSV/NPY tables round-trip exactly;
  one corrupted cell is always a :class:`DataError` naming the file, line (or row) and column;
  a first row mixing numbers and words is an error, never a dropped header; arbitrary bytes
  raise nothing but DataError.
* Two `cnflow fit` processes racing into one --out folder: one wins, the other fails with one
  clear line, and the folder holds only the winner's run.
* The resume rule of `cnflow fit` (``cnflow.density._RESUMABLE_CHANGES``): a changed setting
  that changes what is computed is refused and leaves the run folder untouched; a changed
  stopping or scoring setting is accepted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cnflow.cli.main import cli
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cnflow.data.tables import FLOAT32_MAX, DataError, read_matching, read_table

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


# ------------------------------------------------------------------ concurrent fits


CNFLOW = str(Path(sys.executable).with_name("cnflow"))
TINY_FIT = ["fit", "two_moons", "--iterations", "30", "--width", "4", "--hidden", "4",
            "--test-size", "200", "--val-size", "200", "--no-figures"]
RACE_SECONDS = 28  # the whole race must end within this


def _check_run_folder(folder: Path, seed: int, stdout: str = "") -> None:
    """The folder's files are one run's, that of ``seed``."""
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert config["seed"] == seed
    assert state["config"] == config
    assert metrics["dataset"] == config["dataset"] == "two_moons"
    assert metrics["steps"] == state["loop"]["steps"] == config["iterations"]
    assert metrics["best_val_nll"] == state["loop"]["best_val"]
    assert [r["val_nll"] for r in metrics["history"]] == \
        [r["val_nll"] for r in state["loop"]["records"]]
    for key in ("columns", "dim", "context_columns"):
        assert metrics[key] == state["data"][key]
    if stdout:
        assert f"test NLL {metrics['test_nll']:.4f} ± " in stdout
        assert stdout.rstrip().endswith(f"-> {folder}")


def test_two_fits_into_one_folder_at_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    seeds = (11, 12)
    start = time.monotonic()
    processes = [subprocess.Popen([CNFLOW, *TINY_FIT, "--out", str(out), "--seed", str(seed)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env, cwd=tmp_path) for seed in seeds]
    results = []
    try:
        for process in processes:
            left = max(RACE_SECONDS - (time.monotonic() - start), 1)
            stdout, stderr = process.communicate(timeout=left)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    codes = [code for code, _, _ in results]
    assert sorted(code == 0 for code in codes) == [False, True], results
    winner = codes.index(0)
    _, stdout, _ = results[winner]
    code, loser_out, loser_err = results[1 - winner]
    assert code != 0
    assert loser_out == ""
    lines = loser_err.strip().splitlines()
    assert len(lines) == 1, loser_err
    assert lines[0].startswith("Error: "), loser_err
    assert ("another process is writing a run" in lines[0]
            or "already holds a run" in lines[0]), loser_err
    assert str(out) in lines[0]
    _check_run_folder(out, seeds[winner], stdout)
    assert {p.name for p in out.iterdir()} <= {".lock", "config.json", "metrics.json",
                                               "checkpoint.pt"}


# ------------------------------------------------------------------ the resume rule


def _fit(out: Path, *options: str):
    return CliRunner().invoke(cli, [*TINY_FIT, "--seed", "3", "--out", str(out), *options])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny run that ended by itself (all its iterations)."""
    out = tmp_path_factory.mktemp("resume") / "finished"
    result = _fit(out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A tiny run stopped by its CPU-time budget after its first validation round."""
    out = tmp_path_factory.mktemp("resume") / "interrupted"
    result = _fit(out, "--max-time", "1e-6")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["stop_reason"] == "time budget"
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target, copy_function=shutil.copy2)
    return target


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("option, value, field", [
    ("--lr", "0.02", "lr"),
    ("--width", "5", "width"),
    ("--iterations", "40", "iterations"),
])
def test_resume_with_a_changed_setting_is_refused_and_changes_nothing(
        finished_run: Path, tmp_path: Path, option: str, value: str, field: str) -> None:
    run = _copy(finished_run, tmp_path)
    before = _snapshot(run)
    result = _fit(run, "--resume", str(run), option, value)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot resume"), result.output
    assert f"different [{field!r}]" in lines[0]
    assert str(run) in lines[0]
    assert _snapshot(run) == before


@pytest.mark.parametrize("option, value", [("--max-time", "1000"), ("--patience", "3"),
                                           ("--test-size", "300")])
def test_resume_with_a_changed_stopping_or_scoring_setting_is_accepted(
        finished_run: Path, tmp_path: Path, option: str, value: str) -> None:
    run = _copy(finished_run, tmp_path)
    old = json.loads((run / "metrics.json").read_text())
    result = _fit(run, "--resume", str(run), option, value)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config[option[2:].replace("-", "_")] == float(value)
    # The run had ended: it is evaluated again, not trained further.
    assert metrics["steps"] == old["steps"] == 30
    assert metrics["history"] == old["history"]
    if option != "--test-size":
        assert metrics["test_nll"] == old["test_nll"]
    else:
        assert metrics["test_rows"] == 300


def test_resume_with_a_larger_time_budget_continues_the_run(interrupted_run: Path,
                                                            tmp_path: Path) -> None:
    run = _copy(interrupted_run, tmp_path)
    old = json.loads((run / "metrics.json").read_text())
    assert old["steps"] < 30
    result = _fit(run, "--resume", str(run), "--max-time", "1000")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stop_reason"] == "epochs"
    assert metrics["steps"] > old["steps"]
    # The epochs before the cut are kept; the cut epoch's record is replaced by the one of
    # the same epoch completed after the resume.
    kept = len(old["history"]) - 1
    assert metrics["history"][:kept] == old["history"][:kept]
    assert metrics["history"][kept]["epoch"] == old["history"][kept]["epoch"]
    assert metrics["history"][kept]["step"] > old["history"][kept]["step"]
    assert json.loads((run / "config.json").read_text())["max_time"] == 1000


def test_a_run_resumed_after_its_time_budget_takes_all_its_iterations(
        interrupted_run: Path, tmp_path: Path) -> None:
    run = _copy(interrupted_run, tmp_path)
    result = _fit(run, "--resume", str(run), "--max-time", "1000")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 30
    _check_run_folder(run, 3)
