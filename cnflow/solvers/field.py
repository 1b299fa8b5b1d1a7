"""The vector field in canonical form, and its vector-Jacobian products.

Every call is put into one canonical form here — a tuple state flattened to one 1-D tensor,
decreasing time mapped to increasing time ``s = −t`` (the field becomes ``−f(−s, y)``) — so
the stepping loop and the gradient strategies see a single case.

**The VJP protocol.** A field may compute its own vector-Jacobian products; the adjoint uses
them instead of ``torch.autograd.grad`` when they cover every tensor it differentiates::

    field.vjp_params                  # tensors θ it can differentiate (None: not now)
    field.vjp(t, y, a) -> (f, a_y, partial)
        # f = field(t, y); a_y = aᵀ ∂f/∂y, shaped like y; partial: whatever the field
        # keeps to finish the parameter cotangent later
    field.param_vjp(partials, weights) -> tuple, one entry per vjp_params (None: zero)
        # Σ_k w_k · a_kᵀ ∂f(t_k, y_k)/∂θ for the evaluations that gave the partials;
        # weights: a 1-D tensor (on the state's device, so that no copy synchronises)

The split lets the adjoint compute the state part at every evaluation and the parameter
part only where it is needed, for all of a step's stages together: under the seminorm once
per accepted step, under a full norm twice per attempted step, for its error estimate and
its update (see :mod:`cnflow.solvers.adjoint`). :class:`CanonicalField` carries the
protocol through flattening and time reversal: it asks the user's ``vjp`` for the cotangent
``−a`` at ``−s``, which is the reversed field's VJP.

**Stage times.** A field may also provide ``at_times(ts)``: for a 1-D tensor of times it
returns one field per time, ``g(y) -> f`` with ``g.vjp(y, a)`` as above if the field has a
``vjp`` (or None: evaluate as usual). The stepping loop calls it with all stage times of a
step, known before the step starts, so what depends on time alone is computed once per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["CanonicalField", "FieldVJP", "VJPField"]

State = torch.Tensor | tuple[torch.Tensor, ...]


@runtime_checkable
class VJPField(Protocol):
    """A vector field ``f(t, y)`` with its own vector-Jacobian products (module docstring)."""

    vjp_params: tuple[torch.Tensor, ...] | None

    def __call__(self, t: torch.Tensor, y: State) -> State: ...

    def vjp(self, t: torch.Tensor, y: State, a: State) -> tuple[State, State, Any]: ...

    def param_vjp(self, partials: Sequence[Any], weights: torch.Tensor
                  ) -> tuple[torch.Tensor | None, ...]: ...


class FieldVJP(Protocol):
    """The canonical field's VJP for a fixed set of parameters (what the adjoint calls)."""

    def __call__(self, t: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                 with_params: bool = True) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``−f`` (the field in backward time, which the adjoint integrates), ``aᵀ ∂f/∂y``
        and a partial for :meth:`params` (None if not ``with_params``)."""

    def params(self, partials: Sequence[Any], weights: torch.Tensor) -> list[torch.Tensor]:
        """``Σ_k w_k a_kᵀ ∂f_k/∂θ`` for each parameter, shaped like it."""

    def at_times(self, ts: torch.Tensor) -> list[Callable[..., tuple]] | None:
        """The VJP at each time in ``ts`` (as :meth:`__call__` without ``t``), or None."""


class CanonicalField:
    """The user's ``func`` on the flat state, in increasing time.

    Args:
        func: the user's field ``func(t, y)``.
        shapes: shape of every tensor of the user's state.
        is_tuple: whether the user's state is a tuple.
        reverse: the user's times decrease; the canonical time is their negative.
        dtype: the state's dtype, checked on every output.
    """

    def __init__(self, func: Callable, shapes: list[torch.Size], is_tuple: bool,
                 reverse: bool, dtype: torch.dtype):
        self.func, self.shapes, self.is_tuple = func, shapes, is_tuple
        self.reverse, self.dtype = reverse, dtype
        self.sizes = [math.prod(s) for s in shapes]
        if getattr(func, "at_times", None) is None:
            self.at_times = None  # the stepping loop then evaluates stage by stage

    def user_state(self, y: torch.Tensor) -> State:
        """A flat state in the user's structure (views, no copies)."""
        if self.is_tuple:
            return tuple(p.view(s) for p, s in zip(torch.split(y, self.sizes), self.shapes))
        return y.view(self.shapes[0])

    def flat(self, out: Any, t: torch.Tensor, what: str = "func(t, y)") -> torch.Tensor:
        """The user's ``out`` (shaped like the state) as one flat tensor, after checking it.

        The check runs on every evaluation: a field whose output goes wrong later in the
        solve would otherwise be broadcast into the state silently. It compares shapes and
        dtypes only (no synchronisation); the time is read for the message alone.
        """
        if not self.is_tuple:
            if (isinstance(out, torch.Tensor) and out.shape == self.shapes[0]
                    and out.dtype == self.dtype):
                return out.reshape(-1)
            self._reject((out,), t, what)
        if not isinstance(out, tuple) or len(out) != len(self.shapes):
            raise TypeError(f"func must return a tuple of {len(self.shapes)} tensors like y0, "
                            f"got {type(out).__name__} at t={float(t):.8g}")
        self._reject(out, t, what)
        return torch.cat([o.reshape(-1) for o in out])

    def _reject(self, outs: tuple, t: torch.Tensor, what: str) -> None:
        """Raise for the first of ``outs`` unlike its tensor of the state."""
        for i, (o, s) in enumerate(zip(outs, self.shapes)):
            if isinstance(o, torch.Tensor) and o.shape == s and o.dtype == self.dtype:
                continue
            where = f"{what}[{i}]" if self.is_tuple else what
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"{where} must return a tensor, got {type(o).__name__} at "
                                f"t={float(t):.8g}")
            if o.shape != s:
                raise ValueError(f"{where} has shape {tuple(o.shape)} but the state has shape "
                                 f"{tuple(s)}, at t={float(t):.8g}; the vector field must "
                                 "match y0's shape")
            raise TypeError(f"{where} has dtype {o.dtype} but y0 has dtype {self.dtype}, at "
                            f"t={float(t):.8g}")

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.reverse:
            t = -t
        flat = self.flat(self.func(t, self.user_state(y)), t)
        return -flat if self.reverse else flat

    def at_times(self, ts: torch.Tensor) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
        """The field at each canonical time in ``ts`` from the user's ``at_times``, or None."""
        user = self._user_at_times(ts)
        if user is None:
            return None
        user_ts, fields = user
        return [partial(self._finish, g, t) for g, t in zip(fields, user_ts)]

    def _user_at_times(self, ts: torch.Tensor) -> tuple[torch.Tensor, Sequence[Any]] | None:
        at_times = getattr(self.func, "at_times", None)
        if at_times is None:
            return None
        user_ts = -ts if self.reverse else ts
        fields = at_times(user_ts)
        return None if fields is None else (user_ts, fields)

    def _finish(self, g: Callable, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        flat = self.flat(g(self.user_state(y)), t)
        return -flat if self.reverse else flat

    def vjp_for(self, params: Sequence[torch.Tensor]) -> FieldVJP:
        """The VJP for ``params``: the field's own if it covers all of them, else autograd."""
        declared = getattr(self.func, "vjp_params", None)
        if declared is not None and isinstance(self.func, VJPField):
            index = {id(p): i for i, p in enumerate(declared)}
            if all(id(p) in index for p in params):
                return _OwnVJP(self, [index[id(p)] for p in params], params)
        return _AutogradVJP(self, params)


def _zeros_for_none(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]
                    ) -> list[torch.Tensor]:
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


