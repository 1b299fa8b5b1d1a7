"""The planar flow (cnflow.flows.planar): the constraint that keeps every layer
invertible for any parameters, the inverse and its gradient, argument checks and a
volume-preserving start (the contract every flow keeps is in test_flow_contract.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnflow.flows import PlanarFlow, RadialFlow
from cnflow.flows.planar import INVERSE_TOL, PlanarLayer

F64 = torch.float64


_reals = st.floats(min_value=-50, max_value=50, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(u=st.lists(_reals, min_size=2, max_size=2), w=st.lists(_reals, min_size=2, max_size=2))
def test_planar_constraint_holds_for_any_parameters(u, w):
    layer = PlanarLayer(2).double()
    with torch.no_grad():
        layer.u.copy_(torch.tensor(u, dtype=F64))
        layer.w.copy_(torch.tensor(w, dtype=F64))
    with torch.no_grad():
        u_hat, w_u_hat, gap = layer.constrained()
    # The identity wᵀû = softplus(wᵀu) − 1 > −1 holds up to rounding of the dot product ...
        w, u = layer.w.detach(), layer.u.detach()
    scale = 1 + abs(float(w @ u)) + float(w.abs() @ u_hat.abs())
    assert float(w @ u_hat) == pytest.approx(float(w_u_hat), abs=1e-12 * scale)
    assert float(w_u_hat) >= -1
    # ... and the gap 1 + wᵀû that the log-det uses is strictly positive, never rounded to 0.
    assert float(gap) > 0
    z = torch.randn(64, 2, dtype=F64) * 3
    _, log_det = layer(z)
    assert torch.isfinite(log_det).all()


def test_planar_at_w_zero_is_a_translation():
    layer = PlanarLayer(2).double()
    with torch.no_grad():
        layer.w.zero_()
        layer.b.fill_(0.7)
    z = torch.randn(8, 2, dtype=F64)
    y, log_det = layer(z)
    assert torch.allclose(y, z + torch.tanh(torch.tensor(0.7, dtype=F64)) * layer.u)
    assert torch.equal(log_det, torch.zeros(8, dtype=F64))
    back, inv_log_det = layer.inverse(y)
    assert torch.allclose(back, z, atol=1e-14) and torch.equal(inv_log_det, log_det)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c_raw", [-30.0, -3.0, 0.0, 2.0, 40.0])
def test_planar_inverse_reaches_the_stated_tolerance(dtype, c_raw):
    """Steep (wᵀû ≫ 1), flat and nearly singular (wᵀû → −1) layers all invert."""
    torch.manual_seed(0)
    layer = PlanarLayer(2).to(dtype)
    with torch.no_grad():
        layer.w.copy_(torch.tensor([1.5, -0.5]))
        # wᵀu = c_raw: û is then determined by softplus(c_raw) − 1.
        layer.u.copy_(layer.w * c_raw / (layer.w @ layer.w) + torch.tensor([0.3, 0.9]))
        layer.b.fill_(0.4)
    y = torch.randn(2000, 2, dtype=dtype) * 4
    z, _ = layer.inverse(y)
    back, _ = layer(z)
    alpha = z @ layer.w
    residual = alpha + (layer.w @ layer.constrained()[0]) * torch.tanh(alpha + layer.b) \
        - y @ layer.w
    tol = INVERSE_TOL[dtype]
    eps = torch.finfo(dtype).eps
    # The scalar equation is solved to tol (relative to 1 + |wᵀy|), or to rounding level.
    bound = (tol * (1 + (1 + abs(c_raw))) + 64 * eps) * (1 + (y @ layer.w).abs())
    assert (residual.abs() <= bound).all()
    assert torch.allclose(back, y, atol=50 * tol * (1 + abs(c_raw)), rtol=0)


def test_inverse_gradient_matches_finite_differences():
    """The implicit-function Newton step gives the exact derivative of the inverse."""
    layer = PlanarLayer(2).double()
    with torch.no_grad():
        layer.u.copy_(torch.tensor([1.2, -0.7], dtype=F64))
        layer.w.copy_(torch.tensor([0.9, 1.4], dtype=F64))
        layer.b.fill_(-0.3)
    y = torch.randn(3, 2, dtype=F64)
    assert torch.autograd.gradcheck(lambda v, w: _inverse_with_w(layer, v, w),
                                    (y.requires_grad_(), layer.w.detach().clone()
                                     .requires_grad_()), atol=1e-6)


def _inverse_with_w(layer: PlanarLayer, y: torch.Tensor, w: torch.Tensor):
    original = layer.w
    del layer.w
    layer.w = w  # a plain tensor for gradcheck's perturbations
    try:
        z, log_det = layer.inverse(y)
    finally:
        del layer.w
        layer.w = original
    return z, log_det


def test_bad_arguments():
    with pytest.raises(ValueError, match="layers must be an integer >= 1, got 0"):
        PlanarFlow(2, layers=0)
    with pytest.raises(ValueError, match="layers must be an integer >= 1, got 0"):
        RadialFlow(2, layers=0)
    with pytest.raises(ValueError, match="direction='forward' is not one of"):
        PlanarFlow(2, direction="forward")
    with pytest.raises(ValueError, match="dim must be an integer >= 1, got -1"):
        PlanarFlow(-1)
    with pytest.raises(ValueError, match="init_scale must be a finite number"):
        PlanarLayer(2, init_scale=float("nan"))
    flow = PlanarFlow(2, layers=2)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\), got \(4, 3\)"):
        flow.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"NaN or infinite entries in rows \[1\]"):
        flow.log_prob(torch.tensor([[0.0, 0.0], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="times must be a 1-D tensor of fractions"):
        flow.trajectory(torch.zeros(3, 2), torch.tensor([0.0, 1.5]))


def test_fresh_planar_layer_is_volume_preserving():
    """The initialisation puts wᵀû at 0: a deep untrained stack does not collapse."""
    torch.manual_seed(1)
    flow = PlanarFlow(2, layers=64, direction="normalizing").double()
    for layer in flow.layers:
        assert abs(float(layer.constrained()[1].detach())) < 1e-6  # set in float32
    z, log_det = flow.to_base(torch.randn(256, 2, dtype=F64))
    assert torch.allclose(log_det, torch.zeros_like(log_det), atol=1e-5)
    assert z.std(0).min() > 0.5
