"""Radial normalizing flows (Rezende & Mohamed 2015), invertible in closed form.

One radial layer maps ``z ↦ z + β h(α, r)(z − z₀)`` with ``r = ‖z − z₀‖`` and
``h = 1 / (α + r)``. It is invertible when ``β ≥ −α``; the parameters are
``α = softplus(α̂) > 0`` and ``β = −α + softplus(β̂)``, so ``α + β = softplus(β̂) > 0``.

With ``s = α + β`` the Jacobian determinant is

    ``(1 + βh)^{D−1} · (1 + βh + βh'r) = ((r + s)/(α + r))^{D−1} · (r² + 2αr + sα)/(α + r)²``,

every factor positive, so the log-determinant has no cancellation.

Inverse: the layer keeps the direction of ``z − z₀`` and maps the radius ``r`` to
``ρ = r (α + r + β)/(α + r)``, strictly increasing in ``r``. Solving for ``r`` is the
quadratic ``r² + (α + β − ρ) r − αρ = 0`` whose non-negative root is taken in the form
that avoids cancellation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnflow.flows.stacked import StackedFlow
from cnflow.validation import check_float, check_int


class RadialLayer(nn.Module):
    """One radial transformation around a learned centre ``z₀``.

    Args:
        dim: dimension D of ``z``.
        init_scale: standard deviation of the random initial centre; ``β`` starts near 0.
    """

    def __init__(self, dim: int, init_scale: float = 1.0):
        super().__init__()
        self.dim = check_int("dim", dim)
        check_float("init_scale", init_scale, allow_minimum=True)
        self.z0 = nn.Parameter(torch.randn(dim) * init_scale)
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        # softplus(β̂) = α + small: β ≈ small, the layer starts near the identity.
        self.beta_raw = nn.Parameter(torch.tensor(math.log(math.expm1(math.log(2) + 0.05))))

    def constrained(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``α > 0``, ``β ≥ −α`` and ``s = α + β > 0`` (the last computed directly)."""
        alpha = F.softplus(self.alpha_raw)
        s = F.softplus(self.beta_raw)
        return alpha, s - alpha, s

    def _log_det(self, r: torch.Tensor, alpha: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        d = self.dim
        log_det = torch.log(r * r + 2 * alpha * r + s * alpha) - 2 * torch.log(alpha + r)
        if d > 1:
            log_det = log_det + (d - 1) * (torch.log(r + s) - torch.log(alpha + r))
        return log_det

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(z)`` and ``log|det ∂f/∂z|`` per row of ``z`` (shape ``(n, D)``)."""
        alpha, beta, s = self.constrained()
        diff = z - self.z0
        r = torch.linalg.vector_norm(diff, dim=-1)
        y = z + (beta / (alpha + r))[:, None] * diff
        return y, self._log_det(r, alpha, s)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f⁻¹(y)`` and ``log|det ∂f⁻¹/∂y|`` per row of ``y``, in closed form."""
        alpha, _beta, s = self.constrained()
        diff = y - self.z0
        rho = torch.linalg.vector_norm(diff, dim=-1)
        # r² + q r − αρ = 0 with q = α + β − ρ = s − ρ; the root r ≥ 0 as
        # (√(q² + 4αρ) − q)/2, or 2αρ/(q + √(q² + 4αρ)) when q > 0 (no cancellation).
        q = s - rho
        root = torch.sqrt(q * q + 4 * alpha * rho)
        r = torch.where(q > 0, 2 * alpha * rho / (q + root).clamp_min(torch.finfo(y.dtype).tiny),
                        0.5 * (root - q))
        # z − z₀ = (y − z₀)(α + r)/(α + r + β) = (y − z₀)(α + r)/(r + s).
        z = self.z0 + diff * ((alpha + r) / (r + s))[:, None]
        return z, -self._log_det(r, alpha, s)


class RadialFlow(StackedFlow):
    """A stack of K radial layers with a standard-normal base.

    Args:
        dim: data dimension.
        layers: number of radial layers K.
        direction: ``"generative"`` or ``"normalizing"`` (see
            :class:`~cnflow.flows.stacked.StackedFlow`).
        init_scale: standard deviation of the random initial centres.

    Example:
        >>> flow = RadialFlow(2, layers=4, direction="normalizing").double()
        >>> flow.log_prob(flow.sample(3)).shape
        torch.Size([3])
    """

    def __init__(self, dim: int, layers: int = 8, direction: str = "generative",
                 init_scale: float = 1.0):
        check_int("dim", dim)
        k = check_int("layers", layers)
        super().__init__([RadialLayer(dim, init_scale) for _ in range(k)], dim, direction)
