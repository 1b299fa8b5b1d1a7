"""The solver core against closed forms, scipy, rooted-tree order conditions and autograd."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import cnflow
from cnflow.solvers.odeint import make_norm
from cnflow.solvers.runge_kutta import DenseStep, StepStats, rk_step
from cnflow.solvers.tableaus import TABLEAUS, ButcherTableau

ADAPTIVE = [name for name, tab in TABLEAUS.items() if tab.adaptive]
FIXED = [name for name, tab in TABLEAUS.items() if not tab.adaptive]
F64 = torch.float64


# --- order conditions from rooted trees (independent of how the tableaus were built) -----

def _key(tree):
    return (_order(tree), repr(tree))


@cache
def _order(tree) -> int:
    return 1 + sum(_order(child) for child in tree)


@cache
def _trees(n: int) -> tuple:
    """All rooted trees with n nodes; a tree is the sorted tuple of its subtrees."""
    if n == 1:
        return ((),)
    return tuple(sorted({tuple(sorted(f, key=_key)) for f in _forests(n - 1, None)}, key=_key))


def _forests(m: int, largest):
    if m == 0:
        yield ()
        return
    for k in range(m, 0, -1):
        for tree in _trees(k):
            if largest is not None and _key(tree) > _key(largest):
                continue
            for rest in _forests(m - k, tree):
                yield (tree,) + rest


def _gamma(tree) -> int:
    return _order(tree) * math.prod(_gamma(child) for child in tree)


def _phi(tree, a: np.ndarray) -> np.ndarray:
    result = np.ones(a.shape[0])
    for child in tree:
        result = result * (a @ _phi(child, a))
    return result


def _order_defects(b, a_rows, max_order: int) -> dict[int, float]:
    s = len(b)
    a = np.zeros((s, s))
    for i, row in enumerate(a_rows):
        a[i, :len(row)] = row
    return {p: max(abs(np.dot(b, _phi(tree, a)) - 1.0 / _gamma(tree)) for tree in _trees(p))
            for p in range(1, max_order + 1)}


def test_tree_counts():
    # OEIS A000081: 1, 1, 2, 4, 9, 20, 48, 115 rooted trees with 1..8 nodes.
    assert [len(_trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_order_conditions(name):
    tab = TABLEAUS[name]
    defects = _order_defects(np.array(tab.b), tab.a, tab.order + 1)
    for p in range(1, tab.order + 1):
        assert defects[p] < 1e-12, f"{name}: order-{p} conditions violated by {defects[p]}"
    assert defects[tab.order + 1] > 1e-6, f"{name} is of higher order than declared"
    if tab.adaptive:
        embedded = np.array(tab.b) - np.array(tab.b_error)
        emb = _order_defects(embedded, tab.a, tab.error_order + 1)
        assert max(emb[p] for p in range(1, tab.error_order + 1)) < 1e-12
        assert emb[tab.error_order + 1] > 1e-6


def test_tableau_validation_rejects_bad_data():
    with pytest.raises(ValueError, match="sums to"):
        ButcherTableau(name="bad", order=1, c=(0.0, 0.5), a=((), (0.4,)), b=(0.5, 0.5),
                       b_error=None, error_order=None, interp=((1.0,),) * 3, interp_order=1)


# --- measured convergence order ----------------------------------------------------------

def _fixed_grid_error(tab: ButcherTableau, n: int, theta: float | None) -> float:
    """Error at t=4 (theta None) or at θ inside the last of n equal steps.

    The problem — a rotation with angular speed 1 + t, exact solution
    (cos(t + t²/2), sin(t + t²/2)) — has no error cancellations, so each method shows
    its asymptotic order cleanly.
    """
    func = lambda t, y: torch.stack([-y[1], y[0]]) * (1 + t)

    def exact(t: float) -> np.ndarray:
        return np.array([math.cos(t + t * t / 2), math.sin(t + t * t / 2)])

    y = torch.tensor([1.0, 0.0], dtype=F64)
    h = 4.0 / n
    for i in range(n):
        t = i * h
        y1, ks = rk_step(func, tab, t, y, func(torch.tensor(t, dtype=F64), y), h)
        if i == n - 1 and theta is not None:
            dense = DenseStep(func, tab, t, h, y, y1, ks, StepStats())
            return float(np.abs(dense(theta).numpy() - exact(t + theta * h)).max())
        y = y1
    return float(np.abs(y.numpy() - exact(4.0)).max())


# Step counts in each order's asymptotic range and well above round-off.
_STEPS = {1: 256, 2: 128, 3: 64, 4: 128, 5: 256, 8: 24}


def _measured_order(tab: ButcherTableau, theta: float | None) -> float:
    ns = [_STEPS[tab.order] * 2 ** i for i in range(3)]
    errors = [_fixed_grid_error(tab, n, theta) for n in ns]
    return -np.polyfit(np.log(ns), np.log(errors), 1)[0]


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_measured_convergence_order(name):
    tab = TABLEAUS[name]
    slope = _measured_order(tab, None)
    assert abs(slope - tab.order) < 0.3, f"{name}: measured order {slope:.2f}"


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_dense_output_order(name):
    tab = TABLEAUS[name]
    slope = _measured_order(tab, 0.37)
    # Global error at an interpolated point: O(h^min(order, interpolant order + 1)).
    assert slope > min(tab.order, tab.interp_order + 1) - 0.3, f"{name}: {slope:.2f}"


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

def _lotka_volterra(t, y):
    a, b = y[..., 0], y[..., 1]
    return torch.stack([1.5 * a - a * b, -3.0 * b + a * b], -1) if isinstance(y, torch.Tensor) \
        else np.array([1.5 * a - a * b, -3.0 * b + a * b])


def _van_der_pol(t, y):
    x, v = y[0], y[1]
    return torch.stack([v, 2.0 * (1 - x * x) * v - x]) if isinstance(y, torch.Tensor) \
        else np.array([v, 2.0 * (1 - x * x) * v - x])


def _driven_pendulum(t, y):
    lib = torch if isinstance(y, torch.Tensor) else np
    return (torch.stack if lib is torch else np.array)(
        [y[1], -lib.sin(y[0]) - 0.1 * y[1] + 0.5 * lib.cos(0.7 * t)])


PROBLEMS = {
    "lotka_volterra": (_lotka_volterra, [1.0, 1.0], 10.0),
    "van_der_pol": (_van_der_pol, [2.0, 0.0], 8.0),
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
    ys = cnflow.odeint(_lotka_volterra, y0, t, rtol=1e-5, atol=1e-6)
    assert ys.dtype == torch.float32
    ref = solve_ivp(_lotka_volterra, (0, 3), [1.0, 1.0], method="DOP853", rtol=1e-12,
                    atol=1e-12, t_eval=t.double().numpy())
    assert np.abs(ys.numpy() - ref.y.T).max() < 1e-3


def test_dense_output_does_not_force_steps():
    t2 = torch.tensor([0.0, 10.0], dtype=F64)
    t200 = torch.linspace(0, 10, 200, dtype=F64)
    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    few = cnflow.solve(_lotka_volterra, y0, t2, rtol=1e-8, atol=1e-8)
    many = cnflow.solve(_lotka_volterra, y0, t200, rtol=1e-8, atol=1e-8)
    assert many.stats.forward.n_accepted == few.stats.forward.n_accepted
    assert torch.allclose(many.ys[-1], few.ys[-1], rtol=0, atol=0)


def test_forward_then_backward_returns_to_start():
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    yT = cnflow.odeint(_van_der_pol, y0, torch.tensor([0.0, 3.0], dtype=F64),
                       rtol=1e-11, atol=1e-11)[-1]
    back = cnflow.odeint(_van_der_pol, yT, torch.tensor([3.0, 0.0], dtype=F64),
                         rtol=1e-11, atol=1e-11)[-1]
    assert torch.allclose(back, y0, atol=1e-7)


def test_stats_and_step_counts():
    sol = cnflow.solve(_van_der_pol, torch.tensor([2.0, 0.0], dtype=F64),
                       torch.tensor([0.0, 8.0], dtype=F64), rtol=1e-6, atol=1e-6)
    s = sol.stats.forward
    # dopri5 is FSAL: 6 new evaluations per attempted step, plus 2 to start.
    assert s.nfe == 6 * (s.n_accepted + s.n_rejected) + 2
    assert s.n_accepted > 10 and sol.stats.backward is None


def test_per_sample_norms():
    """One hard sample (fast decay) in a batch of easy ones."""
    rates = torch.tensor([[0.1], [0.2], [0.3], [25.0]], dtype=F64)
    y0 = torch.ones(4, 1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    exact = torch.exp(-rates.squeeze())
    steps, errors = {}, {}
    for norm in ("rms", "per_sample", "per_sample_max"):
        sol = cnflow.solve(lambda t, y: -rates * y, y0, t, rtol=1e-6, atol=1e-9,
                           options={"norm": norm})
        steps[norm] = sol.stats.forward.n_accepted + sol.stats.forward.n_rejected
        errors[norm] = (sol.ys[-1].squeeze() - exact).abs().max().item()
    # The hard sample shrinks everyone's step least under the per-sample mean...
    assert steps["per_sample"] < steps["rms"] < steps["per_sample_max"]
    # ...and the per-sample maximum holds the hard sample to the tolerance.
    assert errors["per_sample_max"] <= errors["rms"] <= errors["per_sample"]
    x = torch.tensor([1.0, 1.0, 0.0, 0.0, 3.0, 4.0], dtype=F64)
    shape = [torch.Size([3, 2])]
    assert make_norm("per_sample_max", shape)(x).item() == pytest.approx(math.sqrt(12.5))
    assert make_norm("per_sample", shape)(x).item() == pytest.approx(
        (1 + 0 + math.sqrt(12.5)) / 3)


# --- gradients -----------------------------------------------------------------------------

class Decay(torch.nn.Module):
    """dy/dt = −k·y·(1 + 0.5 sin t) + w: non-autonomous, parameters k (vector) and w."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor([0.7, 1.3], dtype=F64))
        self.w = torch.nn.Parameter(torch.tensor(0.2, dtype=F64))

    def forward(self, t, y):
        return -self.k * y * (1 + 0.5 * torch.sin(t)) + self.w * torch.tanh(y)


