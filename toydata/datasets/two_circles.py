"""The two circles of scikit-learn's ``make_circles``."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_circles

from toydata.datasets.base import ToyDataset
from toydata.datasets.curves import rings_log_density
from toydata.datasets.registry import register


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
        return rings_log_density(x, self.radii, self.noise)


register(TwoCircles())
