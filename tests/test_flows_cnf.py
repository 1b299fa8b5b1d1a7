"""CNF specifics (cnflow.flows.cnf): brute-force log-density beyond 2-D, trace estimators,
gradient modes, regularisers, tolerances, the joint field's own VJP, and conditional
CNFs p(x | c): shapes and broadcasting, round trips per context, and densities against
exact conditionals (a Gaussian, two moons given the moon). The contract every flow
keeps is in test_flow_contract.py."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from flow_checks import brute_force_log_prob
from solver_checks import small_gated

import toydata
from cnflow.flows.cnf import CNF, ConcatSquashMLP, GatedHyperDynamics, JointField
from cnflow.objectives import FlowMatching
from cnflow.solvers.field import _AutogradVJP
from cnflow.training import EndlessSamples, TrainConfig, evaluate, fit

F64 = torch.float64


def _randomize(module: torch.nn.Module, std: float = 0.5, seed: int = 0) -> None:
    """Move away from the identity initialisation so every term of the field matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def _flow(kind: str, dim: int = 2, **kwargs) -> CNF:
    dynamics = GatedHyperDynamics(dim, width=8, hidden=8) if kind == "gated" else \
        ConcatSquashMLP(dim, hidden=(16, 16))
    # Smaller weights in more dimensions keep the field's size, and the solve, comparable.
    scale = math.sqrt(2 / dim)
    _randomize(dynamics, (0.4 if kind == "gated" else 0.3) * scale)
    flow = CNF(dynamics, dim, eval_rtol=1e-9, eval_atol=1e-9, **kwargs).double()
    with torch.no_grad():
        flow.shift.copy_(torch.linspace(0.3, -0.2, dim))
        flow.log_scale.copy_(torch.linspace(0.2, -0.1, dim))
    return flow.eval()


@pytest.mark.parametrize("dim", [1, 5])  # 2-D: the flow contract
@pytest.mark.parametrize("kind", ["gated", "mlp"])
def test_log_prob_matches_brute_force_change_of_variables(kind, dim):
    flow = _flow(kind, dim, gradient="direct")  # the Jacobian by plain backpropagation
    x = torch.randn(4, dim, dtype=F64) * 1.5
    assert torch.allclose(flow.log_prob(x), brute_force_log_prob(flow, x), atol=1e-6)


def test_closed_form_trace_equals_autograd_trace():
    dynamics = GatedHyperDynamics(3, width=16, hidden=8).double()
    _randomize(dynamics)
    z = torch.randn(10, 3, dtype=F64, requires_grad=True)
    for t in (0.0, 0.4, 1.0):
        f, trace = dynamics.forward_with_trace(torch.tensor(t, dtype=F64), z)
        assert torch.allclose(f, dynamics(torch.tensor(t, dtype=F64), z))
        auto = sum(torch.autograd.grad(f[:, i].sum(), z, retain_graph=True)[0][:, i]
                   for i in range(3))
        assert torch.allclose(trace, auto, atol=1e-12)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimator_is_unbiased(noise):
    flow = CNF(ConcatSquashMLP(3, hidden=(16,)), 3, trace="hutchinson", noise=noise).double()
    _randomize(flow.dynamics)
    z = torch.randn(1, 3, dtype=F64).repeat(20000, 1)  # one point, many independent draws
    flow.train()
    field = flow._joint_field(z, None)[0]
    assert field.trace == "hutchinson"
    t = torch.tensor(0.5, dtype=F64)
    estimates = -field(t, z)[:, 3]
    field.trace = "exact"
    exact = -field(t, z[:1])[0, 3]
    stderr = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 4 * stderr


def test_default_eval_tolerance_error_is_below_1e_4_nats():
    dynamics = GatedHyperDynamics(2, width=64, hidden=32)
    _randomize(dynamics, 0.15)
    flow = CNF(dynamics, 2).double().eval()  # library defaults
    x = torch.randn(64, 2, dtype=F64) * 2
    with torch.no_grad():
        default = flow.log_prob(x)
        tight = flow.log_prob(x, rtol=1e-11, atol=1e-11)
    assert (default - tight).abs().max() < 1e-4


