"""Section 5 of Chen et al. 2018: latent ODE versus RNN on irregularly sampled spirals.

Plain functions (the ``cnflow latent`` command wraps them): build the data, train either model,
measure the predictive RMSE on the 100 points after the observation window (the analog of the
paper's Table 2), draw the figures and write ``results/latent_ode.md``.

Both models condition on the same ``n`` irregular observations from the first 100 points of a
spiral and are trained on the same information: the observed points and, by default, the 100
following points of the training spirals (noisy); ``train_future=False`` trains on the window
alone. The latent ODE maximises the ELBO; the RNN minimises
the squared error of its one-step predictions of the observed points and of its free-running
predictions of the 100 targets.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cnflow.data.spirals import SpiralData, generate_spirals, sample_observation_indices
from cnflow.models.latent_ode import DEFAULT_GRADIENT, GRADIENTS, LatentODE, RNNBaseline
from cnflow.runs import (
    environment,
    resolve_device,
    run_directory,
    save_checkpoint,
    write_json,
    write_text,
)

MODELS = ("latent-ode", "rnn")
#: Points in the observation window (and targets after it), as in the paper.
WINDOW = 100
#: Largest seed: the observation subsets are drawn with the 64-bit torch seed
#: ``seed * 1009 + n_obs``.
MAX_SEED = (2**64 - 1 - WINDOW) // 1009
#: Predictive RMSE of the paper's Table 2, by model and number of observations.
PAPER_RMSE = {
    "rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent-ode": {30: 0.1642, 50: 0.1502, 100: 0.1346},
}


@dataclass(frozen=True)
class LatentConfig:
    """Settings of one latent-ODE / RNN experiment.

    Attributes:
        n_spirals: spirals generated (train and test together).
        n_train: how many of them are used for training; the rest are the test set.
        noise_std: observation noise of the generator (also the likelihood's std).
        seed: seed of the data, the observation subsets and the model initialisation.
        iterations: Adam steps of the latent ODE.
        rnn_iterations: Adam steps of the RNN.
        batch_size: spirals per step.
        lr: initial learning rate (decays geometrically to ``lr * final_lr_factor``).
        final_lr_factor: learning rate at the last step relative to the first.
        time_subsample: random grid times (besides the window's first and last) at which the
            latent ODE's ELBO is estimated each step; 0 uses the whole grid.
        rtol: relative tolerance of the latent ODE solves.
        atol: absolute tolerance of the latent ODE solves.
        gradient: how the latent ODE is differentiated ("adjoint", "direct", "checkpoint").
        poisson: add the Poisson-process likelihood of the observation times.
        train_future: train on the training spirals' 100 points after the window as well; False
            is the paper's stricter reading (train on the window only, extrapolate unseen times).
        eval_every: record the test extrapolation RMSE every this many steps (and after the
            last), for the learning curves; 0 records nothing along the way.
        device: "auto", "cpu", "cuda" or "cuda:N".
    """

    n_spirals: int = 1000
    n_train: int = 800
    noise_std: float = 0.1
    seed: int = 0
    iterations: int = 2500
    rnn_iterations: int = 2500
    batch_size: int = 200
    lr: float = 1e-2
    final_lr_factor: float = 0.1
    time_subsample: int = 30
    rtol: float = 1e-3
    atol: float = 1e-4
    gradient: str = DEFAULT_GRADIENT
    poisson: bool = False
    train_future: bool = True
    eval_every: int = 100
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ValueError for settings that cannot run."""
        if self.n_spirals < 2 or not 1 <= self.n_train < self.n_spirals:
            raise ValueError(
                f"need n_spirals >= 2 and 1 <= n_train < n_spirals, got "
                f"n_spirals={self.n_spirals}, n_train={self.n_train}"
            )
        for name in ("iterations", "rnn_iterations", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.eval_every < 0:
            raise ValueError(f"eval_every={self.eval_every} must be 0 or positive")
        if not (self.lr > 0 and self.final_lr_factor > 0):
            raise ValueError("lr and final_lr_factor must be positive")
        # The ELBO's grid is the window (and the points after it with train_future), less the
        # window's first and last time, which are always included.
        most = (2 * WINDOW if self.train_future else WINDOW) - 2
        if not 0 <= self.time_subsample <= most:
            raise ValueError(f"time_subsample={self.time_subsample} must lie in [0, {most}]")
        if self.gradient not in GRADIENTS:
            raise ValueError(f"gradient={self.gradient!r} is not one of {GRADIENTS}")
        if not self.noise_std > 0:
            raise ValueError(f"noise_std={self.noise_std} must be positive")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed={self.seed} must lie in [0, {MAX_SEED}]")


def validate_request(models: Sequence[str], n_obs: Sequence[int]) -> None:
    """Check the models and observation counts of a run before anything is written.

    Raises:
        ValueError: an unknown model, no model, no ``n``, or an ``n`` outside ``[1, WINDOW]``.
    """
    if not models:
        raise ValueError("no model to train; choose from " + ", ".join(MODELS))
    for model in models:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose from " + ", ".join(MODELS))
    if not n_obs:
        raise ValueError("no observation count given")
    for n in n_obs:
        if not 1 <= n <= WINDOW:
            raise ValueError(
                f"n={n} observations: must be between 1 and {WINDOW}, the number of points in "
                "the observation window (drawn without replacement)"
            )


@dataclass
class Split:
    """Training or test spirals with their fixed observation subsets.

    Attributes:
        data: the spirals (200 points each).
        obs_idx: ``(N, n)`` sorted indices of the observed points within the window.
    """

    data: SpiralData
    obs_idx: torch.Tensor

    def observed(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy observed values ``(B, n, 2)`` and their times ``(B, n)`` of the selected spirals."""
        idx = self.obs_idx[index]
        x = self.data.noisy[index].gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))
        return x, self.data.times[idx]


def make_splits(config: LatentConfig, n_obs: int) -> tuple[Split, Split]:
    """Generate the spirals, draw ``n_obs`` observations per spiral and split train / test.

    The generator's order is already random, so the first ``n_train`` spirals are the training
    set. The observation subsets depend on ``(seed, n_obs)`` only.
    """
    data = generate_spirals(config.n_spirals, WINDOW, noise_std=config.noise_std, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed * 1009 + n_obs)
    obs_idx = sample_observation_indices(config.n_spirals, n_obs, WINDOW, generator=generator)
    train = torch.arange(config.n_train)
    test = torch.arange(config.n_train, config.n_spirals)
    return Split(data.subset(train), obs_idx[train]), Split(data.subset(test), obs_idx[test])


def _to(split: Split, device: torch.device) -> Split:
    d = split.data
    data = replace(d, times=d.times.to(device), clean=d.clean.to(device), noisy=d.noisy.to(device))
    return Split(data, split.obs_idx.to(device))


def _learning_rate(config: LatentConfig, step: int, total: int) -> float:
    # Geometric decay from lr to lr * final_lr_factor: large steps find the spiral structure
    # fast, small ones at the end settle the extrapolation error.
    return config.lr * config.final_lr_factor ** (step / max(total - 1, 1))


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless stream of random mini-batches, each epoch a fresh permutation."""
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def latent_batch(
    split: Split,
    index: torch.Tensor,
    time_subsample: int,
    generator: torch.Generator,
    train_future: bool = True,
) -> dict[str, Any]:
    """Inputs of :meth:`LatentODE.elbo` for one mini-batch.

    The targets are the observed points in the window and, with ``train_future``, every point
    after it; without it the ELBO never looks past the window. When ``time_subsample > 0`` the
    ELBO's sums over time are estimated on the window's first and last grid times plus
    ``time_subsample`` grid times drawn uniformly without replacement from the others, each
    weighted by its inverse inclusion probability; this keeps the estimate unbiased while the
    adjoint pass, which must stop at every output time, stays cheap.
    """
    data = split.data
    n_points = data.times.shape[0] if train_future else WINDOW
    device = data.times.device
    observed = torch.zeros(len(index), n_points, dtype=torch.bool, device=device)
    observed.scatter_(1, split.obs_idx[index], True)
    targets = observed.clone()
    targets[:, WINDOW:] = True
    weights = torch.ones(n_points, dtype=data.times.dtype, device=device)
    if time_subsample > 0:
        forced = torch.tensor([0, WINDOW - 1], device=device)
        others = torch.tensor([i for i in range(n_points) if i not in (0, WINDOW - 1)])
        pick = others[torch.randperm(len(others), generator=generator)[:time_subsample]]
        grid = torch.cat([forced, pick.to(device)]).sort().values
        weights[pick.to(device)] = len(others) / time_subsample
    else:
        grid = torch.arange(n_points, device=device)
    x_obs, t_obs = split.observed(index)
    return {
        "x_obs": x_obs,
        "t_obs": t_obs,
        "times": data.times[grid],
        "x_target": data.noisy[index][:, grid],
        "target_mask": targets[:, grid],
        "weights": weights[grid],
        "event_mask": observed[:, grid],
        "event_end_index": int((grid == WINDOW - 1).nonzero()[0, 0]),
    }


def _progress(total: int, desc: str) -> tqdm:
    # A bar only on a terminal: in logs and CI, carriage-return spam helps no one.
    return tqdm(total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)


@dataclass
class TrainResult:
    """A trained model and how its training went.

    Attributes:
        model: the trained module (in eval mode).
        losses: loss of every step.
        seconds: wall-clock training time.
        nfe_forward: mean function evaluations per step in the forward solve (latent ODE).
        nfe_backward: mean function evaluations per step in the backward pass (latent ODE).
    """

    model: torch.nn.Module
    losses: list[float]
    seconds: float
    nfe_forward: float | None = None
    nfe_backward: float | None = None


def new_model(name: str, train: Split, config: LatentConfig) -> torch.nn.Module:
    """A freshly initialised model ``name`` (one of :data:`MODELS`), seeded by ``config.seed``."""
    torch.manual_seed(config.seed)
    if name == "latent-ode":
        return LatentODE(
            obs_std=train.data.noise_std, poisson=config.poisson, rtol=config.rtol,
            atol=config.atol,
        )
    if name == "rnn":
        return RNNBaseline()
    raise ValueError(f"unknown model {name!r}; choose from " + ", ".join(MODELS))


def _nfe(stats: Any) -> int | None:
    return None if stats is None else getattr(stats, "nfe", None)


def train_latent_ode(
    train: Split,
    config: LatentConfig,
    *,
    model: LatentODE | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Fit a :class:`LatentODE` to the training spirals by maximising the ELBO.

    Args:
        train: training spirals and their observation subsets.
        config: experiment settings (iterations, batch size, learning rate, tolerances, ...).
        model: model to continue training (a fresh one, seeded by ``config.seed``, when None).
        callback: called as ``callback(step, loss)`` after every step.

    Returns:
        The trained model and its training record; the loss is the negative ELBO per spiral.
    """
    if model is None:
        model = new_model("latent-ode", train, config)
    torch.manual_seed(config.seed)
    device = train.data.times.device
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    batches = _batches(len(train.data), config.batch_size, generator)
    losses: list[float] = []
    nfe_fwd: list[int] = []
    nfe_bwd: list[int] = []
    n_obs = train.obs_idx.shape[1]
    start = time.perf_counter()
    with _progress(config.iterations, f"latent-ode n={n_obs}") as bar:
        for step in range(config.iterations):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step, config.iterations)
            index = next(batches).to(device)
            batch = latent_batch(
                train, index, config.time_subsample, generator, config.train_future
            )
            out = model.elbo(**batch, gradient=config.gradient)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            loss = out.loss.item()
            losses.append(loss)
            stats = out.solution.stats
            forward, backward = _nfe(stats.forward), _nfe(getattr(stats, "backward", None))
            if forward is not None:
                nfe_fwd.append(forward)
            if backward is not None:
                nfe_bwd.append(backward)
            bar.set_postfix(loss=f"{loss:.1f}", nfe=f"{forward}/{backward}")
            bar.update()
            if callback is not None:
                callback(step, loss)
    seconds = time.perf_counter() - start
    model.eval()
    return TrainResult(
        model=model,
        losses=losses,
        seconds=seconds,
        nfe_forward=float(np.mean(nfe_fwd)) if nfe_fwd else None,
        nfe_backward=float(np.mean(nfe_bwd)) if nfe_bwd else None,
    )


def rnn_loss(
    model: RNNBaseline, split: Split, index: torch.Tensor, train_future: bool = True
) -> torch.Tensor:
    """Mean squared error of the RNN's predictions.

    The next observations, and with ``train_future`` also the free-running predictions of the
    100 points after the window.
    """
    x_obs, t_obs = split.observed(index)
    times = split.data.times
    if not train_future:
        next_obs, _ = model(x_obs, t_obs, times[WINDOW : WINDOW + 1])
        return (next_obs - x_obs[:, 1:]).pow(2).mean()
    next_obs, future = model(x_obs, t_obs, times[WINDOW:])
    target_future = split.data.noisy[index][:, WINDOW:]
    squared = torch.cat(
        [(next_obs - x_obs[:, 1:]).pow(2).flatten(1), (future - target_future).pow(2).flatten(1)],
        dim=1,
    )
    return squared.mean()


def train_rnn(
    train: Split,
    config: LatentConfig,
    *,
    model: RNNBaseline | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Fit the :class:`RNNBaseline` to the training spirals by least squares.

    Args:
        train: training spirals and their observation subsets.
        config: experiment settings (``rnn_iterations``, batch size, learning rate, ...).
        model: model to continue training (a fresh one, seeded by ``config.seed``, when None).
        callback: called as ``callback(step, loss)`` after every step.

    Returns:
        The trained model and its training record; the loss is the mean squared error.
    """
    if model is None:
        model = new_model("rnn", train, config)
    torch.manual_seed(config.seed)
    device = train.data.times.device
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    batches = _batches(len(train.data), config.batch_size, generator)
    losses: list[float] = []
    n_obs = train.obs_idx.shape[1]
    start = time.perf_counter()
    with _progress(config.rnn_iterations, f"rnn n={n_obs}") as bar:
        for step in range(config.rnn_iterations):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step, config.rnn_iterations)
            loss_t = rnn_loss(model, train, next(batches).to(device), config.train_future)
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            # Back-propagation through 100 free-running steps can spike; clipping keeps Adam sane.
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            loss = loss_t.item()
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}", nfe="-")
            bar.update()
            if callback is not None:
                callback(step, loss)
    seconds = time.perf_counter() - start
    model.eval()
    return TrainResult(model=model, losses=losses, seconds=seconds)


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split) -> torch.Tensor:
    """Predictions ``(N, 2 * WINDOW, 2)`` on the whole grid for every spiral of ``split``.

    The latent ODE decodes the posterior-mean path at all 200 times. The RNN has no
    reconstruction of the window, so its first ``WINDOW`` entries are NaN and the rest are its
    free-running predictions.
    """
    x_obs, t_obs = split.observed(slice(None))
    times = split.data.times
    if isinstance(model, LatentODE):
        return model.predict(x_obs, t_obs, times)
    _, future = model(x_obs, t_obs, times[WINDOW:])
    window = torch.full_like(future, float("nan"))
    return torch.cat([window, future], dim=1)


def rmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Root of the mean squared error over all spirals, times and both coordinates."""
    return float((prediction - target).pow(2).mean().sqrt())


def evaluate(model: torch.nn.Module, test: Split) -> dict[str, float]:
    """Predictive RMSE on the test spirals.

    Returns:
        ``rmse_extrapolation`` (the 100 points after the window against the noise-free spiral,
        the Table 2 analog), ``rmse_extrapolation_noisy`` (against the noisy targets, which
        includes the observation noise) and, for the latent ODE, ``rmse_window`` (all 100
        window points against the noise-free spiral).
    """
    prediction = predict(model, test)
    future = prediction[:, WINDOW:]
    metrics = {
        "rmse_extrapolation": rmse(future, test.data.clean[:, WINDOW:]),
        "rmse_extrapolation_noisy": rmse(future, test.data.noisy[:, WINDOW:]),
    }
    if isinstance(model, LatentODE):
        metrics["rmse_window"] = rmse(prediction[:, :WINDOW], test.data.clean[:, :WINDOW])
    return metrics


def fit_with_curve(
    name: str, train: Split, test: Split, config: LatentConfig
) -> tuple[TrainResult, dict[str, list[float]]]:
    """Train a fresh model ``name`` and record its test extrapolation RMSE along the way.

    The curve is taken every ``config.eval_every`` steps and after the last one. Evaluating uses
    the posterior mean (latent ODE) or plain free running (RNN), so it draws no random numbers
    and leaves the training run exactly as it would be without it.

    Returns:
        The training result and ``{"step": [...], "rmse_extrapolation": [...]}``.
    """
    model = new_model(name, train, config)
    total = config.iterations if name == "latent-ode" else config.rnn_iterations
    curve: dict[str, list[float]] = {"step": [], "rmse_extrapolation": []}

    def record(step: int, loss: float) -> None:
        done = step + 1
        if config.eval_every and (done % config.eval_every == 0 or done == total):
            curve["step"].append(done)
            curve["rmse_extrapolation"].append(evaluate(model, test)["rmse_extrapolation"])

    trainer = train_latent_ode if name == "latent-ode" else train_rnn
    return trainer(train, config, model=model, callback=record), curve


def _figure_indices(test: Split, per_direction: int = 2) -> list[int]:
    cw = torch.nonzero(test.data.clockwise).flatten()[:per_direction]
    ccw = torch.nonzero(~test.data.clockwise).flatten()[:per_direction]
    return [int(i) for i in torch.cat([cw, ccw])]


def plot_predictions(models: dict[str, torch.nn.Module], test: Split, path: Path) -> None:
    """Observed points, reconstruction and extrapolation of a few test spirals, model by model.

    One column per spiral (two clockwise, two counter-clockwise), one row per model.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from cnflow.report import save_figure

    sns.set_theme(style="whitegrid", context="paper")
    indices = _figure_indices(test)
    predictions = {name: predict(model, test).cpu() for name, model in models.items()}
    clean = test.data.clean.cpu()
    fig, axes = plt.subplots(
        len(models), len(indices), figsize=(3.0 * len(indices), 3.0 * len(models)), squeeze=False
    )
    n_obs = test.obs_idx.shape[1]
    for row, (name, pred) in enumerate(predictions.items()):
        for col, i in enumerate(indices):
            ax = axes[row, col]
            x_obs, _ = test.observed(slice(i, i + 1))
            x_obs = x_obs[0].cpu()
            ax.plot(clean[i, :, 0], clean[i, :, 1], color="0.75", lw=1, label="true")
            ax.scatter(x_obs[:, 0], x_obs[:, 1], s=6, color="k", zorder=3, label="observed")
            if not torch.isnan(pred[i, :WINDOW]).all():
                ax.plot(pred[i, :WINDOW, 0], pred[i, :WINDOW, 1], color="tab:blue", lw=1.5,
                        label="reconstruction")
            ax.plot(pred[i, WINDOW:, 0], pred[i, WINDOW:, 1], color="tab:red", lw=1.5, ls="--",
                    label="extrapolation")
            ax.set_aspect("equal")
            direction = "clockwise" if bool(test.data.clockwise[i]) else "counter-clockwise"
            ax.set_title(f"{name}: test {i} ({direction})", fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"Spirals from n = {n_obs} irregular observations")
    fig.tight_layout()
    save_figure(fig, path)


def plot_interpolation(model: LatentODE, test: Split, path: Path, steps: int = 7) -> None:
    """Decoded trajectories along the line between a clockwise and a counter-clockwise ``z0``.

    The end points are the posterior means of one clockwise and one counter-clockwise test
    spiral; each panel decodes ``z0 = (1 - a) z_cw + a z_ccw`` over all 200 grid times.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from cnflow.report import save_figure

    sns.set_theme(style="whitegrid", context="paper")
    i_cw = int(torch.nonzero(test.data.clockwise).flatten()[0])
    i_ccw = int(torch.nonzero(~test.data.clockwise).flatten()[0])
    times = test.data.times
    with torch.no_grad():
        x_obs, t_obs = test.observed(torch.tensor([i_cw, i_ccw], device=times.device))
        mean, _ = model.encode(x_obs, t_obs, times[0])
        alphas = torch.linspace(0.0, 1.0, steps, dtype=mean.dtype, device=mean.device)
        z0 = (1 - alphas)[:, None] * mean[0] + alphas[:, None] * mean[1]
        zs, _, _ = model.trajectory(z0, times, gradient="direct")
        paths = model.decode(zs).cpu()
    fig, axes = plt.subplots(1, steps, figsize=(2.2 * steps, 2.6), sharex=True, sharey=True)
    colors = sns.color_palette("viridis", 2 * WINDOW)
    for k, ax in enumerate(axes):
        ax.scatter(paths[k, :, 0], paths[k, :, 1], c=colors, s=3)
        ax.set_title(f"a = {float(alphas[k]):.2f}", fontsize=8)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    fig.suptitle(
        "Latent ODE: interpolating z0 from a clockwise (a = 0) to a counter-clockwise (a = 1) "
        "spiral (colour: time)",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)


def plot_learning_curves(runs: dict[str, Any], path: Path) -> None:
    """Test extrapolation RMSE against training step, one panel per ``n``, paper values dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import seaborn as sns

    from cnflow.report import save_figure

    sns.set_theme(style="whitegrid", context="paper")
    ns = sorted({run["n_obs"] for run in runs.values()})
    colors = dict(zip(MODELS, sns.color_palette("colorblind", len(MODELS)), strict=True))
    fig, axes = plt.subplots(1, len(ns), figsize=(3.6 * len(ns), 3.0), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        for name in MODELS:
            run = runs.get(f"{name}/n={n}")
            if run is None or not run["curve"]["step"]:
                continue
            ax.plot(run["curve"]["step"], run["curve"]["rmse_extrapolation"], color=colors[name],
                    label=name)
            if n in PAPER_RMSE[name]:
                ax.axhline(PAPER_RMSE[name][n], color=colors[name], ls=":", lw=1,
                           label=f"{name} (paper)")
        ax.set_yscale("log")
        # Plain decimals on the log axis: RMSEs read as 0.1, 0.2, ... rather than 10^-1 powers.
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"n = {n}", fontsize=9)
        ax.set_xlabel("training step")
    axes[0, 0].set_ylabel("test extrapolation RMSE")
    # The paper has a value for every n of the default run, so the last panel has every label.
    axes[0, -1].legend(fontsize=7)
    fig.suptitle("Extrapolation error during training (dotted: the paper's Table 2)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def run_experiment(
    config: LatentConfig,
    models: Sequence[str],
    n_obs: Sequence[int],
    out_dir: str | Path,
    *,
    md_path: str | Path | None = None,
    command: str = "",
    figures: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train and evaluate every requested model for every ``n``; write results.

    Writes, atomically, ``out_dir/checkpoints/<model>_n<n>.pt``, ``out_dir/metrics.json`` (after
    each run, so partial progress is kept; ``"complete"`` is true once every run is in it), the
    figures ``out_dir/predictions_n<n>.png`` and ``out_dir/interpolation_n<n>.png`` and, when
    ``md_path`` is given, the markdown report. ``out_dir`` is claimed with
    :func:`cnflow.runs.run_directory`: locked while the runs write, and refused if it holds
    another run unless ``overwrite`` (which first removes that run's metrics, checkpoints and
    figures).

    Args:
        config: experiment settings.
        models: subset of :data:`MODELS`.
        n_obs: observation counts, each in ``[1, WINDOW]``.
        out_dir: output folder.
        md_path: where to write the markdown report (None: no report).
        command: the command line that regenerates these results, recorded in the outputs.
        figures: draw the figures.
        overwrite: replace another run in ``out_dir``.

    Returns:
        The summary that ``metrics.json`` holds.

    Raises:
        ValueError: bad models, observation counts or settings (before anything is written).
        OSError: ``md_path`` could not be written (found before anything is written).
        RunDirectoryError: ``out_dir`` holds another run, or another process writes there.
    """
    validate_request(models, n_obs)
    config.validate()
    device = resolve_device(config.device)
    if md_path is not None:
        _check_writable(Path(md_path))
    summary: dict[str, Any] = {
        "command": command,
        "config": asdict(config),
        "environment": environment(),
        "window": WINDOW,
        "runs": {},
        "complete": False,
        "total_seconds": 0.0,
    }
    total_start = time.perf_counter()
    with run_directory(out_dir, overwrite=overwrite, clear=("*.png", "checkpoints/*.pt"),
                       resumable=False, keep_lock=False) as folder:
        for n in n_obs:
            train, test = (_to(s, device) for s in make_splits(config, n))
            trained: dict[str, torch.nn.Module] = {}
            for name in models:
                result, curve = fit_with_curve(name, train, test, config)
                trained[name] = result.model
                metrics = evaluate(result.model, test)
                key = f"{name}/n={n}"
                summary["runs"][key] = {
                    "model": name,
                    "n_obs": n,
                    "iterations": len(result.losses),
                    "train_seconds": result.seconds,
                    "loss_first": float(np.mean(result.losses[:20])),
                    "loss_last": float(np.mean(result.losses[-20:])),
                    "nfe_forward_mean": result.nfe_forward,
                    "nfe_backward_mean": result.nfe_backward,
                    "n_parameters": sum(p.numel() for p in result.model.parameters()),
                    **metrics,
                    "curve": curve,
                }
                save_checkpoint(
                    {
                        "model": name,
                        "n_obs": n,
                        "config": asdict(config),
                        "state_dict": result.model.state_dict(),
                        "metrics": summary["runs"][key],
                    },
                    folder / "checkpoints" / f"{name}_n{n}.pt",
                )
                summary["total_seconds"] = time.perf_counter() - total_start
                write_json(summary, folder / "metrics.json")
            if figures:
                plot_predictions(trained, test, folder / f"predictions_n{n}.png")
                if "latent-ode" in trained:
                    plot_interpolation(trained["latent-ode"], test,
                                       folder / f"interpolation_n{n}.png")
        if figures and config.eval_every:
            plot_learning_curves(summary["runs"], folder / "learning_curves.png")
        summary["complete"] = True
        summary["total_seconds"] = time.perf_counter() - total_start
        write_json(summary, folder / "metrics.json")
        if md_path is not None:
            write_markdown(summary, md_path, folder)
    return summary


def _check_writable(path: Path) -> None:
    """Raise OSError now if the file ``path`` could not be written later (nothing is created)."""
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{str(folder)!r} is a file", str(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{str(folder)!r} is not writable", str(path))


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def markdown_report(summary: dict[str, Any], out_dir: str | Path) -> str:
    """The text of ``results/latent_ode.md`` for a summary written by :func:`run_experiment`."""
    runs = summary["runs"]
    config = summary["config"]
    ns = sorted({r["n_obs"] for r in runs.values()})
    names = [m for m in MODELS if any(r["model"] == m for r in runs.values())]
    out_dir = Path(out_dir)
    lines = [
        "# Latent ODE vs RNN on irregularly sampled spirals (Chen et al. 2018, Section 5)",
        "",
        ("Regenerate everything in this file and in "
        f"`{out_dir.as_posix()}/` with:"),
        "",
        "```",
        summary["command"] or "(command not recorded)",
        "```",
        "",
        "## Table 2 analog: predictive RMSE on the 100 points after the observation window",
        "",
        ("RMSE over the 200 test spirals, the 100 extrapolated times and both coordinates, "
        "against the noise-free spiral. Paper values in parentheses."),
        "",
        "| model | " + " | ".join(f"n = {n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    for name in names:
        cells = []
        for n in ns:
            run = runs.get(f"{name}/n={n}")
            paper = PAPER_RMSE[name].get(n)
            paper_txt = f" ({paper:.4f})" if paper is not None else ""
            cells.append((_fmt(run["rmse_extrapolation"]) if run else "–") + paper_txt)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        ("Against the noisy targets (this includes the observation noise, "
        f"std {config['noise_std']}):"),
        "",
        "| model | " + " | ".join(f"n = {n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    for name in names:
        cells = [_fmt(runs[f"{name}/n={n}"]["rmse_extrapolation_noisy"])
                 if f"{name}/n={n}" in runs else "–" for n in ns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Goal", ""]
    lines += _goal_lines(runs, ns)
    if (out_dir / "learning_curves.png").exists():
        every = config.get("eval_every")
        lines += [
            "",
            "## Learning curves",
            "",
            (f"Test extrapolation RMSE every {every} training steps; one seed, so the table "
            "above is one point on each curve."),
            "",
            f"![learning curves]({out_dir.name}/learning_curves.png)",
        ]
    lines += [
        "",
        "## Runs",
        "",
        ("| run | iterations | train time (s) | loss first → last (mean of 20 steps) "
        "| NFE fwd / bwd per step | window RMSE | parameters |"),
        "|---|---|---|---|---|---|---|",
    ]
    for key, run in runs.items():
        nfe = (f"{_fmt(run['nfe_forward_mean'], 1)} / {_fmt(run['nfe_backward_mean'], 1)}"
               if run["nfe_forward_mean"] is not None else "–")
        lines.append(
            f"| {key} | {run['iterations']} | {run['train_seconds']:.0f} | "
            f"{run['loss_first']:.4g} → {run['loss_last']:.4g} | {nfe} | "
            f"{_fmt(run.get('rmse_window'))} | {run['n_parameters']} |"
        )
    env = summary["environment"]
    lines += [
        "",
        (f"Total wall-clock time of the run: {summary['total_seconds'] / 60:.1f} min on "
        f"{env.get('cpu_threads', '?')} CPU thread(s) (torch {env.get('torch')}, "
        f"{env.get('platform')})."),
        "",
        "## Setup",
        "",
        (f"- Data: `cnflow.data.spirals.generate_spirals` — {config['n_spirals']} Archimedean "
        "spirals r = 0.3 θ around the origin, half clockwise and half counter-clockwise, random "
        "start angle θ0 ~ U[π, 3π], 200 points at t = 0, 0.05, …, 9.95 (one turn), Gaussian "
        f"noise std {config['noise_std']}; the first {config['n_train']} spirals train, the "
        f"other {config['n_spirals'] - config['n_train']} test. For each n, every spiral keeps "
        "one fixed random subset of n of its first 100 points (without replacement); the targets "
        "are its points 101–200."),
        ("- Latent ODE: GRU recognition network (25 hidden) reading (x_i, Δt_i) backwards in time "
        "→ mean and log-variance of z0 ∈ R^4; latent dynamics MLP 4→20→20→4 (ELU); decoder "
        "MLP 4→20→2 (ReLU); Gaussian likelihood with the data's noise std; KL to N(0, I); one "
        f"posterior sample per spiral; gradients by `{config['gradient']}` through "
        f"`cnflow.solve` (dopri5, rtol {config['rtol']}, atol {config['atol']}); Poisson-process "
        f"term: {'on' if config['poisson'] else 'off'}. Each step estimates the ELBO's sums "
        f"over time on {config['time_subsample'] or 'all'} random grid times (plus the window's "
        "first and last), weighted by the inverse inclusion probability (unbiased); "
        "predictions use the posterior mean of z0."),
        ("- RNN baseline: GRU with 25 hidden units fed (x_i, time to the next point); "
        "teacher-forced on the observed points, then free-running on its own predictions over "
        "the 100 targets; trained on the squared error of both; gradient norm clipped at 10."),
        (f"- Both: Adam, batch {config['batch_size']}, learning rate {config['lr']} decaying "
        f"geometrically to {config['lr'] * config['final_lr_factor']:.2g}; latent ODE "
        f"{config['iterations']} steps, RNN {config['rnn_iterations']} steps; seed "
        f"{config['seed']}. Both see the same observations and are trained on the same "
        "targets: " + (
            "the observed points and the 100 following points of the training spirals (the "
            "test spirals' are only scored); `--window-only` trains on the window alone." if
            config.get("train_future", True) else
            "the observed points of the training spirals only, so every extrapolated time is "
            "beyond anything seen in training (the paper's 'time points extending beyond those "
            "that were used for training').")),
        "",
        "## Figures",
        "",
    ]
    for n in ns:
        for kind, caption in (
            ("predictions", ("observed points (black), reconstruction (blue) and extrapolation "
                            "(red, dashed) of four test spirals")),
            ("interpolation", ("decoded paths along a line in z0 space from a clockwise to a "
                              "counter-clockwise spiral")),
        ):
            if (out_dir / f"{kind}_n{n}.png").exists():
                # Paths are relative to the md file, which sits next to the output folder.
                lines += [f"n = {n}: {caption}.", "",
                          f"![{kind} n={n}]({out_dir.name}/{kind}_n{n}.png)", ""]
    return "\n".join(lines)


def _goal_lines(runs: dict[str, Any], ns: list[int]) -> list[str]:
    lines = []
    for n in ns:
        ode = runs.get(f"latent-ode/n={n}")
        rnn = runs.get(f"rnn/n={n}")
        parts = []
        if ode is not None and n in PAPER_RMSE["latent-ode"]:
            paper = PAPER_RMSE["latent-ode"][n]
            met = ode["rmse_extrapolation"] <= paper
            parts.append(
                f"latent ODE {_fmt(ode['rmse_extrapolation'])} vs paper {paper:.4f}: "
                + ("**met**" if met else "**not met**")
            )
        if ode is not None and rnn is not None:
            worse = rnn["rmse_extrapolation"] > ode["rmse_extrapolation"]
            parts.append(
                f"RNN {_fmt(rnn['rmse_extrapolation'])} "
                + ("worse than the latent ODE: **reproduced**" if worse
                   else "not worse than the latent ODE: **not reproduced**")
            )
        if parts:
            lines.append(f"- n = {n}: " + "; ".join(parts) + ".")
    return lines or ["- (needs both models to judge)"]


def write_markdown(summary: dict[str, Any], path: str | Path, out_dir: str | Path) -> None:
    """Write :func:`markdown_report` to ``path`` atomically."""
    write_text(markdown_report(summary, out_dir), path)