class _OwnVJP:
    """The user's ``vjp``/``param_vjp``, in canonical form."""

    def __init__(self, field: CanonicalField, pick: list[int], params: Sequence[torch.Tensor]):
        self.field, self.pick, self.like = field, pick, params

    def __call__(self, t: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                 with_params: bool = True) -> tuple[torch.Tensor, torch.Tensor, Any]:
        # with_params changes nothing here: the parameter part waits for params() anyway.
        t = -t if self.field.reverse else t
        return self._finish(partial(self.field.func.vjp, t), t, y, a)

    def at_times(self, ts: torch.Tensor) -> list[Callable[..., tuple]] | None:
        """The VJP at each canonical time in ``ts`` from the user's ``at_times``, or None."""
        user = self.field._user_at_times(ts)
        if user is None or not all(hasattr(g, "vjp") for g in user[1]):
            return None
        return [partial(self._stage, g, t) for t, g in zip(*user)]

    def _stage(self, g: Any, t: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
               with_params: bool = True) -> tuple[torch.Tensor, torch.Tensor, Any]:
        return self._finish(g.vjp, t, y, a)

    def _finish(self, vjp: Callable, t: torch.Tensor, y: torch.Tensor, a: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``vjp`` (the user's, at the user's time ``t``) in canonical form."""
        field = self.field
        if field.reverse:
            # The reversed field is F(s, y) = −f(−s, y): aᵀ∂F/∂· = (−a)ᵀ∂f/∂· at −s.
            a = -a
        f, a_y, partial_vjp = vjp(field.user_state(y), field.user_state(a))
        f = field.flat(f, t)
        a_y = field.flat(a_y, t, "func.vjp(t, y, a)[1]")
        return (f if field.reverse else -f), a_y, partial_vjp  # −F: F = −f when reversed

    def params(self, partials: Sequence[Any], weights: torch.Tensor) -> list[torch.Tensor]:
        grads = self.field.func.param_vjp(partials, weights)
        return _zeros_for_none([grads[i] for i in self.pick], self.like)


class _AutogradVJP:
    """Vector-Jacobian products by ``torch.autograd.grad`` through one evaluation."""

    def __init__(self, field: CanonicalField, params: Sequence[torch.Tensor]):
        self.field, self.like = field, tuple(params)

    def at_times(self, ts: torch.Tensor) -> None:
        return None  # each evaluation needs its own graph: stage by stage

    def __call__(self, t: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                 with_params: bool = True) -> tuple[torch.Tensor, torch.Tensor, Any]:
        inputs_params = self.like if with_params else ()
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            f = self.field(t, y)
            if f.requires_grad:
                grads = torch.autograd.grad(f, (y, *inputs_params), a, allow_unused=True)
            else:
                # A field that depends on neither y nor the parameters (a constant, a
                # function of t alone) has no graph: every cotangent is zero.
                grads = (None,) * (1 + len(inputs_params))
        a_y = torch.zeros_like(y) if grads[0] is None else grads[0]
        return -f.detach(), a_y, (grads[1:] if with_params else None)

    def params(self, partials: Sequence[Any], weights: torch.Tensor) -> list[torch.Tensor]:
        total: list[torch.Tensor | None] = [None] * len(self.like)
        for grads, w in zip(partials, weights):
            for i, g in enumerate(grads):
                if g is not None:
                    total[i] = g * w if total[i] is None else total[i].addcmul(g, w)
        return _zeros_for_none(total, self.like)