@pytest.mark.parametrize("gradient", list(cnflow.GRADIENT_MODES))
def test_gradcheck(gradient):
    func = Decay()
    y0 = torch.tensor([1.0, -0.4], dtype=F64, requires_grad=True)
    t = torch.tensor([0.1, 0.6, 1.5], dtype=F64, requires_grad=True)

    def run(y0, t, k, w):
        return cnflow.solve(func, y0, t, rtol=1e-12, atol=1e-12, method="dopri8",
                            gradient=gradient).ys

    assert torch.autograd.gradcheck(run, (y0, t, func.k, func.w), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adjoint_and_checkpoint_match_direct(method):
    grads = {}
    for gradient in cnflow.GRADIENT_MODES:
        func = Decay()
        y0 = torch.tensor([1.0, -0.4], dtype=F64, requires_grad=True)
        t = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=F64, requires_grad=True)
        sol = cnflow.solve(func, y0, t, method=method, rtol=1e-9, atol=1e-9,
                           gradient=gradient)
        (sol.ys ** 2).sum().backward()
        grads[gradient] = torch.cat([y0.grad, t.grad, func.k.grad, func.w.grad.view(1)])
        if gradient != "direct":
            assert sol.stats.backward.nfe > 0
    assert torch.allclose(grads["adjoint"], grads["direct"], rtol=1e-5, atol=1e-6)
    # Checkpointing recomputes the very same steps: equal up to round-off.
    assert torch.allclose(grads["checkpoint"], grads["direct"], rtol=1e-10, atol=1e-12)


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


