"""Training the latent ODE and the RNN through cnflow.training.fit
(cnflow.experiments.latent_ode.train): the ELBO's batches, the objectives, the loop
settings, the learning curve, and a run that takes exactly its steps."""

from __future__ import annotations

import math

import pytest
import torch

from cnflow.data.spirals import generate_spirals, sample_observation_indices
from cnflow.experiments.latent_ode import (
    ElboObjective,
    LatentConfig,
    Split,
    evaluate,
    latent_batch,
    make_splits,
    new_model,
    rnn_loss,
    train_config,
    train_model,
)
from cnflow.models.latent_ode import LatentODE


def _tiny_config(**overrides):
    settings = {"n_obs": (20,), "n_spirals": 24, "n_train": 16, "iterations": 15,
                "rnn_iterations": 15, "batch_size": 16, "lr": 1e-2, "final_lr_factor": 0.5,
                "time_subsample": 4, "rtol": 1e-3, "atol": 1e-4}
    settings.update(overrides)
    return LatentConfig(**settings)


def _split(n_spirals=4, n_obs=7):
    data = generate_spirals(n_spirals=n_spirals, window=100, seed=2)
    idx = sample_observation_indices(n_spirals, n_obs, 100,
                                     generator=torch.Generator().manual_seed(0))
    return Split(data, idx)


# --- the ELBO's batches ----------------------------------------------------------------------

def test_latent_batch_on_the_whole_grid_and_subsampled():
    split = _split()
    times, (noisy, idx) = split.data.times, split.table()
    batch = latent_batch(times, noisy, idx, 0)
    assert batch["times"].shape == (200,) and bool((batch["weights"] == 1).all())
    assert int(batch["target_mask"].sum()) == 4 * (7 + 100)
    assert int(batch["event_mask"].sum()) == 4 * 7 and batch["event_end_index"] == 99
    x_obs, t_obs = split.observed(slice(None))
    assert torch.equal(batch["x_obs"], x_obs) and torch.equal(batch["t_obs"], t_obs)
    sub = latent_batch(times, noisy, idx, 10, generator=torch.Generator().manual_seed(1))
    assert sub["times"].shape == (12,) and float(sub["times"][0]) == 0.0
    # Inverse inclusion probabilities: the window's ends always (weight 1), each of the other
    # 198 grid times with probability 10 / 198.
    ends = (sub["times"] == 0.0) | (sub["times"] == times[99])
    assert bool((sub["weights"][ends] == 1).all())
    torch.testing.assert_close(sub["weights"][~ends], torch.full((10,), 19.8))


def test_window_only_batches_never_look_past_the_window():
    split = _split()
    times, (noisy, idx) = split.data.times, split.table()
    full = latent_batch(times, noisy, idx, 0, False)
    assert full["times"].shape == (100,) and float(full["times"][-1]) == float(times[99])
    assert int(full["target_mask"].sum()) == 4 * 7 and full["event_end_index"] == 99
    for seed in range(5):
        sub = latent_batch(times, noisy, idx, 10, False, torch.Generator().manual_seed(seed))
        assert sub["times"].shape == (12,) and float(sub["times"][-1]) == float(times[99])
        # 98 window times besides the two ends, each drawn with probability 10 / 98.
        torch.testing.assert_close(sub["weights"][1:-1], torch.full((10,), 9.8))


def test_latent_batch_draws_its_times_from_the_global_stream():
    split = _split()
    args = (split.data.times, *split.table(), 10)
    torch.manual_seed(5)
    first = latent_batch(*args)["times"]
    torch.manual_seed(5)
    assert torch.equal(latent_batch(*args)["times"], first)  # fit seeds this stream
    assert not torch.equal(latent_batch(*args)["times"], first)


def test_elbo_objective_reports_its_terms_detached():
    split = _split()
    torch.manual_seed(0)
    model = LatentODE()
    loss, report = ElboObjective(split.data.times, 10)(model, *split.table())
    assert loss.requires_grad and set(report) == {"loss", "log_likelihood", "kl"}
    assert not any(v.requires_grad for v in report.values())
    torch.testing.assert_close(report["loss"], report["kl"] - report["log_likelihood"])
    _, poisson = ElboObjective(split.data.times, 10)(LatentODE(poisson=True), *split.table())
    assert "poisson_log_likelihood" in poisson


# --- the loop -------------------------------------------------------------------------------

