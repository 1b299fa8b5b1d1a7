"""Public entry points: ``odeint``, ``odeint_adjoint`` (torchdiffeq's signatures) and ``solve``.

Every call is put into one canonical form here — tuple state flattened to one 1-D tensor,
decreasing time mapped to increasing time — so the stepping loop and the gradient code see
a single case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from cnflow.solvers.runge_kutta import Norm, StepControl, StepStats, integrate
from cnflow.solvers.tableaus import ButcherTableau, get_tableau

__all__ = ["GRADIENT_MODES", "ODESolution", "SolveStats", "odeint", "odeint_adjoint", "solve"]

State = torch.Tensor | tuple[torch.Tensor, ...]
GRADIENT_MODES = ("direct", "adjoint", "checkpoint")
_NORMS = ("rms", "max", "per_sample", "per_sample_max", "seminorm")
_OPTION_KEYS = tuple(f.name for f in fields(StepControl)) + ("norm",)


@dataclass
class SolveStats:
    """Statistics of a solve: ``forward`` at once, ``backward`` after ``.backward()``.

    ``backward`` stays ``None`` in direct mode, where autograd backpropagates through the
    forward steps and the vector field is not evaluated again.
    """

    forward: StepStats
    backward: StepStats | None = None


@dataclass
class ODESolution:
    """What :func:`solve` returns.

    Attributes:
        ys: the state at every time in ``ts``: shape ``(len(ts), *y0.shape)``, or a tuple.
        ts: the output times.
        stats: function evaluations and accepted/rejected steps.
    """

    ys: State
    ts: torch.Tensor
    stats: SolveStats


@dataclass
class Problem:
    """The canonical problem, shared by the forward solve and the gradient modes."""

    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # flat state, increasing time
    times: list[float]
    tableau: ButcherTableau
    rtol: float
    atol: float
    control: StepControl
    norm: Norm
    shapes: list[torch.Size]  # per tensor of the user's state, for un-flattening
    stats: SolveStats

    def run(self, y0: torch.Tensor, record=None) -> list[torch.Tensor]:
        return integrate(self.func, y0, self.times, self.tableau, self.rtol, self.atol,
                         self.control, self.norm, self.stats.forward, record)


# --- input checking ----------------------------------------------------------------------

def _check_real(name: str, value: Any, what: str, ok: Callable[[float], bool]) -> float:
    """``value`` (a Python number or one-element tensor) as a float for which ``ok`` holds.

    ``what`` describes the allowed values for the message. NaN fails every comparison, so
    every ``ok`` rejects it without saying so.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf if value > 0 else -math.inf
    if not ok(number):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number


def _check_tolerance(name: str, value: Any) -> float:
    return _check_real(name, value, "a finite non-negative number",
                       lambda v: 0 <= v < math.inf)


# An rtol this far below the state dtype's machine epsilon is beyond anything its arithmetic
# resolves. The margin is wide because rtol a little under epsilon works in practice: the
# default rtol=1e-7 is just under float32's 1.2e-7, and ODE-Net's reference solves run
# float32 at 1e-8.
_RTOL_BELOW_EPS = 1e-3


def _check_tolerances(rtol: Any, atol: Any, tableau: ButcherTableau, dtype: torch.dtype,
                      names: tuple[str, str] = ("rtol", "atol")) -> tuple[float, float]:
    """Check tolerances for a solve with ``tableau`` of a state of ``dtype``.

    Fixed-step methods do not use them, so only their form is checked there; an adaptive
    method also needs them to mean something in ``dtype``: a tolerance that rounds to zero or
    infinity there would reject or accept every step.
    """
    rname, aname = names
    rtol, atol = _check_tolerance(rname, rtol), _check_tolerance(aname, atol)
    if not tableau.adaptive:
        return rtol, atol
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"y0 has dtype {dtype}, whose machine epsilon "
                        f"{torch.finfo(dtype).eps:.2g} is too coarse for method="
                        f"{tableau.name!r} to measure its local error; solve in float32 "
                        "(y0.float()) or use a fixed-step method (euler, midpoint, heun, rk4)")
    if rtol == 0 and atol == 0:
        raise ValueError(f"{rname} and {aname} cannot both be zero for an adaptive method")
    info = torch.finfo(dtype)
    if rtol > 1:
        raise ValueError(f"{rname}={rtol!r} is above 1: a relative error over 100% of the state "
                         "accepts every step; use a value in [0, 1]")
    floor = info.eps * _RTOL_BELOW_EPS
    if 0 < rtol < floor:
        raise ValueError(f"{rname}={rtol!r} is far below what {dtype} resolves (machine "
                         f"epsilon {info.eps:.3g}); use {rname} >= {floor:.2g}, or a float64 "
                         "state" + ("" if dtype == torch.float64 else " (y0.double())"))
    if 0 < atol < info.tiny:
        raise ValueError(f"{aname}={atol!r} underflows {dtype} (smallest normal number "
                         f"{info.tiny:.3g}); use {aname} >= {info.tiny:.3g}, or 0 for a purely "
                         "relative tolerance")
    if atol > info.max:
        raise ValueError(f"{aname}={atol!r} overflows {dtype} (largest number {info.max:.3g})")
    return rtol, atol