def test_seminorm_does_not_add_backward_steps():
    nfe = {}
    for norm in ("rms", "seminorm"):
        func = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(),
                                   torch.nn.Linear(32, 4)).double()
        torch.manual_seed(1)
        for p in func.parameters():
            torch.nn.init.normal_(p, std=0.5)
        sol = cnflow.solve(lambda t, y, func=func: func(y), torch.ones(16, 4, dtype=F64),
                           torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-6, atol=1e-6,
                           gradient="adjoint", adjoint_params=tuple(func.parameters()),
                           adjoint_options={"norm": norm})
        sol.ys[-1].pow(2).sum().backward()
        nfe[norm] = sol.stats.backward.nfe
    assert nfe["seminorm"] <= nfe["rms"]


def test_checkpoint_is_exact_where_reverse_reconstruction_drifts():
    """Fast decay forward is blow-up backward: the adjoint's reconstructed y(t) drifts."""

    class Stiffish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.nn.Parameter(torch.tensor(40.0, dtype=F64))

        def forward(self, t, y):
            return -self.k * (y - torch.sin(t))

    grads = {}
    for gradient in cnflow.GRADIENT_MODES:
        func = Stiffish()
        y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
        sol = cnflow.solve(func, y0, torch.tensor([0.0, 3.0], dtype=F64), rtol=1e-5,
                           atol=1e-5, gradient=gradient)
        sol.ys[-1].sum().backward()
        grads[gradient] = torch.cat([y0.grad, func.k.grad.view(1)])
    assert torch.allclose(grads["checkpoint"], grads["direct"], rtol=1e-10, atol=1e-14)
    drift = (grads["adjoint"] - grads["direct"]).abs().max()
    assert drift > 1e3 * (grads["checkpoint"] - grads["direct"]).abs().max()


