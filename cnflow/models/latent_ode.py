"""Latent ODE for irregularly sampled time series, and a Poisson-process likelihood.

Chen et al. 2018, Section 5: a recognition RNN reads the observations backwards in time and
returns a Gaussian posterior over the initial latent state ``z0``; a neural ODE carries ``z0``
forward to every time of interest and a decoder maps latent states to observations. Training
maximises the evidence lower bound (ELBO); the paper differentiates it with the adjoint
method, which ``gradient="adjoint"`` selects (the default is checkpointed, see
``DEFAULT_GRADIENT``). Section 5.1 adds an inhomogeneous Poisson process whose intensity
depends on the latent state, so that the observation times themselves carry information; its
compensator ``integral lambda(z(t)) dt`` is obtained by integrating one extra state component
alongside ``z``.

All spirals share one time grid, so a batch of latent trajectories is solved in one call on the
whole grid; which grid points are observed (or are targets) is described by masks and index
tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from cnflow.solvers import GRADIENT_MODES

__all__ = [
    "Decoder",
    "ElboOutput",
    "IntensityAugmentedDynamics",
    "LatentDynamics",
    "LatentODE",
    "LogIntensity",
    "RecognitionRNN",
    "gaussian_kl",
    "gaussian_log_likelihood",
    "poisson_log_likelihood_from_path",
    "poisson_process_log_likelihood",
    "solve_latent",
    "solve_ode",
]

GRADIENTS = GRADIENT_MODES
# The default gradient: checkpointed. With ~32 output times the adjoint restarts its
# backward solve at every one (the adjoint jumps there), so it needs at least one step of
# fresh evaluations per interval: measured on the spirals (n = 30, 300 steps) 47 forward /
# 322 backward NFE and 0.067 CPU s per training step, against 47 / 53 NFE and 0.025 s
# checkpointed, with the same loss and RMSE; its memory is one state per accepted step.
DEFAULT_GRADIENT = "checkpoint"


def solve_ode(func: nn.Module, y0: torch.Tensor, t: torch.Tensor, *, rtol: float, atol: float,
              method: str = "dopri5", gradient: str = DEFAULT_GRADIENT) -> Any:
    """Solve ``dy/dt = func(t, y)`` with cnflow's solver; returns its ``ODESolution``.

    Args:
        func: the vector field, a module so that its parameters can be handed to the adjoint.
        y0: initial state at ``t[0]``.
        t: 1-D strictly monotone output times.
        rtol, atol: relative and absolute tolerance.
        method: solver name understood by ``cnflow.solve``.
        gradient: ``"adjoint"``, ``"direct"`` or ``"checkpoint"``.

    Returns:
        The solution; ``.ys`` has shape ``(len(t), *y0.shape)`` and ``.stats`` counts evaluations.

    Raises:
        ValueError: ``gradient`` is unknown.
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient={gradient!r} is not one of {GRADIENTS}")
    # Imported here rather than at module level: cnflow's top-level package may itself import
    # the models, and a lazy import keeps that from becoming a cycle.
    import cnflow

    kwargs: dict[str, Any] = {}
    if gradient == "adjoint":
        kwargs["adjoint_params"] = tuple(func.parameters())
        # Seminorm step control (Kidger et al. 2021): the parameter adjoints are integrals
        # that never feed back into the state, so leaving them out of the error norm saves
        # backward steps without loosening the state's accuracy.
        kwargs["adjoint_options"] = {"norm": "seminorm"}
    return cnflow.solve(func, y0, t, rtol=rtol, atol=atol, method=method, gradient=gradient,
                        **kwargs)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: float,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log density of ``x`` under ``N(mean, std^2)``, summed over all but the first dimension.

    Args:
        x: observations ``(B, T, D)``.
        mean: predicted means, same shape.
        std: observation noise standard deviation.
        mask: optional ``(B, T)`` bool or float weights; a point's terms are multiplied by it,
            so False (0) points do not count.

    Returns:
        ``(B,)`` log-likelihood per sequence.

    Example:
        >>> x = torch.zeros(1, 3, 2)
        >>> round(float(gaussian_log_likelihood(x, x, 1.0)), 4)  # 6 terms of -log(2 pi) / 2
        -5.5136
    """
    # No argument validation: it would raise ValueError on a NaN mean, where the training
    # loop should see a non-finite loss and stop cleanly (LatentODE checks obs_std once).
    normal = Normal(mean, torch.as_tensor(std, dtype=mean.dtype, device=mean.device),
                    validate_args=False)
    log_density = normal.log_prob(x)
    if mask is not None:
        log_density = log_density * mask.unsqueeze(-1).to(log_density.dtype)
    return log_density.flatten(1).sum(dim=1)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per row of ``(B, L)`` inputs; returns ``(B,)``.

    Example:
        >>> float(gaussian_kl(torch.ones(1, 4), torch.zeros(1, 4)))  # 4 * 1 / 2
        2.0
    """
    posterior = Normal(mean, (0.5 * logvar).exp(), validate_args=False)
    prior = Normal(torch.zeros_like(mean), torch.ones_like(mean), validate_args=False)
    return kl_divergence(posterior, prior).sum(dim=-1)


