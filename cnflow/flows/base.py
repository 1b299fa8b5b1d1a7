"""The distribution-like interface shared by every flow (CNF, planar, radial).

A flow is a bijection between data ``x`` and a standard-normal base variable ``z``. Each
subclass implements the two directions with their log-determinants; this class turns them
into the ``torch.distributions`` vocabulary: ``log_prob``, ``sample``, ``rsample``,
``sample_and_log_prob``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

Shape = torch.Size | tuple[int, ...] | list[int] | int


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))


class Flow(nn.Module):
    """Base class: a normalizing flow with a standard-normal base distribution.

    Subclasses implement:
        ``to_base(x) -> (z, log_det)`` with ``log_det = log|det ∂z/∂x|``, so that
        ``log p(x) = log N(z) + log_det``;
        ``from_base(z) -> (x, log_det)`` with ``log_det = log|det ∂x/∂z|``, so that
        ``log p(x) = log N(z) − log_det``.
    """

    def __init__(self, dim: int):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim
        # A buffer tells which device and dtype samples must be drawn on.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.dim])

    @property
    def device(self) -> torch.device:
        """Where the flow's parameters and buffers live (samples are drawn there)."""
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the flow (inputs are computed in it)."""
        return self._anchor.dtype

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def from_base(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def check_points(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Validate a batch of points of shape ``(..., dim)``; returns it on the flow's device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (..., {self.dim}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        bad = ~torch.isfinite(x).all(-1)
        if bad.any():
            rows = torch.nonzero(bad.reshape(-1)).reshape(-1)[:5].tolist()
            raise ValueError(f"{name} has NaN or infinite entries in rows {rows} (first five)")
        return x.to(self._anchor.device)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of ``x`` (shape ``(..., dim)``) in the caller's coordinates."""
        x = self.check_points(x)
        batch = x.shape[:-1]
        z, log_det = self.to_base(x.reshape(-1, self.dim))
        return (standard_normal_log_prob(z) + log_det).reshape(batch)

    def _base_sample(self, shape: Shape) -> torch.Tensor:
        shape = torch.Size([shape] if isinstance(shape, int) else shape)
        return torch.randn(*shape, self.dim, device=self._anchor.device, dtype=self._anchor.dtype)

    def sample_and_log_prob(self, shape: Shape = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised samples of ``shape`` and their log-density, from one pass."""
        z = self._base_sample(shape)
        batch = z.shape[:-1]
        x, log_det = self.from_base(z.reshape(-1, self.dim))
        log_p = standard_normal_log_prob(z.reshape(-1, self.dim)) - log_det
        return x.reshape(*batch, self.dim), log_p.reshape(batch)

    def rsample(self, shape: Shape = ()) -> torch.Tensor:
        """Reparameterised samples: gradients flow to the flow's parameters."""
        return self.sample_and_log_prob(shape)[0]

    @torch.no_grad()
    def sample(self, shape: Shape = ()) -> torch.Tensor:
        """Samples of shape ``(*shape, dim)``, without a graph."""
        return self.rsample(shape)