def _check_times(t: Any) -> list[float]:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a 1-D torch.Tensor of times, got {type(t).__name__}")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
    times = t.detach().double().tolist()
    if not all(math.isfinite(x) for x in times):
        raise ValueError(f"t must be finite, got {times}")
    steps = [b - a for a, b in pairwise(times)]
    if steps and not (all(s > 0 for s in steps) or all(s < 0 for s in steps)):
        raise ValueError(f"t must be strictly increasing or strictly decreasing, got {times}")
    return times


def _check_state(y0: Any) -> tuple[torch.Tensor, ...]:
    tensors = y0 if isinstance(y0, tuple) else (y0,)
    if not tensors:
        raise ValueError("y0 is an empty tuple; give at least one tensor")
    for i, y in enumerate(tensors):
        where = f"y0[{i}]" if isinstance(y0, tuple) else "y0"
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{where} must be a torch.Tensor (or y0 a tuple of tensors), "
                            f"got {type(y).__name__}")
        if not y.is_floating_point():
            raise TypeError(f"{where} must be a floating-point tensor, got dtype {y.dtype}")
    first = tensors[0]
    for i, y in enumerate(tensors[1:], start=1):
        if y.dtype != first.dtype or y.device != first.device:
            raise TypeError(f"every tensor of y0 needs one dtype and device: y0[0] is "
                            f"{first.dtype} on {first.device}, y0[{i}] is {y.dtype} on "
                            f"{y.device}")
    return tensors


# What each numeric option may be. safety above 1 aims past the step the error allows;
# ifactor below 1 forbids steps to grow; dfactor must shrink a rejected step (at 1 the same
# step would be retried until the budget runs out).
_OPTION_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "step_size": ("a finite positive number", lambda v: 0 < v < math.inf),
    "first_step": ("a finite positive number", lambda v: 0 < v < math.inf),
    "min_step": ("a finite non-negative number", lambda v: 0 <= v < math.inf),
    "max_step": ("a positive number (inf for no limit)", lambda v: v > 0),
    "safety": ("a number in (0, 1]", lambda v: 0 < v <= 1),
    "ifactor": ("a finite number >= 1", lambda v: 1 <= v < math.inf),
    "dfactor": ("a number in (0, 1)", lambda v: 0 < v < 1),
    "pi_beta": ("a finite non-negative number", lambda v: 0 <= v < math.inf),
}


