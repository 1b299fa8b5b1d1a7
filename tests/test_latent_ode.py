"""Latent ODE (paper Section 5): spirals, models, Poisson likelihood, training and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cnflow.data.spirals import generate_spirals, sample_observation_indices
from cnflow.experiments import latent_ode as experiment
from cnflow.models.latent_ode import (
    LatentODE,
    RNNBaseline,
    gaussian_kl,
    poisson_log_likelihood_from_path,
    poisson_process_log_likelihood,
    solve_ode,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as in every cnflow experiment: the test machines are small and shared,
    and oversubscribed threads make tiny models slower, not faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# data


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
    with pytest.raises(ValueError, match="n_obs"):
        sample_observation_indices(5, n_obs, 100)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_spirals": 1}, "n_spirals"), ({"window": 0}, "window"), ({"noise_std": -0.1}, "noise")],
)
def test_spirals_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_spirals(**kwargs)


# ---------------------------------------------------------------------------------------------
# models


def _small_batch(n_spirals=6, n_obs=8, window=10, dtype=torch.float32):
    data = generate_spirals(n_spirals=n_spirals, window=window, seed=1, dtype=dtype)
    idx = sample_observation_indices(n_spirals, n_obs, window)
    x_obs = data.noisy.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))
    observed = torch.zeros(n_spirals, 2 * window, dtype=torch.bool)
    observed.scatter_(1, idx, True)
    targets = observed.clone()
    targets[:, window:] = True
    return {
        "x_obs": x_obs,
        "t_obs": data.times[idx],
        "times": data.times,
        "x_target": data.noisy,
        "target_mask": targets,
        "event_mask": observed,
        "event_end_index": window - 1,
    }


def test_small_batch_helper_matches_experiment_batches():
    # The experiment builds its batches with latent_batch; on the whole grid they equal the
    # hand-built ones used in these tests.
    data = generate_spirals(n_spirals=4, window=100, seed=2)
    idx = sample_observation_indices(4, 7, 100, generator=torch.Generator().manual_seed(0))
    split = experiment.Split(data, idx)
    batch = experiment.latent_batch(split, torch.arange(4), 0, torch.Generator())
    assert batch["times"].shape == (200,) and bool((batch["weights"] == 1).all())
    assert int(batch["target_mask"].sum()) == 4 * (7 + 100)
    assert int(batch["event_mask"].sum()) == 4 * 7 and batch["event_end_index"] == 99
    sub = experiment.latent_batch(split, torch.arange(4), 10, torch.Generator().manual_seed(1))
    assert sub["times"].shape == (12,) and float(sub["times"][0]) == 0.0
    # Inverse inclusion probabilities: the window's ends always (weight 1), each of the other
    # 198 grid times with probability 10 / 198.
    ends = (sub["times"] == 0.0) | (sub["times"] == data.times[99])
    assert bool((sub["weights"][ends] == 1).all())
    torch.testing.assert_close(sub["weights"][~ends], torch.full((10,), 19.8))


def test_window_only_batches_never_look_past_the_window():
    data = generate_spirals(n_spirals=4, window=100, seed=2)
    idx = sample_observation_indices(4, 7, 100, generator=torch.Generator().manual_seed(0))
    split = experiment.Split(data, idx)
    full = experiment.latent_batch(split, torch.arange(4), 0, torch.Generator(), False)
    assert full["times"].shape == (100,) and float(full["times"][-1]) == float(data.times[99])
    assert int(full["target_mask"].sum()) == 4 * 7 and full["event_end_index"] == 99
    for seed in range(5):
        sub = experiment.latent_batch(split, torch.arange(4), 10,
                                      torch.Generator().manual_seed(seed), False)
        assert sub["times"].shape == (12,) and float(sub["times"][-1]) == float(data.times[99])
        # 98 window times besides the two ends, each drawn with probability 10 / 98.
        torch.testing.assert_close(sub["weights"][1:-1], torch.full((10,), 9.8))


def test_window_only_rnn_loss_ignores_the_future():
    data = generate_spirals(n_spirals=4, window=100, seed=2)
    idx = sample_observation_indices(4, 7, 100, generator=torch.Generator().manual_seed(0))
    split = experiment.Split(data, idx)
    index = torch.arange(4)
    model = RNNBaseline()
    with torch.no_grad():
        before = (experiment.rnn_loss(model, split, index, train_future=False),
                  experiment.rnn_loss(model, split, index))
        split.data.noisy[:, 100:] += 10.0  # moving the future changes only the full loss
        after = (experiment.rnn_loss(model, split, index, train_future=False),
                 experiment.rnn_loss(model, split, index))
    assert float(before[0]) == float(after[0]) and float(after[1]) > float(before[1]) + 1.0


def test_learning_curve_is_recorded_without_changing_the_run():
    config = _tiny_config(rnn_iterations=10, eval_every=4)
    train, test = experiment.make_splits(config, n_obs=20)
    result, curve = experiment.fit_with_curve("rnn", train, test, config)
    assert curve["step"] == [4, 8, 10]
    assert curve["rmse_extrapolation"][-1] == experiment.evaluate(result.model, test)[
        "rmse_extrapolation"]
    plain = experiment.train_rnn(train, config)
    assert plain.losses == result.losses
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        experiment.new_model("gru", train, config)


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


def test_poisson_model_needs_events():
    model = LatentODE(poisson=True)
    batch = _small_batch()
    batch.pop("event_mask")
    with pytest.raises(ValueError, match="event_mask"):
        model.elbo(**batch)


def test_rnn_baseline_shapes_and_gradient():
    model = RNNBaseline()
    batch = _small_batch()
    times = batch["times"]
    next_obs, future = model(batch["x_obs"], batch["t_obs"], times[10:])
    assert next_obs.shape == (6, 7, 2) and future.shape == (6, 10, 2)
    future.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gaussian_kl_zero_at_prior():
    assert float(gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max()) == 0.0
    assert float(gaussian_kl(torch.ones(1, 4), torch.zeros(1, 4))) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------
# Poisson-process likelihood


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


# ---------------------------------------------------------------------------------------------
# training and evaluation


def _tiny_config(**overrides):
    settings = {"n_spirals": 24, "n_train": 16, "iterations": 15, "rnn_iterations": 15,
                "batch_size": 16, "lr": 1e-2, "final_lr_factor": 0.5, "time_subsample": 4,
                "rtol": 1e-3, "atol": 1e-4}
    settings.update(overrides)
    return experiment.LatentConfig(**settings)


@torch.no_grad()
def _full_negative_elbo(model, split):
    """Deterministic training objective on the whole grid (posterior mean, no subsampling)."""
    batch = experiment.latent_batch(split, torch.arange(len(split.data)), 0, torch.Generator())
    return float(model.elbo(**batch, gradient="direct", sample=False).loss)


def test_short_latent_ode_training_lowers_loss():
    # The whole grid and checkpointed gradients (exact, and cheap on a 200-point grid) keep this
    # short run free of subsampling noise; the adjoint's exactness is tested above.
    config = _tiny_config(iterations=20, lr=1e-2, final_lr_factor=1.0, time_subsample=0,
                          gradient="checkpoint")
    train, test = experiment.make_splits(config, n_obs=20)
    model = LatentODE(obs_std=train.data.noise_std, rtol=config.rtol, atol=config.atol)
    before = _full_negative_elbo(model, train)
    result = experiment.train_latent_ode(train, config, model=model)
    after = _full_negative_elbo(result.model, train)
    assert after < 0.92 * before, (before, after)
    assert len(result.losses) == 20 and result.nfe_forward > 0 and result.nfe_backward > 0
    metrics = experiment.evaluate(result.model, test)
    assert set(metrics) == {"rmse_extrapolation", "rmse_extrapolation_noisy", "rmse_window"}


def test_short_rnn_training_lowers_loss():
    config = _tiny_config(rnn_iterations=30)
    train, test = experiment.make_splits(config, n_obs=20)
    model = RNNBaseline()
    index = torch.arange(len(train.data))
    with torch.no_grad():
        before = float(experiment.rnn_loss(model, train, index))
    result = experiment.train_rnn(train, config, model=model)
    with torch.no_grad():
        after = float(experiment.rnn_loss(result.model, train, index))
    assert after < 0.9 * before, (before, after)
    assert math.isfinite(experiment.evaluate(result.model, test)["rmse_extrapolation"])


@pytest.mark.parametrize(
    "models, n_obs, match",
    [(("gru",), (30,), "unknown model"), ((), (30,), "no model"), (("rnn",), (0,), "n=0"),
     (("rnn",), (101,), "n=101"), (("rnn",), (), "no observation")],
)
def test_run_experiment_rejects_bad_requests_before_writing(tmp_path, models, n_obs, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        experiment.run_experiment(_tiny_config(), models, n_obs, out, md_path=tmp_path / "r.md")
    assert not out.exists() and not (tmp_path / "r.md").exists()


def test_markdown_goal_is_computed():
    run = {"iterations": 1, "train_seconds": 1.0, "loss_first": 2.0, "loss_last": 1.0,
           "nfe_forward_mean": None, "nfe_backward_mean": None, "n_parameters": 10,
           "rmse_extrapolation_noisy": 0.3}
    runs = {
        "latent-ode/n=30": {**run, "model": "latent-ode", "n_obs": 30, "rmse_extrapolation": 0.1,
                            "rmse_window": 0.1, "nfe_forward_mean": 20.0,
                            "nfe_backward_mean": 40.0},
        "rnn/n=30": {**run, "model": "rnn", "n_obs": 30, "rmse_extrapolation": 0.5},
        "latent-ode/n=50": {**run, "model": "latent-ode", "n_obs": 50, "rmse_extrapolation": 0.2},
        "rnn/n=50": {**run, "model": "rnn", "n_obs": 50, "rmse_extrapolation": 0.1},
    }
    from dataclasses import asdict

    summary = {"command": "cnflow latent", "config": asdict(_tiny_config()), "runs": runs,
               "environment": {"cpu_threads": "1"}, "total_seconds": 60.0}
    text = experiment.markdown_report(summary, "results/latent_ode")
    assert "0.1000 (0.1642)" in text
    assert "n = 30: latent ODE 0.1000 vs paper 0.1642: **met**" in text
    assert "n = 50: latent ODE 0.2000 vs paper 0.1502: **not met**" in text
    assert "**not reproduced**" in text


# ---------------------------------------------------------------------------------------------
# command line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-obs", "101"], "at most 100 observations"),
        (["--n-obs", "0"], "at least one observation"),
        (["--model", "transformer"], "transformer"),
        (["--iterations", "0"], "--iterations"),
        (["--window-only", "--time-subsample", "150"], "time_subsample=150 must lie in [0, 98]"),
        (["--eval-every", "-1"], "--eval-every"),
    ],
)
def test_cli_rejects_bad_input_and_writes_nothing(tmp_path, args, message):
    from cnflow.cli.main import cli

    out = tmp_path / "out"
    md = tmp_path / "report.md"
    result = CliRunner().invoke(cli, ["latent", *args, "--out", str(out), "--md", str(md)])
    assert result.exit_code != 0
    assert message in result.output
    assert not out.exists() and not md.exists()


def test_cli_tiny_run_writes_everything(tmp_path):
    from cnflow.cli.main import cli

    out = tmp_path / "latent_ode"
    md = tmp_path / "latent_ode.md"
    args = ["latent", "--n-obs", "10", "--iterations", "2", "--rnn-iterations", "2",
            "--batch-size", "8", "--time-subsample", "4", "--out", str(out), "--md", str(md)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["runs"]) == {"latent-ode/n=10", "rnn/n=10"}
    assert metrics["command"].startswith("cnflow latent --model both --n-obs 10")
    assert metrics["runs"]["rnn/n=10"]["curve"]["step"] == [2]
    assert "--train-future --out" in metrics["command"]
    for name in ("checkpoints/latent-ode_n10.pt", "checkpoints/rnn_n10.pt",
                 "predictions_n10.png", "interpolation_n10.png", "learning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    text = md.read_text()
    assert "Table 2 analog" in text and metrics["command"] in text
    # The figures are embedded in the report, with paths relative to it.
    assert "![learning curves](latent_ode/learning_curves.png)" in text
    assert "![predictions n=10](latent_ode/predictions_n10.png)" in text
    checkpoint = torch.load(out / "checkpoints" / "latent-ode_n10.pt", weights_only=False)
    model = LatentODE()
    model.load_state_dict(checkpoint["state_dict"])
