"""The tabular benchmark's splits: disjoint, reproducible, without constant columns."""

from __future__ import annotations

import numpy as np
import pytest

from cnflow.experiments.tabular.data import benchmark_split, mix6_table, split


@pytest.mark.parametrize("name", ["wine", "digits", "mix4"])
def test_splits_are_disjoint_reproducible_and_drop_constant_columns(name):
    parts, floor = benchmark_split(name, 0)
    again, _ = benchmark_split(name, 0)
    other, _ = benchmark_split(name, 1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["test"], other["test"])
    assert (np.ptp(parts["train"], axis=0) > 0).all()
    assert (floor is not None) == name.startswith("mix")
    if name == "digits":
        assert parts["train"].shape[1] < 64
        assert sum(len(v) for v in parts.values()) == 1797


def test_a_split_shares_every_row_out_once():
    train, val, test = split(50, seed=3)
    assert (len(train), len(val), len(test)) == (40, 5, 5)
    assert sorted(np.concatenate([train, val, test])) == list(range(50))


def test_the_full_run_table_is_written_once(tmp_path):
    path = mix6_table(tmp_path / "mix6.csv", rows=5)
    lines = path.read_text().splitlines()
    assert lines[0] == "x0,x1,x2,x3,x4,x5" and len(lines) == 6
    path.write_text("kept")
    assert mix6_table(path, rows=5).read_text() == "kept"