def test_training_gradients_agree_across_modes():
    grads = {}
    x = torch.randn(32, 2, dtype=F64)
    for gradient in ("direct", "adjoint", "checkpoint"):
        flow = _flow("gated", gradient=gradient, rtol=1e-7, atol=1e-7).train()
        (-flow.log_prob(x).mean()).backward()
        # The adjoint and checkpointing run solves of their own in the backward pass.
        assert (flow.last_stats.backward is None) == (gradient == "direct"), gradient
        grads[gradient] = torch.cat([p.grad.reshape(-1) for p in flow.parameters()])
    assert torch.allclose(grads["adjoint"], grads["direct"], rtol=1e-4, atol=1e-6)
    assert torch.allclose(grads["checkpoint"], grads["direct"], rtol=1e-8, atol=1e-10)


def test_regularisers_are_integrated_along_the_solve():
    flow = CNF(ConcatSquashMLP(2, hidden=(16,)), 2, kinetic=1.0, jacobian=1.0,
               rtol=1e-9, atol=1e-9, gradient="direct").double().train()
    _randomize(flow.dynamics, 0.4)
    z = torch.randn(8, 2, dtype=F64)
    flow.from_base(z)
    kinetic, frobenius = flow.last_regularization.unbind(1)
    weighted = flow.regularization()
    # Independent check: ‖f‖² along the trajectory by the trapezoid rule.
    times = torch.linspace(0, 1, 401, dtype=F64)
    with torch.no_grad():
        path = flow.trajectory(z, times)
        normalized = (path - flow.shift) * torch.exp(-flow.log_scale)
        speeds = torch.stack([flow.dynamics(t, p).pow(2).sum(1) for t, p in
                              zip(times, normalized)])
    expected = torch.trapezoid(speeds, times, dim=0)
    assert torch.allclose(kinetic, expected, rtol=1e-4)
    assert (frobenius > 0).all()
    assert weighted.item() == pytest.approx((kinetic + frobenius).mean().item())
    # The same trajectory solved data → base (as in log_prob and training) must give the
    # same positive integrals, so that adding them to the loss penalises them.
    x, _ = flow.from_base(z)
    flow.noise_kind = "gaussian"
    flow.to_base(x.detach())
    back_kinetic, back_frobenius = flow.last_regularization.unbind(1)
    assert torch.allclose(back_kinetic, kinetic, rtol=1e-5)
    assert (back_frobenius > 0).all() and flow.regularization() > 0


def test_normalization_is_part_of_the_density():
    """Scaling the data by s shifts log p by −D·log s: the flow reports caller coordinates."""
    flow = _flow("gated")
    x = torch.randn(5, 2, dtype=F64)
    scaled = CNF(flow.dynamics, 2, eval_rtol=1e-9, eval_atol=1e-9).double().eval()
    with torch.no_grad():
        scaled.shift.copy_(flow.shift * 3)
        scaled.log_scale.copy_(flow.log_scale + math.log(3))
    assert torch.allclose(scaled.log_prob(3 * x), flow.log_prob(x) - 2 * math.log(3), atol=1e-9)


