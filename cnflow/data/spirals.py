"""Noisy 2-D spirals for the latent-ODE experiment (Chen et al. 2018, Section 5).

The generator follows the spirit of torchdiffeq's ``examples/latent_ode.py``: every trajectory is a
stretch of one fixed Archimedean spiral, cut out at a random starting angle, half of them run
clockwise and half counter-clockwise, observed on a shared regular time grid with Gaussian noise.
Each trajectory has ``2 * window`` points: the first ``window`` are the observation window from
which a model may see a random subset, the next ``window`` are the extrapolation targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from cnflow.validation import check_int

#: Radius law of the Archimedean spiral, ``r(theta) = SPIRAL_A + SPIRAL_B * theta``.
SPIRAL_A = 0.0
SPIRAL_B = 0.3
#: Default range of the starting angles, drawn uniformly from ``[THETA0_LOW, THETA0_HIGH]``
#: (radians): the trajectories start between 0.5 and 1.5 turns out from the centre, at radius
#: 0.94 to 2.83.
THETA0_LOW = np.pi
THETA0_HIGH = 3.0 * np.pi
#: Spacing of the shared time grid ``t_k = k * TIME_STEP`` (``k = 0 .. n_points - 1``).
TIME_STEP = 0.05
#: Angular speed (radians per unit time): one full turn every 10 time units, so a 200-point
#: trajectory covers exactly one turn, half in the observation window and half beyond it.
ANGULAR_SPEED = 2.0 * np.pi / 10.0
#: Standard deviation of the Gaussian observation noise added to both coordinates.
NOISE_STD = 0.1


@dataclass(frozen=True)
class SpiralData:
    """A set of spirals on a shared time grid.

    Attributes:
        times: ``(n_points,)`` observation times, shared by all spirals.
        clean: ``(n_spirals, n_points, 2)`` noise-free positions.
        noisy: ``(n_spirals, n_points, 2)`` positions with Gaussian observation noise.
        clockwise: ``(n_spirals,)`` bool, True for clockwise spirals.
        theta0: ``(n_spirals,)`` starting angle on the spiral (radians).
        window: number of leading points that form the observation window.
        noise_std: standard deviation of the observation noise.
    """

    times: torch.Tensor
    clean: torch.Tensor
    noisy: torch.Tensor
    clockwise: torch.Tensor
    theta0: torch.Tensor
    window: int
    noise_std: float

    def __len__(self) -> int:
        return self.clean.shape[0]

    def subset(self, index: torch.Tensor | slice) -> SpiralData:
        """The spirals selected by ``index`` (same grid, window and noise level)."""
        return SpiralData(
            times=self.times,
            clean=self.clean[index],
            noisy=self.noisy[index],
            clockwise=self.clockwise[index],
            theta0=self.theta0[index],
            window=self.window,
            noise_std=self.noise_std,
        )

    def to(self, device: torch.device | str) -> SpiralData:
        """The same spirals with every tensor on ``device``."""
        return replace(self, times=self.times.to(device), clean=self.clean.to(device),
                       noisy=self.noisy.to(device), clockwise=self.clockwise.to(device),
                       theta0=self.theta0.to(device))


def spiral_positions(theta: np.ndarray, clockwise: np.ndarray) -> np.ndarray:
    """Points of the Archimedean spiral at angles ``theta``.

    The counter-clockwise spiral is ``r(theta) * (cos theta, sin theta)``, the clockwise one its
    mirror image in the x-axis, ``r(theta) * (cos theta, -sin theta)``; both are centred at the
    origin and both move outwards as ``theta`` grows.

    Args:
        theta: angles, any shape ``S``.
        clockwise: booleans broadcastable to ``S``.

    Returns:
        Array of shape ``S + (2,)``.
    """
    radius = SPIRAL_A + SPIRAL_B * theta
    sign = np.where(clockwise, -1.0, 1.0)
    return np.stack([radius * np.cos(theta), sign * radius * np.sin(theta)], axis=-1)


def generate_spirals(
    n_spirals: int = 1000,
    window: int = 100,
    *,
    noise_std: float = NOISE_STD,
    seed: int = 0,
    theta0_range: tuple[float, float] = (THETA0_LOW, THETA0_HIGH),
    dtype: torch.dtype = torch.float32,
) -> SpiralData:
    """Generate the paper's data set of noisy clockwise and counter-clockwise spirals.

    Every spiral is a stretch of the Archimedean spiral ``r(theta) = a + b * theta`` with
    ``a = SPIRAL_A = 0`` and ``b = SPIRAL_B = 0.3``, centred at the origin (no offset between the two
    directions). The counter-clockwise spirals are ``r * (cos theta, sin theta)``, the clockwise
    spirals the mirror image ``r * (cos theta, -sin theta)``; both move outwards. Exactly
    ``n_spirals // 2`` spirals are clockwise, the rest counter-clockwise, in random order. Each
    spiral starts at its own angle ``theta0 ~ Uniform(theta0_range)``, by default ``[pi, 3 pi]``
    (radius 0.94 to 2.83), and its angle grows at ``ANGULAR_SPEED = 2 pi / 10`` radians per unit
    time, so the radius grows at ``0.06 pi`` per unit time. The shared time grid is
    ``t_k = 0.05 k`` for ``k = 0 .. 2 * window - 1``; with the default ``window = 100`` the
    observation window is ``t in [0, 4.95]`` (half a turn) and the extrapolation targets
    ``t in [5, 9.95]`` (the next half turn), and with the default range the largest radius
    reached is ``0.3 * (3 pi + 1.99 pi) = 4.70``. Independent Gaussian noise with standard
    deviation ``noise_std`` (default 0.1) is added to both coordinates of every point.

    Args:
        n_spirals: number of spirals (at least 2, so that both directions occur).
        window: points in the observation window; trajectories have ``2 * window`` points.
        noise_std: standard deviation of the observation noise (non-negative).
        seed: seed of the generator's own random stream; equal seeds give equal data.
        theta0_range: ``(low, high)`` of the uniform starting angles (radians), ``low <= high``.
        dtype: floating dtype of the returned tensors.

    Returns:
        The spirals, see :class:`SpiralData`.

    Raises:
        ValueError: an argument is out of range.
    """
    if n_spirals < 2:
        raise ValueError(f"n_spirals={n_spirals} must be at least 2 (one per direction)")
    if window < 1:
        raise ValueError(f"window={window} must be at least 1")
    if not noise_std >= 0.0:
        raise ValueError(f"noise_std={noise_std} must be non-negative")
    low, high = theta0_range
    if not 0.0 <= low <= high < math.inf:
        raise ValueError(f"theta0_range={theta0_range} must be finite angles with "
                         "0 <= low <= high")
    rng = np.random.default_rng(seed)
    n_points = 2 * window
    times = TIME_STEP * np.arange(n_points)
    clockwise = np.zeros(n_spirals, dtype=bool)
    clockwise[: n_spirals // 2] = True
    clockwise = rng.permutation(clockwise)
    theta0 = rng.uniform(low, high, size=n_spirals)
    theta = theta0[:, None] + ANGULAR_SPEED * times[None, :]
    clean = spiral_positions(theta, clockwise[:, None])
    noisy = clean + noise_std * rng.standard_normal(clean.shape)
    return SpiralData(
        times=torch.as_tensor(times, dtype=dtype),
        clean=torch.as_tensor(clean, dtype=dtype),
        noisy=torch.as_tensor(noisy, dtype=dtype),
        clockwise=torch.as_tensor(clockwise),
        theta0=torch.as_tensor(theta0, dtype=dtype),
        window=window,
        noise_std=float(noise_std),
    )


def sample_observation_indices(
    n_spirals: int, n_obs: int, window: int = 100, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick ``n_obs`` distinct observation times out of the window, independently per spiral.

    Args:
        n_spirals: number of spirals.
        n_obs: observations per spiral, ``1 <= n_obs <= window``.
        window: number of points in the observation window.
        generator: random stream (the global one when None).

    Returns:
        ``(n_spirals, n_obs)`` long tensor of indices into the window, sorted along each row.

    Raises:
        ValueError: ``n_obs`` is not in ``[1, window]``.
    """
    check_int("window", window)
    check_int("n_obs", n_obs, maximum=window)  # drawn without replacement from the window
    # argsort of i.i.d. uniforms is a uniformly random permutation per row; its first n_obs
    # entries are a uniform draw without replacement.
    keys = torch.rand(n_spirals, window, generator=generator)
    return keys.argsort(dim=1)[:, :n_obs].sort(dim=1).values


def observed_points(times: torch.Tensor, values: torch.Tensor, obs_idx: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed values and their times, picked out of every spiral's grid.

    Args:
        times: ``(n_points,)`` the shared grid.
        values: ``(N, n_points, D)`` the spirals' values on it (noisy or clean).
        obs_idx: ``(N, n)`` each spiral's observed grid indices (as from
            :func:`sample_observation_indices`).

    Returns:
        ``(x_obs, t_obs)``: ``(N, n, D)`` values and ``(N, n)`` times.

    Example:
        >>> data = generate_spirals(2, window=3, seed=0)
        >>> x, t = observed_points(data.times, data.noisy, torch.tensor([[0, 2], [1, 2]]))
        >>> tuple(x.shape), tuple(t.shape), bool(torch.equal(x[1, 0], data.noisy[1, 1]))
        ((2, 2, 2), (2, 2), True)
    """
    picked = values.gather(1, obs_idx.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    return picked, times[obs_idx]
