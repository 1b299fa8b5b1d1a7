"""Tests for :mod:`cnflow.data.tables` and :mod:`cnflow.data.table_formats`, the reader of
users' CSV and .npy tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnflow.data import table_formats
from cnflow.data.tables import DataError, Table, parse_columns, read_table, split_rows


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