def _check_options(options: Any, tableau: ButcherTableau, name: str = "options"
                   ) -> tuple[StepControl, Any]:
    """Validate solver options for ``tableau``; ``name`` is what messages call them."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"{name} must be a dict or None, got {type(options).__name__}")
    # None means "the default" for every key, as in torchdiffeq.
    options = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(options) - set(_OPTION_KEYS), key=repr)
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; known keys are "
                         f"{list(_OPTION_KEYS)}")
    norm = options.pop("norm", "rms")
    for key, (what, ok) in _OPTION_RANGES.items():
        if key in options:
            options[key] = _check_real(f"{name}['{key}']", options[key], what, ok)
    steps = options.get("max_num_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or steps < 1):
        raise ValueError(f"{name}['max_num_steps'] must be a positive integer, got {steps!r}")
    if options.get("min_step", 0.0) > options.get("max_step", math.inf):
        raise ValueError(f"{name}['min_step']={options['min_step']!r} exceeds "
                         f"{name}['max_step']={options['max_step']!r}")
    if tableau.adaptive:
        if "step_size" in options:
            raise ValueError(f"{name}['step_size'] is for fixed-step methods (euler, midpoint, "
                             "heun, rk4); adaptive methods take 'first_step', 'min_step', "
                             "'max_step'")
        # The controller's exponent on the current error, 1/q - 0.75 pi_beta, must stay
        # positive, or a larger error would give a larger next step.
        beta_max = 4.0 / (3.0 * tableau.controller_order)
        beta = options.get("pi_beta", StepControl.pi_beta)
        if beta >= beta_max:
            raise ValueError(f"{name}['pi_beta']={beta!r} is too large for {tableau.name} "
                             f"(controller order {tableau.controller_order}): it must be below "
                             f"{beta_max:.4g}")
    if not callable(norm) and not (isinstance(norm, str) and norm in _NORMS):
        raise ValueError(f"{name}['norm'] must be one of {list(_NORMS)} or a callable, "
                         f"got {norm!r}")
    return StepControl(**options), norm


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt()


def make_norm(kind: Any, shapes: Sequence[torch.Size], measured: int | None = None) -> Norm:
    """Build the error norm over a flat state made of tensors of ``shapes``.

    ``"rms"``: root mean square over the whole state. ``"max"``: largest component.
    Per-sample norms take the RMS within each sample (the leading dimension of every tensor)
    and then combine samples: ``"per_sample"`` averages them, so one hard sample of a batch
    moves the ratio by 1/B of its error (1/√B under ``"rms"``) and does not shrink everyone's
    step; ``"per_sample_max"`` takes the largest, so every sample meets the tolerance on its
    own. ``"seminorm"`` measures only the first ``measured`` entries (the adjoint
    uses it to leave the parameter adjoints out of step rejection). A callable is used as
    is.
    """
    if callable(kind):
        return kind
    if kind == "rms":
        return _rms
    if kind == "max":
        return lambda x: x.abs().max()
    if kind == "seminorm":
        return lambda x: _rms(x[:measured])
    batch = {s[0] if len(s) else None for s in shapes}
    if len(batch) != 1 or None in batch:
        raise ValueError(f"options['norm']={kind!r} needs every tensor of y0 to share one "
                         f"leading batch dimension, got shapes {[tuple(s) for s in shapes]}")
    n = batch.pop()
    sizes = [math.prod(s) for s in shapes]
    width = sum(sizes) // max(n, 1)  # an empty batch is never solved, but must not fail here

    combine = torch.max if kind == "per_sample_max" else torch.mean

    def per_sample(x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(x, sizes)
        # Explicit widths: reshape(n, -1) is ambiguous for a tensor of the tuple that is empty.
        sq = sum(p.reshape(n, size // n).pow(2).sum(1) for p, size in zip(pieces, sizes))
        return combine((sq / width).sqrt())

    return per_sample


# --- canonical form ----------------------------------------------------------------------

def _canonical_func(func: Callable, shapes: list[torch.Size], is_tuple: bool, reverse: bool,
                    dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    sizes = [math.prod(s) for s in shapes]

    def check(out: Any, t: torch.Tensor) -> None:
        # Runs on every evaluation: a field whose output goes wrong later in the solve would
        # otherwise be broadcast into the state silently. It compares shapes and dtypes only
        # (no synchronisation); the time is read for the message alone.
        outs = out if is_tuple else (out,)
        if is_tuple and (not isinstance(out, tuple) or len(out) != len(shapes)):
            raise TypeError(f"func must return a tuple of {len(shapes)} tensors like y0, got "
                            f"{type(out).__name__} at t={float(t):.8g}")
        for i, (o, s) in enumerate(zip(outs, shapes)):
            if isinstance(o, torch.Tensor) and o.shape == s and o.dtype == dtype:
                continue
            where = f"func(t, y)[{i}]" if is_tuple else "func(t, y)"
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"{where} must return a tensor, got {type(o).__name__} at "
                                f"t={float(t):.8g}")
            if o.shape != s:
                raise ValueError(f"{where} has shape {tuple(o.shape)} but the state has shape "
                                 f"{tuple(s)}, at t={float(t):.8g}; the vector field must "
                                 "match y0's shape")
            raise TypeError(f"{where} has dtype {o.dtype} but y0 has dtype {dtype}, at "
                            f"t={float(t):.8g}")

    def canonical(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if reverse:
            t = -t
        if is_tuple:
            out = func(t, tuple(p.view(s) for p, s in zip(torch.split(y, sizes), shapes)))
        else:
            out = func(t, y.view(shapes[0]))
        check(out, t)
        flat = torch.cat([o.reshape(-1) for o in out]) if is_tuple else out.reshape(-1)
        return -flat if reverse else flat

    return canonical


def _unflatten(ys: torch.Tensor, shapes: list[torch.Size], is_tuple: bool) -> State:
    n = ys.shape[0]
    if not is_tuple:
        return ys.view(n, *shapes[0])
    sizes = [math.prod(s) for s in shapes]
    return tuple(p.reshape(n, *s) for p, s in zip(torch.split(ys, sizes, dim=1), shapes))


def _adjoint_params(func: Callable, adjoint_params: Sequence[torch.Tensor] | None
                    ) -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise ValueError("with gradient='adjoint' or 'checkpoint', func must be an "
                             "nn.Module so its parameters can be found, or pass them as "
                             "adjoint_params=(...) (adjoint_params=() if there are none)")
        adjoint_params = tuple(func.parameters())
    params = tuple(adjoint_params)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"adjoint_params[{i}] must be a tensor, got {type(p).__name__}")
    # Duplicates would receive their gradient twice.
    unique = {id(p): p for p in params if p.requires_grad}
    return tuple(unique.values())


def solve(func: Callable, y0: State, t: torch.Tensor, *, rtol: float = 1e-7,
          atol: float = 1e-9, method: str | None = None, options: dict | None = None,
          gradient: str = "direct", adjoint_params: Sequence[torch.Tensor] | None = None,
          adjoint_rtol: float | None = None, adjoint_atol: float | None = None,
          adjoint_method: str | None = None, adjoint_options: dict | None = None
          ) -> ODESolution:
    """Solve ``dy/dt = func(t, y)`` and return the solution with its statistics.

    Args:
        func: the vector field ``func(t, y)``; ``y`` has ``y0``'s shape (or is a tuple).
        y0: initial state at ``t[0]``: a floating tensor of any shape, or a tuple of them.
        t: 1-D tensor of output times, strictly increasing or strictly decreasing.
        rtol, atol: relative and absolute local error tolerances.
        method: ``"dopri5"`` (default), ``"tsit5"``, ``"bosh3"``, ``"dopri8"`` (adaptive),
            ``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"`` (fixed step).
        options: ``step_size`` (fixed-step methods; default: step from output time to
            output time), ``first_step``, ``min_step`` (steps this small are accepted
            whatever their error), ``max_step`` (default ``inf``), ``max_num_steps``
            (budget for the whole solve, default 100000; a fixed-step solve that would
            need more fails before its first step), ``safety`` (in (0, 1]), ``ifactor``
            (>= 1), ``dfactor`` (in (0, 1)), ``pi_beta`` (PI controller; 0 gives integral
            control), ``norm`` (``"rms"``, ``"max"``, ``"per_sample"``,
            ``"per_sample_max"`` or a callable; see :func:`make_norm`). ``None`` for any
            of them means its default.
        gradient: ``"direct"`` backpropagates through the solver's operations;
            ``"adjoint"`` solves the adjoint ODE backwards in time, memory independent of
            the number of steps; ``"checkpoint"`` keeps the state at every accepted step
            and recomputes each step during backward, giving the direct gradient without
            keeping the graph.
        adjoint_params: tensors to differentiate in the adjoint/checkpoint modes
            (default: ``func.parameters()``).
        adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options: for the reverse
            solve; default to the forward ones. ``adjoint_options={"norm": "seminorm"}``
            keeps the parameter adjoints out of the step-size control.

    Returns:
        An :class:`ODESolution`; ``solution.stats.backward`` is filled in during
        ``backward()`` for the adjoint and checkpoint modes. An empty state (no elements)
        gives empty outputs without evaluating ``func``.

    Raises:
        ValueError, TypeError: bad arguments (the message names the argument), among them
            tolerances that the state's dtype cannot represent or resolve, and float16 or
            bfloat16 states with an adaptive method; ``func``'s output is checked for
            ``y0``'s shape and dtype at every evaluation.
        ODESolverError: the solve could not finish.

    Example:
        >>> sol = solve(lambda t, y: -y, torch.ones(3), torch.linspace(0, 1, 5))
        >>> sol.ys.shape, sol.stats.forward.nfe > 0
        (torch.Size([5, 3]), True)
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"gradient={gradient!r} is not one of {list(GRADIENT_MODES)}")
    tensors = _check_state(y0)
    is_tuple = isinstance(y0, tuple)
    times = _check_times(t)
    dtype = tensors[0].dtype
    tableau = get_tableau("dopri5" if method is None else method)
    rtol, atol = _check_tolerances(rtol, atol, tableau, dtype)
    control, norm_kind = _check_options(options, tableau)
    if norm_kind == "seminorm":
        raise ValueError("options['norm']='seminorm' is for the adjoint solve; pass it as "
                         "adjoint_options={'norm': 'seminorm'}")

    from cnflow.solvers import adjoint  # the gradient modes build on this module

    params: tuple[torch.Tensor, ...] = ()
    if gradient != "direct":
        params = _adjoint_params(func, adjoint_params)
    if gradient == "adjoint":
        reverse_tableau = get_tableau(adjoint_method or tableau.name)
        reverse_rtol, reverse_atol = _check_tolerances(
            rtol if adjoint_rtol is None else adjoint_rtol,
            atol if adjoint_atol is None else adjoint_atol, reverse_tableau, dtype,
            names=("rtol" if adjoint_rtol is None else "adjoint_rtol",
                   "atol" if adjoint_atol is None else "adjoint_atol"))
        reverse_problem = adjoint.ReverseSolve(
            tableau=reverse_tableau, rtol=reverse_rtol, atol=reverse_atol,
            # The forward's norm may not suit the augmented state; its steps options do.
            options=adjoint_options if adjoint_options is not None else {
                k: v for k, v in (options or {}).items() if k != "norm"},
            name="options" if adjoint_options is None else "adjoint_options")

    shapes = [y.shape for y in tensors]
    reverse = len(times) > 1 and times[1] < times[0]
    problem = Problem(
        func=_canonical_func(func, shapes, is_tuple, reverse, dtype),
        times=[-x for x in times] if reverse else times,
        tableau=tableau, rtol=rtol, atol=atol, control=control,
        norm=make_norm(norm_kind, shapes), shapes=shapes,
        stats=SolveStats(forward=StepStats()),
    )
    flat0 = torch.cat([y.reshape(-1) for y in tensors]) if is_tuple else tensors[0].reshape(-1)
    if flat0.numel() == 0:
        # Nothing to integrate (an empty batch): every output is the empty initial state, and
        # the vector field is not called.
        ys = flat0.unsqueeze(0).repeat(len(times), 1)
        return ODESolution(ys=_unflatten(ys, shapes, is_tuple), ts=t, stats=problem.stats)
    t_canonical = -t if reverse else t

    if t.requires_grad:
        flat0 = adjoint.StartTimeGradient.apply(flat0, t_canonical, problem)
    if gradient == "direct":
        ys = torch.stack(problem.run(flat0))
    elif gradient == "adjoint":
        ys = adjoint.AdjointSolve.apply(flat0, problem, reverse_problem, *params)
    else:
        ys = adjoint.CheckpointSolve.apply(flat0, problem, *params)
    if t.requires_grad:
        ys = adjoint.OutputTimeGradient.apply(ys, t_canonical, problem)
    return ODESolution(ys=_unflatten(ys, shapes, is_tuple), ts=t, stats=problem.stats)


