"""Unnormalised 2-D target densities ``p(z) ∝ exp(-U(z))`` of Rezende & Mohamed (2015).

These are the four energy functions of "Variational Inference with Normalizing Flows"
(Table 1), used to train flows by reverse KL. With ``z = (z1, z2)``,
``w1 = sin(2 pi z1 / 4)``, ``w2 = 3 exp(-((z1 - 1) / 0.6)^2 / 2)`` and
``w3 = 3 sigmoid((z1 - 1) / 0.3)``:

* ``U1 = ((|z| - 2) / 0.4)^2 / 2 - log(exp(-((z1 - 2) / 0.6)^2 / 2)
  + exp(-((z1 + 2) / 0.6)^2 / 2))``
* ``U2 = ((z2 - w1) / 0.4)^2 / 2``
* ``U3 = -log(exp(-((z2 - w1) / 0.35)^2 / 2) + exp(-((z2 - w1 + w2) / 0.35)^2 / 2))``
* ``U4 = -log(exp(-((z2 - w1) / 0.4)^2 / 2) + exp(-((z2 - w1 + w3) / 0.35)^2 / 2))``

U2-U4 do not decay in ``z1``, so ``exp(-U)`` has infinite mass on the plane. Every
target is therefore defined as restricted to the box ``[-4, 4]^2``: ``log_prob`` is
``-U - log Z`` inside (``Z`` the integral of ``exp(-U)`` over the box) and ``-inf``
outside. ``energy`` works on numpy arrays (float64) and on torch tensors (any dtype
and device, differentiable), from the same formula.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
from scipy.special import expit

from toydata.common import gauss_legendre, lookup

__all__ = ["BOX", "TARGETS", "EnergyTarget", "get", "names"]

#: The normalisation box ``((z1_lo, z1_hi), (z2_lo, z2_hi))`` shared by all targets.
BOX: tuple[tuple[float, float], tuple[float, float]] = ((-4.0, 4.0), (-4.0, 4.0))

_NUMPY_OPS = SimpleNamespace(
    exp=np.exp,
    sin=np.sin,
    logaddexp=np.logaddexp,
    sigmoid=expit,
    norm=lambda z: np.hypot(z[..., 0], z[..., 1]),
)


def _torch_ops(torch: Any) -> SimpleNamespace:
    return SimpleNamespace(
        exp=torch.exp,
        sin=torch.sin,
        logaddexp=torch.logaddexp,
        sigmoid=torch.sigmoid,
        # vector_norm, unlike hypot, has a zero (not NaN) gradient at the origin.
        norm=lambda z: torch.linalg.vector_norm(z, dim=-1),
    )


def _namespace(z: Any) -> tuple[Any, SimpleNamespace, Any]:
    """Return ``(z as array/tensor, ops, torch module or None)``.

    torch is looked up in ``sys.modules`` rather than imported: a caller holding a
    tensor has imported it already, and numpy-only users never pay for the import.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(z, torch.Tensor):
        if z.ndim < 1 or z.shape[-1] != 2:
            raise ValueError(f"z must have shape (..., 2), got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"z must be a floating-point tensor, got dtype {z.dtype}")
        # No finiteness check for tensors: it would force a device sync on every
        # training step; NaN inputs simply give NaN energies.
        return z, _torch_ops(torch), torch
    try:
        arr = np.asarray(z, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"z must be a float array or torch tensor of shape (..., 2), got {type(z).__name__}"
        ) from exc
    if arr.ndim < 1 or arr.shape[-1] != 2:
        raise ValueError(f"z must have shape (..., 2), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("z must be finite, but it holds NaN or inf")
    return arr, _NUMPY_OPS, None


def _w1(ops: SimpleNamespace, z1: Any) -> Any:
    return ops.sin(2.0 * math.pi * z1 / 4.0)


def _u1(ops: SimpleNamespace, z: Any) -> Any:
    z1 = z[..., 0]
    ring = 0.5 * ((ops.norm(z) - 2.0) / 0.4) ** 2
    return ring - ops.logaddexp(-0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2)


def _u2(ops: SimpleNamespace, z: Any) -> Any:
    return 0.5 * ((z[..., 1] - _w1(ops, z[..., 0])) / 0.4) ** 2


def _u3(ops: SimpleNamespace, z: Any) -> Any:
    z1, z2 = z[..., 0], z[..., 1]
    d = z2 - _w1(ops, z1)
    w2 = 3.0 * ops.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)
    return -ops.logaddexp(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + w2) / 0.35) ** 2)


def _u4(ops: SimpleNamespace, z: Any) -> Any:
    z1, z2 = z[..., 0], z[..., 1]
    d = z2 - _w1(ops, z1)
    w3 = 3.0 * ops.sigmoid((z1 - 1.0) / 0.3)
    return -ops.logaddexp(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + w3) / 0.35) ** 2)


# Gauss-Legendre panels per axis for log Z: the integrands are analytic on the box, so
# a tensor-product GL rule converges spectrally (16 panels x 16 nodes already agrees with
# 4x the nodes to < 1e-12; see tests/test_toydata.py).
_PANELS = 16
_ORDER = 16


