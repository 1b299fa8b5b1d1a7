"""Training objectives for a flow: maximum likelihood, and flow matching for CNFs.

An objective is called on a minibatch, ``objective(flow, x, context) -> (loss, report)``:
``loss`` is what :func:`cnflow.training.fit` differentiates, ``report`` the number its
history records (for maximum likelihood the NLL without the regularisers).

* :class:`MaximumLikelihood` (``"mle"``): ``−log p(x)`` through a full ODE solve and its
  adjoint, plus the CNF's kinetic/Jacobian regularisers.
* :class:`ReverseKL`: ``KL(q‖p)`` to an energy ``U`` from the flow's own samples (the batch
  is base noise); for targets known only up to their normaliser.
* :class:`FlowMatching` (``"fm"``, ``"otfm"``; Lipman et al. 2023): regress the CNF's vector
  field on the conditional velocity of a straight path from noise to data, one field
  evaluation per point and no solve. In cnflow's time convention (base at ``t = 0``, data at
  ``t = T``), with ``s = t / T`` uniform on [0, 1], noise ``x0`` and a standardised data
  point ``x1``:

  ``x_s = (1 − (1 − σ_min) s) x0 + s x1``, target velocity ``(x1 − (1 − σ_min) x0) / T``.

  ``"otfm"`` pairs noise and data by the exact optimal-transport assignment of the minibatch
  under the squared distance (Tong et al. 2023, Pooladian et al. 2023), which straightens the
  learnt paths. After training, ``flow.log_prob`` is still the exact likelihood.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from cnflow.flows.base import Flow, standard_normal_log_prob

OBJECTIVES = ("mle", "fm", "otfm")


class MaximumLikelihood:
    """``−mean log p(x | c)``, plus the flow's regularisers where it has them."""

    name = "mle"

    def __call__(self, flow: Flow, x: torch.Tensor, context: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        # Only a conditional flow is given a context (a foreign flow may not take one).
        log_p = flow.log_prob(x) if context is None else flow.log_prob(x, context)
        nll = -log_p.mean()
        penalty = flow.regularization() if hasattr(flow, "regularization") else 0.0
        return nll + penalty, nll.detach()


class ReverseKL:
    """``KL(q‖p) = E_q[log q(x) + U(x)] + log Z`` for a target ``p = e^{−U} / Z`` known up to
    its normaliser: fit a flow to an energy by its own samples (density matching, Chen et
    al. 2018 Figure 4; Rezende & Mohamed 2015).

    The minibatch is base noise ``z``: the flow maps it to ``x`` and its log-density ``log
    q(x) = log N(z) − log |det ∂x/∂z|`` in one pass, so seeded batches of noise make the run
    reproducible like a data stream.

    Args:
        energy: ``U(x)`` per point, differentiable in ``x``.
        log_normalizer: ``log Z``, where known, so that the loss is the KL itself (it only
            shifts the loss).
    """

    name = "reverse_kl"

    def __init__(self, energy: Callable[[torch.Tensor], torch.Tensor],
                 log_normalizer: float = 0.0):
        self.energy, self.log_normalizer = energy, float(log_normalizer)

    def __call__(self, flow: Flow, z: torch.Tensor, context: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x, log_det = flow.from_base(z) if context is None else flow.from_base(z, context)
        log_q = standard_normal_log_prob(z) - log_det
        kl = (log_q + self.energy(x)).mean() + self.log_normalizer
        return kl, kl.detach()


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor | None = None
               ) -> torch.Tensor:
    """The permutation ``p`` for which ``(x0[p], x1)`` is the minibatch's exact
    optimal-transport coupling under the squared Euclidean cost.

    Args:
        x0, x1: ``(n, d)`` noise and data.
        groups: optional integer label per row; rows are then paired only within their
            group (the coupling of each conditional distribution on its own).

    Between two uniform empirical measures of equal size the optimal plan is a permutation
    (a vertex of the assignment polytope). POT's network simplex (``ot.emd``) finds it
    faster than ``scipy.optimize.linear_sum_assignment`` at flow matching's batch sizes
    (measured in ``results/flow_matching.md``); the assignment solver remains the fallback
    for a plan that is not a permutation.
    """
    if x0.shape != x1.shape or x0.dim() != 2:
        raise ValueError(f"x0 and x1 must both have shape (n, d), got {tuple(x0.shape)} and "
                         f"{tuple(x1.shape)}")
    cost = torch.cdist(x0.detach().double(), x1.detach().double()).pow(2).cpu().numpy()
    if groups is None:
        rows = [torch.arange(len(x0))]
    else:
        rows = [torch.nonzero(groups.cpu() == g).reshape(-1) for g in torch.unique(groups)]
    permutation = torch.empty(len(x0), dtype=torch.long)
    for index in rows:
        block = cost[index.numpy()[:, None], index.numpy()[None, :]]
        noise, data = _assignment(block)
        # Noise row noise[i] goes to data row data[i]: x0[p[data[i]]] = x0[noise[i]].
        permutation[index[torch.as_tensor(data)]] = index[torch.as_tensor(noise)]
    return permutation.to(x0.device)


def _assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and their assigned columns of the square ``cost`` matrix's optimal assignment."""
    import ot  # imported here: only otfm needs it, and it adds most of a second to startup

    n = len(cost)
    if n > 1:
        weights = np.full(n, 1.0 / n)
        columns = ot.emd(weights, weights, cost).argmax(1)
        if len(np.unique(columns)) == n:
            return np.arange(n), columns
    return linear_sum_assignment(cost)


class FlowMatching:
    """Conditional flow matching on the straight (OT) probability path.

    Args:
        coupling: ``"independent"`` (``"fm"``) or ``"ot"`` (``"otfm"``: the minibatch's
            exact optimal-transport pairing; with a context, only rows of identical context
            are paired, so that every conditional keeps its Gaussian base).
        sigma_min: the path's width at the data end (a tiny Gaussian around each point).

    The flow must be a CNF (it needs ``normalize``, ``velocity`` and ``time``); its field
    is called with one time per point.
    """

    def __init__(self, coupling: str = "independent", sigma_min: float = 1e-4):
        if coupling not in ("independent", "ot"):
            raise ValueError(f"coupling={coupling!r} is not one of ['independent', 'ot']")
        if not (isinstance(sigma_min, (int, float)) and 0 <= sigma_min < 1):
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min!r}")
        self.coupling, self.sigma_min = coupling, float(sigma_min)
        self.name = "otfm" if coupling == "ot" else "fm"
        self._warned = False

    def __call__(self, flow: Flow, x: torch.Tensor, context: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(flow, "velocity"):
            raise TypeError(f"flow matching trains a CNF's vector field; "
                            f"{type(flow).__name__} has none (use objective 'mle')")
        x1 = flow.normalize(x)
        x0 = torch.randn_like(x1)
        if self.coupling == "ot":
            x0 = x0[ot_pairing(x0, x1, self._groups(context))]
        s = torch.rand(len(x1), 1, dtype=x1.dtype, device=x1.device)
        keep = 1 - self.sigma_min
        xs = (1 - keep * s) * x0 + s * x1
        target = (x1 - keep * x0) / flow.time
        v = flow.velocity(s[:, 0] * flow.time, xs, context)
        loss = (v - target).pow(2).sum(1).mean()
        return loss, loss.detach()

    def _groups(self, context: torch.Tensor | None) -> torch.Tensor | None:
        if context is None:
            return None
        groups = torch.unique(context, dim=0, return_inverse=True)[1]
        if int(groups.max()) + 1 == len(context) and not self._warned:
            self._warned = True
            warnings.warn("otfm with a context that differs in every row: rows are paired "
                          "only within identical contexts, so here the coupling is the "
                          "independent one (as 'fm')", stacklevel=3)
        return groups


def make_objective(name: str) -> MaximumLikelihood | FlowMatching:
    """The objective called ``name``: one of :data:`OBJECTIVES`."""
    if name == "mle":
        return MaximumLikelihood()
    if name in ("fm", "otfm"):
        return FlowMatching("ot" if name == "otfm" else "independent")
    raise ValueError(f"objective={name!r} is not one of {list(OBJECTIVES)}")
