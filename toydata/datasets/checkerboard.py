"""FFJORD's checkerboard."""

from __future__ import annotations

import math

import numpy as np

from toydata.datasets.base import ToyDataset
from toydata.datasets.registry import register


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


register(Checkerboard())