def test_train_config_decays_geometrically_over_exactly_the_steps():
    config = _tiny_config(iterations=7, rnn_iterations=3, final_lr_factor=0.1)
    ode, rnn = train_config(config, "latent-ode", 5), train_config(config, "rnn", 5)
    assert ode.max_steps == 7 and ode.epochs * ode.min_epoch_steps >= 7
    assert ode.lr_schedule == "exponential"
    assert ode.lr_final == 0.1 and ode.patience is None and ode.grad_clip is None
    assert rnn.max_steps == 3 and rnn.grad_clip is not None and rnn.seed == 5


@torch.no_grad()
def _full_negative_elbo(model, split, train_future):
    """Deterministic training objective on the whole grid (posterior mean, no subsampling)."""
    batch = latent_batch(split.data.times, *split.table(), 0, train_future)
    return float(model.elbo(**batch, gradient="direct", sample=False).loss)


def test_short_latent_ode_training_lowers_loss():
    # The whole grid and checkpointed gradients (exact, and cheap on a 200-point grid) keep this
    # short run free of subsampling noise; the adjoint's exactness is tested with the model.
    config = _tiny_config(iterations=20, lr=1e-2, final_lr_factor=1.0, time_subsample=0,
                          gradient="checkpoint")
    train, test = make_splits(config, n_obs=20, seed=0)
    model = new_model("latent-ode", config, 0)
    before = _full_negative_elbo(model, train, config.train_future)
    result = train_model("latent-ode", train, config, seed=0, model=model, progress=False)
    after = _full_negative_elbo(result.model, train, config.train_future)
    assert after < 0.92 * before, (before, after)
    assert len(result.losses) == 20 and result.stop_reason in ("steps", "epochs")
    assert result.nfe_forward > 0 and result.nfe_backward > 0
    assert not result.model.training
    metrics = evaluate(result.model, test)
    assert set(metrics) == {"rmse_extrapolation", "rmse_extrapolation_stderr",
                            "per_spiral_rmse_extrapolation", "rmse_extrapolation_noisy",
                            "rmse_window"}
    # The overall RMSE is the root of the mean of the spirals' own squared RMSEs.
    per_spiral = torch.tensor(metrics["per_spiral_rmse_extrapolation"], dtype=torch.float64)
    assert len(per_spiral) == len(test.data)
    assert math.isclose(float(per_spiral.pow(2).mean().sqrt()),
                        metrics["rmse_extrapolation"], rel_tol=1e-5)


def test_short_rnn_training_lowers_loss():
    config = _tiny_config(rnn_iterations=30)
    train, test = make_splits(config, n_obs=20, seed=0)
    model = new_model("rnn", config, 0)
    with torch.no_grad():
        before = float(rnn_loss(model, train.data.times, *train.table(), config.train_future))
    result = train_model("rnn", train, config, seed=0, model=model, progress=False)
    with torch.no_grad():
        after = float(rnn_loss(result.model, train.data.times, *train.table(),
                               config.train_future))
    assert after < 0.9 * before, (before, after)
    assert result.nfe_forward is None and len(result.losses) == 30
    assert math.isfinite(evaluate(result.model, test)["rmse_extrapolation"])


def test_learning_curve_is_recorded_without_changing_the_run():
    config = _tiny_config(iterations=10, eval_every=4)
    train, test = make_splits(config, n_obs=20, seed=0)
    result = train_model("latent-ode", train, config, seed=0, test=test, progress=False)
    assert result.curve["step"] == [4, 8, 10]
    assert result.curve["rmse_extrapolation"][-1] == evaluate(result.model, test)[
        "rmse_extrapolation"]
    # The same seed gives the same run, with or without the evaluations along the way.
    plain = train_model("latent-ode", train, config, seed=0, progress=False)
    assert plain.losses == result.losses and plain.curve["step"] == []
    with pytest.raises(ValueError, match="model='gru'"):
        new_model("gru", config, 0)


def test_a_run_takes_exactly_its_steps():
    # 30 training spirals in batches of 8: 10 steps end in the middle of a pass.
    config = _tiny_config(n_spirals=40, n_train=30, batch_size=8, rnn_iterations=10)
    train, _ = make_splits(config, n_obs=20, seed=0)
    result = train_model("rnn", train, config, seed=0, progress=False)
    assert len(result.losses) == 10 and result.stop_reason == "steps"

