"""The paper's RNN baseline for the spirals and its least-squares objective."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnflow.data.spirals import observed_points
from cnflow.experiments.latent_ode.config import WINDOW

#: Gradient-norm clip of the RNN's steps: back-propagation through 100 free-running steps
#: can spike, and clipping keeps Adam sane.
RNN_GRAD_CLIP = 10.0


class RNNBaseline(nn.Module):
    """Autoregressive GRU fed time differences, trained to predict the observations directly.

    At each step it reads ``(x_i, delta_i)``, where ``delta_i`` is the time to the point it must
    predict next, and outputs that point. Over the observed points it is teacher-forced; beyond
    them it feeds back its own predictions on the regular target grid.

    Args:
        obs_dim: dimension of one observation.
        hidden: GRU hidden units (the latent ODE's recognition RNN has as many).
    """

    def __init__(self, obs_dim: int = 2, hidden: int = 25) -> None:
        super().__init__()
        self.rnn = nn.GRU(obs_dim + 1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, obs_dim)

    def forward(self, x_obs: torch.Tensor, t_obs: torch.Tensor, t_future: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-step predictions of the observed points and free-running predictions of the
        future.

        Args:
            x_obs: ``(B, n, D)`` observations in increasing time order.
            t_obs: ``(B, n)`` their times.
            t_future: ``(F,)`` increasing target times after the last observation.

        Returns:
            ``(next_obs, future)``: ``(B, n - 1, D)`` predictions of observations 2..n and
            ``(B, F, D)`` predictions at ``t_future``.
        """
        batch = x_obs.shape[0]
        first_gap = (t_future[0] - t_obs[:, -1:]).to(x_obs.dtype)
        gaps = torch.cat([t_obs[:, 1:] - t_obs[:, :-1], first_gap], dim=1)
        out, hidden = self.rnn(torch.cat([x_obs, gaps.unsqueeze(-1)], dim=-1))
        steps = self.head(out)
        current = steps[:, -1]
        future = [current]
        for gap in (t_future[1:] - t_future[:-1]).to(x_obs.dtype):
            step_in = torch.cat([current, gap.expand(batch, 1)], dim=-1).unsqueeze(1)
            out, hidden = self.rnn(step_in, hidden)
            current = self.head(out[:, 0])
            future.append(current)
        return steps[:, :-1], torch.stack(future, dim=1)


def rnn_loss(model: RNNBaseline, times: torch.Tensor, noisy: torch.Tensor,
             obs_idx: torch.Tensor, train_future: bool = True) -> torch.Tensor:
    """Mean squared error of the RNN's predictions of a batch of spirals.

    Args:
        model: the RNN.
        times: ``(2 * WINDOW,)`` the shared grid.
        noisy: ``(B, 2 * WINDOW, 2)`` the spirals' noisy values.
        obs_idx: ``(B, n)`` their observed indices within the window.
        train_future: score the free-running predictions of the ``WINDOW`` points after the
            window too; without it only the one-step predictions of the observations count.

    Returns:
        The scalar loss.
    """
    x_obs, t_obs = observed_points(times, noisy, obs_idx)
    if not train_future:
        next_obs, _ = model(x_obs, t_obs, times[WINDOW: WINDOW + 1])
        return (next_obs - x_obs[:, 1:]).pow(2).mean()
    next_obs, future = model(x_obs, t_obs, times[WINDOW:])
    squared = torch.cat([(next_obs - x_obs[:, 1:]).pow(2).flatten(1),
                         (future - noisy[:, WINDOW:]).pow(2).flatten(1)], dim=1)
    return squared.mean()


@dataclass
class RNNObjective:
    """:func:`rnn_loss` as the objective of :func:`cnflow.training.fit`, called with a batch
    of the training table ``(noisy, obs_idx)``.

    Attributes:
        times: the shared grid.
        train_future: see :func:`rnn_loss`.
    """

    times: torch.Tensor
    train_future: bool = True

    def __call__(self, model: RNNBaseline, noisy: torch.Tensor, obs_idx: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = rnn_loss(model, self.times.to(noisy.device), noisy, obs_idx, self.train_future)
        return loss, {"loss": loss.detach()}
