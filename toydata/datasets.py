"""Two-dimensional toy data sets with exact samplers and their true log-densities.

Every data set is an instance of a `ToyDataset` subclass with

* ``sample(n, seed)`` -- ``n`` points as a float64 array of shape (n, 2), reproducible
  for a given integer ``seed``;
* ``log_prob(x)`` -- the true log-density of the sampling distribution (in the limit
  n -> infinity where the sampler spaces points deterministically), vectorised;
* ``entropy()`` -- the differential entropy ``-E[log p]`` in nats, i.e. the floor that
  no model's expected test negative log-likelihood can go below. It is computed once by
  2-D quadrature of ``-p log p`` on a grid that holds all but < 1e-6 of the mass, and
  cached.

Coordinates are the raw ones of the generators (no standardisation), so that the
entropies quoted here are the floors for data exactly as sampled.

Higher-dimensional sets built from these (`toydata.mixed`) share the registry
`DATASETS`; ``names(dim=2)`` lists the 2-D sets only.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod

import numpy as np
from scipy.special import i0e, logsumexp, ndtr
from sklearn.datasets import make_circles, make_moons, make_swiss_roll

from toydata._common import (
    check_n,
    check_points,
    check_seed,
    gauss_legendre,
    log_ndtr_diff,
    lookup,
)

__all__ = [
    "DATASETS",
    "Checkerboard",
    "EightGaussians",
    "Pinwheel",
    "Rings",
    "SwissRoll",
    "ToyDataset",
    "TwoCircles",
    "TwoMoons",
    "TwoSpirals",
    "get",
    "names",
]

_LOG_2PI = math.log(2.0 * math.pi)
# Work arrays are (points x quadrature nodes); this caps one block at ~16 MB of float64.
_BLOCK_ELEMENTS = 1 << 21


def _blocks(n_rows: int, n_cols: int):
    """Yield row slices so that each (rows x n_cols) block stays below the memory cap."""
    step = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise logsumexp of a 2-D array, computed in place (``a`` is overwritten).

    scipy's logsumexp is several times slower on the large (points x nodes) tables
    here, and in-place work halves the memory traffic.
    """
    peak = a.max(axis=1)
    # Rows that are all -inf would give nan below; their result is -inf anyway.
    safe = np.where(np.isfinite(peak), peak, 0.0)
    a -= safe[:, None]
    np.exp(a, out=a)
    with np.errstate(divide="ignore"):
        return np.log(a.sum(axis=1)) + safe


