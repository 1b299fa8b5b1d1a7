"""Conditional CNFs p(x | c): shapes and broadcasting, the flow contract per context, and
densities against exact conditionals (a Gaussian, two moons given the moon)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flow_checks import brute_force_log_prob

import toydata
from cnflow.flows.cnf import CNF, ConcatSquashMLP, GatedHyperDynamics
from cnflow.objectives import FlowMatching
from cnflow.training import EndlessSamples, TrainConfig, evaluate, fit

F64 = torch.float64


def _randomize(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _flow(dynamics: str = "gated", k: int = 2) -> CNF:
    field = GatedHyperDynamics(2, 16, 16, context_dim=k) if dynamics == "gated" else \
        ConcatSquashMLP(2, hidden=(16, 16), context_dim=k)
    flow = CNF(field, 2, context_dim=k, eval_rtol=1e-9, eval_atol=1e-9).double().eval()
    _randomize(flow.dynamics)
    return flow


@pytest.mark.parametrize("dynamics", ["gated", "concat_squash"])
def test_shapes_and_broadcasting_follow_torch_distributions(dynamics):
    flow = _flow(dynamics)
    c = torch.randn(3, 2, dtype=F64)
    assert flow.sample(5, context=c).shape == (5, 3, 2)
    assert flow.sample((4, 2), context=c[0]).shape == (4, 2, 2)
    x, log_p = flow.sample_and_log_prob(2, context=c)
    assert x.shape == (2, 3, 2) and log_p.shape == (2, 3)
    torch.testing.assert_close(flow.log_prob(x, c), log_p, rtol=0, atol=1e-6)
    # x (4, 1, 2) against c (3, 2): batch (4, 3); each entry is the unbroadcast value.
    points = torch.randn(4, 1, 2, dtype=F64)
    grid = flow.log_prob(points, c)
    assert grid.shape == (4, 3)
    torch.testing.assert_close(grid[2, 1], flow.log_prob(points[2, 0], c[1]))
    # One context for many points, and an empty batch.
    assert flow.log_prob(torch.randn(7, 2, dtype=F64), c[0]).shape == (7,)
    assert flow.log_prob(torch.zeros(0, 2, dtype=F64), torch.zeros(0, 2, dtype=F64)).shape == (0,)


def test_the_context_changes_the_density_and_bad_contexts_are_refused():
    flow = _flow()
    x = torch.randn(5, 2, dtype=F64)
    a = flow.log_prob(x, torch.zeros(2, dtype=F64))
    b = flow.log_prob(x, torch.ones(2, dtype=F64))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="conditional"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\)"):
        flow.log_prob(x, torch.zeros(5, 3, dtype=F64))
    with pytest.raises(ValueError, match="do not broadcast"):
        flow.log_prob(x, torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        flow.sample(2, context=torch.tensor([[0.0, float("nan")]], dtype=F64))
    unconditional = CNF(GatedHyperDynamics(2, 8, 8), 2)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.log_prob(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="context_dim=1, but the flow has context_dim=2"):
        CNF(GatedHyperDynamics(2, 8, 8, context_dim=1), 2, context_dim=2)


def test_concat_squash_per_context_round_trip_brute_force_and_unit_mass():
    # The gated conditional CNF is a case of tests/test_flow_contract.py.
    flow = _flow("concat_squash")
    torch.manual_seed(0)
    for context in (torch.tensor([0.0, 0.0], dtype=F64), torch.tensor([1.5, -1.0], dtype=F64)):
        rows = context.expand(6, 2)
        x = flow.sample(6, context=context)
        z, _ = flow.to_base(x, rows)
        back, _ = flow.from_base(z, rows)
        torch.testing.assert_close(back, x, rtol=0, atol=1e-7)
        # log p(x | c) against log N(z) + log|det ∂z/∂x| from the full Jacobian.
        with torch.no_grad():
            exact = flow.log_prob(x, context)
        torch.testing.assert_close(exact, brute_force_log_prob(flow, x, rows), rtol=0,
                                   atol=1e-6)
    # Mass 1 per context: the density integrated on a grid wide enough for its tails.
    axis = torch.linspace(-6, 6, 121, dtype=F64)
    cell = float(axis[1] - axis[0]) ** 2
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        for context in (torch.zeros(2, dtype=F64), torch.tensor([1.5, -1.0], dtype=F64)):
            mass = flow.log_prob(grid, context, rtol=1e-6, atol=1e-6).exp().sum() * cell
            assert mass.item() == pytest.approx(1.0, abs=0.01)


def test_gradients_reach_a_learnt_context_through_the_adjoint():
    flow = _flow("gated", k=1).train()
    flow.gradient = "adjoint"
    context = torch.randn(8, 1, dtype=F64, requires_grad=True)
    x = torch.randn(8, 2, dtype=F64)
    (-flow.log_prob(x, context).mean()).backward()
    adjoint = context.grad.clone()
    context.grad = None
    flow.gradient = "direct"
    (-flow.log_prob(x, context).mean()).backward()
    torch.testing.assert_close(adjoint, context.grad, rtol=1e-4, atol=1e-7)


def test_gaussian_with_a_linear_conditional_mean():
    """x | c ~ N(A c, diag(0.5², 0.3²)): a conditional CNF trained by flow matching, then
    briefly by maximum likelihood, lands close to the closed-form conditional density."""
    a = torch.tensor([[1.5], [-1.0]])
    scale = torch.tensor([0.5, 0.3])

    def draw(n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        c = torch.randn(n, 1, generator=generator)
        return (c @ a.t() + scale * torch.randn(n, 2, generator=generator), c)

    def true_log_prob(x, c):
        return torch.distributions.Normal(c @ a.t(), scale).log_prob(x).sum(-1)

    torch.manual_seed(0)
    flow = CNF(GatedHyperDynamics(2, 32, 32, context_dim=1), 2, context_dim=1, rtol=1e-4,
               atol=1e-4, eval_rtol=1e-6, eval_atol=1e-6)
    x, c = draw(20000, 99)
    flow.set_normalization(x, c)
    val, test = draw(1000, 1), draw(2000, 2)
    fit(flow, EndlessSamples(draw, 150, steps=600), val,
        TrainConfig(batch_size=256, lr=3e-3, patience=None), objective=FlowMatching(),
        progress=False)
    fit(flow, EndlessSamples(draw, 20, seed=1, steps=40), val,
        TrainConfig(batch_size=256, lr=3e-3, patience=None), progress=False)
    nll, _ = evaluate(flow, test)
    kl = true_log_prob(*test).double().numpy() + nll  # KL(p || q) per point
    assert kl.mean() < 0.05, kl.mean()


def test_two_moons_given_the_moon_matches_each_moons_exact_density():
    moons = toydata.get("two_moons")

    def draw(n: int, seed: int):
        x, label = moons.sample_with_labels(n, seed)
        return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(label[:, None],
                                                                         dtype=torch.float32)

    torch.manual_seed(0)
    flow = CNF(GatedHyperDynamics(2, 64, 32, context_dim=1), 2, context_dim=1, rtol=1e-4,
               atol=1e-4, eval_rtol=1e-6, eval_atol=1e-6)
    flow.set_normalization(*draw(20000, 99))
    val = draw(1000, 1)
    fit(flow, EndlessSamples(draw, 200, steps=800), val,
        TrainConfig(batch_size=256, lr=3e-3, patience=None), objective=FlowMatching("ot"),
        progress=False)
    fit(flow, EndlessSamples(draw, 30, seed=1, steps=60), val,
        TrainConfig(batch_size=256, lr=3e-3, patience=None), progress=False)
    x, label = draw(2000, 2)
    nll, _ = evaluate(flow, (x, label))
    truth = moons.conditional_log_prob(x.double().numpy(), label[:, 0].long().numpy())
    for moon in (0, 1):
        rows = label[:, 0].numpy() == moon
        kl = truth[rows] + nll[rows]
        assert kl.mean() < 0.25, (moon, kl.mean())
    # Bayes' rule with the model's two conditionals recovers the moon of almost every point.
    with torch.no_grad():
        flow.eval()
        both = torch.stack([flow.log_prob(x, torch.full((len(x), 1), float(m)))
                            for m in (0, 1)], 1)
    accuracy = (both.argmax(1) == label[:, 0].long()).double().mean().item()
    assert accuracy > 0.97
    assert np.isfinite(nll).all()
