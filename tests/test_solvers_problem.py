"""Input checking of the solver (and of the IDX reader): bad input fails fast and says what.

Every error names the argument and the offending value; nothing of the size a bad argument
implies is allocated before it is checked. The property-based tests draw random bad input
and require one of the documented exceptions (ValueError, TypeError, ODESolverError) with a
message: never another exception, never a hang.
"""

from __future__ import annotations

import gzip
import math
import struct
import time
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cnflow
from cnflow.data.mnist import IDXFormatError, read_idx
from cnflow.solvers.tableaus import TABLEAUS

F64 = torch.float64
T01 = torch.tensor([0.0, 1.0], dtype=F64)
ALLOWED = (ValueError, TypeError, cnflow.ODESolverError)
# Small and without deadline: the whole file runs in seconds on two cores.
FEW = settings(max_examples=30, deadline=None)


class Counted:
    """``dy/dt = -y`` that counts its evaluations."""

    def __init__(self):
        self.calls = 0

    def __call__(self, t, y):
        self.calls += 1
        return -y


# --- fixed-step budget ---------------------------------------------------------------------

def test_tiny_fixed_step_fails_before_building_the_grid():
    func = Counted()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(cnflow.ODESolverError,
                           match=r"step_size'\]=1e-09 .* implies 1e\+09 steps, more than "
                                 r"max_num_steps=100000"):
            cnflow.odeint(func, torch.ones(1), torch.tensor([0.0, 1.0]), method="rk4",
                          options={"step_size": 1e-9})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 1 << 20  # the grid alone would be 8 GB of floats
    assert func.calls == 0
    # A subnormal step makes the step count overflow to inf; it is still a clear error.
    with pytest.raises(cnflow.ODESolverError, match="implies inf steps"):
        cnflow.odeint(func, torch.ones(1), T01, method="euler", options={"step_size": 5e-324})


def test_fixed_step_budget_is_exact():
    # 1 / 0.1 is 10 steps up to round-off: a budget of 10 suffices, 9 does not.
    ys = cnflow.odeint(_decay, torch.ones(1, dtype=F64), T01, method="rk4",
                       options={"step_size": 0.1, "max_num_steps": 10})
    assert ys[-1].item() == pytest.approx(math.exp(-1), rel=1e-6)
    with pytest.raises(cnflow.ODESolverError, match="implies 10 steps"):
        cnflow.odeint(_decay, torch.ones(1, dtype=F64), T01, method="rk4",
                      options={"step_size": 0.1, "max_num_steps": 9})
    # Without step_size a fixed-step method steps from output to output.
    func = Counted()
    with pytest.raises(cnflow.ODESolverError, match="the 11 output times imply 10 steps"):
        cnflow.odeint(func, torch.ones(1), torch.linspace(0, 1, 11), method="euler",
                      options={"max_num_steps": 5})
    assert func.calls == 0


def _decay(t, y):
    return -y


@FEW
@given(step=st.floats(1e-7, 2.0), budget=st.integers(1, 300), end=st.floats(0.01, 5.0))
def test_random_fixed_steps_run_or_fail_before_evaluating(step, budget, end):
    func = Counted()
    t = torch.tensor([0.0, end], dtype=F64)
    try:
        sol = cnflow.solve(func, torch.ones(2, dtype=F64), t, method="euler",
                           options={"step_size": step, "max_num_steps": budget})
    except cnflow.ODESolverError as exc:
        assert "step_size" in str(exc) and f"max_num_steps={budget}" in str(exc)
        assert func.calls == 0
        assert end / step > budget - 1e-6
    else:
        assert sol.stats.forward.n_accepted <= budget
        assert sol.stats.forward.n_accepted == max(1, math.ceil(end / step - 1e-9))


# --- adjoint of fields without a graph -----------------------------------------------------

class TimeOnly(torch.nn.Module):
    """``dy/dt = k cos t``: parameters, but no dependence on y."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return self.k * torch.cos(t) * torch.ones_like(y)


class UnusedParameter(torch.nn.Module):
    """A constant field of a module whose parameter it does not use."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return torch.full_like(y, 2.0)


# name: (make the field, its adjoint_params, closed-form y(t_i) from y0, t and k)
NO_GRAPH = {
    "constant": (lambda: lambda t, y: torch.full_like(y, 2.0), (),
                 lambda y0, t, k: y0 + 2.0 * (t - t[0])[:, None]),
    "time_only": (lambda: lambda t, y: torch.sin(t) * torch.ones_like(y), (),
                  lambda y0, t, k: y0 + (torch.cos(t[0]) - torch.cos(t))[:, None]),
    "params_not_y": (TimeOnly, None,
                     lambda y0, t, k: y0 + k * (torch.sin(t) - torch.sin(t[0]))[:, None]),
    "unused_params": (UnusedParameter, None,
                      lambda y0, t, k: y0 + 2.0 * (t - t[0])[:, None] + 0 * k),
    "minus_y_no_params": (lambda: lambda t, y: -y, (),
                          lambda y0, t, k: y0 * torch.exp(-(t - t[0]))[:, None]),
}


