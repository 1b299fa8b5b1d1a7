"""The experiment's spirals: the train / test split and each spiral's fixed observations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnflow.data.spirals import (
    SpiralData,
    generate_spirals,
    observed_points,
    sample_observation_indices,
)
from cnflow.experiments.latent_ode.config import WINDOW, LatentConfig

# The observation subsets are seeded by seed * OBS_SEED_STRIDE + n_obs: one stream per count,
# none shared with the data's own generator.
OBS_SEED_STRIDE = 1009


@dataclass
class Split:
    """Training or test spirals with their fixed observation subsets.

    Attributes:
        data: the spirals (``2 * WINDOW`` points each).
        obs_idx: ``(N, n)`` sorted indices of the observed points within the window.
    """

    data: SpiralData
    obs_idx: torch.Tensor

    def observed(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy observed values ``(B, n, 2)`` and their times ``(B, n)`` of the selected
        spirals."""
        return observed_points(self.data.times, self.data.noisy[index], self.obs_idx[index])

    def table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training table of :func:`cnflow.training.fit`, one row per spiral: the noisy
        values ``(N, 2 * WINDOW, 2)`` and the observed indices ``(N, n)``. The grid is shared,
        so the objectives hold the times and build everything else from these two."""
        return self.data.noisy, self.obs_idx

    def to(self, device: torch.device | str) -> Split:
        """The same split on ``device``."""
        return Split(self.data.to(device), self.obs_idx.to(device))

    @property
    def n_obs(self) -> int:
        """Observations per spiral."""
        return self.obs_idx.shape[1]


def make_splits(config: LatentConfig, n_obs: int) -> tuple[Split, Split]:
    """Generate the spirals, draw ``n_obs`` observations per spiral and split train / test.

    The generator's order is already random, so the first ``n_train`` spirals are the training
    set. The observation subsets depend on ``(seed, n_obs)`` only.
    """
    data = generate_spirals(config.n_spirals, WINDOW, noise_std=config.noise_std,
                            seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed * OBS_SEED_STRIDE + n_obs)
    obs_idx = sample_observation_indices(config.n_spirals, n_obs, WINDOW, generator=generator)
    train = torch.arange(config.n_train)
    test = torch.arange(config.n_train, config.n_spirals)
    return Split(data.subset(train), obs_idx[train]), Split(data.subset(test), obs_idx[test])
