"""Checking everything a solve is given (cnflow.solvers.problem): times, states,
methods, options, tolerances against the state's dtype, and the error norms.

Every error names the argument and the offending value. The property-based tests draw
random bad input and require one of the documented exceptions (ValueError, TypeError,
ODESolverError) with a message: never another exception, never a hang.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from solver_checks import FEW, T01, decay_field

import cnflow
from cnflow.solvers.odeint import make_norm
from cnflow.solvers.tableaus import TABLEAUS

F64 = torch.float64
ALLOWED = (ValueError, TypeError, cnflow.ODESolverError)


# --- error norms ----------------------------------------------------------------------

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


def test_per_sample_norm_with_an_empty_part_of_the_state():
    ys = cnflow.odeint(lambda t, s: (-s[0], -s[1]), (torch.ones(4, 2), torch.ones(4, 0)),
                       torch.tensor([0.0, 1.0]), options={"norm": "per_sample_max"})
    assert ys[0].shape == (2, 4, 2) and ys[1].shape == (2, 4, 0)
    assert torch.allclose(ys[0][-1], torch.full((4, 2), math.exp(-1)), atol=1e-5)


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


# --- options -------------------------------------------------------------------------------

def test_max_step_inf_and_none_values_mean_the_default():
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    default = cnflow.odeint(decay_field, y0, T01)
    assert torch.equal(cnflow.odeint(decay_field, y0, T01, options={"max_step": float("inf")}),
                       default)
    assert torch.equal(cnflow.odeint(decay_field, y0, T01, options={
        "first_step": None, "max_step": None, "norm": None, "safety": None}), default)


@pytest.mark.parametrize("options, message", [
    ({"safety": 1.5}, r"options\['safety'\] must be a number in \(0, 1\], got 1.5"),
    ({"safety": 0.0}, r"options\['safety'\] must be a number in \(0, 1\], got 0.0"),
    ({"ifactor": 0.5}, r"options\['ifactor'\] must be a finite number >= 1, got 0.5"),
    ({"ifactor": math.inf}, r"options\['ifactor'\] must be a finite number >= 1, got inf"),
    ({"dfactor": 1.0}, r"options\['dfactor'\] must be a number in \(0, 1\), got 1.0"),
    ({"dfactor": -0.1}, r"options\['dfactor'\] must be a number in \(0, 1\), got -0.1"),
    ({"first_step": 0}, r"options\['first_step'\] must be a finite positive number, got 0"),
    ({"min_step": math.nan}, r"options\['min_step'\] must be a finite non-negative .*nan"),
    ({"max_step": -1.0}, r"options\['max_step'\] must be a positive number .*got -1.0"),
    ({"pi_beta": -0.01}, r"options\['pi_beta'\] must be a finite non-negative number"),
    ({"pi_beta": 0.3}, r"options\['pi_beta'\]=0.3 is too large for dopri5 .* below 0.2667"),
    ({"min_step": 0.5, "max_step": 0.1},
     r"options\['min_step'\]=0.5 exceeds options\['max_step'\]=0.1"),
    ({"max_num_steps": 0}, r"options\['max_num_steps'\] must be a positive integer, got 0"),
    ({"max_num_steps": 2.5}, r"options\['max_num_steps'\] must be a positive integer"),
    ({"safety": "0.9"}, r"options\['safety'\] must be a number in \(0, 1\], got '0.9'"),
    ({1: 2, "stepsize": 3}, r"unknown key\(s\) \['stepsize', 1\]"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        cnflow.odeint(decay_field, torch.ones(2), torch.tensor([0.0, 1.0]), options=options)


def test_options_must_be_a_mapping_and_adjoint_options_are_named():
    with pytest.raises(TypeError, match="options must be a dict or None, got str"):
        cnflow.odeint(decay_field, torch.ones(2), torch.tensor([0.0, 1.0]), options="rk4")
    with pytest.raises(ValueError, match=r"adjoint_options\['safety'\]"):
        cnflow.solve(decay_field, torch.ones(2), torch.tensor([0.0, 1.0]), gradient="adjoint",
                     adjoint_params=(), adjoint_options={"safety": 2.0})
    # dopri8's controller order 8 allows less pi_beta than dopri5's 5.
    with pytest.raises(ValueError, match=r"pi_beta'\]=0.2 is too large for dopri8"):
        cnflow.odeint(decay_field, torch.ones(2), T01, method="dopri8", options={"pi_beta": 0.2})


# --- tolerances against the state's dtype ----------------------------------------------------

@pytest.mark.parametrize("kwargs, dtype, message", [
    ({"rtol": 1e-30}, torch.float32, r"rtol=1e-30 is far below what torch.float32 resolves"),
    ({"rtol": 1e-30}, F64, r"rtol=1e-30 is far below what torch.float64 resolves"),
    ({"rtol": 1e40}, torch.float32, r"rtol=1e\+40 is above 1"),
    ({"rtol": 1e40}, F64, r"rtol=1e\+40 is above 1"),
    ({"atol": 1e-40}, torch.float32, r"atol=1e-40 underflows torch.float32"),
    ({"atol": 1e39}, torch.float32, r"atol=1e\+39 overflows torch.float32"),
    ({"rtol": 0, "atol": 1e-320}, F64, r"atol=1e-320 underflows torch.float64"),
    ({"rtol": 10**400}, F64, r"rtol must be a finite non-negative number, got 1000"),
])
def test_tolerances_out_of_the_dtype_range(kwargs, dtype, message):
    with pytest.raises(ValueError, match=message):
        cnflow.odeint(decay_field, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]), **kwargs)


def test_tolerances_near_the_dtype_limit_still_run():
    # The defaults (rtol=1e-7, just under float32's epsilon) and ODE-Net's reference
    # tolerance 1e-8 in float32 keep working.
    for tol in (1e-7, 1e-8):
        ys = cnflow.odeint(decay_field, torch.ones(2), torch.tensor([0.0, 1.0]), rtol=tol, atol=tol)
        assert torch.allclose(ys[-1], torch.full((2,), math.exp(-1)), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_states(dtype):
    with pytest.raises(TypeError, match=f"y0 has dtype {dtype}.*method='dopri5'"):
        cnflow.odeint(decay_field, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match=f"y0 has dtype {dtype}.*method='tsit5'"):
        cnflow.solve(decay_field, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]),
                     method="rk4", options={"step_size": 0.1}, gradient="adjoint",
                     adjoint_params=(), adjoint_method="tsit5")
    # Fixed-step methods have no error control to break and keep working.
    ys = cnflow.odeint(decay_field, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]),
                       method="rk4", options={"step_size": 0.1})
    assert ys.dtype == dtype and abs(ys[-1, 0].item() - math.exp(-1)) < 1e-2


def test_adjoint_tolerances_are_named():
    with pytest.raises(ValueError, match="adjoint_rtol=1e-25 is far below"):
        cnflow.solve(decay_field, torch.ones(2), torch.tensor([0.0, 1.0]), gradient="adjoint",
                     adjoint_params=(), adjoint_rtol=1e-25)
    with pytest.raises(ValueError, match="adjoint_rtol and adjoint_atol cannot both be zero"):
        cnflow.solve(decay_field, torch.ones(2), torch.tensor([0.0, 1.0]), gradient="adjoint",
                     adjoint_params=(), adjoint_rtol=0.0, adjoint_atol=0.0)


# --- random bad input ------------------------------------------------------------------------

NUMERIC = ["step_size", "first_step", "min_step", "max_step", "safety", "ifactor", "dfactor",
           "pi_beta"]
ANY_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
    st.booleans(), st.none(), st.text(max_size=3), st.just([1.0]),
    st.floats(-2.0, 2.0).map(lambda v: torch.tensor(v)), st.just(torch.ones(2)))


def _bad_value(key: str) -> st.SearchStrategy:
    """Values that no numeric option ``key`` accepts."""
    bad = st.sampled_from([math.nan, -math.inf, -1.0, -1e-300, True, "1", [0.1]])
    if key != "max_step":
        bad = bad | st.just(math.inf)
    if key in ("step_size", "first_step", "max_step", "safety", "dfactor"):
        bad = bad | st.just(0.0)
    if key in ("safety", "dfactor"):
        bad = bad | st.floats(1.0 + 1e-9, 1e300).filter(lambda v: key == "safety" or v >= 1)
    if key == "dfactor":
        bad = bad | st.just(1.0)
    if key == "ifactor":
        bad = bad | st.floats(-1e300, 1.0, exclude_max=True)
    return bad


@FEW
@given(st.sampled_from(NUMERIC).flatmap(lambda k: st.tuples(st.just(k), _bad_value(k))),
       st.sampled_from(list(TABLEAUS)))
def test_random_bad_option_value_is_named(key_value, method):
    key, value = key_value
    adaptive = TABLEAUS[method].adaptive
    options = {key: value}
    if key == "step_size" and adaptive:
        method = "rk4"
    with pytest.raises((ValueError, TypeError)) as info:
        cnflow.odeint(decay_field, torch.ones(2), torch.tensor([0.0, 1.0]), method=method,
                      options=options)
    assert f"options['{key}']" in str(info.value) and repr(value) in str(info.value)


@FEW
@given(st.dictionaries(st.sampled_from(NUMERIC + ["max_num_steps", "norm", "stepsize", "rtol"]),
                       ANY_VALUE, max_size=4),
       st.sampled_from(list(TABLEAUS)), st.sampled_from(list(cnflow.GRADIENT_MODES)))
def test_random_options_fail_cleanly_or_solve(options, method, gradient):
    # A small budget keeps any valid but extreme combination (tiny steps) short.
    if not (isinstance(options.get("max_num_steps"), int)
            and 0 < options["max_num_steps"] <= 500):
        options["max_num_steps"] = 500
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    try:
        sol = cnflow.solve(decay_field, y0, torch.tensor([0.0, 0.3, 1.0], dtype=F64),
                           method=method, options=options, gradient=gradient,
                           adjoint_params=None if gradient == "direct" else ())
        sol.ys.sum().backward()
    except ALLOWED as exc:
        assert str(exc)
    else:
        assert sol.ys.shape == (3, 2) and torch.isfinite(sol.ys).all()


@FEW
@given(rtol=ANY_VALUE, atol=ANY_VALUE, dtype=st.sampled_from([torch.float32, F64]),
       method=st.sampled_from(list(TABLEAUS)))
def test_random_tolerances_fail_cleanly_or_solve(rtol, atol, dtype, method):
    options = {"max_num_steps": 500} | ({} if TABLEAUS[method].adaptive else
                                        {"step_size": 0.05})
    try:
        ys = cnflow.odeint(decay_field, torch.ones(2, dtype=dtype), T01, rtol=rtol, atol=atol,
                           method=method, options=options)
    except ALLOWED as exc:
        message = str(exc)
        assert message
        if isinstance(exc, (ValueError, TypeError)):
            assert "rtol" in message or "atol" in message
    else:
        assert torch.isfinite(ys).all()


@FEW
@given(t=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=4),
       shape=st.lists(st.integers(0, 3), max_size=3))
def test_random_times_and_states_fail_cleanly_or_solve(t, shape):
    try:
        ys = cnflow.odeint(decay_field, torch.ones(shape), torch.tensor(t), rtol=1e-4, atol=1e-6,
                           options={"max_num_steps": 500})
    except ALLOWED as exc:
        assert str(exc)
    else:
        assert ys.shape == (len(t), *shape)
