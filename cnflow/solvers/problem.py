"""The canonical problem and the checking of everything a solve is given.

Imported by the public entry points (:mod:`cnflow.solvers.odeint`) and by the gradient
strategies alike, so that neither imports the other's internals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from cnflow.solvers.controllers import StepControl, make_controller
from cnflow.solvers.field import CanonicalField, State
from cnflow.solvers.runge_kutta import Norm, StepRecord, StepStats, integrate
from cnflow.solvers.tableaus import ButcherTableau

NORMS = ("rms", "max", "per_sample", "per_sample_max", "seminorm")
_OPTION_KEYS = tuple(f.name for f in fields(StepControl)) + ("norm",)


@dataclass
class SolveStats:
    """Statistics of a solve: ``forward`` at once, ``backward`` after ``.backward()``.

    ``backward`` stays ``None`` in direct mode, where autograd backpropagates through the
    forward steps and the vector field is not evaluated again.
    """

    forward: StepStats
    backward: StepStats | None = None

    def backward_stats(self) -> StepStats:
        """``backward``, created on first use by a gradient strategy."""
        if self.backward is None:
            self.backward = StepStats()
        return self.backward


@dataclass
class Problem:
    """The canonical problem, shared by the forward solve and the gradient strategies."""

    func: CanonicalField  # flat state, increasing time
    times: list[float]
    tableau: ButcherTableau
    rtol: float
    atol: float
    control: StepControl
    norm: Norm
    shapes: list[torch.Size]  # per tensor of the user's state, for un-flattening
    stats: SolveStats

    def run(self, y0: torch.Tensor, record: StepRecord | None = None) -> list[torch.Tensor]:
        """The forward solve from ``y0``: the state at every output time."""
        controller = make_controller(self.tableau, self.rtol, self.atol, self.control,
                                     self.norm)
        return integrate(self.func, y0, self.times, self.tableau, controller,
                         self.stats.forward, record)


# --- input checking ----------------------------------------------------------------------

def check_real(name: str, value: Any, what: str, ok: Callable[[float], bool]) -> float:
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


def _tolerance(name: str, value: Any) -> float:
    return check_real(name, value, "a finite non-negative number",
                       lambda v: 0 <= v < math.inf)


# An rtol this far below the state dtype's machine epsilon is beyond anything its arithmetic
# resolves. The margin is wide because rtol a little under epsilon works in practice: the
# default rtol=1e-7 is just under float32's 1.2e-7, and ODE-Net's reference solves run
# float32 at 1e-8.
_RTOL_BELOW_EPS = 1e-3


def check_tolerances(rtol: Any, atol: Any, tableau: ButcherTableau, dtype: torch.dtype,
                      names: tuple[str, str] = ("rtol", "atol")) -> tuple[float, float]:
    """Check tolerances for a solve with ``tableau`` of a state of ``dtype``.

    Fixed-step methods do not use them, so only their form is checked there; an adaptive
    method also needs them to mean something in ``dtype``: a tolerance that rounds to zero or
    infinity there would reject or accept every step.
    """
    rname, aname = names
    rtol, atol = _tolerance(rname, rtol), _tolerance(aname, atol)
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


def check_times(t: Any) -> list[float]:
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


def check_state(y0: Any) -> tuple[torch.Tensor, ...]:
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


def check_options(options: Any, tableau: ButcherTableau, name: str = "options"
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
            options[key] = check_real(f"{name}['{key}']", options[key], what, ok)
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
    if not callable(norm) and not (isinstance(norm, str) and norm in NORMS):
        raise ValueError(f"{name}['norm'] must be one of {list(NORMS)} or a callable, "
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


def unflatten(ys: torch.Tensor, shapes: list[torch.Size], is_tuple: bool) -> State:
    """Flat outputs ``(len(times), n)`` in the user's structure."""
    n = ys.shape[0]
    if not is_tuple:
        return ys.view(n, *shapes[0])
    sizes = [math.prod(s) for s in shapes]
    return tuple(p.reshape(n, *s) for p, s in zip(torch.split(ys, sizes, dim=1), shapes))


def find_params(func: Callable, adjoint_params: Sequence[torch.Tensor] | None
                ) -> tuple[torch.Tensor, ...]:
    """The tensors a gradient strategy differentiates: ``adjoint_params`` or ``func``'s."""
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


