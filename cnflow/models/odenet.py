"""ODE-Net (Section 3 of Chen et al., 2018): an ODE block inside a convolutional classifier.

* :class:`ODEBlock` integrates any dynamics ``f(t, h)`` from ``t = 0`` to ``t = 1`` with
  cnflow's solver, with a chosen method, tolerances and gradient mode, and reports the
  forward and backward number of function evaluations (NFE) of its last call from the
  solver's own statistics (:func:`block_nfe` sums them over a model's blocks).
* :class:`ODENet`: a downsampling stem (the input is downsampled twice; 64 channels, group
  norm), one ODE block whose dynamics (:class:`ConvODEFunc`) are two 3x3 convolutions that
  see time as an extra input channel (:class:`ConcatConv2d`), then group norm, global
  average pooling and a linear head (about 0.21 M parameters on MNIST).
* :func:`downsampling_stem`, :func:`classifier_head` and :func:`group_norm` are the pieces
  that the paper's baselines (:mod:`cnflow.experiments.odenet.baselines`) share with it.

The architecture follows the reference implementation that accompanies the paper
(torchdiffeq's ``examples/odenet_mnist.py``).

Example:
    >>> count_parameters(ODENet())
    208266
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import cnflow
from cnflow.solvers import ADAPTIVE_METHODS, FIXED_STEP_METHODS, GRADIENT_MODES
from cnflow.validation import check_choice, check_float, check_int

__all__ = [
    "ConcatConv2d",
    "ConvODEFunc",
    "ODEBlock",
    "ODENet",
    "block_nfe",
    "classifier_head",
    "count_parameters",
    "downsampling_stem",
    "group_norm",
    "ode_blocks",
]


def group_norm(channels: int) -> nn.GroupNorm:
    """Group norm with up to 32 groups, as in the reference ODE-Net."""
    return nn.GroupNorm(min(32, channels), channels)


class ConcatConv2d(nn.Module):
    """A 2-D convolution that sees the time ``t`` as an extra, constant input channel.

    Args:
        dim_in: Input channels (time excluded).
        dim_out: Output channels.
        kernel_size: Convolution kernel size.
        padding: Zero padding.
        bias: Whether the convolution has a bias.
    """

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int = 3, padding: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim_in + 1, dim_out, kernel_size, padding=padding, bias=bias)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``[t, x]`` along the channel axis.

        Args:
            t: Scalar time.
            x: Feature map, shape ``(N, dim_in, H, W)``.

        Returns:
            Shape ``(N, dim_out, H', W')``.
        """
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], dim=1))


class ConvODEFunc(nn.Module):
    """ODE-Net dynamics: norm-ReLU-conv-norm-ReLU-conv-norm, with time fed to each conv.

    Args:
        channels: Channels of the hidden state, which the dynamics preserve.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = ConcatConv2d(channels, channels)
        self.norm2 = group_norm(channels)
        self.conv2 = ConcatConv2d(channels, channels)
        self.norm3 = group_norm(channels)
        self.relu = nn.ReLU()

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Time derivative ``dh/dt = f(t, h)``.

        Args:
            t: Scalar time.
            h: Hidden state, shape ``(N, channels, H, W)``.

        Returns:
            Same shape as ``h``.
        """
        out = self.conv1(t, self.relu(self.norm1(h)))
        out = self.conv2(t, self.relu(self.norm2(out)))
        return self.norm3(out)


