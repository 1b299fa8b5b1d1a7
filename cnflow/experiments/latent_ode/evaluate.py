"""Predictions on the test spirals and the predictive RMSE (the paper's Table 2)."""

from __future__ import annotations

import math

import torch
from torch import nn

from cnflow.experiments.latent_ode.config import WINDOW
from cnflow.experiments.latent_ode.data import Split
from cnflow.models.latent_ode import LatentODE
from cnflow.report import mean_and_stderr


@torch.no_grad()
def predict(model: nn.Module, split: Split) -> torch.Tensor:
    """Predictions ``(N, 2 * WINDOW, 2)`` on the whole grid for every spiral of ``split``.

    The latent ODE decodes the posterior-mean path at all grid times. The RNN has no
    reconstruction of the window, so its first ``WINDOW`` entries are NaN and the rest are its
    free-running predictions. Neither draws random numbers, so predicting in the middle of a
    training run leaves that run as it would be.
    """
    x_obs, t_obs = split.observed(slice(None))
    times = split.data.times
    was_training = model.training
    model.eval()
    try:
        if isinstance(model, LatentODE):
            return model.predict(x_obs, t_obs, times)
        _, future = model(x_obs, t_obs, times[WINDOW:])
    finally:
        model.train(was_training)
    window = torch.full_like(future, float("nan"))
    return torch.cat([window, future], dim=1)


def rmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Root of the mean squared error over all spirals, times and both coordinates."""
    return float((prediction - target).pow(2).mean().sqrt())


def per_spiral_rmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(N,)`` each spiral's own RMSE over its times and both coordinates."""
    return (prediction - target).pow(2).flatten(1).mean(dim=1).sqrt()


def rmse_stderr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Standard error of :func:`rmse` from the spread of the spirals' own errors.

    The spirals are independent draws, so the mean of their squared errors has the standard
    error of a mean; the delta method carries it through the square root,
    ``se(sqrt(m)) = se(m) / (2 sqrt(m))``. This is the sampling noise of the test set alone,
    not the spread between training runs.
    """
    per_spiral = (prediction - target).pow(2).flatten(1).mean(dim=1)
    mean, stderr = mean_and_stderr(per_spiral.double().cpu().numpy())
    return stderr / (2 * math.sqrt(mean)) if mean > 0 else math.nan


def evaluate(model: nn.Module, test: Split) -> dict[str, float | list[float]]:
    """Predictive RMSE on the test spirals.

    Returns:
        ``rmse_extrapolation`` (the ``WINDOW`` points after the window against the noise-free
        spiral, the Table 2 analog) and its standard error ``rmse_extrapolation_stderr`` over
        the test spirals, ``per_spiral_rmse_extrapolation`` (each test spiral's own, a list,
        whose median shows whether a few failures dominate the mean),
        ``rmse_extrapolation_noisy`` (against the noisy targets, which
        includes the observation noise) and, for the latent ODE, ``rmse_window`` (all window
        points against the noise-free spiral).
    """
    prediction = predict(model, test)
    future, clean = prediction[:, WINDOW:], test.data.clean[:, WINDOW:]
    metrics = {
        "rmse_extrapolation": rmse(future, clean),
        "rmse_extrapolation_stderr": rmse_stderr(future, clean),
        "per_spiral_rmse_extrapolation": per_spiral_rmse(future, clean).tolist(),
        "rmse_extrapolation_noisy": rmse(future, test.data.noisy[:, WINDOW:]),
    }
    if isinstance(model, LatentODE):
        metrics["rmse_window"] = rmse(prediction[:, :WINDOW], test.data.clean[:, :WINDOW])
    return metrics