def odeint(func: Callable, y0: State, t: torch.Tensor, *, rtol: float = 1e-7,
           atol: float = 1e-9, method: str | None = None, options: dict | None = None
           ) -> State:
    """torchdiffeq-compatible ``odeint``: the solution at ``t``, gradients by backpropagation.

    Same arguments as :func:`solve` with ``gradient="direct"``; returns only the states, of
    shape ``(len(t), *y0.shape)`` (a tuple of such tensors for a tuple ``y0``).
    """
    return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options).ys


def odeint_adjoint(func: Callable, y0: State, t: torch.Tensor, *, rtol: float = 1e-7,
                   atol: float = 1e-9, method: str | None = None, options: dict | None = None,
                   adjoint_params: Sequence[torch.Tensor] | None = None,
                   adjoint_rtol: float | None = None, adjoint_atol: float | None = None,
                   adjoint_method: str | None = None, adjoint_options: dict | None = None
                   ) -> State:
    """torchdiffeq-compatible ``odeint_adjoint``: gradients from the adjoint ODE.

    Memory does not grow with the number of solver steps. Parameters come from ``func``
    (an ``nn.Module``) or from ``adjoint_params``. See :func:`solve` for the arguments.
    """
    return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                 gradient="adjoint", adjoint_params=adjoint_params, adjoint_rtol=adjoint_rtol,
                 adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
                 adjoint_options=adjoint_options).ys