class ODEBlock(nn.Module):
    """Integrate ``dh/dt = func(t, h)`` over ``[0, 1]`` and return ``h(1)``.

    Args:
        func: Dynamics module, called as ``func(t, h)``; its parameters are trained.
        method: Solver: one of :data:`FIXED_STEP_METHODS` or :data:`ADAPTIVE_METHODS`.
        rtol: Relative tolerance of adaptive methods (forward and adjoint).
        atol: Absolute tolerance of adaptive methods (forward and adjoint).
        gradient: ``"adjoint"`` (O(1) memory in the number of solver steps), ``"direct"``
            (backpropagate through the solver's operations) or ``"checkpoint"``.
        step_size: Step of fixed-step methods, in ``(0, 1]``; required for them and not
            allowed for adaptive ones.
        adjoint_options: Extra options of the adjoint solve, e.g. ``{"norm": "seminorm"}``.

    Raises:
        ValueError: An argument is out of range or unknown.
        TypeError: ``func`` is not an ``nn.Module``.
    """

    def __init__(self, func: nn.Module, *, method: str = "dopri5", rtol: float = 1e-3,
                 atol: float = 1e-3, gradient: str = "adjoint", step_size: float | None = None,
                 adjoint_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(func, nn.Module):
            raise TypeError(f"func must be a torch.nn.Module, got {type(func).__name__}")
        check_choice("method", method, FIXED_STEP_METHODS + ADAPTIVE_METHODS)
        check_choice("gradient", gradient, GRADIENT_MODES)
        for name, tol in (("rtol", rtol), ("atol", atol)):
            check_float(name, tol)
        if method in FIXED_STEP_METHODS:
            if step_size is None:
                raise ValueError(f"method={method!r} is a fixed-step method and needs step_size")
            check_float("step_size", step_size, maximum=1)
        elif step_size is not None:
            raise ValueError(f"step_size={step_size!r} is only for fixed-step methods, "
                             f"not method={method!r}")
        self.func = func
        self.method = method
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.gradient = gradient
        self.step_size = None if step_size is None else float(step_size)
        self.adjoint_options = dict(adjoint_options) if adjoint_options else None
        self._stats: Any = None

    def forward(self, h0: torch.Tensor) -> torch.Tensor:
        """Solve from ``t = 0`` to ``t = 1``.

        Args:
            h0: Initial state.

        Returns:
            ``h(1)``, same shape as ``h0``.
        """
        t = torch.tensor([0.0, 1.0], dtype=h0.dtype, device=h0.device)
        options = None if self.step_size is None else {"step_size": self.step_size}
        extra: dict[str, Any] = {}
        if self.gradient == "adjoint":
            extra["adjoint_params"] = tuple(self.func.parameters())
            if self.adjoint_options is not None:
                extra["adjoint_options"] = dict(self.adjoint_options)
        solution = cnflow.solve(self.func, h0, t, rtol=self.rtol, atol=self.atol,
                                method=self.method, options=options, gradient=self.gradient,
                                **extra)
        # Keep only the statistics, not the solution: holding `solution.ys` would keep the
        # whole autograd graph of the last batch alive until the next call.
        self._stats = solution.stats
        return solution.ys[-1]

    @property
    def nfe_forward(self) -> int | None:
        """Function evaluations of the last forward solve (None before the first call)."""
        return None if self._stats is None else int(self._stats.forward.nfe)

    @property
    def nfe_backward(self) -> int | None:
        """Function evaluations of the last backward pass through this block.

        None before a backward pass has run through the last solve, and for gradient modes
        whose backward pass the solver does not count.
        """
        if self._stats is None or self._stats.backward is None:
            return None
        return int(self._stats.backward.nfe)

    def extra_repr(self) -> str:
        step = "" if self.step_size is None else f", step_size={self.step_size}"
        return (f"method={self.method!r}, rtol={self.rtol}, atol={self.atol}, "
                f"gradient={self.gradient!r}{step}")


def downsampling_stem(in_channels: int, channels: int, padding: int = 0) -> nn.Sequential:
    """Conv stem that downsamples twice: 3x3 conv, then two stride-2 4x4 convs.

    With the paper's ``padding=0`` a 28x28 MNIST image becomes a ``channels`` x 6 x 6
    feature map. ``padding=1`` on the first conv keeps 8x8 digits at 2x2 instead of 1x1,
    where group norm over two channels of one pixel makes the dynamics ill-conditioned.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, 1, padding),
        group_norm(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 4, 2, 1),
        group_norm(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 4, 2, 1),
    )


def classifier_head(channels: int, num_classes: int) -> nn.Sequential:
    """Group norm, ReLU, global average pooling and a linear layer."""
    return nn.Sequential(
        group_norm(channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(channels, num_classes),
    )


class ODENet(nn.Module):
    """Stem, one ODE block with conv dynamics, head (the paper's ODE-Net).

    Args:
        in_channels: Image channels.
        num_classes: Output classes.
        channels: Width of the stem and of the ODE state.
        method: Solver method (see :class:`ODEBlock`).
        rtol: Relative tolerance.
        atol: Absolute tolerance.
        gradient: Gradient mode of the ODE block.
        step_size: Step of fixed-step methods.
        adjoint_options: Extra options of the adjoint solve.
        stem_padding: Padding of the stem's first conv (0 as in the paper; 1 for small
            images, see :func:`downsampling_stem`).
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, channels: int = 64,
                 method: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-3,
                 gradient: str = "adjoint", step_size: float | None = None,
                 adjoint_options: dict[str, Any] | None = None, stem_padding: int = 0) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_int("channels", channels)
        check_int("stem_padding", stem_padding, minimum=0)
        self.stem = downsampling_stem(in_channels, channels, stem_padding)
        self.odeblock = ODEBlock(ConvODEFunc(channels), method=method, rtol=rtol, atol=atol,
                                 gradient=gradient, step_size=step_size,
                                 adjoint_options=adjoint_options)
        self.head = classifier_head(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``x`` of shape ``(N, in_channels, H, W)``."""
        return self.head(self.odeblock(self.stem(x)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    """All :class:`ODEBlock` submodules of ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


def block_nfe(model: nn.Module) -> tuple[int | None, int | None]:
    """Forward and backward NFE of the last call, summed over the ODE blocks of ``model``.

    Each is None where no block counted one: a model without ODE blocks, no backward pass
    yet, or a gradient mode whose backward the solver does not count (``"direct"``).
    """
    def total(values: list[int | None]) -> int | None:
        counted = [v for v in values if v is not None]
        return sum(counted) if counted else None

    blocks = ode_blocks(model)
    return (total([b.nfe_forward for b in blocks]), total([b.nfe_backward for b in blocks]))
