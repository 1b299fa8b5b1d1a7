"""Log-densities of curves blurred by isotropic Gaussian noise.

`curve_log_density` integrates the noise kernel over quadrature nodes placed on curves
(the moons, the swiss roll); `ring_log_density` is the closed form for a circle (the
circles, the rings)."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import i0e, logsumexp

from toydata.common import logsumexp_rows, row_blocks


def curve_log_density(
    x: np.ndarray,
    curves: list[tuple[np.ndarray, np.ndarray]],
    log_weights: np.ndarray,
    sigma: float,
) -> np.ndarray:
    """log of ``sum_k w_k N(x; c_k, sigma^2 I)`` for quadrature nodes ``c_k`` on curves.

    Args:
        x: Points, shape (n, 2).
        curves: ``(cx, cy)`` node coordinates per curve; all concatenated.
        log_weights: Log quadrature weights (already including mixture weights and the
            density of the curve parameter), one per node, same order as ``curves``.
        sigma: Isotropic noise standard deviation.

    Returns:
        Shape (n,).
    """
    cx = np.concatenate([c[0] for c in curves])
    cy = np.concatenate([c[1] for c in curves])
    c = np.stack([cx, cy])  # (2, K)
    cc = cx * cx + cy * cy
    inv2s2 = 0.5 / (sigma * sigma)
    norm = -math.log(2.0 * math.pi * sigma * sigma)
    out = np.empty(x.shape[0])
    for rows in row_blocks(x.shape[0], c.shape[1]):
        xb = x[rows]
        xx = np.einsum("ij,ij->i", xb, xb)
        # Expanded square: one matrix product instead of an (n, K, 2) temporary.
        d2 = np.maximum(xx[:, None] - 2.0 * (xb @ c) + cc[None, :], 0.0)
        d2 *= -inv2s2
        d2 += log_weights[None, :]
        out[rows] = logsumexp_rows(d2) + norm
    return out


def ring_log_density(r: np.ndarray, radius: float, sigma: float) -> np.ndarray:
    """log density at distance ``r`` from the origin of a uniform ring convolved with N(0, s^2 I).

    ``p = exp(-(r^2 + R^2) / (2 s^2)) I0(r R / s^2) / (2 pi s^2)``; with the exponentially
    scaled ``i0e(z) = exp(-z) I0(z)`` the large exponents cancel analytically:
    ``log p = -(r - R)^2 / (2 s^2) + log i0e(r R / s^2) - log(2 pi s^2)``.
    """
    s2 = sigma * sigma
    z = r * radius / s2
    return -((r - radius) ** 2) / (2.0 * s2) + np.log(i0e(z)) - math.log(2.0 * math.pi * s2)


def rings_log_density(x: np.ndarray, radii: tuple[float, ...], sigma: float) -> np.ndarray:
    """log density of the equal-weight mixture of blurred rings of the given ``radii``.

    Args:
        x: Points, shape (n, 2).
        radii: Ring radii; each ring holds the same share of the mass.
        sigma: Isotropic noise standard deviation.

    Returns:
        Shape (n,).
    """
    r = np.hypot(x[:, 0], x[:, 1])
    terms = [ring_log_density(r, rad, sigma) for rad in radii]
    return logsumexp(np.stack(terms), axis=0) - math.log(len(radii))
