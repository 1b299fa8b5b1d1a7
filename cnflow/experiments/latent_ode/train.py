"""Training either model on the spirals through the project's one loop, :func:`cnflow.training.fit`.

Both models train on the same table, one row per spiral: its noisy values and its observed
indices (:meth:`Split.table`). Their objectives build everything else from a batch of rows:
the latent ODE's maximises the ELBO (:class:`ElboObjective`), the RNN's minimises the squared
error of its predictions (:class:`~cnflow.experiments.latent_ode.baselines.RNNObjective`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cnflow.data.spirals import observed_points
from cnflow.experiments.latent_ode.baselines import RNN_GRAD_CLIP, RNNBaseline, RNNObjective
from cnflow.experiments.latent_ode.config import WINDOW, LatentConfig
from cnflow.experiments.latent_ode.data import Split
from cnflow.experiments.latent_ode.evaluate import evaluate
from cnflow.models.latent_ode import DEFAULT_GRADIENT, LatentODE
from cnflow.training import TrainConfig, fit


def latent_batch(times: torch.Tensor, noisy: torch.Tensor, obs_idx: torch.Tensor,
                 time_subsample: int, train_future: bool = True,
                 generator: torch.Generator | None = None) -> dict[str, Any]:
    """Inputs of :meth:`LatentODE.elbo` for one mini-batch of spirals.

    The targets are the observed points in the window and, with ``train_future``, every point
    after it; without it the ELBO never looks past the window. When ``time_subsample > 0`` the
    ELBO's sums over time are estimated on the window's first and last grid times plus
    ``time_subsample`` grid times drawn uniformly without replacement from the others, each
    weighted by its inverse inclusion probability; this keeps the estimate unbiased while the
    adjoint pass, which must stop at every output time, stays cheap.

    Args:
        times: ``(2 * WINDOW,)`` the shared grid.
        noisy: ``(B, 2 * WINDOW, 2)`` the spirals' noisy values.
        obs_idx: ``(B, n)`` their observed indices within the window.
        time_subsample: grid times drawn besides the window's ends; 0 keeps the whole grid.
        train_future: score the points after the window too.
        generator: the stream of the time draws; None draws from torch's global one, which
            :func:`cnflow.training.fit` seeds.
    """
    n_points = times.shape[0] if train_future else WINDOW
    device = times.device
    observed = torch.zeros(len(obs_idx), n_points, dtype=torch.bool, device=device)
    observed.scatter_(1, obs_idx, True)
    targets = observed.clone()
    targets[:, WINDOW:] = True
    weights = torch.ones(n_points, dtype=times.dtype, device=device)
    grid = torch.arange(n_points, device=device)
    if time_subsample > 0:
        ends = (grid == 0) | (grid == WINDOW - 1)
        others = grid[~ends]
        order = torch.randperm(len(others), generator=generator)[:time_subsample]
        pick = others[order.to(device)]
        grid = torch.cat([grid[ends], pick]).sort().values
        weights[pick] = len(others) / time_subsample
    x_obs, t_obs = observed_points(times, noisy, obs_idx)
    return {
        "x_obs": x_obs,
        "t_obs": t_obs,
        "times": times[grid],
        "x_target": noisy[:, grid],
        "target_mask": targets[:, grid],
        "weights": weights[grid],
        "event_mask": observed[:, grid],
        "event_end_index": int((grid == WINDOW - 1).nonzero()[0, 0]),
    }


@dataclass
class ElboObjective:
    """The latent ODE's negative ELBO as the objective of :func:`cnflow.training.fit`, called
    with a batch of the training table ``(noisy, obs_idx)``; its report adds the batch's mean
    log-likelihood and KL (and the Poisson term) to every step record.

    Attributes:
        times: the shared grid.
        time_subsample, train_future: see :func:`latent_batch`.
        gradient: how the solver differentiates.
    """

    times: torch.Tensor
    time_subsample: int
    train_future: bool = True
    gradient: str = DEFAULT_GRADIENT

    def __call__(self, model: LatentODE, noisy: torch.Tensor, obs_idx: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = latent_batch(self.times.to(noisy.device), noisy, obs_idx, self.time_subsample,
                             self.train_future)
        out = model.elbo(**batch, gradient=self.gradient)
        report = {"loss": out.loss, "log_likelihood": out.log_likelihood, "kl": out.kl}
        if out.poisson_log_likelihood is not None:
            report["poisson_log_likelihood"] = out.poisson_log_likelihood
        return out.loss, {key: value.detach() for key, value in report.items()}


@dataclass
class TrainResult:
    """A trained model and how its training went.

    Attributes:
        model: the trained module (in eval mode).
        losses: loss of every step (the negative ELBO per spiral, or the RNN's squared error).
        seconds: wall-clock training time (the learning curve's evaluations included).
        nfe_forward: mean function evaluations per step in the forward solve (latent ODE).
        nfe_backward: mean function evaluations per step in the backward pass (latent ODE).
        curve: ``{"step": [...], "rmse_extrapolation": [...]}``, the test RMSE along the way.
        stop_reason: why the loop stopped (``"epochs"`` or ``"steps"`` once every step ran;
            ``"non-finite loss"`` if it diverged).
    """

    model: nn.Module
    losses: list[float]
    seconds: float
    nfe_forward: float | None = None
    nfe_backward: float | None = None
    curve: dict[str, list[float]] = field(
        default_factory=lambda: {"step": [], "rmse_extrapolation": []})
    stop_reason: str | None = None


def new_model(name: str, config: LatentConfig, seed: int) -> nn.Module:
    """A freshly initialised model ``name`` (one of ``MODELS``), seeded by ``seed``."""
    config.iterations_of(name)  # refuses an unknown name
    torch.manual_seed(seed)
    if name == "latent-ode":
        return LatentODE(obs_std=config.noise_std, poisson=config.poisson, rtol=config.rtol,
                         atol=config.atol)
    return RNNBaseline()


def train_config(config: LatentConfig, name: str, seed: int) -> TrainConfig:
    """The loop settings of model ``name``: Adam with a geometric decay from ``lr`` to
    ``lr * final_lr_factor`` over exactly its number of steps, no validation and no early
    stopping (the protocol has no validation set), the RNN's gradients clipped."""
    steps = config.iterations_of(name)
    # One epoch of (at least) `steps` steps, and max_steps ends it after exactly that many:
    # epochs mean nothing here (no validation, no checkpoint). The outcome is bimodal at
    # these settings whatever the epoch layout: n = 30, seed-0 data and weights, 16 runs
    # differing only in the shuffle stream ended at test RMSE 0.086 to 0.103 (9 runs) or
    # 0.146 to 0.334 (7); bad runs per layout of 4 each: one-pass epochs with a fresh
    # shuffle generator each 1, one-pass epochs sharing one generator 4, one epoch 1 and 1.
    return TrainConfig(epochs=1, min_epoch_steps=steps, batch_size=config.batch_size,
                       lr=config.lr, lr_schedule="exponential", lr_final=config.final_lr_factor,
                       grad_clip=RNN_GRAD_CLIP if name == "rnn" else None, patience=None,
                       max_steps=steps, seed=seed)


def _mean(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def train_model(name: str, train: Split, config: LatentConfig, *, seed: int,
                model: nn.Module | None = None, test: Split | None = None,
                progress: bool | None = None) -> TrainResult:
    """Train model ``name`` on the training spirals; with ``test``, record its learning curve.

    The curve holds the test extrapolation RMSE every ``config.eval_every`` steps and after the
    last one. Evaluating draws no random numbers, so it leaves the run as it would be without.

    Args:
        name: one of ``MODELS``.
        train: training spirals and their observation subsets (on the device to train on).
        config: experiment settings.
        seed: the seed of the initialisation and the loop's draws.
        model: a model to continue training (a fresh one, seeded by ``seed``, when None).
        test: the test spirals for the learning curve (None: no curve).
        progress: show a progress bar; None shows it only on a terminal.

    Returns:
        The trained model (in eval mode) and its training record.
    """
    model = (new_model(name, config, seed) if model is None else model).to(
        train.data.times.device)
    total = config.iterations_of(name)
    times = train.data.times
    objective = (ElboObjective(times, config.time_subsample, config.train_future,
                               config.gradient) if name == "latent-ode"
                 else RNNObjective(times, config.train_future))
    steps: list[dict[str, Any]] = []
    curve: dict[str, list[float]] = {"step": [], "rmse_extrapolation": []}

    def on_step(record: dict[str, Any]) -> None:
        steps.append(record)
        done = record["step"]
        if test is not None and config.eval_every and (done % config.eval_every == 0
                                                       or done == total):
            curve["step"].append(done)
            curve["rmse_extrapolation"].append(evaluate(model, test)["rmse_extrapolation"])

    history = fit(model, train.table(), None, train_config(config, name, seed),
                  objective=objective, on_step=on_step, progress=progress,
                  desc=f"{name} n={train.n_obs} seed={seed}")
    model.eval()
    return TrainResult(model=model, losses=[r["loss"] for r in steps],
                       seconds=history.wall_seconds, nfe_forward=_mean(steps, "nfe_forward"),
                       nfe_backward=_mean(steps, "nfe_backward"), curve=curve,
                       stop_reason=history.stop_reason)
