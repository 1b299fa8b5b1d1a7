"""Public entry points: ``odeint``, ``odeint_adjoint`` (torchdiffeq's signatures) and ``solve``.

``solve`` checks its arguments (:mod:`cnflow.solvers.problem`), puts the call into canonical
form (:mod:`cnflow.solvers.field`) and hands it to a gradient strategy from
:data:`GRADIENTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cnflow.solvers.adjoint import Adjoint
from cnflow.solvers.field import CanonicalField, State
from cnflow.solvers.gradients import (
    Checkpoint,
    Direct,
    Gradient,
    GradientArgs,
    OutputTimeGradient,
    StartTimeGradient,
)
from cnflow.solvers.problem import (
    Problem,
    SolveStats,
    check_options,
    check_state,
    check_times,
    check_tolerances,
    find_params,
    make_norm,
    unflatten,
)
from cnflow.solvers.runge_kutta import StepStats
from cnflow.solvers.tableaus import get_tableau

__all__ = ["GRADIENTS", "GRADIENT_MODES", "ODESolution", "SolveStats", "make_norm", "odeint",
           "odeint_adjoint", "solve"]

# The gradient strategies by name: a new one is one entry here.
GRADIENTS: dict[str, type[Gradient]] = {
    "direct": Direct, "adjoint": Adjoint, "checkpoint": Checkpoint,
}
GRADIENT_MODES = tuple(GRADIENTS)


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
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient={gradient!r} is not one of {list(GRADIENT_MODES)}")
    tensors = check_state(y0)
    is_tuple = isinstance(y0, tuple)
    times = check_times(t)
    dtype = tensors[0].dtype
    tableau = get_tableau("dopri5" if method is None else method)
    rtol, atol = check_tolerances(rtol, atol, tableau, dtype)
    control, norm_kind = check_options(options, tableau)
    if norm_kind == "seminorm":
        raise ValueError("options['norm']='seminorm' is for the adjoint solve; pass it as "
                         "adjoint_options={'norm': 'seminorm'}")
    kind = GRADIENTS[gradient]
    params = find_params(func, adjoint_params) if kind.needs_params else ()
    strategy = kind.configure(GradientArgs(
        tableau, rtol, atol, options, dtype, adjoint_rtol=adjoint_rtol,
        adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
        adjoint_options=adjoint_options))

    shapes = [y.shape for y in tensors]
    reverse = len(times) > 1 and times[1] < times[0]
    problem = Problem(
        func=CanonicalField(func, shapes, is_tuple, reverse, dtype),
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
        return ODESolution(ys=unflatten(ys, shapes, is_tuple), ts=t, stats=problem.stats)
    t_canonical = -t if reverse else t

    if t.requires_grad:
        flat0 = StartTimeGradient.apply(flat0, t_canonical, problem)
    ys = strategy.solve(problem, flat0, params)
    if t.requires_grad:
        ys = OutputTimeGradient.apply(ys, t_canonical, problem)
    return ODESolution(ys=unflatten(ys, shapes, is_tuple), ts=t, stats=problem.stats)


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