def test_adjoint_memory_is_not_kept_per_step():
    """The adjoint graph holds the outputs only: saved tensors do not grow with steps."""
    saved = {}
    for rtol in (1e-4, 1e-9):
        sizes = []

        def pack(x, sizes=sizes):
            sizes.append(x.numel())
            return x

        func = Decay()
        y0 = torch.ones(2, dtype=F64, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            sol = cnflow.solve(func, y0, torch.tensor([0.0, 5.0], dtype=F64), rtol=rtol,
                               atol=rtol, gradient="adjoint")
        saved[rtol] = (sum(sizes), sol.stats.forward.n_accepted)
    assert saved[1e-9][1] > 5 * saved[1e-4][1]
    assert saved[1e-9][0] == saved[1e-4][0]


# --- bad input -----------------------------------------------------------------------------

def _f(t, y):
    return -y


@pytest.mark.parametrize("t, message", [
    (torch.tensor([0.0, 1.0, 0.5]), "strictly increasing or strictly decreasing"),
    (torch.tensor([0.0, 0.0]), "strictly"),
    (torch.zeros(2, 2), "1-D"),
    (torch.tensor([]), "non-empty"),
    (torch.tensor([0, 1]), "floating-point"),
    ([0.0, 1.0], "torch.Tensor"),
    (torch.tensor([0.0, float("nan")]), "finite"),
])
def test_bad_times(t, message):
    with pytest.raises((ValueError, TypeError), match=message):
        cnflow.odeint(_f, torch.ones(2), t)


def test_bad_state_and_func_output():
    t = torch.tensor([0.0, 1.0])
    with pytest.raises(TypeError, match="floating-point"):
        cnflow.odeint(_f, torch.ones(2, dtype=torch.int64), t)
    with pytest.raises(TypeError, match="y0 must be a torch.Tensor"):
        cnflow.odeint(_f, [1.0, 2.0], t)
    with pytest.raises(ValueError, match=r"shape \(3,\) but the state has shape \(2,\)"):
        cnflow.odeint(lambda t, y: torch.ones(3), torch.ones(2), t)
    with pytest.raises(TypeError, match="dtype torch.float64 but y0 has dtype torch.float32"):
        cnflow.odeint(lambda t, y: y.double(), torch.ones(2), t)
    with pytest.raises(TypeError, match="one dtype and device"):
        cnflow.odeint(lambda t, y: y, (torch.ones(2), torch.ones(2, dtype=F64)), t)


def test_bad_method_options_tolerances():
    t = torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="method='rk45' is not known; choose one of euler"):
        cnflow.odeint(_f, torch.ones(2), t, method="rk45")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stepsize'\]"):
        cnflow.odeint(_f, torch.ones(2), t, method="rk4", options={"stepsize": 0.1})
    with pytest.raises(ValueError, match="rtol must be a finite non-negative number, got -0.001"):
        cnflow.odeint(_f, torch.ones(2), t, rtol=-1e-3)
    with pytest.raises(ValueError, match="atol"):
        cnflow.odeint(_f, torch.ones(2), t, atol=float("nan"))
    with pytest.raises(ValueError, match="both be zero"):
        cnflow.odeint(_f, torch.ones(2), t, rtol=0, atol=0)
    with pytest.raises(ValueError, match="fixed-step methods"):
        cnflow.odeint(_f, torch.ones(2), t, options={"step_size": 0.1})
    with pytest.raises(ValueError, match="gradient='reverse' is not one of"):
        cnflow.solve(_f, torch.ones(2), t, gradient="reverse")
    with pytest.raises(ValueError, match="nn.Module"):
        cnflow.odeint_adjoint(_f, torch.ones(2), t)
    with pytest.raises(ValueError, match="per_sample"):
        cnflow.odeint(_f, (torch.ones(2), torch.ones(3)), t, options={"norm": "per_sample"})