@pytest.mark.parametrize("gradient", list(cnflow.GRADIENT_MODES))
@pytest.mark.parametrize("case", list(NO_GRAPH))
def test_gradients_of_fields_without_a_graph(case, gradient):
    make, adjoint_params, exact = NO_GRAPH[case]
    func = make()
    params = list(func.parameters()) if isinstance(func, torch.nn.Module) else []
    k = params[0] if params else torch.tensor(0.0, dtype=F64)

    def grads(ys, y0, t):
        (ys ** 2 * torch.tensor([1.0, -0.5], dtype=F64)).sum().backward()
        out = [y0.grad, t.grad] + [torch.zeros(1, dtype=F64) if p.grad is None
                                   else p.grad.view(1) for p in params]
        for x in [y0, t, *params]:
            x.grad = None
        return torch.cat(out)

    y0 = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.2, 0.7, 1.5], dtype=F64, requires_grad=True)
    expected = grads(exact(y0, t, k), y0, t)
    kwargs = {} if gradient == "direct" else {"adjoint_params": adjoint_params}
    sol = cnflow.solve(func, y0, t, rtol=1e-10, atol=1e-10, gradient=gradient, **kwargs)
    got = grads(sol.ys, y0, t)
    assert torch.allclose(got, expected, rtol=1e-7, atol=1e-9), (got, expected)


# --- options -------------------------------------------------------------------------------

def test_max_step_inf_and_none_values_mean_the_default():
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    default = cnflow.odeint(_decay, y0, T01)
    assert torch.equal(cnflow.odeint(_decay, y0, T01, options={"max_step": float("inf")}),
                       default)
    assert torch.equal(cnflow.odeint(_decay, y0, T01, options={
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
        cnflow.odeint(_decay, torch.ones(2), torch.tensor([0.0, 1.0]), options=options)


def test_options_must_be_a_mapping_and_adjoint_options_are_named():
    with pytest.raises(TypeError, match="options must be a dict or None, got str"):
        cnflow.odeint(_decay, torch.ones(2), torch.tensor([0.0, 1.0]), options="rk4")
    with pytest.raises(ValueError, match=r"adjoint_options\['safety'\]"):
        cnflow.solve(_decay, torch.ones(2), torch.tensor([0.0, 1.0]), gradient="adjoint",
                     adjoint_params=(), adjoint_options={"safety": 2.0})
    # dopri8's controller order 8 allows less pi_beta than dopri5's 5.
    with pytest.raises(ValueError, match=r"pi_beta'\]=0.2 is too large for dopri8"):
        cnflow.odeint(_decay, torch.ones(2), T01, method="dopri8", options={"pi_beta": 0.2})


# --- the vector field's output, on every evaluation ----------------------------------------

def test_output_shape_and_dtype_are_checked_on_every_evaluation():
    def late_shape(t, y):
        return -y if t < 0.5 else -y[:1]

    def late_dtype(t, y):
        return -y if t < 0.5 else -y.double()

    with pytest.raises(ValueError, match=r"shape \(1,\) but the state has shape \(2,\), at "
                                         r"t=0\.[5-9]"):
        cnflow.odeint(late_shape, torch.ones(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match=r"dtype torch.float64 but y0 has dtype torch.float32, "
                                        r"at t=0\.[5-9]"):
        cnflow.odeint(late_dtype, torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4",
                      options={"step_size": 0.1})
    # Decreasing time: the message gives the caller's time, not the solver's internal one.
    with pytest.raises(ValueError, match=r"at t=0\.[0-4]"):
        cnflow.odeint(lambda t, y: -y if t > 0.5 else -y[:1], torch.ones(2),
                      torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"func\(t, y\)\[1\] has shape \(3,\) .* \(2,\)"):
        cnflow.odeint(lambda t, s: (s[0], torch.ones(3) if t > 0.5 else s[1]),
                      (torch.ones(1), torch.ones(2)), torch.tensor([0.0, 1.0]))


@FEW
@given(shape=st.lists(st.integers(1, 3), min_size=0, max_size=3),
       other=st.lists(st.integers(1, 3), min_size=0, max_size=3),
       at=st.floats(0.0, 0.9), method=st.sampled_from(list(TABLEAUS)))
def test_random_mismatched_shapes_are_named(shape, other, at, method):
    if other == shape:
        other = shape + [2]

    def func(t, y):
        return -y if t < at else torch.ones(other)

    options = None if TABLEAUS[method].adaptive else {"step_size": 0.1}
    with pytest.raises(ValueError) as info:
        cnflow.odeint(func, torch.ones(shape), torch.tensor([0.0, 1.0]), method=method,
                      options=options)
    assert f"shape {tuple(other)} but the state has shape {tuple(shape)}" in str(info.value)


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


def test_per_sample_norm_with_an_empty_part_of_the_state():
    ys = cnflow.odeint(lambda t, s: (-s[0], -s[1]), (torch.ones(4, 2), torch.ones(4, 0)),
                       torch.tensor([0.0, 1.0]), options={"norm": "per_sample_max"})
    assert ys[0].shape == (2, 4, 2) and ys[1].shape == (2, 4, 0)
    assert torch.allclose(ys[0][-1], torch.full((4, 2), math.exp(-1)), atol=1e-5)


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
        cnflow.odeint(_decay, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]), **kwargs)


def test_tolerances_near_the_dtype_limit_still_run():
    # The defaults (rtol=1e-7, just under float32's epsilon) and ODE-Net's reference
    # tolerance 1e-8 in float32 keep working.
    for tol in (1e-7, 1e-8):
        ys = cnflow.odeint(_decay, torch.ones(2), torch.tensor([0.0, 1.0]), rtol=tol, atol=tol)
        assert torch.allclose(ys[-1], torch.full((2,), math.exp(-1)), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_states(dtype):
    with pytest.raises(TypeError, match=f"y0 has dtype {dtype}.*method='dopri5'"):
        cnflow.odeint(_decay, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match=f"y0 has dtype {dtype}.*method='tsit5'"):
        cnflow.solve(_decay, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]),
                     method="rk4", options={"step_size": 0.1}, gradient="adjoint",
                     adjoint_params=(), adjoint_method="tsit5")
    # Fixed-step methods have no error control to break and keep working.
    ys = cnflow.odeint(_decay, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0]),
                       method="rk4", options={"step_size": 0.1})
    assert ys.dtype == dtype and abs(ys[-1, 0].item() - math.exp(-1)) < 1e-2


