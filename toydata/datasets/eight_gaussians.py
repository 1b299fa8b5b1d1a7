"""FFJORD's eight Gaussians."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from toydata.datasets.base import ToyDataset
from toydata.datasets.registry import register


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


register(EightGaussians())
