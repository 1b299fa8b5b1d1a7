"""The energy targets' side of density matching: the soft wall that keeps ``q`` in the
target's box while training, and the box-conditioned reverse-KL estimate of a fit."""

from __future__ import annotations

import math

import numpy as np
import torch

import toydata
from cnflow.flows.base import Flow
from cnflow.report import mean_and_stderr


def box_wall(x: torch.Tensor, box, strength: float) -> torch.Tensor:
    """``κ Σ_i relu(dist. of x_i outside [lo_i, hi_i])²`` per point: zero inside the box."""
    lo = torch.tensor([b[0] for b in box], dtype=x.dtype)
    hi = torch.tensor([b[1] for b in box], dtype=x.dtype)
    outside = torch.relu(lo - x) + torch.relu(x - hi)
    return strength * outside.pow(2).sum(-1)


@torch.no_grad()
def reverse_kl(flow: Flow, target: toydata.energy.EnergyTarget, n: int, seed: int,
               chunk: int = 10000) -> dict[str, float]:
    """Monte-Carlo ``KL(q_B‖p)`` from ``n`` samples of ``q``, with ``q_B`` the flow's density
    conditioned on the target's box ``B`` (where ``p = e^{−U}/Z`` lives):

        KL(q_B‖p) = E_{q|B}[log q + U] + log Z − log q(B)  ≥ 0.

    ``q`` itself is not a density on the box once a fit spills mass past its edges (the
    soft wall of training allows a little), and the plain ``E_q[log q + U] + log Z`` then
    stops being a divergence: with ``U`` continued past the box it can fall below zero.
    Conditioning on the box keeps a divergence, and ``−log q(B)`` charges the spilt mass.

    Returns:
        ``kl``, its standard error ``kl_stderr`` (of the mean over the samples inside; the
        error of ``log q(B)`` is far smaller) and ``outside_box``: ``1 − q(B)``.
    """
    was_training = flow.training
    flow.eval()
    torch.manual_seed(seed)
    log_z = target.log_normalizer()
    values = []
    (a1, b1), (a2, b2) = target.box
    for start in range(0, n, chunk):
        x, log_q = flow.sample_and_log_prob(min(chunk, n - start))
        x, log_q = x.double(), log_q.double()
        inside = (x[:, 0] >= a1) & (x[:, 0] <= b1) & (x[:, 1] >= a2) & (x[:, 1] <= b2)
        values.append((log_q + target.energy(x) + log_z)[inside].numpy())
    flow.train(was_training)
    values = np.concatenate(values)
    inside_share = len(values) / n
    kl, stderr = mean_and_stderr(values)
    return {"kl": kl - math.log(inside_share), "kl_stderr": stderr,
            "outside_box": 1 - inside_share}
