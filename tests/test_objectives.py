"""Flow matching: the loss's minimiser, the OT coupling, training steps, exact likelihoods
after training."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from flow_checks import brute_force_log_prob

import toydata
from cnflow.flows.cnf import CNF, ConcatSquashMLP, GatedHyperDynamics
from cnflow.objectives import FlowMatching, MaximumLikelihood, make_objective, ot_pairing
from cnflow.training import TrainConfig, fit

F64 = torch.float64


class _GaussianField:
    """A stand-in CNF whose field is the closed-form marginal velocity of the straight path
    from N(0, I) at t = 0 to N(mu, s² I) at t = T, plus an optional perturbation."""

    def __init__(self, mu: torch.Tensor, s: float, time: float, sigma_min: float,
                 perturbation=None):
        self.mu, self.s, self.time, self.keep = mu, s, time, 1 - sigma_min
        self.perturbation = perturbation

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def field(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # x_r = (1 − k r) x0 + r x1 with r = t / T: jointly Gaussian with the path's velocity
        # (x1 − k x0) / T, so E[velocity | x_r] is linear in x_r.
        r = (t / self.time)[:, None]
        k, s2 = self.keep, self.s ** 2
        variance = (1 - k * r) ** 2 + r ** 2 * s2
        covariance = r * s2 - k * (1 - k * r)
        return (self.mu + covariance / variance * (z - r * self.mu)) / self.time

    def velocity(self, t, z, context=None):
        v = self.field(t, z)
        return v if self.perturbation is None else v + self.perturbation(t, z)


@pytest.mark.parametrize("time", [1.0, 2.5])
def test_flow_matching_loss_is_minimised_by_the_true_marginal_field(time):
    """L(v) = E‖v − u‖² + const, so for any δ, L(u + δ) − L(u) − E‖δ‖² (the cross term
    2 E[δ · (u − target)]) has mean zero: u is the minimiser."""
    mu = torch.tensor([1.5, -0.5], dtype=F64)
    x = mu + 0.3 * torch.randn(200_000, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    objective = FlowMatching(sigma_min=0.01)
    perturbations = [lambda t, z: torch.full_like(z, 0.1),
                     lambda t, z: 0.2 * z.flip(1) * (t[:, None] / time),
                     lambda t, z: 0.1 * torch.sin(3 * z)]
    # The per-point cross terms, from the same noise and times (common random numbers).
    for delta in perturbations:
        true = _GaussianField(mu, 0.3, time, 0.01)
        torch.manual_seed(1)
        x1 = x
        x0 = torch.randn_like(x1)
        r = torch.rand(len(x1), 1, dtype=F64)
        xs = (1 - 0.99 * r) * x0 + r * x1
        target = (x1 - 0.99 * x0) / time
        t = r[:, 0] * time
        cross = 2 * (delta(t, xs) * (true.field(t, xs) - target)).sum(1)
        assert abs(cross.mean()) < 4 * cross.std() / math.sqrt(len(cross))
        # And the objective computes exactly this loss from the same draws.
        torch.manual_seed(1)
        loss, _ = objective(true, x1)
        assert loss.item() == pytest.approx((true.field(t, xs) - target).pow(2).sum(1).mean()
                                            .item(), rel=1e-12)
        torch.manual_seed(1)
        perturbed, _ = objective(_GaussianField(mu, 0.3, time, 0.01, delta), x1)
        assert perturbed > loss


def test_ot_pairing_minimises_the_squared_cost_against_brute_force():
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        x0 = torch.randn(6, 2, generator=generator, dtype=F64)
        x1 = torch.randn(6, 2, generator=generator, dtype=F64) + 1.0
        perm = ot_pairing(x0, x1)
        assert sorted(perm.tolist()) == list(range(6))
        cost = (x0[perm] - x1).pow(2).sum().item()
        best = min((x0[list(p)] - x1).pow(2).sum().item()
                   for p in itertools.permutations(range(6)))
        assert cost == pytest.approx(best, rel=1e-12)


def test_ot_pairing_within_groups_only_pairs_rows_of_one_group():
    generator = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(8, 2, generator=generator), torch.randn(8, 2, generator=generator)
    groups = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    perm = ot_pairing(x0, x1, groups)
    assert (groups[perm] == groups).all() and sorted(perm.tolist()) == list(range(8))
    for g in (0, 1):  # each group's pairing is that group's own optimum
        rows = torch.nonzero(groups == g).reshape(-1)
        best = min((x0[rows[list(p)]] - x1[rows]).pow(2).sum().item()
                   for p in itertools.permutations(range(len(rows))))
        assert (x0[perm[rows]] - x1[rows]).pow(2).sum().item() == pytest.approx(best, rel=1e-6)


def test_otfm_with_all_distinct_contexts_warns_that_it_is_independent():
    flow = CNF(GatedHyperDynamics(2, 8, 8, context_dim=1), 2, context_dim=1)
    with pytest.warns(UserWarning, match="independent"):
        FlowMatching("ot")(flow, torch.randn(16, 2), torch.randn(16, 1))


@pytest.mark.parametrize("name", ["fm", "otfm"])
@pytest.mark.parametrize("dynamics", ["gated", "concat_squash"])
def test_a_few_flow_matching_steps_lower_the_loss(name, dynamics):
    torch.manual_seed(0)
    field = GatedHyperDynamics(2, 32, 16) if dynamics == "gated" else \
        ConcatSquashMLP(2, hidden=(32, 32))
    flow = CNF(field, 2)
    # Two moons: standardised, a Gaussian would already be the base (nothing to learn).
    x = torch.as_tensor(toydata.get("two_moons").sample(256, seed=0), dtype=torch.float32)
    flow.set_normalization(x)
    objective = make_objective(name)

    def loss() -> float:  # the same noise and times every time
        torch.manual_seed(123)
        return objective(flow, x)[0].item()

    before = loss()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(40):
        value, _ = objective(flow, x)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    # Much of the loss is the conditional velocity's irreducible variance.
    assert loss() < 0.9 * before


@pytest.mark.parametrize("dynamics", ["gated", "concat_squash"])
def test_log_prob_after_flow_matching_is_the_exact_likelihood(dynamics):
    """FM trains the field only; log_prob then integrates it and its trace. In float64 the
    result equals log N(z) + log|det ∂z/∂x| from the brute-force Jacobian."""
    torch.manual_seed(1)
    field = GatedHyperDynamics(2, 16, 16) if dynamics == "gated" else \
        ConcatSquashMLP(2, hidden=(16, 16))
    flow = CNF(field, 2, eval_rtol=1e-10, eval_atol=1e-10, gradient="direct").double()
    x = torch.randn(512, 2, dtype=F64) * torch.tensor([1.0, 0.3], dtype=F64)
    x[:, 1] += x[:, 0].pow(2) * 0.5
    flow.set_normalization(x)
    fit(flow, x[:448], x[448:], TrainConfig(epochs=2, batch_size=128, lr=1e-2,
                                            min_epoch_steps=20), objective=FlowMatching(),
        progress=False)
    assert flow.dynamics.state_dict() != {}  # trained: the field is no longer the identity
    flow.eval()
    points = x[:6]
    with torch.no_grad():
        exact = flow.log_prob(points)
    torch.testing.assert_close(exact, brute_force_log_prob(flow, points), rtol=0, atol=1e-7)


def test_flow_matching_refuses_a_flow_without_a_vector_field():
    from cnflow.flows.planar import PlanarFlow

    with pytest.raises(TypeError, match="mle"):
        FlowMatching()(PlanarFlow(2, 2), torch.randn(4, 2))


def test_objective_names_and_settings_are_checked():
    assert isinstance(make_objective("mle"), MaximumLikelihood)
    assert make_objective("otfm").coupling == "ot"
    with pytest.raises(ValueError, match="objective='nope'"):
        make_objective("nope")
    with pytest.raises(ValueError, match="sigma_min"):
        FlowMatching(sigma_min=1.5)
    with pytest.raises(ValueError, match="coupling"):
        FlowMatching("sinkhorn")


def test_mle_objective_reports_the_nll_without_the_regulariser():
    flow = CNF(ConcatSquashMLP(2, hidden=(8,)), 2, kinetic=1.0)
    x = torch.randn(32, 2)
    loss, report = MaximumLikelihood()(flow, x)
    assert loss.requires_grad and not report.requires_grad
    assert loss.item() >= report.item() - 1e-6
    assert np.isfinite(report.item())


def test_ot_pairing_with_repeated_points_is_still_an_optimal_permutation():
    """Ties (equal data points) leave many optimal plans; the pairing must stay a
    permutation of optimal cost."""
    generator = torch.Generator().manual_seed(5)
    x0 = torch.randn(7, 2, generator=generator, dtype=F64)
    x1 = torch.randn(3, 2, generator=generator, dtype=F64)[torch.tensor([0, 0, 1, 1, 1, 2, 2])]
    perm = ot_pairing(x0, x1)
    assert sorted(perm.tolist()) == list(range(7))
    best = min((x0[list(p)] - x1).pow(2).sum().item() for p in itertools.permutations(range(7)))
    assert (x0[perm] - x1).pow(2).sum().item() == pytest.approx(best, rel=1e-12)


def test_reverse_kl_matches_the_closed_form_for_an_affine_flow():
    """A planar flow with u = w = 0 is affine, q = N(shift, diag(exp(log_scale))^2); to the
    target N(0, I) (U = |x|^2/2, log Z = log 2 pi) the KL is
    0.5 * sum(s^2 + mu^2 - 1 - 2 log s)."""
    from cnflow.flows import PlanarFlow
    from cnflow.objectives import ReverseKL

    flow = PlanarFlow(2, layers=1, direction="generative").double()
    with torch.no_grad():
        flow.layers[0].w.zero_()
        flow.layers[0].u.zero_()
        flow.shift.copy_(torch.tensor([0.5, -1.0], dtype=torch.float64))
        flow.log_scale.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
    mu, s = flow.shift, flow.log_scale.exp()
    exact = float(0.5 * (s**2 + mu**2 - 1 - 2 * s.log()).sum())
    objective = ReverseKL(lambda x: 0.5 * x.pow(2).sum(-1), math.log(2 * math.pi))
    z = torch.randn(200000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss, report = objective(flow, z)
    # Monte-Carlo over z: the per-point term has standard deviation below 2 here.
    assert float(report) == pytest.approx(exact, abs=4 * 2 / math.sqrt(len(z)))
    assert loss.requires_grad and float(report) == float(loss.detach())
