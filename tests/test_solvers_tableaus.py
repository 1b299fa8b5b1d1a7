"""The Butcher tableaus (cnflow.solvers.tableaus) against rooted-tree order conditions
(independent of how the tableaus were built), and their validation."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from cnflow.solvers.tableaus import TABLEAUS, ButcherTableau


def _key(tree):
    return (_order(tree), repr(tree))


@cache
def _order(tree) -> int:
    return 1 + sum(_order(child) for child in tree)


@cache
def _trees(n: int) -> tuple:
    """All rooted trees with n nodes; a tree is the sorted tuple of its subtrees."""
    if n == 1:
        return ((),)
    return tuple(sorted({tuple(sorted(f, key=_key)) for f in _forests(n - 1, None)}, key=_key))


def _forests(m: int, largest):
    if m == 0:
        yield ()
        return
    for k in range(m, 0, -1):
        for tree in _trees(k):
            if largest is not None and _key(tree) > _key(largest):
                continue
            for rest in _forests(m - k, tree):
                yield (tree,) + rest


def _gamma(tree) -> int:
    return _order(tree) * math.prod(_gamma(child) for child in tree)


def _phi(tree, a: np.ndarray) -> np.ndarray:
    result = np.ones(a.shape[0])
    for child in tree:
        result = result * (a @ _phi(child, a))
    return result


def _order_defects(b, a_rows, max_order: int) -> dict[int, float]:
    s = len(b)
    a = np.zeros((s, s))
    for i, row in enumerate(a_rows):
        a[i, :len(row)] = row
    return {p: max(abs(np.dot(b, _phi(tree, a)) - 1.0 / _gamma(tree)) for tree in _trees(p))
            for p in range(1, max_order + 1)}


def test_tree_counts():
    # OEIS A000081: 1, 1, 2, 4, 9, 20, 48, 115 rooted trees with 1..8 nodes.
    assert [len(_trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_order_conditions(name):
    tab = TABLEAUS[name]
    defects = _order_defects(np.array(tab.b), tab.a, tab.order + 1)
    for p in range(1, tab.order + 1):
        assert defects[p] < 1e-12, f"{name}: order-{p} conditions violated by {defects[p]}"
    assert defects[tab.order + 1] > 1e-6, f"{name} is of higher order than declared"
    if tab.adaptive:
        embedded = np.array(tab.b) - np.array(tab.b_error)
        emb = _order_defects(embedded, tab.a, tab.error_order + 1)
        assert max(emb[p] for p in range(1, tab.error_order + 1)) < 1e-12
        assert emb[tab.error_order + 1] > 1e-6


def test_tableau_validation_rejects_bad_data():
    with pytest.raises(ValueError, match="sums to"):
        ButcherTableau(name="bad", order=1, c=(0.0, 0.5), a=((), (0.4,)), b=(0.5, 0.5),
                       b_error=None, error_order=None, interp=((1.0,),) * 3, interp_order=1)
