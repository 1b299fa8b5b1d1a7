"""The latent ODE's parts (cnflow.models.latent_ode): the Gaussian terms through
torch.distributions, the ELBO and its gradients, and the Poisson-process likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from cnflow.data.spirals import generate_spirals, observed_points, sample_observation_indices
from cnflow.models.latent_ode import (
    LatentODE,
    gaussian_kl,
    gaussian_log_likelihood,
    poisson_log_likelihood_from_path,
    poisson_process_log_likelihood,
    solve_latent,
    solve_ode,
)


def _small_batch(n_spirals=6, n_obs=8, window=10, dtype=torch.float32):
    """ELBO inputs on the whole grid, built by hand (the experiment's latent_batch is checked
    against the same construction in test_latent_ode_train.py)."""
    data = generate_spirals(n_spirals=n_spirals, window=window, seed=1, dtype=dtype)
    idx = sample_observation_indices(n_spirals, n_obs, window)
    x_obs, t_obs = observed_points(data.times, data.noisy, idx)
    observed = torch.zeros(n_spirals, 2 * window, dtype=torch.bool)
    observed.scatter_(1, idx, True)
    targets = observed.clone()
    targets[:, window:] = True
    return {"x_obs": x_obs, "t_obs": t_obs, "times": data.times, "x_target": data.noisy,
            "target_mask": targets, "event_mask": observed, "event_end_index": window - 1}


# --- the Gaussian terms --------------------------------------------------------------------

def test_gaussian_log_likelihood_matches_scipy_float64():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 2, generator=gen, dtype=torch.float64)
    mean = torch.randn(4, 5, 2, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 5, generator=gen, dtype=torch.float64) > 0.4
    std = 0.37
    expected = norm.logpdf(x.numpy(), loc=mean.numpy(), scale=std)
    np.testing.assert_allclose(gaussian_log_likelihood(x, mean, std).numpy(),
                               expected.reshape(4, -1).sum(1), rtol=1e-12)
    masked = (expected * mask.numpy()[..., None]).reshape(4, -1).sum(1)
    np.testing.assert_allclose(gaussian_log_likelihood(x, mean, std, mask).numpy(), masked,
                               rtol=1e-12)


def test_gaussian_log_likelihood_weights_scale_the_terms():
    x, mean = torch.zeros(1, 2, 1, dtype=torch.float64), torch.ones(1, 2, 1, dtype=torch.float64)
    weights = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    term = norm.logpdf(0.0, loc=1.0, scale=0.5)
    assert float(gaussian_log_likelihood(x, mean, 0.5, weights)) == pytest.approx(2.5 * term,
                                                                                 rel=1e-12)


def test_gaussian_kl_matches_the_closed_form_float64():
    gen = torch.Generator().manual_seed(4)
    mean = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    logvar = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    closed = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)
    torch.testing.assert_close(gaussian_kl(mean, logvar), closed, rtol=1e-12, atol=1e-12)
    assert float(gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max()) == 0.0
    assert float(gaussian_kl(torch.ones(1, 4), torch.zeros(1, 4))) == pytest.approx(2.0)


def test_gaussian_terms_are_differentiable_and_pass_nan_through():
    mean = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    gaussian_kl(mean + 1.0, logvar).sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(2, 3))  # d/dmu mu^2 / 2 at mu = 1
    # A diverged model gives a NaN loss (which the training loop stops on), not a ValueError.
    nan = torch.full((1, 2, 2), math.nan)
    assert math.isnan(float(gaussian_log_likelihood(torch.zeros(1, 2, 2), nan, 0.1)))
    assert math.isnan(float(gaussian_kl(torch.full((1, 2), math.nan), torch.zeros(1, 2))))


# --- the model -----------------------------------------------------------------------------

def test_elbo_gradient_reaches_every_parameter():
    model = LatentODE(poisson=True, rtol=1e-4, atol=1e-5)
    out = model.elbo(**_small_batch(n_obs=4, window=5), gradient="adjoint")
    assert out.prediction.shape == (6, 10, 2)
    assert torch.isfinite(out.loss) and out.poisson_log_likelihood is not None
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert bool(torch.isfinite(param.grad).all()), name
        assert float(param.grad.abs().sum()) > 0, f"{name} has an all-zero gradient"
    # The training loop reads the step's NFE here; the backward counts are in after backward.
    assert model.last_stats is out.solution.stats
    assert model.last_stats.forward.nfe > 0 and model.last_stats.backward.nfe > 0


def test_adjoint_and_direct_gradients_agree_float64():
    torch.manual_seed(0)
    model = LatentODE(poisson=True, rtol=1e-8, atol=1e-8).double()
    batch = _small_batch(n_spirals=3, n_obs=3, window=4, dtype=torch.float64)
    grads = {}
    for gradient in ("direct", "adjoint"):
        model.zero_grad()
        out = model.elbo(**batch, gradient=gradient, sample=False)
        out.loss.backward()
        grads[gradient] = {n: p.grad.clone() for n, p in model.named_parameters()}
        if gradient == "adjoint":
            assert out.solution.stats.backward.nfe > 0
    # Both are accurate to the solver's tolerance, not to round-off: compare against the scale
    # of the whole gradient, so that tiny entries are not judged by their own relative error.
    scale = max(float(g.abs().max()) for g in grads["direct"].values())
    for name, direct in grads["direct"].items():
        torch.testing.assert_close(grads["adjoint"][name], direct, rtol=1e-5, atol=1e-6 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_elbo_terms_add_up():
    torch.manual_seed(1)
    model = LatentODE().double()
    batch = _small_batch(n_spirals=3, n_obs=3, window=4, dtype=torch.float64)
    out = model.elbo(**batch, sample=False)
    torch.testing.assert_close(out.loss, out.kl - out.log_likelihood)
    mean, logvar = model.encode(batch["x_obs"], batch["t_obs"], batch["times"][0])
    torch.testing.assert_close(out.kl, gaussian_kl(mean, logvar).mean())


def test_poisson_model_needs_events():
    model = LatentODE(poisson=True)
    batch = _small_batch()
    batch.pop("event_mask")
    with pytest.raises(ValueError, match="event_mask"):
        model.elbo(**batch)


def test_elbo_rejects_mismatched_targets():
    batch = _small_batch()
    batch["target_mask"] = batch["target_mask"][:, :-1]
    with pytest.raises(ValueError, match="target_mask"):
        LatentODE().elbo(**batch)


def test_predict_decodes_the_posterior_mean_without_a_graph():
    model = LatentODE()
    batch = _small_batch()
    prediction = model.predict(batch["x_obs"], batch["t_obs"], batch["times"])
    assert prediction.shape == (6, 20, 2) and not prediction.requires_grad
    again = model.predict(batch["x_obs"], batch["t_obs"], batch["times"])
    assert torch.equal(prediction, again)  # no random draw


def test_model_rejects_a_non_positive_noise():
    with pytest.raises(ValueError, match="obs_std"):
        LatentODE(obs_std=0.0)


# --- the Poisson-process likelihood --------------------------------------------------------

class _UnitDrift(nn.Module):
    """dz/dt = 1, so z(t) = z0 + t."""

    def forward(self, t, z):
        return torch.ones_like(z)


class _AffineLogIntensity(nn.Module):
    """log lambda(z) = a + b z[..., 0]."""

    def __init__(self, a, b):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, z):
        return self.a + self.b * z[..., 0]


def _events(t, picks):
    mask = torch.zeros(len(picks), t.shape[0], dtype=torch.bool)
    for row, cols in enumerate(picks):
        mask[row, cols] = True
    return mask


def test_poisson_constant_intensity_closed_form():
    t = torch.linspace(0.0, 3.0, 31, dtype=torch.float64)
    rate = 2.5
    intensity = _AffineLogIntensity(math.log(rate), 0.0)
    events = _events(t, [[1, 5, 9], [0, 30], []])
    z0 = torch.zeros(3, 1, dtype=torch.float64)
    log_lik, zs = poisson_process_log_likelihood(
        _UnitDrift(), intensity, z0, t, events, rtol=1e-10, atol=1e-12
    )
    expected = torch.tensor([3.0, 2.0, 0.0], dtype=torch.float64) * math.log(rate) - rate * 3.0
    torch.testing.assert_close(log_lik, expected, rtol=1e-9, atol=1e-9)
    assert zs.shape == (31, 3, 1)


def test_poisson_exponential_intensity_closed_form():
    # z(t) = t, lambda(t) = exp(a + b t): integral_0^T = (exp(a + b T) - exp(a)) / b.
    a, b, horizon = -0.3, 0.7, 2.0
    t = torch.linspace(0.0, horizon, 21, dtype=torch.float64)
    picks = [[2, 7, 11, 20], [4]]
    events = _events(t, picks)
    log_lik, _ = poisson_process_log_likelihood(
        _UnitDrift(), _AffineLogIntensity(a, b), torch.zeros(2, 1, dtype=torch.float64), t,
        events, rtol=1e-10, atol=1e-12,
    )
    integral = (math.exp(a + b * horizon) - math.exp(a)) / b
    expected = [sum(a + b * float(t[i]) for i in row) - integral for row in picks]
    torch.testing.assert_close(log_lik, torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-8, atol=1e-8)


def test_poisson_gradient_matches_closed_form_adjoint():
    # d/da of log p = k - integral and d/db = sum t_i - d(integral)/db, via the adjoint.
    a, b, horizon = 0.2, -0.5, 1.5
    t = torch.linspace(0.0, horizon, 16, dtype=torch.float64)
    intensity = _AffineLogIntensity(a, b)
    events = _events(t, [[3, 8, 15]])
    log_lik, _ = poisson_process_log_likelihood(
        _UnitDrift(), intensity, torch.zeros(1, 1, dtype=torch.float64), t, events,
        rtol=1e-10, atol=1e-12, gradient="adjoint",
    )
    log_lik.sum().backward()
    integral = (math.exp(a + b * horizon) - math.exp(a)) / b
    d_integral_db = (horizon * math.exp(a + b * horizon)) / b - integral / b
    assert float(intensity.a.grad) == pytest.approx(3 - integral, rel=1e-6)
    sum_t = float(t[3] + t[8] + t[15])
    assert float(intensity.b.grad) == pytest.approx(sum_t - d_integral_db, rel=1e-6)


def test_solve_latent_carries_the_compensator_alongside():
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    z0 = torch.zeros(2, 1, dtype=torch.float64)
    zs, compensator, _ = solve_latent(_UnitDrift(), z0, t, _AffineLogIntensity(0.0, 0.0),
                                      rtol=1e-10, atol=1e-12)
    assert zs.shape == (2, 5, 1) and compensator.shape == (2, 5)
    torch.testing.assert_close(compensator, t.expand(2, -1))  # lambda = 1
    plain, none, _ = solve_latent(_UnitDrift(), z0, t, rtol=1e-10, atol=1e-12)
    assert none is None
    torch.testing.assert_close(plain, zs)


def test_poisson_events_after_interval_rejected():
    log_lam = torch.zeros(1, 5)
    comp = torch.zeros(1, 5)
    events = torch.tensor([[True, False, False, False, True]])
    with pytest.raises(ValueError, match="after the end"):
        poisson_log_likelihood_from_path(log_lam, comp, events, end_index=3)


def test_solve_ode_rejects_unknown_gradient():
    with pytest.raises(ValueError, match="gradient"):
        solve_ode(_UnitDrift(), torch.zeros(1, 1), torch.linspace(0, 1, 3), rtol=1e-3,
                  atol=1e-3, gradient="backprop")
