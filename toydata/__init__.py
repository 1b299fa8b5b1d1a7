"""Two-dimensional toy densities with exact log-densities, and unnormalised energy targets.

`toydata` depends only on numpy, scipy and scikit-learn (torch only if you hand torch
tensors to `toydata.energy`), so it can be used to score any model.

Data sets (`toydata.datasets`): ``get(name)``, ``names()``, ``DATASETS``.
Energy targets of Rezende & Mohamed (2015) (`toydata.energy`): ``energy.get(name)``,
``energy.TARGETS``.
"""

from toydata import energy
from toydata.datasets import (
    DATASETS,
    Checkerboard,
    EightGaussians,
    Pinwheel,
    Rings,
    SwissRoll,
    ToyDataset,
    TwoCircles,
    TwoMoons,
    TwoSpirals,
    get,
    names,
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
    "energy",
    "get",
    "names",
]
