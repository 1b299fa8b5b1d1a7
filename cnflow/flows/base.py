"""The distribution-like interface shared by every flow (CNF, planar, radial).

A flow is a bijection between data ``x`` and a standard-normal base variable ``z``. Each
subclass implements the two directions with their log-determinants; this class turns them
into the ``torch.distributions`` vocabulary: ``log_prob``, ``sample``, ``rsample``,
``sample_and_log_prob``, and owns the fixed data standardisation every flow applies on the
data side (``set_normalization``, ``normalize``, ``denormalize``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnflow.validation import check_int

Shape = torch.Size | tuple[int, ...] | list[int] | int


def _log_std(data: torch.Tensor) -> torch.Tensor:
    """Per-column log standard deviation, floored so a constant column stays finite."""
    return data.std(0).clamp_min(1e-6).log()


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

    A conditional flow (``context_dim > 0``) models ``p(x | c)``: its ``to_base`` and
    ``from_base`` also take ``context=`` (one ``(n, context_dim)`` row per point), and every
    method here takes ``context`` with the ``torch.distributions`` broadcasting rules, as in
    zuko: ``log_prob(x, context=c)`` broadcasts the batch shapes ``x.shape[:-1]`` and
    ``c.shape[:-1]``; ``sample(shape, context=c)`` returns ``(*shape, *c.shape[:-1], dim)``.

    Every flow standardises its data by a fixed per-dimension affine map on the data side,
    ``v = (x − shift) · exp(−log_scale)`` (buffers ``shift`` and ``log_scale``, the identity
    until :meth:`set_normalization`), and a conditional flow its context likewise (buffers
    ``context_shift`` and ``context_log_scale``). Subclasses apply :meth:`normalize` and
    :meth:`denormalize` in ``to_base``/``from_base`` with the log-determinant
    ``∓ log_scale.sum()``, so densities are always in the caller's coordinates.
    """

    def __init__(self, dim: int, context_dim: int = 0):
        super().__init__()
        check_int("dim", dim)
        check_int("context_dim", context_dim, minimum=0)
        self.dim, self.context_dim = dim, context_dim
        # A buffer tells which device and dtype samples must be drawn on.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("log_scale", torch.zeros(dim))
        if context_dim:
            self.register_buffer("context_shift", torch.zeros(context_dim))
            self.register_buffer("context_log_scale", torch.zeros(context_dim))

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

    @torch.no_grad()
    def set_normalization(self, data: torch.Tensor, context: torch.Tensor | None = None
                          ) -> None:
        """Standardise by the per-dimension mean and standard deviation of ``data`` (rows
        ``(n, dim)``), and of ``context`` (rows ``(n, context_dim)``, required exactly when
        the flow is conditional)."""
        data = self.check_points(data, "data")
        self.shift.copy_(data.mean(0))
        self.log_scale.copy_(_log_std(data))
        context = self.check_context(context)
        if context is not None:
            self.context_shift.copy_(context.mean(0))
            self.context_log_scale.copy_(_log_std(context))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Data coordinates → the standardised coordinates the transform works in."""
        return (x - self.shift) * torch.exp(-self.log_scale)

    def denormalize(self, v: torch.Tensor) -> torch.Tensor:
        """Standardised coordinates → data coordinates (the inverse of :meth:`normalize`)."""
        return v * torch.exp(self.log_scale) + self.shift

    def normalize_context(self, context: torch.Tensor | None) -> torch.Tensor | None:
        """The standardised context a conditional transform sees (None stays None)."""
        if context is None:
            return None
        return (context - self.context_shift) * torch.exp(-self.context_log_scale)

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def from_base(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def check_points(self, x: torch.Tensor, name: str = "x", width: int | None = None
                     ) -> torch.Tensor:
        """Validate a batch of shape ``(..., width)`` (default ``dim``); returns it in the
        flow's device and dtype."""
        width = self.dim if width is None else width
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != width:
            raise ValueError(f"{name} must have shape (..., {width}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        bad = ~torch.isfinite(x).all(-1)
        if bad.any():
            rows = torch.nonzero(bad.reshape(-1)).reshape(-1)[:5].tolist()
            raise ValueError(f"{name} has NaN or infinite entries in rows {rows} (first five)")
        # Another float dtype is computed in the flow's (a float64 batch through a float32
        # flow would otherwise fail deep inside a matrix product).
        return x.to(self._anchor.device, self._anchor.dtype)

    def check_context(self, context: torch.Tensor | None) -> torch.Tensor | None:
        """Validate ``context`` against ``context_dim`` (required iff the flow is conditional)."""
        if self.context_dim == 0:
            if context is not None:
                raise ValueError(f"this {type(self).__name__} is unconditional "
                                 "(context_dim=0); it takes no context")
            return None
        if context is None:
            raise ValueError(f"this {type(self).__name__} is conditional: pass context= of "
                             f"shape (..., {self.context_dim})")
        return self.check_points(context, "context", self.context_dim)

    def _context_kwargs(self, context: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {} if context is None else {"context": context}

    def _broadcast(self, x: torch.Tensor, context: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Size]:
        """Flatten ``x`` (and ``context``, broadcast against it) to rows; the batch shape."""
        if context is None:
            return x.reshape(-1, self.dim), None, x.shape[:-1]
        try:
            batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        except RuntimeError:
            raise ValueError(f"the batch shapes of x {tuple(x.shape[:-1])} and context "
                             f"{tuple(context.shape[:-1])} do not broadcast") from None
        return (x.expand(*batch, self.dim).reshape(-1, self.dim),
                context.expand(*batch, self.context_dim).reshape(-1, self.context_dim), batch)

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Log-density of ``x`` (shape ``(..., dim)``) in the caller's coordinates."""
        x, context = self.check_points(x), self.check_context(context)
        rows, context, batch = self._broadcast(x, context)
        if len(rows) == 0:
            return rows.new_zeros(batch)
        z, log_det = self.to_base(rows, **self._context_kwargs(context))
        return (standard_normal_log_prob(z) + log_det).reshape(batch)

    def _base_sample(self, shape: Shape, context: torch.Tensor | None = None) -> torch.Tensor:
        shape = torch.Size([shape] if isinstance(shape, int) else shape)
        if context is not None:
            shape = shape + context.shape[:-1]
        return torch.randn(*shape, self.dim, device=self._anchor.device, dtype=self._anchor.dtype)

    def sample_and_log_prob(self, shape: Shape = (), context: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised samples of ``(*shape, *context.shape[:-1])`` and their
        log-density, from one pass."""
        context = self.check_context(context)
        z = self._base_sample(shape, context)
        rows, context, batch = self._broadcast(z, context)
        if len(rows) == 0:
            return z, z.new_zeros(batch)
        x, log_det = self.from_base(rows, **self._context_kwargs(context))
        log_p = standard_normal_log_prob(rows) - log_det
        return x.reshape(*batch, self.dim), log_p.reshape(batch)

    def rsample(self, shape: Shape = (), context: torch.Tensor | None = None) -> torch.Tensor:
        """Reparameterised samples: gradients flow to the flow's parameters."""
        return self.sample_and_log_prob(shape, context)[0]

    @torch.no_grad()
    def sample(self, shape: Shape = (), context: torch.Tensor | None = None) -> torch.Tensor:
        """Samples of shape ``(*shape, *context.shape[:-1], dim)``, without a graph."""
        return self.rsample(shape, context)
