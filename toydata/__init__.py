"""Toy densities with exact log-densities, and unnormalised energy targets.

`toydata` depends only on numpy, scipy and scikit-learn (torch only if you hand torch
tensors to `toydata.energy`), so it can be used to score any model.

Data sets (`toydata.datasets`, one module per set): ``get(name)``, ``names()``,
``DATASETS``, ``register(dataset)``. The 2-D sets (``names(dim=2)``) and, from
`toydata.mixed`, sets of dimension 4 to 16 built from them by rotating independent 2-D
blocks (``mix4``, ``mix6``, ``mix8``, ``mix16``).
Energy targets of Rezende & Mohamed (2015) (`toydata.energy`): ``energy.get(name)``,
``energy.TARGETS``.
"""

from toydata import energy, mixed
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
    register,
)
from toydata.mixed import MixedBlocks

__all__ = [
    "DATASETS",
    "Checkerboard",
    "EightGaussians",
    "MixedBlocks",
    "Pinwheel",
    "Rings",
    "SwissRoll",
    "ToyDataset",
    "TwoCircles",
    "TwoMoons",
    "TwoSpirals",
    "energy",
    "get",
    "mixed",
    "names",
    "register",
]
