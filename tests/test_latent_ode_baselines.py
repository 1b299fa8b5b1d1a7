"""The RNN baseline of the latent-ODE experiment and its least-squares objective."""

from __future__ import annotations

import torch

from cnflow.data.spirals import generate_spirals, sample_observation_indices
from cnflow.experiments.latent_ode.baselines import RNNBaseline, RNNObjective, rnn_loss


def _spirals(n_spirals=4, n_obs=7):
    data = generate_spirals(n_spirals=n_spirals, window=100, seed=2)
    idx = sample_observation_indices(n_spirals, n_obs, 100,
                                     generator=torch.Generator().manual_seed(0))
    return data, idx


def test_rnn_baseline_shapes_and_gradient():
    model = RNNBaseline()
    data, idx = _spirals(n_spirals=6, n_obs=8)
    x_obs = data.noisy[torch.arange(6)[:, None], idx]
    next_obs, future = model(x_obs, data.times[idx], data.times[100:110])
    assert next_obs.shape == (6, 7, 2) and future.shape == (6, 10, 2)
    future.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_window_only_rnn_loss_ignores_the_future():
    data, idx = _spirals()
    model = RNNBaseline()
    noisy = data.noisy.clone()
    with torch.no_grad():
        before = (rnn_loss(model, data.times, noisy, idx, train_future=False),
                  rnn_loss(model, data.times, noisy, idx))
        noisy[:, 100:] += 10.0  # moving the future changes only the full loss
        after = (rnn_loss(model, data.times, noisy, idx, train_future=False),
                 rnn_loss(model, data.times, noisy, idx))
    assert float(before[0]) == float(after[0]) and float(after[1]) > float(before[1]) + 1.0


def test_rnn_objective_is_the_loss_with_a_detached_report():
    data, idx = _spirals()
    model = RNNBaseline()
    loss, report = RNNObjective(data.times, train_future=True)(model, data.noisy, idx)
    assert loss.requires_grad and not report["loss"].requires_grad
    assert float(loss.detach()) == float(rnn_loss(model, data.times, data.noisy, idx).detach())
