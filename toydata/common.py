"""Input validation and numerical helpers shared by the modules of `toydata`."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from functools import cache

import numpy as np

# Work arrays are (points x quadrature nodes); this caps one block at ~16 MB of float64.
_BLOCK_ELEMENTS = 1 << 21


def check_n(n: object, name: str = "n") -> int:
    """Return ``n`` as a Python int after checking that it is a positive integer.

    Args:
        n: Requested number of samples.
        name: Argument name used in error messages.

    Returns:
        ``int(n)``.

    Raises:
        TypeError: If ``n`` is not an integer (``bool`` is rejected too).
        ValueError: If ``n < 1``.
    """
    # bool is an Integral subclass, but sample(True) is almost certainly a bug.
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {n!r} of type {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return int(n)


def check_seed(seed: object) -> int | None:
    """Return ``seed`` as an int or None after checking it.

    Args:
        seed: ``None`` (fresh entropy) or a non-negative integer.

    Returns:
        ``None`` or ``int(seed)``.

    Raises:
        TypeError: If ``seed`` is neither None nor an integer.
        ValueError: If ``seed`` is negative.
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None or a non-negative int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be None or a non-negative int, got {seed!r}")
    return int(seed)


def check_points(x: object, name: str = "x", dim: int = 2) -> np.ndarray:
    """Convert ``x`` to a float64 array of shape (n, dim) with finite entries.

    Args:
        x: Array-like of points.
        name: Argument name used in error messages.
        dim: Required number of columns (2 for the 2-D data sets).

    Returns:
        A float64 array of shape (n, dim); ``n`` may be 0.

    Raises:
        TypeError: If ``x`` cannot be converted to a float array.
        ValueError: If ``x`` is not 2-D with ``dim`` columns, or holds NaN/inf.
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be a float array of shape (n, {dim}), got {type(x).__name__}"
        ) from exc
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr).all(axis=1)))
        raise ValueError(
            f"{name} must be finite, but {bad} of its {arr.shape[0]} rows hold NaN or inf"
        )
    return arr


def lookup(registry: Mapping[str, object], name: object, what: str) -> object:
    """Return ``registry[name]`` with an error listing the known names on a miss.

    Args:
        registry: Name -> object mapping.
        name: Requested key.
        what: Noun used in error messages ("dataset", "energy target").

    Returns:
        The registered object.

    Raises:
        TypeError: If ``name`` is not a string.
        ValueError: If ``name`` is not registered.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a str, got {name!r} of type {type(name).__name__}")
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {what} name {name!r}; known names: {known}") from None


@cache
def gauss_legendre(a: float, b: float, panels: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre rule on ``[a, b]`` with equal panels.

    Panels rather than one high-order rule, because the integrands here are sharp bumps
    of fixed width: panels keep every bump resolved without huge-order node sets.

    Args:
        a: Lower limit.
        b: Upper limit.
        panels: Number of equal sub-intervals.
        order: Gauss-Legendre nodes per sub-interval.

    Returns:
        ``(nodes, weights)``, each of shape (panels * order,); read-only arrays.
    """
    t, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(a, b, panels + 1)
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[:-1] + edges[1:])
    nodes = (mid[:, None] + half[:, None] * t[None, :]).ravel()
    weights = (half[:, None] * w[None, :]).ravel()
    # Cached arrays are shared between callers, so nobody may modify them in place.
    nodes.setflags(write=False)
    weights.setflags(write=False)
    return nodes, weights


def log_ndtr_diff(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``log(Phi(hi) - Phi(lo))`` for ``lo < hi``, accurate in both tails.

    Args:
        lo: Lower standardised limits.
        hi: Upper standardised limits (elementwise larger than ``lo``).

    Returns:
        The log probability mass of a standard normal on ``[lo, hi]``.
    """
    from scipy.special import log_ndtr

    # In the upper tail Phi(hi) - Phi(lo) cancels catastrophically; the mirrored form
    # Phi(-lo) - Phi(-hi) does not.
    flip = lo > 0
    a = np.where(flip, -hi, lo)
    b = np.where(flip, -lo, hi)
    lb = log_ndtr(b)
    d = log_ndtr(a) - lb  # <= 0
    # log(1 - e^d): expm1 near d = 0, log1p far from it.
    return lb + np.where(d > -0.6931471805599453, np.log(-np.expm1(d)), np.log1p(-np.exp(d)))


def row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Yield row slices so that each (rows x n_cols) block stays below the memory cap.

    Args:
        n_rows: Number of rows (points) to cover.
        n_cols: Number of columns (quadrature nodes) per row of the work array.

    Yields:
        Consecutive slices covering ``range(n_rows)``.
    """
    step = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise logsumexp of a 2-D array, computed in place (``a`` is overwritten).

    scipy's logsumexp is several times slower on the large (points x nodes) tables
    here, and in-place work halves the memory traffic.

    Args:
        a: Array of shape (n, k); overwritten.

    Returns:
        Shape (n,); ``-inf`` for rows that are all ``-inf``.
    """
    peak = a.max(axis=1)
    # Rows that are all -inf would give nan below; their result is -inf anyway.
    safe = np.where(np.isfinite(peak), peak, 0.0)
    a -= safe[:, None]
    np.exp(a, out=a)
    with np.errstate(divide="ignore"):
        return np.log(a.sum(axis=1)) + safe
