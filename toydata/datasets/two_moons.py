"""The two moons of scikit-learn's ``make_moons``, with labels and conditional densities."""

from __future__ import annotations

import math

import numpy as np
from sklearn.datasets import make_moons

from toydata.common import check_n, check_points, check_seed, gauss_legendre
from toydata.datasets.base import ToyDataset
from toydata.datasets.curves import curve_log_density
from toydata.datasets.registry import register


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
                out[rows] = curve_log_density(x[rows], [curves[moon]],
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
        return curve_log_density(x, curves, logw, self.noise)


register(TwoMoons())
