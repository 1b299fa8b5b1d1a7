"""Planar normalizing flows (Rezende & Mohamed 2015), invertible in both directions.

One planar layer maps ``z ↦ z + û tanh(wᵀz + b)``. It is invertible exactly when
``wᵀû ≥ −1``; the reparameterisation

    ``û = u + (m(wᵀu) − wᵀu) · w / ‖w‖²``,  ``m(x) = −1 + softplus(x)``,

applied on every call, gives ``wᵀû = m(wᵀu) > −1`` for any ``u, w``. The Jacobian
determinant is ``1 + ûᵀψ(z)`` with ``ψ = tanh'(wᵀz + b) w``; with ``h = tanh(wᵀz + b)``
and ``s = softplus(wᵀu) = 1 + wᵀû`` it equals ``h² + (1 − h²) s``, a sum of non-negative
terms, so its logarithm is taken without cancellation.

The inverse solves a monotone scalar equation: with ``α = wᵀz`` and ``y`` the output,
``α + (wᵀû) tanh(α + b) = wᵀy``, whose root lies in ``[wᵀy − |wᵀû|, wᵀy + |wᵀû|]``;
bracketed Newton (bisection whenever a Newton step leaves the bracket) finds it, then
``z = y − û tanh(α + b)``.

The layers are stacked into a flow by :class:`~cnflow.flows.stacked.StackedFlow`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnflow.flows.stacked import StackedFlow
from cnflow.validation import check_float, check_int

#: Inverse tolerance on ``α`` (relative to ``1 + |wᵀy|``) per floating-point type.
INVERSE_TOL = {torch.float64: 1e-10, torch.float32: 1e-6, torch.float16: 1e-3,
               torch.bfloat16: 1e-2}
_MAX_INVERSE_STEPS = 200


def sech2(a: torch.Tensor) -> torch.Tensor:
    """``1 − tanh²(a)`` without cancellation: ``4 e^{−2|a|} / (1 + e^{−2|a|})²``."""
    e = torch.exp(-2 * a.abs())
    return 4 * e / (1 + e) ** 2


class PlanarLayer(nn.Module):
    """One planar transformation ``f(z) = z + û tanh(wᵀz + b)``.

    Args:
        dim: dimension D of ``z``.
        init_scale: standard deviation of the random initial ``u`` and ``w``. ``u`` is then
            shifted along ``w`` so that ``wᵀû = 0``: the layer starts volume preserving,
            a shear by the (small) part of ``u`` orthogonal to ``w``.
    """

    def __init__(self, dim: int, init_scale: float = 0.1):
        super().__init__()
        self.dim = check_int("dim", dim)
        init_scale = check_float("init_scale", init_scale, allow_minimum=True)
        w = torch.randn(dim) * init_scale
        u = torch.randn(dim) * init_scale
        w_sq = float(w @ w)
        if w_sq > 0:
            # Start at wᵀu = log(e − 1), where m(wᵀu) = 0: then û is the part of u
            # orthogonal to w and the layer is volume preserving. A random u would give
            # wᵀu ≈ 0, i.e. wᵀû ≈ −0.31 and a contraction by up to 0.69 along w per layer,
            # which a deep stack compounds into a collapse onto a line.
            u = u + (math.log(math.e - 1) - float(w @ u)) * w / w_sq
        self.u = nn.Parameter(u)
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(()))

    def constrained(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``û``, ``wᵀû`` and ``1 + wᵀû`` (the last computed as ``softplus(wᵀu)``).

        At ``w = 0`` the layer is the translation ``z + u tanh(b)``; then ``û = u`` and
        ``1 + wᵀû = 1``, so the log-determinant stays exactly zero.
        """
        w, u = self.w, self.u
        wu = w @ u
        w_sq = w @ w
        nonzero = w_sq > 0
        # A safe denominator keeps the gradient of the unused branch finite at w = 0.
        safe = torch.where(nonzero, w_sq, torch.ones_like(w_sq))
        # 1 + wᵀû; softplus underflows to 0 below wᵀu ≈ −745 (float64), so it is kept at
        # the smallest normal number: the constraint stays strict in floating point.
        tiny = torch.finfo(wu.dtype).tiny
        gap = torch.where(nonzero, F.softplus(wu).clamp_min(tiny), torch.ones_like(wu))
        correction = torch.where(nonzero, (gap - 1 - wu) / safe, torch.zeros_like(wu))
        u_hat = u + correction * w
        return u_hat, gap - 1, gap

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(z)`` and ``log|det ∂f/∂z|`` per row of ``z`` (shape ``(n, D)``)."""
        u_hat, _, gap = self.constrained()
        a = z @ self.w + self.b
        h = torch.tanh(a)
        # 1 + ûᵀψ = 1 + (1 − h²)(gap − 1) = h² + (1 − h²)·gap > 0.
        log_det = torch.log(h * h + sech2(a) * gap)
        return z + h[:, None] * u_hat, log_det

    def inverse(self, y: torch.Tensor, tol: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f⁻¹(y)`` and ``log|det ∂f⁻¹/∂y|`` per row of ``y``.

        Args:
            y: points of shape ``(n, D)``.
            tol: tolerance on ``α = wᵀz`` relative to ``1 + |wᵀy|`` (the Newton step or
                the bracket width falls below it); by default :data:`INVERSE_TOL` for
                ``y``'s dtype (1e-10 in float64, 1e-6 in float32). Where the layer is
                nearly singular (``wᵀû`` within rounding of −1) the solve stops once the
                residual of the scalar equation is at rounding level instead.

        Gradients: the root is found without a graph, then one Newton step with the graph
        attached gives the implicit-function gradient with respect to ``y`` and the
        parameters (exact at the root).
        """
        u_hat, c, _ = self.constrained()
        target = y @ self.w
        tol = INVERSE_TOL.get(y.dtype, 1e-6) if tol is None else tol
        with torch.no_grad():
            alpha = _solve_monotone(target.detach(), c.detach(), self.b.detach(), tol)
        # One Newton step carrying the graph: α* − g(α*)/g'(α*), with g(α*) ≈ 0.
        a = alpha + self.b
        g = alpha + c * torch.tanh(a) - target
        alpha = alpha - g / (1 + c * sech2(a))
        a = alpha + self.b
        z = y - torch.tanh(a)[:, None] * u_hat
        _, log_det = self.forward(z)
        return z, -log_det


