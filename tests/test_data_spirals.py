"""The spirals of the latent-ODE experiment: shapes, directions, seeds, observation subsets."""

from __future__ import annotations

import pytest
import torch

from cnflow.data.spirals import generate_spirals, observed_points, sample_observation_indices


def test_spirals_shapes_and_directions():
    data = generate_spirals(n_spirals=10, window=100, seed=3)
    assert data.times.shape == (200,)
    assert data.clean.shape == data.noisy.shape == (10, 200, 2)
    assert int(data.clockwise.sum()) == 5
    assert torch.allclose(data.times[1] - data.times[0], torch.tensor(0.05))
    # Counter-clockwise spirals turn positively: the cross product of successive radius
    # vectors is positive; clockwise ones negative.
    c = data.clean.double()
    cross = c[:, :-1, 0] * c[:, 1:, 1] - c[:, :-1, 1] * c[:, 1:, 0]
    assert bool((cross[data.clockwise] < 0).all()) and bool((cross[~data.clockwise] > 0).all())
    # Both directions move outwards.
    radius = c.norm(dim=-1)
    assert bool((radius[:, 1:] > radius[:, :-1]).all())
    noise = (data.noisy - data.clean).std()
    assert 0.07 < float(noise) < 0.13


def test_spirals_reproducible_by_seed():
    a = generate_spirals(n_spirals=20, window=10, seed=7)
    b = generate_spirals(n_spirals=20, window=10, seed=7)
    c = generate_spirals(n_spirals=20, window=10, seed=8)
    assert torch.equal(a.noisy, b.noisy) and torch.equal(a.clockwise, b.clockwise)
    assert not torch.equal(a.noisy, c.noisy)
    # The generator uses its own stream: the global torch / numpy state does not matter.
    torch.manual_seed(123)
    d = generate_spirals(n_spirals=20, window=10, seed=7)
    assert torch.equal(a.noisy, d.noisy)


def test_start_angles_follow_the_range_and_set_the_positions():
    data = generate_spirals(n_spirals=200, window=10, seed=5, theta0_range=(4.0, 5.0),
                            dtype=torch.float64)
    assert 4.0 <= float(data.theta0.min()) < 4.1 and 4.9 < float(data.theta0.max()) <= 5.0
    # The first point of each spiral is the spiral at its start angle: radius 0.3 theta0.
    torch.testing.assert_close(data.clean[:, 0].norm(dim=-1), 0.3 * data.theta0)


def test_subset_and_to_keep_the_grid_and_every_field():
    data = generate_spirals(n_spirals=6, window=5, seed=1)
    part = data.subset(torch.tensor([4, 1]))
    assert torch.equal(part.noisy, data.noisy[[4, 1]]) and torch.equal(part.times, data.times)
    assert len(part) == 2 and part.window == 5 and part.noise_std == data.noise_std
    moved = part.to("cpu")
    assert all(torch.equal(getattr(moved, name), getattr(part, name))
               for name in ("times", "clean", "noisy", "clockwise", "theta0"))


def test_observation_indices():
    gen = torch.Generator().manual_seed(0)
    idx = sample_observation_indices(50, 30, 100, generator=gen)
    assert idx.shape == (50, 30)
    assert bool((idx[:, 1:] > idx[:, :-1]).all()), "sorted and without replacement"
    assert int(idx.min()) >= 0 and int(idx.max()) < 100
    again = sample_observation_indices(50, 30, 100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)
    full = sample_observation_indices(3, 100, 100)
    assert torch.equal(full, torch.arange(100).expand(3, -1))


@pytest.mark.parametrize("n_obs", [0, 101, -1])
def test_observation_indices_bad_n(n_obs):
    with pytest.raises(ValueError, match=f"n_obs must be an integer in \\[1, 100\\], got {n_obs}"):
        sample_observation_indices(5, n_obs, 100)


def test_observed_points_pick_each_spirals_own_points():
    data = generate_spirals(n_spirals=3, window=10, seed=4)
    idx = sample_observation_indices(3, 4, 10, generator=torch.Generator().manual_seed(2))
    x_obs, t_obs = observed_points(data.times, data.noisy, idx)
    assert x_obs.shape == (3, 4, 2) and t_obs.shape == (3, 4)
    for row in range(3):
        torch.testing.assert_close(x_obs[row], data.noisy[row, idx[row]], rtol=0, atol=0)
        torch.testing.assert_close(t_obs[row], data.times[idx[row]], rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_spirals": 1}, "n_spirals"), ({"window": 0}, "window"), ({"noise_std": -0.1}, "noise"),
     ({"theta0_range": (2.0, 1.0)}, r"theta0_range=\(2.0, 1.0\)"),
     ({"theta0_range": (-1.0, 1.0)}, "theta0_range"),
     ({"theta0_range": (0.0, float("inf"))}, "theta0_range")],
)
def test_spirals_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_spirals(**kwargs)
