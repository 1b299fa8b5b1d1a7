"""The public entry points (cnflow.solvers.odeint: odeint, odeint_adjoint, solve)
against closed forms, scipy and torchdiffeq: tuple, 0-d, batched and empty states,
float32, solve statistics and the torchdiffeq signature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from solver_checks import ADAPTIVE, Counted, lotka_volterra_field, van_der_pol_field

import cnflow
from cnflow.solvers.tableaus import TABLEAUS

F64 = torch.float64


# --- closed-form problems ----------------------------------------------------------------

@pytest.mark.parametrize("name", list(TABLEAUS))
def test_closed_form_nonautonomous(name):
    t = torch.linspace(0, 2, 9, dtype=F64)
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    exact = y0 * torch.exp(torch.sin(t))[:, None]
    tab = TABLEAUS[name]
    if tab.adaptive:
        tol = 1e-9 if tab.order >= 5 else 1e-7
        ys = cnflow.odeint(lambda t, y: torch.cos(t) * y, y0, t, method=name, rtol=tol, atol=tol)
        assert (ys - exact).abs().max() < 300 * tol
    else:
        ys = cnflow.odeint(lambda t, y: torch.cos(t) * y, y0, t, method=name,
                           options={"step_size": 1e-3})
        assert (ys - exact).abs().max() < {1: 5e-3, 2: 5e-6, 4: 1e-12}[tab.order]


def test_harmonic_oscillator_tuple_state():
    t = torch.linspace(0, 10, 50, dtype=F64)
    x0, v0 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 2.0], dtype=F64)
    xs, vs = cnflow.odeint(lambda t, s: (s[1], -s[0]), (x0, v0), t, rtol=1e-10, atol=1e-10)
    assert xs.shape == (50, 2) and vs.shape == (50, 2)
    exact_x = x0 * torch.cos(t)[:, None] + v0 * torch.sin(t)[:, None]
    assert (xs - exact_x).abs().max() < 1e-7


def test_zero_dimensional_and_batched_shapes():
    t = torch.linspace(0, 1, 4, dtype=F64)
    assert cnflow.odeint(lambda t, y: -y, torch.tensor(1.0, dtype=F64), t).shape == (4,)
    assert cnflow.odeint(lambda t, y: -y, torch.ones(3, 2, 5, dtype=F64), t).shape == (4, 3, 2, 5)
    single = cnflow.odeint(lambda t, y: -y, torch.ones(3, dtype=F64), t[:1])
    assert single.shape == (1, 3) and torch.equal(single[0], torch.ones(3, dtype=F64))


# --- nonlinear problems against scipy DOP853 at rtol 1e-12 -----------------------------

def _driven_pendulum(t, y):
    lib = torch if isinstance(y, torch.Tensor) else np
    return (torch.stack if lib is torch else np.array)(
        [y[1], -lib.sin(y[0]) - 0.1 * y[1] + 0.5 * lib.cos(0.7 * t)])


PROBLEMS = {
    "lotka_volterra": (lotka_volterra_field, [1.0, 1.0], 10.0),
    "van_der_pol": (van_der_pol_field, [2.0, 0.0], 8.0),
    "driven_pendulum": (_driven_pendulum, [0.5, 0.0], 10.0),
}


# Van der Pol's limit cycle attracts forwards in time and repels backwards: integrating it
# backwards amplifies any error, so it is checked forwards only.
@pytest.mark.parametrize("problem, reverse", [(p, False) for p in PROBLEMS] + [
    ("lotka_volterra", True), ("driven_pendulum", True)])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_against_scipy(problem, method, reverse):
    func, y0, t_end = PROBLEMS[problem]
    ref = solve_ivp(func, (0, t_end), y0, method="DOP853", rtol=1e-12, atol=1e-12,
                    dense_output=True)
    ts = np.linspace(0, t_end, 37)
    if reverse:  # start from the reference end state and integrate back to 0
        ts = ts[::-1].copy()
        y0 = ref.sol(t_end)
    rtol = 1e-6 if method == "bosh3" else 1e-9
    ys = cnflow.odeint(func, torch.tensor(y0, dtype=F64), torch.tensor(ts, dtype=F64),
                       method=method, rtol=rtol, atol=rtol)
    expected = ref.sol(ts).T
    error = np.abs(ys.numpy() - expected).max() / np.abs(expected).max()
    # Global error grows over the interval; 1000 x the local tolerance bounds it here.
    assert error < 1000 * rtol, f"relative error {error:.2e}"


def test_float32_solution_and_dtype():
    t = torch.linspace(0, 3, 11)
    y0 = torch.tensor([1.0, 1.0])
    ys = cnflow.odeint(lotka_volterra_field, y0, t, rtol=1e-5, atol=1e-6)
    assert ys.dtype == torch.float32
    ref = solve_ivp(lotka_volterra_field, (0, 3), [1.0, 1.0], method="DOP853", rtol=1e-12,
                    atol=1e-12, t_eval=t.double().numpy())
    assert np.abs(ys.numpy() - ref.y.T).max() < 1e-3


def test_forward_then_backward_returns_to_start():
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    yT = cnflow.odeint(van_der_pol_field, y0, torch.tensor([0.0, 3.0], dtype=F64),
                       rtol=1e-11, atol=1e-11)[-1]
    back = cnflow.odeint(van_der_pol_field, yT, torch.tensor([3.0, 0.0], dtype=F64),
                         rtol=1e-11, atol=1e-11)[-1]
    assert torch.allclose(back, y0, atol=1e-7)


def test_stats_and_step_counts():
    sol = cnflow.solve(van_der_pol_field, torch.tensor([2.0, 0.0], dtype=F64),
                       torch.tensor([0.0, 8.0], dtype=F64), rtol=1e-6, atol=1e-6)
    s = sol.stats.forward
    # dopri5 is FSAL: 6 new evaluations per attempted step, plus 2 to start.
    assert s.nfe == 6 * (s.n_accepted + s.n_rejected) + 2
    assert s.n_accepted > 10 and sol.stats.backward is None


def test_odeint_adjoint_torchdiffeq_signature_and_adjoint_params():
    k = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    ys = cnflow.odeint_adjoint(lambda t, y: -k * y, y0, t, adjoint_params=(k,),
                               rtol=1e-10, atol=1e-10, adjoint_rtol=1e-10, adjoint_atol=1e-10,
                               adjoint_method="dopri8", adjoint_options={"norm": "seminorm"})
    ys[-1].sum().backward()
    assert k.grad.item() == pytest.approx(-2 * math.exp(-1.0), rel=1e-7)
    assert y0.grad.item() == pytest.approx(math.exp(-1.0), rel=1e-8)


def test_torchdiffeq_port_gives_the_same_numbers():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    t = torch.linspace(0, 5, 11, dtype=F64)
    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    ours = cnflow.odeint(lotka_volterra_field, y0, t, rtol=1e-10, atol=1e-10)
    theirs = torchdiffeq.odeint(lotka_volterra_field, y0, t, rtol=1e-10, atol=1e-10)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-7)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    t = torch.linspace(0, 3, 7)
    y0 = torch.tensor([1.0, 1.0])
    cpu = cnflow.odeint(lotka_volterra_field, y0, t, rtol=1e-6, atol=1e-6)
    gpu = cnflow.odeint(lotka_volterra_field, y0.cuda(), t.cuda(), rtol=1e-6, atol=1e-6)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


# --- empty states --------------------------------------------------------------------------

@pytest.mark.parametrize("gradient", list(cnflow.GRADIENT_MODES))
def test_empty_state_gives_an_empty_solution_without_evaluating(gradient):
    func = Counted()
    t = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    y0 = torch.ones(0, 2, requires_grad=True)
    kwargs = {} if gradient == "direct" else {"adjoint_params": ()}
    sol = cnflow.solve(func, y0, t, gradient=gradient, options={"norm": "per_sample"},
                       **kwargs)
    assert sol.ys.shape == (3, 0, 2) and sol.stats.forward.nfe == 0 and func.calls == 0
    sol.ys.sum().backward()
    assert y0.grad.shape == (0, 2)
    xs, vs = cnflow.odeint(lambda t, s: s, (torch.ones(0), torch.ones(0, 3)), t.detach())
    assert xs.shape == (3, 0) and vs.shape == (3, 0, 3)