def test_budget_underflow_and_nan_errors_say_where():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(cnflow.ODESolverError, match=r"max_num_steps=5 .* at t=.*step size h="):
        cnflow.odeint(_van_der_pol, torch.tensor([2.0, 0.0], dtype=F64), t * 8,
                      options={"max_num_steps": 5})
    # y' = y², y(0) = 1 blows up at t = 1.
    with pytest.raises(cnflow.ODESolverError, match=r"(underflowed|NaN/inf) at t=(0\.99|1\b)"):
        cnflow.odeint(lambda t, y: y * y, torch.ones(1, dtype=F64), t * 2)
    with pytest.raises(cnflow.ODESolverError, match="NaN/inf"):
        cnflow.odeint(lambda t, y: y * y, torch.ones(1, dtype=F64), t * 2, method="rk4",
                      options={"step_size": 0.25})


def test_torchdiffeq_port_gives_the_same_numbers():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    t = torch.linspace(0, 5, 11, dtype=F64)
    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    ours = cnflow.odeint(_lotka_volterra, y0, t, rtol=1e-10, atol=1e-10)
    theirs = torchdiffeq.odeint(_lotka_volterra, y0, t, rtol=1e-10, atol=1e-10)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-7)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    t = torch.linspace(0, 3, 7)
    y0 = torch.tensor([1.0, 1.0])
    cpu = cnflow.odeint(_lotka_volterra, y0, t, rtol=1e-6, atol=1e-6)
    gpu = cnflow.odeint(_lotka_volterra, y0.cuda(), t.cuda(), rtol=1e-6, atol=1e-6)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


def test_controllers_are_objects_that_keep_their_step_between_solves():
    """integrate asks the controller only; a PI controller reused for a second interval
    starts from the step it carried instead of probing again."""
    from cnflow.solvers.controllers import FixedGrid, PIController, StepControl
    from cnflow.solvers.runge_kutta import integrate

    def func(t, y):
        return -y * (1 + t)

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    tab = TABLEAUS["dopri5"]
    controller = PIController(tab, 1e-8, 1e-8, StepControl(), make_norm("rms", [y0.shape]))
    first, second = StepStats(), StepStats()
    y1 = integrate(func, y0, [0.0, 0.5], tab, controller, first)[-1]
    integrate(func, y1, [0.5, 1.0], tab, controller, second)
    # One probe evaluation in the first solve only: f0, then 6 per attempted step (FSAL).
    steps = first.n_accepted + first.n_rejected
    assert first.nfe == 2 + 6 * steps
    assert second.nfe == 1 + 6 * (second.n_accepted + second.n_rejected)
    grid = FixedGrid("rk4", 0.1, max_num_steps=100)
    ys = integrate(func, y0, [0.0, 1.0], TABLEAUS["rk4"], grid, StepStats())
    direct = cnflow.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), method="rk4",
                           options={"step_size": 0.1})
    assert torch.equal(ys[-1], direct[-1])
