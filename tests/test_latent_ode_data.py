"""The experiment's spirals (cnflow.experiments.latent_ode.data): training windows that cover
every angle a test spiral is scored at, two seeded streams, fixed observation subsets."""

from __future__ import annotations

import torch

from cnflow.data.spirals import ANGULAR_SPEED, TIME_STEP
from cnflow.experiments.latent_ode import LatentConfig, make_splits
from cnflow.experiments.latent_ode.config import WINDOW
from cnflow.experiments.latent_ode.data import TEST_THETA0, TRAIN_THETA0


def _tiny_config(**overrides):
    return LatentConfig(**{"n_obs": (20,), "n_spirals": 24, "n_train": 16, **overrides})


def test_splits_train_windows_cover_every_angle_a_test_target_reaches():
    config = _tiny_config(n_spirals=400, n_train=300)
    train, test = make_splits(config, n_obs=20, seed=1)
    assert len(train.data) == 300 and len(test.data) == 100
    assert TRAIN_THETA0[0] <= float(train.data.theta0.min()) <= float(train.data.theta0.max()) \
        <= TRAIN_THETA0[1]
    assert TEST_THETA0[0] <= float(test.data.theta0.min()) <= float(test.data.theta0.max()) \
        <= TEST_THETA0[1]
    # The angles swept by the shared grid: a window's first to last, a target's likewise.
    step = ANGULAR_SPEED * TIME_STEP
    window_angles = (TRAIN_THETA0[0], TRAIN_THETA0[1] + step * (WINDOW - 1))
    target_angles = (TEST_THETA0[0] + step * WINDOW, TEST_THETA0[1] + step * (2 * WINDOW - 1))
    assert window_angles[0] <= target_angles[0] and target_angles[1] <= window_angles[1] + 1e-12
    # Two streams: the test spirals are not the training spirals' continuation, and the
    # seed changes both.
    other_train, other_test = make_splits(config, n_obs=20, seed=2)
    assert not torch.equal(train.data.noisy[:100], test.data.noisy)
    assert not torch.equal(train.data.noisy, other_train.data.noisy)
    assert not torch.equal(test.data.noisy, other_test.data.noisy)
    again_train, again_test = make_splits(config, n_obs=20, seed=1)
    assert torch.equal(again_train.data.noisy, train.data.noisy)
    assert torch.equal(again_test.obs_idx, test.obs_idx)
