"""FFJORD's four concentric rings."""

from __future__ import annotations

import math

import numpy as np

from toydata.datasets.base import ToyDataset
from toydata.datasets.curves import rings_log_density
from toydata.datasets.registry import register


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
        return rings_log_density(x, self.radii, self.noise)


register(Rings())
