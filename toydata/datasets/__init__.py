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

One data set is one module here that ends with its registration,
``register(Instance())`` (`toydata.datasets.registry`); adding a set means adding its
module and importing it below. Higher-dimensional sets built from these (`toydata.mixed`)
share the registry `DATASETS`; ``names(dim=2)`` lists the 2-D sets only.
"""

from toydata.datasets.base import ToyDataset
from toydata.datasets.checkerboard import Checkerboard
from toydata.datasets.eight_gaussians import EightGaussians
from toydata.datasets.pinwheel import Pinwheel
from toydata.datasets.registry import DATASETS, get, names, register
from toydata.datasets.rings import Rings
from toydata.datasets.swissroll import SwissRoll
from toydata.datasets.two_circles import TwoCircles
from toydata.datasets.two_moons import TwoMoons
from toydata.datasets.two_spirals import TwoSpirals

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
    "register",
]
