"""Known-density data sets of dimension D > 2: independent 2-D blocks, rotated.

Each set here concatenates independent draws from some of the 2-D sets of
`toydata.datasets` and mixes all coordinates with one fixed orthogonal matrix, so that no
coordinate axis is aligned with a block. Rotation keeps everything exact: the
log-density is the sum of the blocks' log-densities at the unrotated point and the
entropy is the sum of the blocks' entropies (see `MixedBlocks`).

The sets are registered in `toydata.datasets.DATASETS` when `toydata` is imported, so
``toydata.get("mix6")`` works and ``toydata.names()`` lists them;
``toydata.names(dim=2)`` lists the 2-D sets only.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from scipy.stats import ortho_group

from toydata.common import check_points
from toydata.datasets import ToyDataset, get, register

__all__ = ["MIXED", "MixedBlocks"]


class MixedBlocks(ToyDataset):
    """Independent blocks concatenated, then rotated by a fixed orthogonal matrix.

    Construction: with block distributions ``p_1, ..., p_k`` of dimensions
    ``d_1, ..., d_k`` (all 2 for the registered sets), ``D = d_1 + ... + d_k``, and a
    fixed D x D orthogonal matrix ``Q`` (`mixing`), a point is ``x = Q z`` where
    ``z = (z_1, ..., z_k)`` concatenates independent draws ``z_i ~ p_i``. In row form,
    ``sample(n, seed)`` returns ``Z @ Q.T``, where column block ``slices[i]`` of the
    (n, D) array ``Z`` is ``blocks[i].sample(n, seed_i)``.

    Density: ``z`` has the product density ``prod_i p_i(z_i)``, and ``z -> Q z`` is a
    linear bijection with inverse ``Q^T`` (``Q^T Q = I``) and Jacobian determinant
    ``det Q = +-1``. By the change of variables,
    ``log p(x) = sum_i log p_i((Q^T x)_i) - log |det Q| = sum_i log p_i((Q^T x)_i)``,
    with ``(Q^T x)_i`` the i-th block of coordinates of ``Q^T x`` (in row form,
    ``X @ Q``). No approximation is added: ``log_prob`` is exactly as accurate as the
    blocks' ``log_prob`` (for blocks whose sampler spaces points deterministically,
    such as two_moons, two_circles and rings, it is the density in the limit
    n -> infinity, as for the blocks themselves), and it is ``-inf`` where any block's
    density is zero. The only new error is the round-off of the rotation (~1e-15
    relative), which matters only for a point within that distance of a discontinuity
    of a block's density (the square edges of checkerboard).

    Entropy: ``H(Q z) = H(z) + log |det Q| = H(z)``, and the entropy of independent
    blocks adds, so ``entropy() = sum_i blocks[i].entropy()`` exactly (the blocks'
    entropies are accurate to < 1e-6 nats each).

    Seeds: block ``i`` is drawn with the int seed
    ``numpy.random.SeedSequence(seed).spawn(k)[i].generate_state(1)[0]``, so the blocks
    are independent (two copies of the same 2-D set included) and the output is
    reproducible for an int ``seed``; ``seed=None`` draws fresh entropy.

    Mixing matrix: ``Q = scipy.stats.ortho_group.rvs(D, random_state=mixing_seed)``, a
    Haar-random orthogonal matrix (its determinant may be -1), fixed per data set and
    stored as a read-only float64 array.

    Args:
        name: Registry key.
        blocks: The block data sets, in the order their coordinates are concatenated;
            the same instance may appear more than once.
        mixing_seed: Non-negative int seed of the mixing matrix.
        description: One-line summary; by default built from the block names.

    Attributes:
        name: Registry key.
        dim: D, the sum of the blocks' dimensions.
        description: One-line summary.
        blocks: The block data sets (tuple).
        slices: Column slice of each block in the unrotated coordinates ``z``.
        mixing: ``Q``, float64 array of shape (D, D), read-only; ``x = Q z``.
        mixing_seed: The seed ``Q`` was drawn with.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``name`` is empty, ``blocks`` is empty, D < 2 or
            ``mixing_seed < 0``.
    """

    def __init__(
        self,
        name: str,
        blocks: Sequence[ToyDataset],
        mixing_seed: int,
        description: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
            raise TypeError(f"blocks must be a sequence of ToyDataset, got {blocks!r}")
        if not blocks:
            raise ValueError("blocks must hold at least one ToyDataset, got none")
        for i, block in enumerate(blocks):
            if not isinstance(block, ToyDataset):
                raise TypeError(
                    f"blocks[{i}] must be a ToyDataset, got {block!r} of type "
                    f"{type(block).__name__}"
                )
        if isinstance(mixing_seed, bool) or not isinstance(mixing_seed, numbers.Integral):
            raise TypeError(f"mixing_seed must be a non-negative int, got {mixing_seed!r}")
        if mixing_seed < 0:
            raise ValueError(f"mixing_seed must be a non-negative int, got {mixing_seed!r}")
        self.name = name
        self.blocks: tuple[ToyDataset, ...] = tuple(blocks)
        edges = np.cumsum([0] + [b.dim for b in self.blocks]).tolist()
        self.dim = edges[-1]
        if self.dim < 2:
            raise ValueError(f"the blocks must have dimension >= 2 in total, got {self.dim}")
        self.slices: tuple[slice, ...] = tuple(slice(lo, hi) for lo, hi in pairwise(edges))
        self.mixing_seed = int(mixing_seed)
        q = np.array(ortho_group.rvs(self.dim, random_state=self.mixing_seed), dtype=np.float64)
        # Shared by every user of the registered instance, so nobody may modify it.
        q.setflags(write=False)
        self.mixing: np.ndarray = q
        if description is None:
            description = (
                f"{len(self.blocks)} independent blocks rotated by a fixed orthogonal "
                f"matrix: {', '.join(b.name for b in self.blocks)}"
            )
        if not isinstance(description, str):
            raise TypeError(f"description must be a str or None, got {description!r}")
        self.description = description

    def __repr__(self) -> str:
        blocks = [b.name for b in self.blocks]
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, blocks={blocks})"

    def unmix(self, x: np.ndarray) -> np.ndarray:
        """Block coordinates ``z = Q^T x`` of points ``x``.

        Args:
            x: Points, array-like of shape (n, D) with finite entries.

        Returns:
            Float64 array of shape (n, D); columns ``slices[i]`` belong to ``blocks[i]``.

        Raises:
            TypeError: If ``x`` is not numeric.
            ValueError: If ``x`` does not have shape (n, D) or holds NaN/inf.
        """
        return check_points(x, dim=self.dim) @ self.mixing

    def entropy(self) -> float:
        """Differential entropy in nats: the sum of the blocks' entropies.

        Exact: the rotation has ``|det Q| = 1`` and the blocks are independent.

        Returns:
            ``sum(block.entropy() for block in blocks)``.
        """
        return float(sum(block.entropy() for block in self.blocks))

    def _block_seeds(self, seed: int | None) -> list[int]:
        children = np.random.SeedSequence(seed).spawn(len(self.blocks))
        return [int(child.generate_state(1)[0]) for child in children]

    def _sample(self, n: int, seed: int | None) -> np.ndarray:
        z = np.empty((n, self.dim))
        for block, cols, block_seed in zip(self.blocks, self.slices, self._block_seeds(seed)):
            z[:, cols] = block.sample(n, seed=block_seed)
        return z @ self.mixing.T

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.mixing
        out = np.zeros(x.shape[0])
        for block, cols in zip(self.blocks, self.slices):
            out += block.log_prob(np.ascontiguousarray(z[:, cols]))
        return out


def _mixed(name: str, block_names: Sequence[str], mixing_seed: int) -> MixedBlocks:
    """Build a set from registered 2-D blocks and register it (here rather than in
    `toydata.datasets`, which this module builds on)."""
    return register(MixedBlocks(name, [get(b) for b in block_names], mixing_seed))


# Blocks with fast log-densities (20,000 points in < 0.1 s each, so < 0.3 s per set), in a
# variety of shapes; 2spirals (~0.25 s) is left out. The mixing seeds are arbitrary but fixed.
MIXED: tuple[MixedBlocks, ...] = (
    _mixed("mix4", ["two_moons", "8gaussians"], 4),
    _mixed("mix6", ["two_circles", "checkerboard", "rings"], 6),
    _mixed("mix8", ["two_moons", "two_circles", "8gaussians", "rings"], 8),
    _mixed(
        "mix16",
        [
            "two_moons",
            "two_circles",
            "8gaussians",
            "checkerboard",
            "rings",
            "pinwheel",
            "swissroll",
            "two_moons",
        ],
        16,
    ),
)
