"""The one registry of data sets: every set registers one instance under its name.

Each data set module ends with ``register(Instance())``; `toydata.mixed` registers its
higher-dimensional sets the same way.
"""

from __future__ import annotations

import numbers
from typing import TypeVar

from toydata.common import lookup
from toydata.datasets.base import ToyDataset

__all__ = ["DATASETS", "get", "names", "register"]

_Dataset = TypeVar("_Dataset", bound=ToyDataset)

#: Name -> the shared instance of every registered data set.
DATASETS: dict[str, ToyDataset] = {}


def register(dataset: _Dataset) -> _Dataset:
    """Add a data set to the registry under its ``name``.

    Args:
        dataset: The instance that `get` will return (shared by every caller).

    Returns:
        ``dataset``, so a module can write ``NAME = register(Set())``.

    Raises:
        TypeError: If ``dataset`` is not a `ToyDataset`.
        ValueError: If its name is empty or already registered.
    """
    if not isinstance(dataset, ToyDataset):
        raise TypeError(
            f"dataset must be a ToyDataset, got {dataset!r} of type {type(dataset).__name__}"
        )
    if not isinstance(dataset.name, str) or not dataset.name:
        raise ValueError(f"dataset.name must be a non-empty str, got {dataset.name!r}")
    if dataset.name in DATASETS:
        raise ValueError(
            f"a data set named {dataset.name!r} is already registered "
            f"({DATASETS[dataset.name]!r}); choose another name"
        )
    DATASETS[dataset.name] = dataset
    return dataset


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