class ToyDataset(ABC):
    """A distribution with a sampler, its exact log-density and its entropy.

    Subclasses set ``name``, ``description`` and the entropy grid (``_grid_box``,
    ``_grid_step``) and implement ``_sample`` and ``_log_prob``; the public methods
    validate the inputs. The entropy grid is 2-D: subclasses with ``dim > 2`` (see
    `toydata.mixed`) override ``entropy``.

    Attributes:
        name: Registry key.
        dim: Dimension of the data: 2 for the data sets of this module.
        description: One-line summary of the generator.
    """

    name: str = ""
    dim: int = 2
    description: str = ""
    # (x_lo, x_hi, y_lo, y_hi) and spacing of the midpoint grid used for the entropy.
    _grid_box: tuple[float, float, float, float] = (-1.0, 1.0, -1.0, 1.0)
    _grid_step: float = 0.05

    def __init__(self) -> None:
        self._entropy_cache: float | None = None
        self._grid_mass: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Draw ``n`` points.

        Args:
            n: Number of points, a positive int.
            seed: Non-negative int for reproducible output, or None for fresh entropy.

        Returns:
            Float64 array of shape (n, dim).

        Raises:
            TypeError: If ``n`` or ``seed`` is not an int (or None for ``seed``).
            ValueError: If ``n < 1`` or ``seed < 0``.
        """
        n = check_n(n)
        seed = check_seed(seed)
        return np.ascontiguousarray(self._sample(n, seed), dtype=np.float64)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Exact log-density of the sampling distribution.

        Args:
            x: Points, array-like of shape (n, dim) with finite entries.

        Returns:
            Float64 array of shape (n,); ``-inf`` where the density is zero.

        Raises:
            TypeError: If ``x`` is not numeric.
            ValueError: If ``x`` does not have shape (n, dim) or holds NaN/inf.
        """
        return self._log_prob(check_points(x, dim=self.dim))

    def entropy(self) -> float:
        """Differential entropy ``-E[log p(x)]`` in nats (computed once, then cached).

        This is the lowest expected negative log-likelihood per sample that any model
        can reach on data from this distribution.

        Returns:
            The entropy in nats.

        Raises:
            RuntimeError: If the quadrature grid misses more than 1e-6 of the mass (a bug
                in the grid specification, not a user error).
        """
        if self._entropy_cache is None:
            mass, ent = self._grid_integrals()
            if abs(mass - 1.0) > 1e-6:
                raise RuntimeError(
                    f"{self.name}: the entropy grid holds mass {mass!r}, not 1 within 1e-6"
                )
            self._grid_mass = mass
            self._entropy_cache = ent
        return self._entropy_cache

    def _grid_axes(self, step: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Cell midpoints of the entropy grid along each axis, and the cell size."""
        h = self._grid_step if step is None else step
        x_lo, x_hi, y_lo, y_hi = self._grid_box
        nx = math.ceil((x_hi - x_lo) / h)
        ny = math.ceil((y_hi - y_lo) / h)
        xs = x_lo + h * (np.arange(nx) + 0.5)
        ys = y_lo + h * (np.arange(ny) + 0.5)
        return xs, ys, h

    def _log_prob_grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Log-density on the tensor grid ``xs x ys``, shape (len(xs), len(ys)).

        Overridden where the density is separable enough to be evaluated much faster
        on a grid than point by point.
        """
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        pts = np.column_stack([gx.ravel(), gy.ravel()])
        return self._log_prob(pts).reshape(len(xs), len(ys))

    def _grid_integrals(self, step: float | None = None) -> tuple[float, float]:
        """Midpoint-rule mass and entropy on the grid.

        The midpoint rule on a uniform grid converges spectrally for densities that are
        smooth on the grid scale and negligible at the box edge; every grid step here is
        at most half the noise std. Refining the step or shifting the grid changes the
        entropies by < 4e-7 (pinwheel, whose blades thin out in the tails and whose
        density spikes along its folds) and < 1e-8 (the rest).
        """
        xs, ys, h = self._grid_axes(step)
        lp = self._log_prob_grid(xs, ys)
        p = np.exp(lp)
        # 0 * log 0 = 0 where the density underflows or is exactly zero.
        plogp = np.where(p > 0.0, p * np.where(np.isfinite(lp), lp, 0.0), 0.0)
        cell = h * h
        return float(p.sum() * cell), float(-plogp.sum() * cell)

    @abstractmethod
    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        """Draw ``n`` points with validated arguments."""

    @abstractmethod
    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        """Log-density at validated points of shape (n, dim)."""


# ----------------------------------------------------------------------------- curves


def _curve_log_density(
    x: np.ndarray,
    curves: list[tuple[np.ndarray, np.ndarray]],
    log_weights: np.ndarray,
    sigma: float,
) -> np.ndarray:
    """log of ``sum_k w_k N(x; c_k, sigma^2 I)`` for quadrature nodes ``c_k`` on curves.

    Args:
        x: Points, shape (n, 2).
        curves: ``(cx, cy)`` node coordinates per curve; all concatenated.
        log_weights: Log quadrature weights (already including mixture weights and the
            density of the curve parameter), one per node, same order as ``curves``.
        sigma: Isotropic noise standard deviation.

    Returns:
        Shape (n,).
    """
    cx = np.concatenate([c[0] for c in curves])
    cy = np.concatenate([c[1] for c in curves])
    c = np.stack([cx, cy])  # (2, K)
    cc = cx * cx + cy * cy
    inv2s2 = 0.5 / (sigma * sigma)
    norm = -math.log(2.0 * math.pi * sigma * sigma)
    out = np.empty(x.shape[0])
    for rows in _blocks(x.shape[0], c.shape[1]):
        xb = x[rows]
        xx = np.einsum("ij,ij->i", xb, xb)
        # Expanded square: one matrix product instead of an (n, K, 2) temporary.
        d2 = np.maximum(xx[:, None] - 2.0 * (xb @ c) + cc[None, :], 0.0)
        d2 *= -inv2s2
        d2 += log_weights[None, :]
        out[rows] = _logsumexp_rows(d2) + norm
    return out


class TwoMoons(ToyDataset):
    """Two interleaving half circles: ``sklearn.datasets.make_moons(n, noise=0.1)``.

    Sampling is exactly ``make_moons(n, noise=0.1, random_state=seed)[0]``: the outer
    arc holds ``n // 2`` points ``(cos t, sin t)`` and the inner arc ``n - n // 2``
    points ``(1 - cos t, 1 - sin t - 0.5)``, with ``t = linspace(0, pi)`` on each arc
    (endpoints included); the rows are shuffled and N(0, 0.1^2) noise is added to each
    coordinate.

    True density (in the limit n -> infinity): each arc with probability 1/2, ``t``
    uniform on [0, pi], plus isotropic Gaussian noise with std 0.1. ``log_prob``
    integrates over ``t`` with a composite Gauss-Legendre rule (4 panels x 64 nodes
    per arc) in log space (logsumexp over nodes); against 4096 nodes per arc it agrees
    to < 1e-12 on all of [-6, 6]^2.
    """

    name = "two_moons"
    description = "sklearn make_moons(n, noise=0.1): two interleaved half circles, raw coordinates"
    noise = 0.1
    _grid_box = (-2.0, 3.0, -1.5, 2.0)
    _grid_step = 0.04
    _panels = 4
    _order = 64

    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        return make_moons(n, noise=self.noise, random_state=seed)[0]

    def sample_with_labels(self, n: int, seed: int | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """The points of :meth:`sample` (the same for a seed) with their moon: 0 outer,
        1 inner; a conditional density model's data."""
        x, labels = make_moons(check_n(n), noise=self.noise, random_state=check_seed(seed))
        return np.ascontiguousarray(x, dtype=np.float64), labels.astype(np.int64)

    def conditional_log_prob(self, x: np.ndarray, label: int | np.ndarray) -> np.ndarray:
        """Exact ``log p(x | moon)``: one arc, ``t`` uniform on [0, pi], noise 0.1.

        ``label`` is 0 (outer) or 1 (inner), or one such label per point.
        """
        x = check_points(x, dim=2)
        labels = np.broadcast_to(np.asarray(label), (len(x),))
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"label must be 0 (outer moon) or 1 (inner moon), got "
                             f"{sorted(set(labels.tolist()) - {0, 1})[:5]}")
        curves, logw = self._nodes(self._panels, self._order)
        half = len(logw) // 2
        out = np.empty(len(x))
        for moon in (0, 1):
            rows = labels == moon
            if rows.any():
                # The arc's own density: its nodes' weights without the mixture's 1/2.
                out[rows] = _curve_log_density(x[rows], [curves[moon]],
                                               logw[:half] + math.log(2.0), self.noise)
        return out

    def _nodes(self, panels: int, order: int):
        t, w = gauss_legendre(0.0, math.pi, panels, order)
        outer = (np.cos(t), np.sin(t))
        inner = (1.0 - np.cos(t), 0.5 - np.sin(t))
        # Arc probability 1/2 times the uniform density 1/pi of t.
        logw = np.log(w) - math.log(2.0 * math.pi)
        return [outer, inner], np.concatenate([logw, logw])

    def _log_prob(self, x: np.ndarray, panels: int | None = None, order: int | None = None):
        curves, logw = self._nodes(panels or self._panels, order or self._order)
        return _curve_log_density(x, curves, logw, self.noise)


class SwissRoll(ToyDataset):
    """FFJORD's swiss roll: ``make_swiss_roll(n, noise=1.0)[0][:, [0, 2]] / 5``.

    Sampling is exactly ``sklearn.datasets.make_swiss_roll(n, noise=1.0,
    random_state=seed)[0][:, [0, 2]] / 5`` (FFJORD casts to float32; this keeps
    float64): ``t ~ U[1.5 pi, 4.5 pi]``, point ``(t cos t, t sin t) / 5`` plus
    N(0, 0.2^2) noise per coordinate (sklearn's unit noise, divided by 5).

    True density: ``p(x) = 1/(3 pi) * int N(x; (t cos t, t sin t)/5, 0.04 I) dt`` over
    ``t`` in [1.5 pi, 4.5 pi], by composite Gauss-Legendre quadrature (16 panels x 48
    nodes) in log space; against 4096 nodes it agrees to < 1e-12 on all of [-6, 6]^2.
    """

    name = "swissroll"
    description = "FFJORD swiss roll: sklearn make_swiss_roll(n, noise=1.0), columns (0, 2), / 5"
    noise = 0.2
    _grid_box = (-4.6, 4.6, -4.6, 4.6)
    _grid_step = 0.08
    _panels = 16
    _order = 48

    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        return make_swiss_roll(n, noise=1.0, random_state=seed)[0][:, [0, 2]] / 5.0

    def _log_prob(self, x: np.ndarray, panels: int | None = None, order: int | None = None):
        lo, hi = 1.5 * math.pi, 4.5 * math.pi
        t, w = gauss_legendre(lo, hi, panels or self._panels, order or self._order)
        curve = (t * np.cos(t) / 5.0, t * np.sin(t) / 5.0)
        logw = np.log(w) - math.log(hi - lo)
        return _curve_log_density(x, [curve], logw, self.noise)


# ----------------------------------------------------------------------------- rings


def _ring_log_density(r: np.ndarray, radius: float, sigma: float) -> np.ndarray:
    """log density at distance ``r`` from the origin of a uniform ring convolved with N(0, s^2 I).

    ``p = exp(-(r^2 + R^2) / (2 s^2)) I0(r R / s^2) / (2 pi s^2)``; with the exponentially
    scaled ``i0e(z) = exp(-z) I0(z)`` the large exponents cancel analytically:
    ``log p = -(r - R)^2 / (2 s^2) + log i0e(r R / s^2) - log(2 pi s^2)``.
    """
    s2 = sigma * sigma
    z = r * radius / s2
    return -((r - radius) ** 2) / (2.0 * s2) + np.log(i0e(z)) - math.log(2.0 * math.pi * s2)


class TwoCircles(ToyDataset):
    """Two concentric circles: ``sklearn.datasets.make_circles(n, noise=0.06, factor=0.5)``.

    Sampling is exactly ``make_circles(n, noise=0.06, factor=0.5,
    random_state=seed)[0]``: ``n // 2`` points on the unit circle and ``n - n // 2`` on
    the circle of radius 0.5, at angles ``linspace(0, 2 pi, endpoint=False)``, shuffled,
    plus N(0, 0.06^2) noise per coordinate.

    True density (in the limit n -> infinity): each circle with probability 1/2, angle
    uniform, plus isotropic Gaussian noise. A ring of radius R blurred by N(0, s^2 I)
    has the closed form ``exp(-(r^2 + R^2) / (2 s^2)) I0(r R / s^2) / (2 pi s^2)``.
    """

    name = "two_circles"
    description = "sklearn make_circles(n, noise=0.06, factor=0.5): radii 1 and 0.5"
    noise = 0.06
    radii = (1.0, 0.5)
    _grid_box = (-1.6, 1.6, -1.6, 1.6)
    _grid_step = 0.02

    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        return make_circles(n, noise=self.noise, factor=0.5, random_state=seed)[0]

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        r = np.hypot(x[:, 0], x[:, 1])
        terms = [_ring_log_density(r, rad, self.noise) for rad in self.radii]
        return logsumexp(np.stack(terms), axis=0) - math.log(len(self.radii))


class Rings(ToyDataset):
    """FFJORD's four concentric rings.

    Sampling follows FFJORD's ``rings`` (with a seeded ``numpy.random.Generator``
    instead of the global state, and float64): ``n // 4`` points on each of the circles
    of radius 3, 2.25 and 1.5 and the remaining ``n - 3 (n // 4)`` on radius 0.75
    (FFJORD's radii 1, 0.75, 0.5, 0.25 times 3), at angles
    ``linspace(0, 2 pi, endpoint=False)`` per circle, rows shuffled, plus N(0, 0.08^2)
    noise per coordinate.

    True density (in the limit n -> infinity, where every ring holds 1/4 of the mass):
    ``sum_j 1/4 * exp(-(r^2 + R_j^2) / (2 s^2)) I0(r R_j / s^2) / (2 pi s^2)``.
    """

    name = "rings"
    description = "FFJORD rings: 4 circles, radii 3, 2.25, 1.5, 0.75, noise 0.08"
    noise = 0.08
    radii = (3.0, 2.25, 1.5, 0.75)
    _grid_box = (-3.8, 3.8, -3.8, 3.8)
    _grid_step = 0.04

    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        quarter = n // 4
        counts = (quarter, quarter, quarter, n - 3 * quarter)
        parts = []
        for rad, count in zip(self.radii, counts):
            ang = np.linspace(0.0, 2.0 * math.pi, count, endpoint=False)
            parts.append(rad * np.column_stack([np.cos(ang), np.sin(ang)]))
        pts = np.concatenate(parts)[rng.permutation(n)]
        return pts + rng.normal(scale=self.noise, size=pts.shape)

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        r = np.hypot(x[:, 0], x[:, 1])
        terms = [_ring_log_density(r, rad, self.noise) for rad in self.radii]
        return logsumexp(np.stack(terms), axis=0) - math.log(len(self.radii))


# ----------------------------------------------------------------------------- mixtures


class EightGaussians(ToyDataset):
    """FFJORD's eight Gaussians.

    Sampling follows FFJORD's ``8gaussians`` (vectorised, seeded
    ``numpy.random.Generator``, float64): pick one of the 8 centers ``4 u`` uniformly,
    ``u`` in ``(±1, 0), (0, ±1), (±1/sqrt 2, ±1/sqrt 2)`` (unit vectors), add
    N(0, 0.5^2) noise per coordinate, then divide the point by 1.414 (FFJORD's literal
    constant, not sqrt 2).

    True density: the equal-weight mixture of N(c_j / 1.414, (0.5 / 1.414)^2 I).
    """

    name = "8gaussians"
    description = "FFJORD 8gaussians: 8 compass-point Gaussians, radius 4/1.414, std 0.5/1.414"
    scale = 4.0
    std = 0.5
    divisor = 1.414
    _grid_box = (-6.0, 6.0, -6.0, 6.0)
    _grid_step = 0.1

    @property
    def centers(self) -> np.ndarray:
        """The 8 centers before the division by 1.414, shape (8, 2)."""
        s = 1.0 / math.sqrt(2.0)
        unit = [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
        return self.scale * np.array(unit, dtype=np.float64)

    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        idx = rng.integers(8, size=n)
        pts = rng.standard_normal((n, 2)) * self.std + self.centers[idx]
        return pts / self.divisor

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        mu = self.centers / self.divisor
        s = self.std / self.divisor
        d2 = ((x[:, None, :] - mu[None, :, :]) ** 2).sum(axis=-1)
        log_comp = -0.5 * d2 / (s * s) - math.log(2.0 * math.pi * s * s)
        return logsumexp(log_comp, axis=1) - math.log(8.0)


class Checkerboard(ToyDataset):
    """FFJORD's checkerboard: uniform on 8 of the 16 squares of side 2 in [-4, 4)^2.

    Sampling follows FFJORD's ``checkerboard`` (seeded ``numpy.random.Generator``,
    float64): ``x1 ~ U[-2, 2)``, ``x2 = U[0, 1) - 2 B + (floor(x1) mod 2)`` with
    ``B ~ Bernoulli(1/2)``, and the point ``(x1, x2)`` is multiplied by 2.

    True density: ``1/32`` on the squares ``[2i, 2i + 2) x [2j, 2j + 2)``,
    ``i, j in {-2, ..., 1}`` with ``i + j`` even, and 0 elsewhere; entropy ``log 32``
    exactly. The density is discontinuous, so grid integrals of it are only exact on
    grids aligned with the squares.
    """

    name = "checkerboard"
    description = "FFJORD checkerboard: uniform on 8 of 16 squares of side 2 in [-4, 4)^2"
    _grid_box = (-4.0, 4.0, -4.0, 4.0)
    _grid_step = 0.25

    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x1 = rng.random(n) * 4.0 - 2.0
        x2 = rng.random(n) - rng.integers(0, 2, size=n) * 2.0 + np.floor(x1) % 2.0
        return np.column_stack([x1, x2]) * 2.0

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        u = np.floor(x / 2.0)
        inside = np.all((u >= -2.0) & (u <= 1.0), axis=1) & ((u[:, 0] + u[:, 1]) % 2.0 == 0.0)
        return np.where(inside, -math.log(32.0), -np.inf)

    def entropy(self) -> float:
        """Differential entropy: exactly ``log 32`` nats (uniform on area 32).

        Returns:
            ``log(32)``.
        """
        return math.log(32.0)


# ----------------------------------------------------------------------------- spirals


class TwoSpirals(ToyDataset):
    """FFJORD's two spirals.

    Sampling follows FFJORD's ``2spirals`` with a seeded ``numpy.random.Generator``:
    for each arm, ``m = sqrt(U) * 540 * 2 pi / 360`` (so ``m`` has density
    ``2 m / c^2`` on ``[0, c]``, ``c = 3 pi``), ``d = (-cos(m) m + 0.5 U1,
    sin(m) m + 0.5 U2)`` with independent ``U, U1, U2 ~ U[0, 1)``; the first arm is
    ``d / 3`` (``n - n // 2`` points), the second ``-d / 3`` (``n // 2`` points), then
    N(0, 0.1^2) noise per coordinate and the rows are shuffled. Differences from
    FFJORD: FFJORD mirrors the *same* draws into the second arm (so its points come in
    antithetic pairs), returns ``2 (n // 2)`` points and does not shuffle; here every
    point is independent, which is the same marginal distribution.

    True density (in the limit n -> infinity: the arm counts are fixed, not random):
    ``p(x) = (q(x) + q(-x)) / 2`` with
    ``q(x) = int_0^c (2 m / c^2) g(x1; -cos(m) m / 3) g(x2; sin(m) m / 3) dm`` and
    ``g(x; a) = 6 [Phi((x - a) / 0.1) - Phi((x - a - 1/6) / 0.1)]``, the density of
    ``U[a, a + 1/6) + N(0, 0.1^2)``. The ``m``-integral uses Gauss-Legendre panels whose
    edges are equally spaced in ``m^2`` (the curve moves faster as ``m`` grows): 6
    panels x 80 nodes, which agree with 4096 nodes to 1e-13 where log p > -30 and to
    1e-8 on all of [-5, 5]^2. It is evaluated in log space, skipping only nodes provably
    40 nats below the dominant one, so far-away points get accurate finite values.
    """

    name = "2spirals"
    description = "FFJORD 2spirals: two interleaved Archimedean spirals, uniform jitter, noise 0.1"
    noise = 0.1
    jitter = 0.5 / 3.0
    turn = 540.0 * 2.0 * math.pi / 360.0
    _grid_box = (-4.4, 4.4, -4.4, 4.4)
    _grid_step = 0.05
    _panels = 6
    _order = 80

    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        m = np.sqrt(rng.random(n)) * self.turn
        d = np.column_stack(
            [-np.cos(m) * m + rng.random(n) * 0.5, np.sin(m) * m + rng.random(n) * 0.5]
        )
        d[n - n // 2 :] *= -1.0
        x = d / 3.0 + rng.normal(scale=self.noise, size=(n, 2))
        return x[rng.permutation(n)]

    def _nodes(self, panels: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Curve offsets ``a1, a2`` and log weights (incl. the m-density) of the nodes."""
        c = self.turn
        t, w = np.polynomial.legendre.leggauss(order)
        edges = c * np.sqrt(np.linspace(0.0, 1.0, panels + 1))
        half = 0.5 * np.diff(edges)[:, None]
        mid = 0.5 * (edges[:-1] + edges[1:])[:, None]
        m = (mid + half * t).ravel()
        wm = (half * w).ravel()
        logw = np.log(wm) + np.log(2.0 * m / (c * c))
        return -np.cos(m) * m / 3.0, np.sin(m) * m / 3.0, logw

    def _log_g(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Log density of ``U[a, a + h) + N(0, s^2)`` at x, broadcast (log space)."""
        s, h = self.noise, self.jitter
        return log_ndtr_diff((x - a - h) / s, (x - a) / s) - math.log(h)

    def _g(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Density of ``U[a, a + h) + N(0, s^2)`` at x, broadcast (linear space)."""
        s, h = self.noise, self.jitter
        # The density depends only on |x - centre|; using the mirrored (lower-tail) side
        # keeps the difference of CDFs free of cancellation.
        c = -np.abs(x - a - 0.5 * h) / s
        k = 0.5 * h / s
        return (ndtr(c + k) - ndtr(c - k)) / h

    def _log_g_fast(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        """`_log_g` via linear-space CDFs where they do not underflow (~5x cheaper)."""
        with np.errstate(divide="ignore"):
            out = np.log(self._g(x, a))
        tiny = ~(out > -600.0)
        if np.any(tiny):
            out[tiny] = self._log_g(x[tiny], a[tiny])
        return out

    def _log_q(self, pts: np.ndarray, a1: np.ndarray, a2: np.ndarray, logw: np.ndarray):
        """``log q`` (one arm, see the class docstring) at points of shape (n, 2).

        Only nodes that can matter are evaluated exactly: with ``d`` the distance from
        ``x`` to the node's jitter square ``[a1, a1 + h] x [a2, a2 + h]``, the node's term
        is at most ``w exp(-d^2 / (2 s^2)) / h^2``. Nodes whose bound is 40 nats below
        the exact term of the node with the largest bound are dropped; with 480 nodes
        that changes q by a relative < 1e-14, at any distance from the spiral.
        """
        s, h = self.noise, self.jitter
        inv2s2 = 0.5 / (s * s)
        c1, c2 = a1 + 0.5 * h, a2 + 0.5 * h
        base = logw - 2.0 * math.log(h)
        out = np.empty(pts.shape[0])
        for rows in _blocks(pts.shape[0], 3 * a1.size):
            x1, x2 = pts[rows, 0], pts[rows, 1]
            # In place: these (points x nodes) tables dominate the cost.
            t1 = np.abs(x1[:, None] - c1)
            t1 -= 0.5 * h
            np.maximum(t1, 0.0, out=t1)
            t1 *= t1
            t2 = np.abs(x2[:, None] - c2)
            t2 -= 0.5 * h
            np.maximum(t2, 0.0, out=t2)
            t2 *= t2
            t1 += t2
            t1 *= -inv2s2
            t1 += base
            best = np.argmax(t1, axis=1)
            ref = logw[best] + self._log_g_fast(x1, a1[best]) + self._log_g_fast(x2, a2[best])
            r, c = np.nonzero(t1 >= (ref - 40.0)[:, None])
            term = logw[c] + self._log_g_fast(x1[r], a1[c]) + self._log_g_fast(x2[r], a2[c])
            total = np.bincount(r, weights=np.exp(term - ref[r]), minlength=x1.size)
            out[rows] = ref + np.log(total)
        return out

    def _log_prob(self, x: np.ndarray, panels: int | None = None, order: int | None = None):
        a1, a2, logw = self._nodes(panels or self._panels, order or self._order)
        n = x.shape[0]
        # Arm -d/3 at x is arm d/3 at -x.
        lq = self._log_q(np.concatenate([x, -x]), a1, a2, logw)
        return np.logaddexp(lq[:n], lq[n:]) - math.log(2.0)

    def _log_prob_grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        # The integrand factorises in x1 and x2, so on a tensor grid the m-integral is a
        # matrix product: O((nx + ny) K) CDF evaluations instead of O(nx ny K).
        a1, a2, logw = self._nodes(self._panels, self._order)
        w = np.exp(logw)
        xcol, ycol = xs[:, None], ys[:, None]
        plus = (self._g(xcol, a1) * w) @ self._g(ycol, a2).T
        minus = (self._g(-xcol, a1) * w) @ self._g(-ycol, a2).T
        with np.errstate(divide="ignore"):
            return np.log(0.5 * (plus + minus))


# ----------------------------------------------------------------------------- pinwheel


def _bisect(f, a: np.ndarray, b: np.ndarray, steps: int = 48) -> np.ndarray:
    """Vectorised bisection for brackets ``[a, b]`` on which ``f`` changes sign once.

    Used for the few extremum searches in cells next to a fold, where the slope of the
    searched function is itself near zero and Newton's method is unreliable; 48 halvings
    of a cell < 1 wide reach ~1e-15.
    """
    fa = f(a)
    for _ in range(steps):
        mid = 0.5 * (a + b)
        fm = f(mid)
        same = (fm > 0.0) == (fa > 0.0)
        a = np.where(same, mid, a)
        fa = np.where(same, fm, fa)
        b = np.where(same, b, mid)
    return 0.5 * (a + b)


def _newton_in_bracket(
    f_and_slope,
    a: np.ndarray,
    b: np.ndarray,
    f_a: np.ndarray,
    f_b: np.ndarray,
    f_tol: float = 0.0,
    max_iter: int = 100,
) -> np.ndarray:
    """Vectorised safeguarded Newton for brackets ``[a, b]`` holding one sign change.

    Newton steps that would leave the (shrinking) bracket are replaced by bisection, so
    it cannot diverge where the slope vanishes (next to a fold) yet converges
    quadratically elsewhere; converged entries drop out of the working set.

    Args:
        f_and_slope: ``(r, sel) -> (f, f')`` where ``sel`` indexes the brackets.
        a: Lower bracket ends.
        b: Upper bracket ends.
        f_a: ``f`` at ``a`` as seen when bracketing (only its sign is used).
        f_b: ``f`` at ``b`` likewise; ``f_b > 0`` must differ from ``f_a > 0``, and a
            zero ``f_b`` means the root is ``b`` itself.
        f_tol: Stop once ``|f| <= f_tol`` (the rounding noise of ``f``).
        max_iter: Iteration cap (bisection alone needs < 60 for cells < 1 wide).

    Returns:
        The roots, same shape as ``a``.
    """
    lo, hi = a.astype(np.float64), b.astype(np.float64)
    out = hi.copy()
    # Zero counts as "not positive" when bracketing, so a zero at b is b's own root.
    sel = np.flatnonzero(f_b != 0.0)
    lo, hi, f_lo, f_hi = lo[sel], hi[sel], f_a[sel], f_b[sel]
    lo_pos = f_lo > 0.0
    # Start from the secant point: in a monotone cell it is already close to the root.
    x = lo - f_lo * (hi - lo) / (f_hi - f_lo)
    x = np.where((x > lo) & (x < hi), x, 0.5 * (lo + hi))
    for _ in range(max_iter):
        if sel.size == 0:
            break
        fx, dfx = f_and_slope(x, sel)
        same = (fx > 0.0) == lo_pos
        lo = np.where(same, x, lo)
        hi = np.where(same, hi, x)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = x - fx / dfx
        # Inclusive: at convergence the step lands on the bracket end x just became.
        inside = (step >= lo) & (step <= hi)
        x_new = np.where(inside, step, 0.5 * (lo + hi))
        tol = 4e-15 * np.maximum(1.0, np.abs(x))
        # |f| <= f_tol: f is at its rounding noise, where Newton would only hop around
        # the root (badly so next to a fold, where f' is small).
        done = (inside & (np.abs(step - x) <= tol)) | (np.abs(fx) <= f_tol) | (hi - lo <= tol)
        out[sel] = np.where(np.abs(fx) <= f_tol, x, x_new)
        keep = ~done
        sel, lo, hi, lo_pos, x = sel[keep], lo[keep], hi[keep], lo_pos[keep], x_new[keep]
    return out


class Pinwheel(ToyDataset):
    """FFJORD's pinwheel: five sheared Gaussian blades.

    Sampling follows FFJORD's ``pinwheel`` (seeded ``numpy.random.Generator``,
    float64): features ``r ~ N(1, 0.3^2)`` (radial) and ``tau ~ N(0, 0.1^2)``
    (tangential); class ``k`` in {0..4} with equal counts (``n // 5`` each, the first
    ``n mod 5`` classes get one more -- FFJORD drops the remainder); angle
    ``alpha = 2 pi k / 5 + 0.25 exp(r)``; point
    ``y = 2 (r cos alpha + tau sin alpha, -r sin alpha + tau cos alpha)``, i.e. ``2``
    times ``(r, tau)`` rotated by ``-alpha``; rows permuted.

    True density (in the limit n -> infinity: the class counts are fixed, not random),
    by change of variables, summing over all preimages: with
    ``y / 2 = rho (cos psi, sin psi)``, the preimages of ``y`` under class ``k`` are the
    roots ``r`` of ``rho cos(psi + 2 pi k / 5 + 0.25 e^r) = r`` with
    ``tau = rho sin(psi + 2 pi k / 5 + 0.25 e^r)``, and each contributes
    ``N(r; 1, 0.09) N(tau; 0, 0.01) / (5 * 4 |1 + 0.25 e^r tau|)``. The map folds
    (the Jacobian vanishes on ``tau = -4 e^{-r}``), so a point can have several
    preimages per class, and the density has integrable spikes along the fold images,
    which lie in the far tails (the feature density there is below ~e^-17 of its peak).

    Roots are bracketed on a fixed grid in ``r``, fine both in ``r`` (0.1) and in the
    phase ``0.25 e^r`` (0.2 rad); cells that may hide a close root pair next to a fold
    are split at their extremum; each root is then polished by bracketed Newton to
    machine precision. This assumes at most one extremum of the root function per cell,
    which fails only at the cusps where a fold ends. Only preimages with
    ``|r - 1| <= 12 * 0.3`` are searched: the dropped part of the distribution has total
    mass 2 Phi(-12) < 4e-33. Points with ``|x| > 9.2`` (``rho > 4.6``) have their
    dominant preimages outside that window, so ``log_prob`` returns ``-inf`` there
    instead of an inexact value; the true log-density is below about -71 at
    ``|x| = 9.2`` and falls fast (-89 at 10, -113 at 11). Against a dense independent
    root scan (400k nodes) log_prob agrees to < 1e-10 on [-7, 7]^2, and against a
    search window twice as wide to < 1e-10 for ``|x| <= 9``.
    """

    name = "pinwheel"
    description = "FFJORD pinwheel: 5 blades, radial std 0.3, tangential std 0.1, rate 0.25, x2"
    radial_std = 0.3
    tangential_std = 0.1
    num_classes = 5
    rate = 0.25
    _r_window = 12.0  # searched preimages: |r - 1| <= window * radial_std
    _dr = 0.1
    _dphase = 0.2
    _grid_box = (-6.2, 6.2, -6.2, 6.2)
    _grid_step = 0.05

    def __init__(self) -> None:
        super().__init__()
        lo = 1.0 - self._r_window * self.radial_std
        hi = 1.0 + self._r_window * self.radial_std
        # Nodes uniform in r joined with nodes uniform in the phase 0.25 e^r, so that no
        # bracketing cell spans much of a turn where the phase spins fast (large r).
        by_r = np.arange(lo, hi, self._dr)
        ph = np.arange(self.rate * math.exp(lo), self.rate * math.exp(hi), self._dphase)
        self._r_nodes = np.unique(np.concatenate([by_r, np.log(ph / self.rate), [lo, hi]]))
        self._phase_nodes = self.rate * np.exp(self._r_nodes)

    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        k = self.num_classes
        counts = np.full(k, n // k)
        counts[: n % k] += 1
        labels = np.repeat(np.arange(k), counts)
        feat = rng.standard_normal((n, 2)) * np.array([self.radial_std, self.tangential_std])
        feat[:, 0] += 1.0
        rads = np.linspace(0.0, 2.0 * math.pi, k, endpoint=False)
        ang = rads[labels] + self.rate * np.exp(feat[:, 0])
        c, s = np.cos(ang), np.sin(ang)
        out = np.column_stack([feat[:, 0] * c + feat[:, 1] * s, -feat[:, 0] * s + feat[:, 1] * c])
        return 2.0 * out[rng.permutation(n)]

    def _roots(self, rho: np.ndarray, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All preimage radii ``r`` in the window, the point each belongs to, and its angle.

        Per point and class, ``g(r) = rho cos(shift + 0.25 e^r) - r`` (``shift = psi +
        2 pi k / 5``) is tabulated on the node grid. A cell with a sign change holds one
        root. A cell without one can still hold a close pair of roots next to a fold,
        which a plain sign-change scan misses: such cells are found by a curvature bound,
        split at their extremum, and each monotone half is searched. This assumes at
        most one extremum of ``g`` per cell, which only fails at the cusps where a fold
        ends.
        """
        k = self.num_classes
        r_nodes, ph_nodes = self._r_nodes, self._phase_nodes
        cos_ph, sin_ph = np.cos(ph_nodes), np.sin(ph_nodes)
        order = np.argsort(rho, kind="stable")
        plain: list[tuple[np.ndarray, ...]] = []
        folded: list[tuple[np.ndarray, ...]] = []
        for rows in _blocks(rho.size, 6 * r_nodes.size):
            idx = order[rows]
            rho_b = rho[idx]
            # A root needs |r| <= rho, so nodes beyond the block's largest rho (plus one
            # node of margin for the bracket) cannot matter; sorting by rho makes this cut
            # effective for the many points near the centre.
            top = rho_b[-1]
            lo = max(int(np.searchsorted(r_nodes, -top)) - 1, 0)
            hi = min(int(np.searchsorted(r_nodes, top, side="right")) + 1, r_nodes.size)
            if hi - lo < 2:
                continue
            rn, ph, cp, sp = r_nodes[lo:hi], ph_nodes[lo:hi], cos_ph[lo:hi], sin_ph[lo:hi]
            rb = rho_b[:, None]
            # A cell whose ends share a sign holds two roots only if g has an extremum
            # inside that comes back across zero, which needs |g| at an end to be within
            # max|g''| dr^2 / 2 of zero; |g''| <= rho (phase^2 + phase).
            dr = np.diff(rn)
            reach = 0.5 * top * (ph[1:] ** 2 + ph[1:]) * dr * dr
            for cls in range(k):
                shift = psi[idx] + 2.0 * math.pi * cls / k
                ca, sa = np.cos(shift)[:, None], np.sin(shift)[:, None]
                # cos(shift + phase) by the addition formula: no trig per table entry.
                g = rb * (ca * cp - sa * sp) - rn
                pos = g > 0.0
                change = pos[:, :-1] != pos[:, 1:]
                g_abs = np.abs(g)
                near = ~change & (np.minimum(g_abs[:, :-1], g_abs[:, 1:]) <= reach)
                # The tabulated end values travel with each bracket, so the root polish
                # orients itself by the very signs that made the bracket (a root lying on
                # a node is then neither lost nor counted twice).
                for sel, dest in ((change, plain), (near, folded)):
                    pi_, ci = np.nonzero(sel)
                    dest.append(
                        (idx[pi_], rn[ci], rn[ci + 1], shift[pi_], g[pi_, ci], g[pi_, ci + 1])
                    )

        def cat(parts, j):
            return np.concatenate([p[j] for p in parts]) if parts else np.empty(0)

        owner = cat(plain, 0).astype(np.intp)
        a, b, shift = cat(plain, 1), cat(plain, 2), cat(plain, 3)
        g_lo, g_hi = cat(plain, 4), cat(plain, 5)
        if folded:
            f_owner = cat(folded, 0).astype(np.intp)
            fa, fb, f_shift = cat(folded, 1), cat(folded, 2), cat(folded, 3)
            f_rho = rho[f_owner]

            def slope(r):
                ph_r = self.rate * np.exp(r)
                return -f_rho * np.sin(f_shift + ph_r) * ph_r - 1.0

            # Keep the candidates whose slope changes sign (an extremum inside), split
            # them at it, and keep both halves when the extremum crosses zero: each
            # half is then monotone with exactly one root.
            s_a, s_b = slope(fa), slope(fb)
            ext = (s_a > 0.0) != (s_b > 0.0)
            fa, fb, f_shift, f_rho, f_owner = (
                fa[ext],
                fb[ext],
                f_shift[ext],
                f_rho[ext],
                f_owner[ext],
            )
            g_a, g_b = cat(folded, 4)[ext], cat(folded, 5)[ext]
            rc = _bisect(slope, fa, fb) if fa.size else fa
            g_c = f_rho * np.cos(f_shift + self.rate * np.exp(rc)) - rc
            two = (g_a > 0.0) != (g_c > 0.0)
            owner = np.concatenate([owner, f_owner[two], f_owner[two]])
            a = np.concatenate([a, fa[two], rc[two]])
            b = np.concatenate([b, rc[two], fb[two]])
            shift = np.concatenate([shift, f_shift[two], f_shift[two]])
            g_lo = np.concatenate([g_lo, g_a[two], g_c[two]])
            g_hi = np.concatenate([g_hi, g_c[two], g_b[two]])
        rr = rho[owner]

        def g_and_slope(r, sel):
            ph_r = self.rate * np.exp(r)
            theta = shift[sel] + ph_r
            return rr[sel] * np.cos(theta) - r, -rr[sel] * np.sin(theta) * ph_r - 1.0

        # g = rho cos(.) - r with rho, |r| < ~10 carries rounding noise of ~1e-15.
        return _newton_in_bracket(g_and_slope, a, b, g_lo, g_hi, f_tol=2e-14), owner, shift

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        y = 0.5 * x
        rho_all = np.hypot(y[:, 0], y[:, 1])
        out = np.full(x.shape[0], -np.inf)
        # Beyond rho = 4.6 (|x| > 9.2) the dominant preimages have r outside the searched
        # window, so no exact value can be given there; the true log-density is below
        # about -71 at |x| = 9.2 and falls fast, and -inf is returned instead of a
        # silently wrong number.
        ok = np.flatnonzero(rho_all <= self._r_nodes[-1])
        if ok.size == 0:
            return out
        rho = rho_all[ok]
        psi = np.arctan2(y[ok, 1], y[ok, 0])
        r, owner, shift = self._roots(rho, psi)
        alpha_extra = self.rate * np.exp(r)
        tau = rho[owner] * np.sin(shift + alpha_extra)
        sr, st = self.radial_std, self.tangential_std
        logn = -0.5 * ((r - 1.0) / sr) ** 2 - 0.5 * (tau / st) ** 2 - math.log(sr * st) - _LOG_2PI
        with np.errstate(divide="ignore"):
            log_jac = np.log(4.0 * np.abs(1.0 + alpha_extra * tau))
        contrib = logn - log_jac - math.log(self.num_classes)
        # Segmented logsumexp over each point's preimages.
        peak = np.full(ok.size, -np.inf)
        np.maximum.at(peak, owner, contrib)
        safe = np.where(np.isfinite(peak), peak, 0.0)
        total = np.bincount(owner, weights=np.exp(contrib - safe[owner]), minlength=ok.size)
        with np.errstate(divide="ignore"):
            out[ok] = safe + np.log(total)
        return out


# ----------------------------------------------------------------------------- registry

DATASETS: dict[str, ToyDataset] = {
    ds.name: ds
    for ds in (
        TwoMoons(),
        TwoCircles(),
        EightGaussians(),
        Pinwheel(),
        Checkerboard(),
        Rings(),
        TwoSpirals(),
        SwissRoll(),
    )
}


def names(dim: int | None = None) -> list[str]:
    """Names of the registered data sets.

    The registry also holds the higher-dimensional sets of `toydata.mixed` (registered
    when `toydata` is imported); ``names(dim=2)`` lists the 2-D ones only.

    Args:
        dim: Only the data sets of this dimension; None (default) lists all.

    Returns:
        Sorted list of registry keys.

    Raises:
        TypeError: If ``dim`` is neither None nor an int.
    """
    if dim is None:
        return sorted(DATASETS)
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be None or an int, got {dim!r}")
    return sorted(name for name, ds in DATASETS.items() if ds.dim == dim)


def get(name: str) -> ToyDataset:
    """Look up a data set by name.

    Args:
        name: One of `names()`.

    Returns:
        The registered `ToyDataset` instance (shared; its entropy cache is shared too).

    Raises:
        TypeError: If ``name`` is not a str.
        ValueError: If ``name`` is unknown; the message lists the known names.
    """
    return lookup(DATASETS, name, "dataset")  # type: ignore[return-value]