class RecognitionRNN(nn.Module):
    """GRU that reads ``(x_i, dt_i)`` backwards in time and outputs the posterior over ``z0``.

    ``dt_i = t_i - t_{i-1}`` is the gap to the previous observation, with ``t_0`` the start of
    the window (where ``z0`` lives), so irregular sampling is visible to the network.
    """

    def __init__(self, obs_dim: int = 2, hidden: int = 25, latent_dim: int = 4) -> None:
        """A GRU of ``hidden`` units over ``(x_i, dt_i)``, ``x_i`` of ``obs_dim``; ``z0`` has
        ``latent_dim`` dimensions."""
        super().__init__()
        self.rnn = nn.GRU(obs_dim + 1, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x_obs: torch.Tensor, t_obs: torch.Tensor,
                t_start: float | torch.Tensor = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of ``z0``.

        Args:
            x_obs: ``(B, n, D)`` observations in increasing time order.
            t_obs: ``(B, n)`` their times.
            t_start: time of ``z0`` (not after the first observation).

        Returns:
            ``(mean, logvar)``, each ``(B, latent_dim)``.
        """
        previous = torch.cat([torch.full_like(t_obs[:, :1], float(t_start)), t_obs[:, :-1]], dim=1)
        inputs = torch.cat([x_obs, (t_obs - previous).unsqueeze(-1)], dim=-1)
        _, hidden = self.rnn(inputs.flip(1))
        mean, logvar = self.out(hidden[-1]).chunk(2, dim=-1)
        return mean, logvar


class LatentDynamics(nn.Module):
    """Autonomous latent vector field ``dz/dt = f(z)``: MLP with two ELU hidden layers."""

    def __init__(self, latent_dim: int = 4, hidden: int = 20) -> None:
        """Build the MLP ``latent_dim -> hidden -> hidden -> latent_dim``."""
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ELU(),
                                 nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, latent_dim))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Evaluate ``f(z)``; ``t`` is accepted for the solver's ``func(t, y)`` signature."""
        return self.net(z)


class Decoder(nn.Module):
    """Maps a latent state to the mean of an observation: MLP with one ReLU hidden layer."""

    def __init__(self, latent_dim: int = 4, hidden: int = 20, obs_dim: int = 2) -> None:
        """Build the MLP ``latent_dim -> hidden -> obs_dim``."""
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, obs_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``(..., latent_dim)`` to ``(..., obs_dim)``."""
        return self.net(z)


class LogIntensity(nn.Module):
    """Log of the Poisson event intensity as a function of the latent state, ``log lambda(z)``.

    The network outputs the logarithm so that ``log lambda`` in the likelihood is exact and the
    intensity ``exp(.)`` is positive by construction.
    """

    def __init__(self, latent_dim: int = 4, hidden: int = 20) -> None:
        """Build the MLP ``latent_dim -> hidden -> 1``."""
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ELU(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``log lambda(z)`` of shape ``z.shape[:-1]``."""
        return self.net(z).squeeze(-1)


class IntensityAugmentedDynamics(nn.Module):
    """Vector field of the augmented state ``y = [z, Lambda]``.

    ``dz/dt = f(t, z)`` and ``dLambda/dt = lambda(z(t)) = exp(log_intensity(z))``, so that
    ``Lambda(t) - Lambda(t_0)`` is the compensator ``integral_{t_0}^{t} lambda(z(s)) ds``. The
    state is one concatenated tensor whose last component is ``Lambda``.
    """

    def __init__(self, dynamics: nn.Module, log_intensity: nn.Module) -> None:
        """Wrap ``dynamics(t, z)`` and ``log_intensity(z)``."""
        super().__init__()
        self.dynamics = dynamics
        self.log_intensity = log_intensity

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate ``[f(t, z), lambda(z)]`` for ``y = [z, Lambda]``."""
        z = y[..., :-1]
        rate = self.log_intensity(z).exp().unsqueeze(-1)
        return torch.cat([self.dynamics(t, z), rate], dim=-1)


def solve_latent(dynamics: nn.Module, z0: torch.Tensor, t: torch.Tensor,
                 log_intensity: nn.Module | None = None, **solve: Any
                 ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """Latent path from ``z0`` at ``t[0]`` and, with ``log_intensity``, its compensator.

    With an intensity, the ODE state carries one more component, the integrated intensity
    ``Lambda`` (starting at 0), so one adaptive solve gives both to the solver's tolerance.

    Args:
        dynamics: latent vector field ``dynamics(t, z)``.
        z0: ``(B, L)`` latent state at ``t[0]``.
        t: ``(T,)`` increasing output times.
        log_intensity: ``log lambda(z)`` of shape ``z.shape[:-1]``, or None.
        **solve: ``rtol``, ``atol`` and optionally ``method`` and ``gradient`` of
            :func:`solve_ode`.

    Returns:
        ``(zs, compensator, solution)``: the ``(B, T, L)`` path, the ``(B, T)`` integrated
        intensity (None without ``log_intensity``) and the solver's solution.
    """
    if log_intensity is None:
        solution = solve_ode(dynamics, z0, t, **solve)
        return solution.ys.transpose(0, 1), None, solution
    augmented = IntensityAugmentedDynamics(dynamics, log_intensity)
    y0 = torch.cat([z0, z0.new_zeros(z0.shape[0], 1)], dim=-1)
    solution = solve_ode(augmented, y0, t, **solve)
    ys = solution.ys.transpose(0, 1)
    return ys[..., :-1], ys[..., -1], solution


def poisson_log_likelihood_from_path(log_intensity: torch.Tensor, compensator: torch.Tensor,
                                     event_mask: torch.Tensor, end_index: int | None = None
                                     ) -> torch.Tensor:
    """Poisson-process log-likelihood from values along a solved path.

    ``log p = sum_i log lambda(z(t_i)) - integral_{t_0}^{t_end} lambda(z(t)) dt``, where the
    events ``t_i`` are grid points and the integral is the increase of the integrated intensity
    between the first grid point and ``t_end``.

    Args:
        log_intensity: ``(B, T)`` ``log lambda`` at every grid time.
        compensator: ``(B, T)`` integrated intensity ``Lambda`` at every grid time.
        event_mask: ``(B, T)`` bool, True where an event occurred.
        end_index: grid index of ``t_end`` (the last grid point when None); events after it
            are not allowed.

    Returns:
        ``(B,)`` log-likelihood.

    Raises:
        ValueError: an event lies after ``end_index``.
    """
    n_times = log_intensity.shape[1]
    end = n_times - 1 if end_index is None else int(end_index)
    if end + 1 < n_times and bool(event_mask[:, end + 1 :].any()):
        raise ValueError(f"events occur after the end of the observation interval (index {end})")
    events = (log_intensity * event_mask.to(log_intensity.dtype)).sum(dim=1)
    return events - (compensator[:, end] - compensator[:, 0])


def poisson_process_log_likelihood(dynamics: nn.Module, log_intensity: nn.Module,
                                   z0: torch.Tensor, t: torch.Tensor, event_mask: torch.Tensor,
                                   *, rtol: float = 1e-7, atol: float = 1e-9,
                                   method: str = "dopri5", gradient: str = "direct"
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood of event times under the intensity ``lambda(z(t))`` of a latent ODE path.

    Args:
        dynamics: latent vector field ``dynamics(t, z)``.
        log_intensity: module giving ``log lambda(z)`` of shape ``z.shape[:-1]``.
        z0: ``(B, L)`` latent state at ``t[0]``.
        t: ``(T,)`` grid; the observation interval is ``[t[0], t[-1]]``.
        event_mask: ``(B, T)`` bool, True at the grid times where events occurred.
        rtol, atol: tolerances of the solve.
        method: solver name.
        gradient: ``"direct"``, ``"adjoint"`` or ``"checkpoint"``.

    Returns:
        ``(log_lik, zs)``: ``(B,)`` log-likelihoods and the ``(T, B, L)`` latent path.

    Raises:
        ValueError: shapes do not match.
    """
    if event_mask.shape != (z0.shape[0], t.shape[0]):
        raise ValueError(f"event_mask has shape {tuple(event_mask.shape)}, expected "
                         f"(batch, len(t)) = {(z0.shape[0], t.shape[0])}")
    zs, compensator, _ = solve_latent(dynamics, z0, t, log_intensity, rtol=rtol, atol=atol,
                                      method=method, gradient=gradient)
    log_lik = poisson_log_likelihood_from_path(log_intensity(zs), compensator, event_mask)
    return log_lik, zs.transpose(0, 1)


@dataclass
class ElboOutput:
    """Terms of one ELBO evaluation (all per-sequence tensors are batch means).

    Attributes:
        loss: scalar to minimise, ``-ELBO`` averaged over the batch.
        log_likelihood: mean Gaussian observation log-likelihood.
        kl: mean ``KL(q(z0|x) || N(0, I))``.
        poisson_log_likelihood: mean Poisson-process log-likelihood (None without it).
        prediction: ``(B, T, D)`` decoded means on the whole grid.
        solution: the solver's ``ODESolution`` (its ``stats.backward`` fills during backward).
    """

    loss: torch.Tensor
    log_likelihood: torch.Tensor
    kl: torch.Tensor
    poisson_log_likelihood: torch.Tensor | None
    prediction: torch.Tensor
    solution: Any


class LatentODE(nn.Module):
    """Latent ODE: recognition RNN, latent neural ODE, decoder, optional Poisson intensity.

    Args:
        obs_dim: dimension of one observation.
        latent_dim: dimension of the latent state.
        rnn_hidden: hidden units of the recognition GRU.
        dynamics_hidden: hidden units of the latent dynamics MLP.
        decoder_hidden: hidden units of the decoder MLP.
        obs_std: standard deviation of the Gaussian observation likelihood.
        poisson: also model the observation times with a Poisson process.
        intensity_hidden: hidden units of the intensity MLP (with ``poisson``).
        rtol, atol: tolerances of the latent ODE solves.
        method: solver name.

    Raises:
        ValueError: ``obs_std`` is not positive.
    """

    def __init__(self, obs_dim: int = 2, latent_dim: int = 4, rnn_hidden: int = 25,
                 dynamics_hidden: int = 20, decoder_hidden: int = 20, *, obs_std: float = 0.1,
                 poisson: bool = False, intensity_hidden: int = 20, rtol: float = 1e-3,
                 atol: float = 1e-4, method: str = "dopri5") -> None:
        super().__init__()
        if not obs_std > 0.0:
            raise ValueError(f"obs_std={obs_std} must be positive")
        self.latent_dim = latent_dim
        self.obs_std = float(obs_std)
        self.rtol, self.atol, self.method = rtol, atol, method
        self.encoder = RecognitionRNN(obs_dim, rnn_hidden, latent_dim)
        self.dynamics = LatentDynamics(latent_dim, dynamics_hidden)
        self.decoder = Decoder(latent_dim, decoder_hidden, obs_dim)
        self.log_intensity = LogIntensity(latent_dim, intensity_hidden) if poisson else None
        #: Solver statistics of the last solve (``.forward.nfe``, ``.backward.nfe``).
        self.last_stats: Any = None

    @property
    def poisson(self) -> bool:
        """Whether the model includes the Poisson-process likelihood of observation times."""
        return self.log_intensity is not None

    def encode(self, x_obs: torch.Tensor, t_obs: torch.Tensor, t_start: float | torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance ``(B, latent_dim)`` of ``z0`` at ``t_start`` from
        the observations ``x_obs`` ``(B, n, D)`` at times ``t_obs`` ``(B, n)``."""
        return self.encoder(x_obs, t_obs, t_start)

    def decode(self, zs: torch.Tensor) -> torch.Tensor:
        """Observation means ``(..., D)`` of latent states ``(..., L)``, in the data's units."""
        return self.decoder(zs)

    def trajectory(self, z0: torch.Tensor, times: torch.Tensor,
                   gradient: str = DEFAULT_GRADIENT
                   ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """Solve the latent ODE from ``z0`` ``(B, L)`` at ``times[0]``; see
        :func:`solve_latent` for the returned ``(zs, compensator, solution)``."""
        zs, compensator, solution = solve_latent(
            self.dynamics, z0, times, self.log_intensity, rtol=self.rtol, atol=self.atol,
            method=self.method, gradient=gradient)
        # Read by cnflow.training.fit for the NFE of each step (the backward counts fill in
        # during backward, before fit reads them).
        self.last_stats = solution.stats
        return zs, compensator, solution

    def elbo(self, x_obs: torch.Tensor, t_obs: torch.Tensor, times: torch.Tensor,
             x_target: torch.Tensor, target_mask: torch.Tensor, *,
             weights: torch.Tensor | None = None, event_mask: torch.Tensor | None = None,
             event_end_index: int | None = None, gradient: str = DEFAULT_GRADIENT,
             sample: bool = True) -> ElboOutput:
        """Negative ELBO with a single reparameterised sample of ``z0``.

        ``ELBO = log p(x_target | z) [+ log p(event times | z)] - KL(q(z0 | x_obs) || N(0, I))``
        with a Gaussian observation model of standard deviation ``obs_std``. The sums over time
        may be estimated from a subset of the grid: ``weights[k]`` multiplies the terms at
        ``times[k]`` (an unbiased estimator when it is the inverse inclusion probability), which
        keeps the number of output times, and so the cost of the adjoint pass, small.

        Args:
            x_obs: ``(B, n, D)`` observations the encoder sees, in increasing time order.
            t_obs: ``(B, n)`` their times.
            times: ``(K,)`` increasing times at which the path is decoded; ``z0`` lives at
                ``times[0]``.
            x_target: ``(B, K, D)`` noisy values at ``times``.
            target_mask: ``(B, K)`` bool, the points scored by the Gaussian likelihood.
            weights: ``(K,)`` weights of the time terms (all ones when None).
            event_mask: ``(B, K)`` bool, events of the Poisson process (needed with it).
            event_end_index: index into ``times`` closing the Poisson observation interval
                (the last index when None).
            gradient: how the solver differentiates (``"checkpoint"``, ``"adjoint"`` or
                ``"direct"``).
            sample: draw ``z0`` from the posterior (True) or use its mean.

        Returns:
            The ELBO terms, see :class:`ElboOutput`.

        Raises:
            ValueError: shapes disagree, or the Poisson model lacks ``event_mask``.
        """
        n_times = times.shape[0]
        if (x_target.shape[:2] != (x_obs.shape[0], n_times)
                or target_mask.shape != x_target.shape[:2]):
            raise ValueError(
                f"x_target {tuple(x_target.shape)} and target_mask {tuple(target_mask.shape)} "
                f"must be (batch, len(times)[, D]) with batch={x_obs.shape[0]}, "
                f"len(times)={n_times}")
        if self.log_intensity is not None and event_mask is None:
            raise ValueError("a LatentODE with poisson=True needs event_mask")
        w = times.new_ones(n_times) if weights is None else weights.to(times.dtype)
        mean, logvar = self.encode(x_obs, t_obs, times[0])
        z0 = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        zs, compensator, solution = self.trajectory(z0, times, gradient)
        prediction = self.decode(zs)
        log_lik = gaussian_log_likelihood(x_target, prediction, self.obs_std,
                                          target_mask.to(w.dtype) * w)
        kl = gaussian_kl(mean, logvar)
        elbo = log_lik - kl
        poisson_ll = None
        if compensator is not None:
            poisson_ll = poisson_log_likelihood_from_path(
                self.log_intensity(zs) * w, compensator, event_mask, event_end_index)
            elbo = elbo + poisson_ll
            poisson_ll = poisson_ll.mean()
        return ElboOutput(loss=-elbo.mean(), log_likelihood=log_lik.mean(), kl=kl.mean(),
                          poisson_log_likelihood=poisson_ll, prediction=prediction,
                          solution=solution)

    @torch.no_grad()
    def predict(self, x_obs: torch.Tensor, t_obs: torch.Tensor, times: torch.Tensor
                ) -> torch.Tensor:
        """Decoded means ``(B, T, D)`` at ``times`` ``(T,)`` from the posterior mean of
        ``z0`` (at ``times[0]``) given ``x_obs`` ``(B, n, D)`` at ``t_obs`` ``(B, n)``."""
        mean, _ = self.encode(x_obs, t_obs, times[0])
        zs, _, _ = self.trajectory(mean, times, gradient="direct")
        return self.decode(zs)
