"""A flow made of a stack of invertible layers (planar, radial).

:class:`StackedFlow` turns a list of layers, each with ``forward(z) -> (y, log_det)`` and
``inverse(y) -> (z, log_det)``, into a :class:`~cnflow.flows.base.Flow` with a
``direction``: ``"generative"`` (base → data is the forward stack: sampling and
reparameterised ``sample_and_log_prob`` are explicit, as density matching needs) or
``"normalizing"`` (data → base is the forward stack: ``log_prob`` is explicit, as maximum
likelihood needs). The other direction runs the layers' inverses, so either kind can both
score points and sample.
"""

from __future__ import annotations

import torch
from torch import nn

from cnflow.flows.base import Flow

DIRECTIONS = ("generative", "normalizing")


class StackedFlow(Flow):
    """A flow made of invertible layers with ``forward(z) -> (y, log_det)`` and ``inverse``.

    Args:
        layers: the layers, applied in order by the forward stack.
        dim: data dimension.
        direction: ``"generative"`` (``from_base`` is the forward stack) or
            ``"normalizing"`` (``to_base`` is the forward stack).

    The data standardisation of :class:`~cnflow.flows.base.Flow` (``set_normalization``)
    sits on the data side, with its log-det, so densities are always in the caller's
    coordinates.
    """

    def __init__(self, layers: list[nn.Module], dim: int, direction: str = "generative"):
        super().__init__(dim)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r} is not one of {list(DIRECTIONS)}")
        if len(layers) == 0:
            raise ValueError("layers must hold at least one layer, got an empty list")
        self.direction = direction
        self.layers = nn.ModuleList(layers)

    def _forward_stack(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = v.new_zeros(v.shape[0])
        for layer in self.layers:
            v, log_det = layer(v)
            total = total + log_det
        return v, total

    def _inverse_stack(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = v.new_zeros(v.shape[0])
        for layer in reversed(self.layers):
            v, log_det = layer.inverse(v)
            total = total + log_det
        return v, total

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data → base: ``z`` and ``log|det ∂z/∂x|``."""
        stack = self._forward_stack if self.direction == "normalizing" else self._inverse_stack
        z, log_det = stack(self.normalize(x))
        return z, log_det - self.log_scale.sum()

    def from_base(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base → data: ``x`` and ``log|det ∂x/∂z|``."""
        stack = self._forward_stack if self.direction == "generative" else self._inverse_stack
        v, log_det = stack(z)
        return self.denormalize(v), log_det + self.log_scale.sum()

    @torch.no_grad()
    def trajectory(self, z: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """States from base points ``z`` towards data after a fraction of the layers.

        The discrete analogue of :meth:`cnflow.flows.cnf.CNF.trajectory`: fraction ``t``
        is the state after ``round(t·K)`` of the K layers on the way base → data, shown in
        data coordinates (the normalisation applied throughout, as the CNF does).

        Returns:
            Shape ``(len(times), n, dim)``.
        """
        z = self.check_points(z, "z")
        times = torch.as_tensor(times, dtype=torch.float64)
        if times.dim() != 1 or (times < 0).any() or (times > 1).any():
            raise ValueError(f"times must be a 1-D tensor of fractions in [0, 1], got {times}")
        k = len(self.layers)
        steps = [z]
        v = z
        order = list(self.layers) if self.direction == "generative" else \
            list(reversed(self.layers))
        for layer in order:
            v = layer(v)[0] if self.direction == "generative" else layer.inverse(v)[0]
            steps.append(v)
        picked = torch.stack([steps[round(float(t) * k)] for t in times])
        return self.denormalize(picked)