def test_bad_inputs():
    flow = _flow("gated")
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\), got \(4, 3\)"):
        flow.log_prob(torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"NaN or infinite entries in rows \[1\]"):
        flow.log_prob(torch.tensor([[0.0, 0.0], [float("nan"), 1.0]], dtype=F64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        flow.log_prob([[0.0, 0.0]])
    with pytest.raises(ValueError, match="trace='closed_form' needs dynamics"):
        CNF(ConcatSquashMLP(2), 2, trace="closed_form")
    with pytest.raises(ValueError, match="trace='fast' is not one of"):
        CNF(GatedHyperDynamics(2), 2, trace="fast")
    with pytest.raises(ValueError, match="method='rk45' is not one of"):
        CNF(GatedHyperDynamics(2), 2, method="rk45")
    with pytest.raises(ValueError, match="width must be an integer >= 1, got 0"):
        GatedHyperDynamics(2, width=0)


@pytest.mark.gpu
def test_cuda_log_prob_matches_cpu():
    flow = _flow("gated")
    x = torch.randn(16, 2, dtype=F64)
    cpu = flow.log_prob(x)
    gpu = flow.cuda().log_prob(x.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("gradient", ["adjoint", "checkpoint"])
def test_cuda_training_step_matches_cpu(gradient):
    """One maximum-likelihood step's loss and gradients on CUDA equal the CPU's (float64,
    closed-form trace and VJP on both)."""
    x = torch.randn(32, 2, dtype=F64)
    results = []
    for device in ("cpu", "cuda"):
        flow = _flow("gated").to(device).train()
        flow.gradient = gradient
        loss = -flow.log_prob(x.to(device)).mean()
        loss.backward()
        results.append((loss.detach().cpu(), [p.grad.cpu() for p in flow.parameters()]))
    (loss_cpu, grads_cpu), (loss_gpu, grads_gpu) = results
    torch.testing.assert_close(loss_gpu, loss_cpu, rtol=1e-8, atol=1e-8)
    for g_gpu, g_cpu in zip(grads_gpu, grads_cpu, strict=True):
        torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["gated", "concat_squash"])
def test_one_time_per_point_equals_each_point_at_its_own_time(kind):
    """Flow matching evaluates every point at its own time (and a conditional flow at its
    own context): the batched path must equal the points one by one."""
    torch.manual_seed(0)
    dynamics = (GatedHyperDynamics(3, 8, 8, context_dim=2) if kind == "gated"
                else ConcatSquashMLP(3, (8, 8), context_dim=2)).double()
    _randomize(dynamics, 0.5)
    z, t = torch.randn(6, 3, dtype=F64), torch.rand(6, dtype=F64)
    c = torch.randn(6, 2, dtype=F64)
    batched = dynamics(t, z, c)
    one_by_one = torch.cat([dynamics(t[i], z[i:i + 1], c[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-14)
    if kind == "gated":
        f, trace = dynamics.forward_with_trace(t, z, c)
        torch.testing.assert_close(f, batched, rtol=0, atol=1e-14)
        zz = z.clone().requires_grad_(True)
        out = dynamics(t, zz, c)
        auto = sum(torch.autograd.grad(out[:, i].sum(), zz, retain_graph=True)[0][:, i]
                   for i in range(3))
        torch.testing.assert_close(trace, auto, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="one time per point"):
        dynamics(torch.rand(4, dtype=F64), z, c)


def test_empty_batches_other_dtypes_and_bad_settings():
    flow = CNF(GatedHyperDynamics(2, 8, 8), 2).eval()
    assert flow.log_prob(torch.zeros(0, 2)).shape == (0,)
    assert flow.sample(0).shape == (0, 2)
    x, log_p = flow.sample_and_log_prob((0, 3))
    assert x.shape == (0, 3, 2) and log_p.shape == (0, 3)
    # A float64 batch through a float32 flow is computed in the flow's dtype.
    points = torch.randn(4, 2, dtype=F64)
    torch.testing.assert_close(flow.log_prob(points), flow.log_prob(points.float()))
    for name, value in (("kinetic", float("nan")), ("jacobian", -1.0), ("rtol", 0.0),
                        ("eval_atol", float("inf"))):
        with pytest.raises(ValueError, match=name):
            CNF(GatedHyperDynamics(2, 8, 8), 2, **{name: value})
    with pytest.raises(ValueError, match="dim=3, but the flow has dim=2"):
        CNF(GatedHyperDynamics(3, 8, 8), 2)
    with pytest.raises(TypeError, match="nn.Module"):
        CNF(lambda t, z: z, 2)


@pytest.mark.parametrize("kind", ["gated", "concat_squash"])
def test_row_blocks_give_the_same_solve(kind):
    """Without a graph the field runs in row blocks: the same values and the same steps."""
    torch.manual_seed(0)
    dynamics = (GatedHyperDynamics(2, 8, 8, context_dim=1) if kind == "gated"
                else ConcatSquashMLP(2, (8, 8), context_dim=1))
    flow = CNF(dynamics, 2, context_dim=1, eval_rtol=1e-9, eval_atol=1e-9).double().eval()
    _randomize(flow.dynamics, 0.4)
    x, c = torch.randn(50, 2, dtype=F64), torch.randn(50, 1, dtype=F64)
    results = {}
    for block in (None, 7):
        flow.block_size = block
        with torch.no_grad():
            results[block] = (flow.log_prob(x, c), flow.last_stats.forward.nfe)
    torch.testing.assert_close(results[7][0], results[None][0], rtol=0, atol=1e-12)
    assert results[7][1] == results[None][1]
    with pytest.raises(ValueError, match="block_size"):
        CNF(GatedHyperDynamics(2, 8, 8), 2, block_size=0)


# --- the joint field's own VJP -----------------------------------------------------

@pytest.mark.parametrize("kinetic", [False, True])
@pytest.mark.parametrize("context_dim", [0, 2])
def test_gated_joint_vjp_equals_autograd(context_dim, kinetic):
    """The closed forms against autograd through the field, with units shared by all points
    and with per-point ones (a context), with and without the kinetic-energy column: the
    field, the state cotangent and the weighted parameter cotangents of two evaluations, to
    float64 rounding."""
    dynamics = small_gated(context_dim=context_dim)
    context = torch.randn(9, context_dim, dtype=F64) if context_dim else None
    field = JointField(dynamics, 2, "closed_form", context=context, kinetic=kinetic)
    params = tuple(dynamics.parameters())
    assert field.vjp_params == params
    y, a = torch.randn(9, 3 + kinetic, dtype=F64), torch.randn(9, 3 + kinetic, dtype=F64)
    ts = torch.tensor([0.3, -0.8], dtype=F64)
    stages = field.at_times(ts)
    # Stage-time batching needs units shared by all points.
    assert (stages is None) == bool(context_dim)
    partials, expected = [], []
    for k, t in enumerate(ts):
        f, a_y, partial = field.vjp(t, y, a)
        # The field through forward_with_trace, which no closed-form path uses.
        torch.testing.assert_close(f, field._rows(t, y, None, context), rtol=0, atol=1e-14)
        with torch.enable_grad():
            leaf = y.clone().requires_grad_(True)
            reference = field(t, leaf)
            grads = torch.autograd.grad(reference, (leaf, *params), a)
        torch.testing.assert_close(f, reference.detach(), rtol=0, atol=1e-14)
        torch.testing.assert_close(a_y, grads[0], rtol=0, atol=1e-13)
        if stages is not None:
            # The same field and VJP from one batched hypernetwork call.
            torch.testing.assert_close(stages[k](y), f, rtol=0, atol=1e-14)
            torch.testing.assert_close(stages[k].vjp(y, a)[1], a_y, rtol=0, atol=1e-14)
        partials.append(partial)
        expected.append(grads[1:])
    weights = torch.tensor([0.25, -1.5], dtype=F64)
    combined = field.param_vjp(partials, weights)
    for i, g in enumerate(combined):
        torch.testing.assert_close(g, weights[0] * expected[0][i] + weights[1] * expected[1][i],
                                   rtol=0, atol=1e-13)


@pytest.mark.parametrize("kinetic", [0.0, 0.5])
def test_conditional_adjoint_takes_the_closed_form_and_matches_direct(kinetic):
    """A conditional gated CNF's training gradient, with and without the kinetic
    regulariser: the adjoint through the closed-form VJP (autograd's VJP is never called)
    equals backpropagation through the steps; a context that itself requires a gradient
    falls back to autograd and gets its gradient."""
    flow = CNF(GatedHyperDynamics(2, 8, 8, context_dim=2), 2, context_dim=2, rtol=1e-10,
               atol=1e-10, kinetic=kinetic).double()
    _randomize(flow.dynamics, 0.4)
    generator = torch.Generator().manual_seed(1)
    x, c = (torch.randn(6, 2, dtype=F64, generator=generator) for _ in range(2))
    params = tuple(flow.parameters())
    grads = {}
    for mode in ("adjoint", "direct"):
        flow.gradient = mode
        with mock.patch.object(_AutogradVJP, "__call__",
                               side_effect=AssertionError("autograd VJP")):
            loss = -flow.log_prob(x, c).sum() + flow.regularization()
            grads[mode] = torch.autograd.grad(loss, params)
    for adjoint, direct in zip(grads["adjoint"], grads["direct"], strict=True):
        # Both are the exact gradient up to the solver tolerance 1e-10.
        torch.testing.assert_close(adjoint, direct, rtol=1e-6, atol=1e-8)
    learnt = c.clone().requires_grad_(True)
    for mode in ("adjoint", "direct"):
        flow.gradient = mode
        grads[mode] = torch.autograd.grad(-flow.log_prob(x, learnt).sum(), learnt)[0]
    torch.testing.assert_close(grads["adjoint"], grads["direct"], rtol=1e-6, atol=1e-8)


def test_rows_of_equal_context_are_grouped_with_the_same_results():
    """Few distinct contexts (a label) take the shared path group by group: the same field,
    VJP and log-densities as the per-point path, and the same training gradient."""
    import cnflow.flows.cnf as cnf_module

    dynamics = small_gated(context_dim=2)
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (48,), generator=generator)
    context = torch.eye(3, 2, dtype=F64)[labels]  # three distinct rows, one of them zero
    grouped = JointField(dynamics, 2, "closed_form", context=context)
    assert grouped.groups is not None and grouped.at_times(torch.zeros(1, dtype=F64))
    with mock.patch.object(cnf_module, "MIN_GROUP_ROWS", 10**9):
        per_point = JointField(dynamics, 2, "closed_form", context=context)
    assert per_point.groups is None
    y, a = (torch.randn(48, 3, dtype=F64, generator=generator) for _ in range(2))
    t = torch.tensor(0.4, dtype=F64)
    torch.testing.assert_close(grouped(t, y), per_point(t, y), rtol=0, atol=1e-14)
    f, a_y, partial = grouped.vjp(t, y, a)
    f_ref, a_y_ref, partial_ref = per_point.vjp(t, y, a)
    torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(a_y, a_y_ref, rtol=0, atol=1e-13)
    weights = torch.tensor([0.7], dtype=F64)
    for g, g_ref in zip(grouped.param_vjp([partial], weights),
                        per_point.param_vjp([partial_ref], weights), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    flow = CNF(GatedHyperDynamics(2, 8, 8, context_dim=2), 2, context_dim=2, rtol=1e-10,
               atol=1e-10).double()
    _randomize(flow.dynamics, 0.4)
    x = torch.randn(48, 2, dtype=F64, generator=generator)
    grads = {}
    for mode in ("adjoint", "direct"):
        flow.gradient = mode
        grads[mode] = torch.autograd.grad(-flow.log_prob(x, context).sum(),
                                          tuple(flow.parameters()))
    with mock.patch.object(cnf_module, "MIN_GROUP_ROWS", 10**9):
        grads["per point"] = torch.autograd.grad(-flow.log_prob(x, context).sum(),
                                                 tuple(flow.parameters()))
    for mode in ("direct", "per point"):
        for g, g_ref in zip(grads["adjoint"], grads[mode], strict=True):
            torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)


# --- conditional CNFs p(x | c) ---------------------------------------------------------

def _randomize_conditional(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _conditional_flow(dynamics: str = "gated", k: int = 2) -> CNF:
    field = GatedHyperDynamics(2, 16, 16, context_dim=k) if dynamics == "gated" else \
        ConcatSquashMLP(2, hidden=(16, 16), context_dim=k)
    flow = CNF(field, 2, context_dim=k, eval_rtol=1e-9, eval_atol=1e-9).double().eval()
    _randomize_conditional(flow.dynamics)
    return flow


@pytest.mark.parametrize("dynamics", ["gated", "concat_squash"])
def test_shapes_and_broadcasting_follow_torch_distributions(dynamics):
    flow = _conditional_flow(dynamics)
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
    flow = _conditional_flow()
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
    flow = _conditional_flow("concat_squash")
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
    flow = _conditional_flow("gated", k=1).train()
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