@dataclass(frozen=True)
class EnergyTarget:
    """An energy ``U`` with the density ``exp(-U) / Z`` restricted to a box.

    Attributes:
        name: Registry key ("U1".."U4").
        description: One-line formula summary.
        box: ``((z1_lo, z1_hi), (z2_lo, z2_hi))`` on which the density is normalised.
    """

    name: str
    description: str
    _formula: Callable[[SimpleNamespace, Any], Any] = field(repr=False)
    box: tuple[tuple[float, float], tuple[float, float]] = BOX
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def energy(self, z: Any) -> Any:
        """Energy ``U(z)``.

        Args:
            z: numpy array-like or torch tensor of shape (..., 2).

        Returns:
            ``U`` of shape (...): float64 numpy for numpy input; for a tensor, a tensor
            with its dtype and device, differentiable with respect to ``z``.

        Raises:
            TypeError: If ``z`` is not numeric (or is an integer tensor).
            ValueError: If the last axis of ``z`` is not of size 2, or a numpy ``z``
                holds NaN/inf.
        """
        arr, ops, _ = _namespace(z)
        return self._formula(ops, arr)

    def unnormalized_log_prob(self, z: Any) -> Any:
        """``-U(z)`` everywhere (no box restriction, no normaliser).

        Args:
            z: numpy array-like or torch tensor of shape (..., 2).

        Returns:
            ``-U(z)``, shape (...), same kind as ``energy``.
        """
        return -self.energy(z)

    def log_normalizer(self, panels: int | None = None) -> float:
        """``log Z = log ∫_box exp(-U(z)) dz`` by tensor-product Gauss-Legendre quadrature.

        Args:
            panels: Gauss-Legendre panels per axis (16 nodes each); None uses the
                default resolution, whose result is cached.

        Returns:
            ``log Z``.

        Raises:
            TypeError: If ``panels`` is not an int.
            ValueError: If ``panels < 1``.
        """
        if panels is None:
            if "log_z" not in self._cache:
                self._cache["log_z"] = self._log_z(_PANELS)
            return self._cache["log_z"]
        if isinstance(panels, bool) or not isinstance(panels, int):
            raise TypeError(f"panels must be a positive int or None, got {panels!r}")
        if panels < 1:
            raise ValueError(f"panels must be a positive int or None, got {panels!r}")
        return self._log_z(panels)

    def _log_z(self, panels: int) -> float:
        (a1, b1), (a2, b2) = self.box
        x1, w1 = gauss_legendre(a1, b1, panels, _ORDER)
        x2, w2 = gauss_legendre(a2, b2, panels, _ORDER)
        g1, g2 = np.meshgrid(x1, x2, indexing="ij")
        z = np.stack([g1, g2], axis=-1)
        log_terms = -self._formula(_NUMPY_OPS, z) + np.log(w1)[:, None] + np.log(w2)[None, :]
        peak = log_terms.max()
        return float(peak + np.log(np.exp(log_terms - peak).sum()))

    def log_prob(self, z: Any) -> Any:
        """Normalised log-density on the box: ``-U(z) - log Z`` inside, ``-inf`` outside.

        Args:
            z: numpy array-like or torch tensor of shape (..., 2).

        Returns:
            Shape (...), same kind as ``energy``; the box is closed (its edges count
            as inside).
        """
        arr, ops, torch = _namespace(z)
        u = self._formula(ops, arr)
        log_z = self.log_normalizer()
        (a1, b1), (a2, b2) = self.box
        z1, z2 = arr[..., 0], arr[..., 1]
        inside = (z1 >= a1) & (z1 <= b1) & (z2 >= a2) & (z2 <= b2)
        if torch is None:
            return np.where(inside, -u - log_z, -np.inf)
        return torch.where(inside, -u - log_z, torch.full_like(u, -math.inf))


TARGETS: dict[str, EnergyTarget] = {
    t.name: t
    for t in (
        EnergyTarget("U1", "ring of radius 2 split into two lobes at z1 = ±2", _u1),
        EnergyTarget("U2", "sine-wave ridge z2 = sin(pi z1 / 2), width 0.4", _u2),
        EnergyTarget("U3", "sine ridge plus a Gaussian-bump-shifted copy, width 0.35", _u3),
        EnergyTarget("U4", "sine ridge plus a sigmoid-shifted copy, widths 0.4 / 0.35", _u4),
    )
}


def names() -> list[str]:
    """Names of all registered energy targets.

    Returns:
        ``["U1", "U2", "U3", "U4"]``.
    """
    return sorted(TARGETS)


def get(name: str) -> EnergyTarget:
    """Look up an energy target by name.

    Args:
        name: One of `names()`.

    Returns:
        The registered `EnergyTarget`.

    Raises:
        TypeError: If ``name`` is not a str.
        ValueError: If ``name`` is unknown; the message lists the known names.
    """
    return lookup(TARGETS, name, "energy target")  # type: ignore[return-value]