def test_adjoint_tolerances_are_named():
    with pytest.raises(ValueError, match="adjoint_rtol=1e-25 is far below"):
        cnflow.solve(_decay, torch.ones(2), torch.tensor([0.0, 1.0]), gradient="adjoint",
                     adjoint_params=(), adjoint_rtol=1e-25)
    with pytest.raises(ValueError, match="adjoint_rtol and adjoint_atol cannot both be zero"):
        cnflow.solve(_decay, torch.ones(2), torch.tensor([0.0, 1.0]), gradient="adjoint",
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
        cnflow.odeint(_decay, torch.ones(2), torch.tensor([0.0, 1.0]), method=method,
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
        sol = cnflow.solve(_decay, y0, torch.tensor([0.0, 0.3, 1.0], dtype=F64),
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
        ys = cnflow.odeint(_decay, torch.ones(2, dtype=dtype), T01, rtol=rtol, atol=atol,
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
        ys = cnflow.odeint(_decay, torch.ones(shape), torch.tensor(t), rtol=1e-4, atol=1e-6,
                           options={"max_num_steps": 500})
    except ALLOWED as exc:
        assert str(exc)
    else:
        assert ys.shape == (len(t), *shape)


# --- IDX reader: sizes are checked before anything is decompressed ----------------------------

def _idx_header(shape, code=0x08) -> bytes:
    return struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_idx_header_declaring_gigabytes_fails_without_reading(tmp_path):
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    # 4 GiB of float64 declared, a few bytes present.
    path.write_bytes(gzip.compress(_idx_header((2**16, 2**8, 2**5), code=0x0E) + bytes(64)))

    def read():
        with pytest.raises(IDXFormatError, match=rf"{path.name}: header declares shape "
                                                 r"\(65536, 256, 32\) \(4294967296 data bytes\),"
                                                 r" more than max_bytes="):
            read_idx(path)

    start = time.perf_counter()
    assert _peak_bytes(read) < 1 << 20
    assert time.perf_counter() - start < 1.0


def test_idx_reads_exactly_the_declared_bytes(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a.gz"
    # Declares 24 bytes, decompresses to 16 MiB: only 25 bytes are ever decompressed.
    path.write_bytes(gzip.compress(_idx_header(array.shape) + array.tobytes() + bytes(2**24)))

    def read():
        with pytest.raises(IDXFormatError, match=r"has trailing bytes: .* \(24 data bytes\), "
                                                 "file holds more than 24"):
            read_idx(path)

    assert _peak_bytes(read) < 1 << 20
    path.write_bytes(gzip.compress(_idx_header(array.shape) + array.tobytes()[:-5]))
    with pytest.raises(IDXFormatError, match=r"truncated: .* \(24 data bytes\), file holds 19"):
        read_idx(path)
    path.write_bytes(gzip.compress(_idx_header(array.shape) + array.tobytes()))
    np.testing.assert_array_equal(read_idx(path), array)
    with pytest.raises(IDXFormatError, match="more than max_bytes=23"):
        read_idx(path, max_bytes=23)
    plain = tmp_path / "a.idx"
    plain.write_bytes(_idx_header((10**5, 10**5)) + bytes(10))
    with pytest.raises(IDXFormatError, match=r"\(10000000000 data bytes\), more than"):
        read_idx(plain)
