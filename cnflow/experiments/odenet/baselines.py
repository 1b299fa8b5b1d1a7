"""The paper's Table 1 baselines beside ODE-Net, and the four classifiers by name.

* :class:`RKNet`: ODE-Net trained by backpropagating directly through the Runge-Kutta
  solve instead of through the adjoint.
* :class:`ResNet`: ODE-Net's stem and head around 6 residual blocks (about 0.58 M
  parameters).
* :class:`MLP`: one hidden layer of 300 units (about 0.24 M parameters on MNIST).
* :func:`build_classifier` builds any of the four, ``"odenet"`` included, by name.

Example:
    >>> [sum(p.numel() for p in build_classifier(name).parameters()) for name in MODEL_NAMES]
    [238510, 576778, 208266, 208266]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnflow.models.odenet import (
    ODENet,
    classifier_head,
    downsampling_stem,
    group_norm,
)
from cnflow.validation import check_choice, check_int

__all__ = ["MLP", "MODEL_NAMES", "SMALL_IMAGE", "RKNet", "ResBlock", "ResNet",
           "build_classifier"]

MODEL_NAMES = ("mlp", "resnet", "rknet", "odenet")
# Below this side length the stem's first conv is padded: 8x8 digits then keep a 2x2
# feature map instead of 1x1, where group norm over two channels of one pixel makes the
# dynamics ill-conditioned.
SMALL_IMAGE = 16


class RKNet(ODENet):
    """ODE-Net trained by backpropagating directly through the Runge-Kutta solve.

    Same architecture, solver and tolerances as :class:`~cnflow.models.odenet.ODENet`; only
    the gradient differs: the solver's internal operations are recorded by autograd, so
    memory grows with the number of function evaluations.

    Args:
        in_channels: Image channels.
        num_classes: Output classes.
        channels: Width of the stem and of the ODE state.
        method: Solver method.
        rtol: Relative tolerance.
        atol: Absolute tolerance.
        step_size: Step of fixed-step methods.
        stem_padding: Padding of the stem's first conv.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, channels: int = 64,
                 method: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-3,
                 step_size: float | None = None, stem_padding: int = 0) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, channels=channels,
                         method=method, rtol=rtol, atol=atol, gradient="direct",
                         step_size=step_size, stem_padding=stem_padding)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(relu(norm(conv(relu(norm(x))))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update of ``x``."""
        out = self.conv1(self.relu(self.norm1(x)))
        out = self.conv2(self.relu(self.norm2(out)))
        return x + out


class ResNet(nn.Module):
    """Stem, ``num_blocks`` residual blocks, head (the paper's ResNet baseline).

    Args:
        in_channels: Image channels.
        num_classes: Output classes.
        channels: Width.
        num_blocks: Residual blocks (6 in the paper).
        stem_padding: Padding of the stem's first conv.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, channels: int = 64,
                 num_blocks: int = 6, stem_padding: int = 0) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_int("channels", channels)
        check_int("num_blocks", num_blocks)
        check_int("stem_padding", stem_padding, minimum=0)
        self.stem = downsampling_stem(in_channels, channels, stem_padding)
        self.blocks = nn.Sequential(*(ResBlock(channels) for _ in range(num_blocks)))
        self.head = classifier_head(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``x`` of shape ``(N, in_channels, H, W)``."""
        return self.head(self.blocks(self.stem(x)))


class MLP(nn.Module):
    """One-hidden-layer perceptron on flattened images (the paper's 1-layer MLP).

    Args:
        in_features: Pixels per image (784 for MNIST).
        num_classes: Output classes.
        hidden: Hidden units (300 in the paper).
    """

    def __init__(self, *, in_features: int = 784, num_classes: int = 10,
                 hidden: int = 300) -> None:
        super().__init__()
        check_int("in_features", in_features)
        check_int("num_classes", num_classes)
        check_int("hidden", hidden)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images ``x`` of shape ``(N, ...)``."""
        return self.net(x)


def build_classifier(name: str, *, in_channels: int = 1, image_size: int = 28,
                     num_classes: int = 10, channels: int = 64, num_blocks: int = 6,
                     hidden: int = 300, method: str = "dopri5", rtol: float = 1e-3,
                     atol: float = 1e-3, gradient: str = "adjoint",
                     step_size: float | None = None,
                     adjoint_options: dict[str, Any] | None = None) -> nn.Module:
    """Build one of the four classifiers of Table 1 by name.

    Args:
        name: One of :data:`MODEL_NAMES`: ``"mlp"``, ``"resnet"``, ``"rknet"``, ``"odenet"``.
        in_channels: Image channels.
        image_size: Image side length (the MLP's input size; the stem's padding).
        num_classes: Output classes.
        channels: Width of the convolutional models.
        num_blocks: Residual blocks of the ResNet.
        hidden: Hidden units of the MLP.
        method: Solver of ODE-Net and RK-Net.
        rtol: Relative tolerance of ODE-Net and RK-Net.
        atol: Absolute tolerance of ODE-Net and RK-Net.
        gradient: Gradient mode of ODE-Net (RK-Net always uses ``"direct"``).
        step_size: Step of fixed-step methods.
        adjoint_options: Extra options of ODE-Net's adjoint solve.

    Images smaller than :data:`SMALL_IMAGE` pixels (sklearn's 8x8 digits) get
    ``stem_padding=1``; MNIST gets the paper's unpadded stem.

    Returns:
        The model, freshly initialised.

    Raises:
        ValueError: ``name`` is unknown or an argument is out of range.
    """
    check_choice("name", name, MODEL_NAMES)
    check_int("image_size", image_size)
    if name == "mlp":
        return MLP(in_features=in_channels * image_size * image_size, num_classes=num_classes,
                   hidden=hidden)
    padding = 0 if image_size >= SMALL_IMAGE else 1
    if name == "resnet":
        return ResNet(in_channels=in_channels, num_classes=num_classes, channels=channels,
                      num_blocks=num_blocks, stem_padding=padding)
    if name == "rknet":
        return RKNet(in_channels=in_channels, num_classes=num_classes, channels=channels,
                     method=method, rtol=rtol, atol=atol, step_size=step_size,
                     stem_padding=padding)
    return ODENet(in_channels=in_channels, num_classes=num_classes, channels=channels,
                  method=method, rtol=rtol, atol=atol, gradient=gradient,
                  step_size=step_size, adjoint_options=adjoint_options,
                  stem_padding=padding)