def _solve_monotone(target: torch.Tensor, c: torch.Tensor, b: torch.Tensor, tol: float
                    ) -> torch.Tensor:
    """Root ``α`` of ``α + c tanh(α + b) = target`` (``c > −1``), vectorised.

    The left side is strictly increasing; since ``|tanh| ≤ 1`` the root lies in
    ``[target − |c|, target + |c|]``. Newton steps that leave the current bracket, or
    that do not halve the previous move, are replaced by bisection, so the iteration
    converges for every ``c > −1``.
    """
    width = c.abs()
    lo, hi = target - width, target + width
    alpha = target - c * torch.tanh(target + b)  # exact when the tanh is flat there
    alpha = alpha.clamp(lo, hi)
    scale = 1 + target.abs()
    # Where the layer is nearly singular (c → −1, g' → 0 at the root) the residual cannot
    # fall below the rounding of its terms; stopping there is the best any solver can do.
    floor = 8 * torch.finfo(target.dtype).eps * (scale + c.abs())
    moved = 2 * (hi - lo) + 1  # no previous move yet: the first Newton step is allowed
    done = torch.zeros_like(target, dtype=torch.bool)
    for _ in range(_MAX_INVERSE_STEPS):
        a = alpha + b
        g = alpha + c * torch.tanh(a) - target
        lo = torch.where(g < 0, alpha, lo)
        hi = torch.where(g > 0, alpha, hi)
        step = g / (1 + c * sech2(a))
        candidate = alpha - step
        # Newton only while it stays in the bracket and at least halves the previous move
        # (as in rtsafe); otherwise bisect, so Newton cannot oscillate across a steep tanh.
        newton = (candidate > lo) & (candidate < hi) & (2 * step.abs() < moved.abs())
        converged = (step.abs() <= tol * scale) | (hi - lo <= tol * scale) | (g.abs() <= floor)
        # A converged point takes its last Newton step if that is in the bracket, then
        # stays put: a further bisection could move it off the root.
        inside = (candidate >= lo) & (candidate <= hi)
        final = torch.where(inside, candidate, alpha)
        new = torch.where(newton, candidate, 0.5 * (lo + hi))
        new = torch.where(done, alpha, torch.where(converged, final, new))
        moved = new - alpha
        alpha = new
        done = done | converged
        if bool(done.all()):
            return alpha
    raise RuntimeError(f"planar inverse did not reach tol={tol} in {_MAX_INVERSE_STEPS} "
                       "steps; the parameters are probably not finite")


class PlanarFlow(StackedFlow):
    """A stack of K planar layers with a standard-normal base.

    Args:
        dim: data dimension.
        layers: number of planar layers K.
        direction: ``"generative"`` (base → data is explicit; for density matching) or
            ``"normalizing"`` (data → base is explicit; for maximum likelihood).
        init_scale: scale of the random initial ``u``, ``w`` of each layer.

    Example:
        >>> flow = PlanarFlow(2, layers=4, direction="normalizing").double()
        >>> x = flow.sample(3)
        >>> flow.log_prob(x).shape
        torch.Size([3])
    """

    def __init__(self, dim: int, layers: int = 8, direction: str = "generative",
                 init_scale: float = 0.1):
        check_int("dim", dim)
        k = check_int("layers", layers)
        super().__init__([PlanarLayer(dim, init_scale) for _ in range(k)], dim, direction)
