"""Continuous normalizing flows (Chen et al. 2018, Sec. 4; Grathwohl et al. 2019).

The state ``z(t)`` follows ``dz/dt = f(z, t)`` and its log-density follows
``d log p(z(t))/dt = −tr(∂f/∂z)``. Both are integrated together by the solver core, as one
``(batch, dim + 1 [+ regularisers])`` tensor. The data live at ``t = T``, the standard-normal
base at ``t = 0``.

Two vector fields:

* :class:`GatedHyperDynamics`, the paper's layer
  ``f(z, t) = Σ_n σ_n(t) u_n(t) tanh(w_n(t)ᵀ z + b_n(t))`` whose time-dependent parameters
  come from a hypernetwork of ``t``. Its trace has the closed form
  ``Σ_n σ_n (u_n·w_n)(1 − tanh²(w_nᵀz + b_n))``: O(M·D) per point, no autograd.
* :class:`ConcatSquashMLP`, a general network for any dimension (FFJORD's concat-squash
  layers), with the exact trace by autograd or Hutchinson's estimator.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import nn

from cnflow.flows.base import Flow, standard_normal_log_prob
from cnflow.solvers import GRADIENT_MODES, METHODS, SolveStats, solve

TRACE_MODES = ("auto", "closed_form", "exact", "hutchinson")
NOISE_KINDS = ("rademacher", "gaussian")


def _conditioning(t: torch.Tensor, context: torch.Tensor | None, rows: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """The network input ``[t, c]``: one row ``(1, 1 + k)`` when every point shares it (an
    ODE solve without context), else one row per point ``(rows, 1 + k)``.

    ``t`` is a scalar, or one time per point (flow matching regresses each point at its own
    time); ``context`` is None or ``(rows, k)``.
    """
    t = t.to(dtype).reshape(-1, 1)
    if t.shape[0] not in (1, rows):
        raise ValueError(f"t must be a scalar or hold one time per point ({rows}), got shape "
                         f"{tuple(t.shape)}")
    if context is None:
        return t
    return torch.cat([t.expand(context.shape[0], 1), context.to(dtype)], 1)


def _check_size(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


class GatedHyperDynamics(nn.Module):
    """The paper's gated, time-dependent CNF layer with a closed-form trace.

    Args:
        dim: data dimension D.
        width: number of hidden units M.
        hidden: width of the hypernetwork ``(t, c) -> (W, U, b, gate)``.
        context_dim: size k of the context ``c`` of a conditional flow (0: none).

    The hypernetwork's output layer starts at zero for ``U``, so an untrained flow is the
    identity map: training starts from the base density and from cheap solves.
    """

    closed_form_trace = True

    def __init__(self, dim: int, width: int = 64, hidden: int = 32, context_dim: int = 0):
        super().__init__()
        for name, value in (("dim", dim), ("width", width), ("hidden", hidden)):
            _check_size(name, value)
        _check_size("context_dim", context_dim, minimum=0)
        self.dim, self.width, self.context_dim = dim, width, context_dim
        self.hyper = nn.Sequential(
            nn.Linear(1 + context_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
            nn.Tanh(), nn.Linear(hidden, 2 * width * dim + 2 * width),
        )
        with torch.no_grad():
            out = self.hyper[-1]
            u = slice(width * dim, 2 * width * dim)
            out.weight[u].zero_()
            out.bias[u].zero_()

    def _hyper(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The hypernetwork at the rows of ``x`` (``(K, 1 + k)`` rows of ``[t, c]``): its
        hidden activations, ``W``, gated ``U``, ``b``, and the gate and ungated ``U``."""
        m, d = self.width, self.dim
        h1 = torch.tanh(self.hyper[0](x))
        h2 = torch.tanh(self.hyper[2](h1))
        raw = self.hyper[4](h2)
        u = raw[:, m * d: 2 * m * d].view(-1, m, d)
        sig = torch.sigmoid(raw[:, 2 * m * d + m:])
        return (h1, h2, raw[:, : m * d].view(-1, m, d), sig[:, :, None] * u,
                raw[:, 2 * m * d: 2 * m * d + m], sig, u)

    def units(self, x: torch.Tensor) -> list[_Unit]:
        """The units at each row of ``x``, shared by all points (the joint field's path)."""
        h1, h2, w, gated, b, sig, u = self._hyper(x)
        s = (gated * w).sum(2)
        rest = (x, h1, h2, sig, u)  # for param_vjp only: indexed there, not here
        return [_Unit(*row, rest, i) for i, row in enumerate(zip(
            w.transpose(1, 2), gated.transpose(1, 2), b, s, s.sum(1)))]

    def unit_parameters(self, t: torch.Tensor, context: torch.Tensor | None = None,
                        rows: int = 1) -> tuple[torch.Tensor, ...]:
        """``W``, gated ``σ ⊙ U`` and ``b`` at ``(t, c)``: shapes ``(M, D)``, ``(M, D)``,
        ``(M,)`` when all points share them, else ``(rows, M, D)``, ``(rows, M, D)``,
        ``(rows, M)``."""
        _, _, w, gated, b, _, _ = self._hyper(
            _conditioning(t, context, rows, self.hyper[0].weight.dtype))
        if w.shape[0] == 1:
            return w[0], gated[0], b[0]
        return w, gated, b

    def _hidden(self, t, z, context):
        w, u, b = self.unit_parameters(t, context, len(z))
        if w.dim() == 2:  # shared by all points: one matrix product
            return _tanh_affine(b, z, w.t()), w, u
        return _tanh(torch.einsum("nmd,nd->nm", w, z) + b), w, u

    def forward(self, t: torch.Tensor, z: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        h, _, u = self._hidden(t, z, context)
        return h @ u if u.dim() == 2 else torch.einsum("nm,nmd->nd", h, u)

    def forward_with_trace(self, t: torch.Tensor, z: torch.Tensor,
                           context: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(z, t)`` and ``tr(∂f/∂z)`` per point, in closed form."""
        h, w, u = self._hidden(t, z, context)
        if u.dim() == 2:
            return (u.t() @ h.t()).t(), (1 - h * h) @ (u * w).sum(1)
        return (torch.einsum("nm,nmd->nd", h, u),
                ((1 - h * h) * (u * w).sum(2)).sum(1))

    # The joint field's closed forms, with units shared by all points. Products with a few
    # output columns are written transposed, (Uᵀ hᵀ)ᵀ for h U: MKL's kernel for that shape
    # measured about twice as fast at (512, 64) @ (64, 2); the results are transposed views,
    # which the joint field copies into its state anyway.

    def joint(self, unit: _Unit, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f`` and ``d log p/dt = −tr(∂f/∂z) = Σ_m (h_m² − 1) s_m`` at ``unit``."""
        h = _tanh_affine(unit.b, z, unit.w_t)
        return (unit.gated_t @ h.t()).t(), (h * h) @ unit.s - unit.s_sum

    def joint_vjp(self, unit: _Unit, z: torch.Tensor, a_z: torch.Tensor,
                  a_logp: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`joint`, and ``∂(a_z·f + a_logp·d log p/dt)/∂z`` in closed form, with a
        partial for :meth:`param_vjp`.

        With ``h = tanh(Wz + b)``, ``s_m = u_m·w_m`` and ``d log p/dt = Σ_m (h_m² − 1) s_m``,
        the cotangent of ``h`` is ``a_z Uᵀ + 2 a_logp h s``; ``z`` gets it through
        ``(1 − h²)`` and ``W``.
        """
        h = _tanh_affine(unit.b, z, unit.w_t)
        hh = h * h
        slope = 1 - hh
        g = (a_z @ unit.gated_t).addcmul_(h * unit.s, a_logp[:, None], value=2).mul_(slope)
        return ((unit.gated_t @ h.t()).t(), hh @ unit.s - unit.s_sum, (unit.w_t @ g.t()).t(),
                (unit, z, h, slope, g, a_z, a_logp))

    def param_vjp(self, partials: list[tuple], weights: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
        """``Σ_k w_k ∂(a_z·f + a_logp·d log p/dt)/∂θ`` over :meth:`joint_vjp` partials, for
        ``θ = self.parameters()``: the units' cotangents of every evaluation, then one pass
        back through the hypernetwork for all of them (its rows are their times)."""
        ds, d_gated_t, d_w_t, d_b = (torch.stack(v) for v in zip(*(
            (a_logp @ slope, a_z.t() @ h, z.t() @ g, g.sum(0))
            for _, z, h, slope, g, a_z, a_logp in partials)))
        units = [p[0] for p in partials]
        w_t, gated_t = (torch.stack([getattr(u, name) for u in units])
                        for name in ("w_t", "gated_t"))
        x, h1, h2 = (torch.stack([u.rest[j][u.i] for u in units]) for j in range(3))
        # s = Σ_d gated ⊙ W enters d log p/dt with cotangent −(a_logp · (1 − h²)) = −ds.
        d_gated_t.addcmul_(w_t, ds[:, None, :], value=-1)
        d_w_t.addcmul_(gated_t, ds[:, None, :], value=-1)
        d_raw = self._raw_cotangent(units, d_w_t, d_gated_t, d_b).mul_(weights[:, None])
        second, out = self.hyper[2], self.hyper[4]
        d_q2 = (d_raw @ out.weight) * (1 - h2 * h2)
        d_q1 = (d_q2 @ second.weight) * (1 - h1 * h1)
        return (d_q1.t() @ x, d_q1.sum(0), d_q2.t() @ h1, d_q2.sum(0), d_raw.t() @ h2,
                d_raw.sum(0))

    def _raw_cotangent(self, units: list[_Unit], d_w_t: torch.Tensor, d_gated_t: torch.Tensor,
                       d_b: torch.Tensor) -> torch.Tensor:
        """The cotangents ``(K, P)`` of the hypernetwork's outputs at the units' times, from
        those of ``Wᵀ``, gated ``Uᵀ`` (``(K, D, M)``) and ``b``: the chain rule of
        :meth:`_hyper`'s parameterisation."""
        sig, u = (torch.stack([x.rest[j][x.i] for x in units]) for j in (3, 4))
        d_gated = d_gated_t.transpose(1, 2)
        d_gate = sig * (1 - sig) * (u * d_gated).sum(2)
        k = len(units)
        return torch.cat([d_w_t.transpose(1, 2).reshape(k, -1),
                          (sig[:, :, None] * d_gated).reshape(k, -1), d_b, d_gate], 1)


class _Unit(NamedTuple):
    """:class:`GatedHyperDynamics`' units at one time, shared by all points: ``Wᵀ`` and
    gated ``Uᵀ`` (``(D, M)``), ``b``, ``s = Σ_d gated ⊙ W`` and its sum; and, for the
    parameter cotangents, row ``i`` of ``rest``: the hypernetwork's inputs, hidden
    activations, gates ``σ`` and ungated ``U`` at all the times it was evaluated at."""

    w_t: torch.Tensor
    gated_t: torch.Tensor
    b: torch.Tensor
    s: torch.Tensor
    s_sum: torch.Tensor
    rest: tuple[torch.Tensor, ...]
    i: int


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh``, as ``2σ(2x) − 1`` on the CPU.

    torch's CPU tanh kernel measured 4–5× slower than its sigmoid on the field's (batch, M)
    intermediates (one thread, AVX-512: 100 µs against 20 µs at 512 × 64), the largest single
    cost of an evaluation. The two agree to 2e-7 absolute in float32 and 4e-16 in float64.
    """
    if x.device.type != "cpu":
        return torch.tanh(x)
    y = torch.sigmoid(2 * x)
    return y * 2 - 1 if y.requires_grad else y.mul_(2).sub_(1)


def _tanh_affine(b: torch.Tensor, z: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """``tanh(z Wᵀ + b)``; on the CPU the ``2x`` of :func:`_tanh` rides on the product."""
    if z.device.type != "cpu":
        return torch.tanh(torch.addmm(b, z, w_t))
    y = torch.sigmoid(torch.addmm(b, z, w_t, beta=2, alpha=2))
    return y * 2 - 1 if y.requires_grad else y.mul_(2).sub_(1)


class ConcatSquash(nn.Module):
    """``(W x + b) · σ(A [t, c] + a) + B [t, c]``: a linear layer modulated by time and
    context (FFJORD)."""

    def __init__(self, n_in: int, n_out: int, context_dim: int = 0):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.gate = nn.Linear(1 + context_dim, n_out)
        self.shift = nn.Linear(1 + context_dim, n_out, bias=False)

    def forward(self, condition: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``condition``: the ``[t, c]`` rows of :func:`_conditioning`."""
        return self.linear(x) * torch.sigmoid(self.gate(condition)) + self.shift(condition)


class ConcatSquashMLP(nn.Module):
    """A general time-dependent vector field for any dimension.

    Args:
        dim: data dimension.
        hidden: widths of the hidden layers.
        activation: ``"tanh"`` or ``"softplus"``.
        context_dim: size k of the context of a conditional flow (0: none); every layer
            takes it beside t.
    """

    closed_form_trace = False

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64, 64),
                 activation: str = "tanh", context_dim: int = 0):
        super().__init__()
        _check_size("dim", dim)
        _check_size("context_dim", context_dim, minimum=0)
        acts = {"tanh": nn.Tanh, "softplus": nn.Softplus}
        if activation not in acts:
            raise ValueError(f"activation={activation!r} is not one of {list(acts)}")
        self.dim, self.context_dim = dim, context_dim
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(ConcatSquash(a, b, context_dim) for a, b in pairwise(sizes))
        self.act = acts[activation]()

    def forward(self, t: torch.Tensor, z: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        condition = _conditioning(t, context, len(z), z.dtype)
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(condition, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class _JointField:
    """The vector field of ``[z, log-density change, regularisers]`` for one solve.

    Its trace mode, noise and context are fixed when the solve starts: the adjoint's
    backward pass runs the field again later, and must see the same ones even if other
    solves ran in between.
    """

    def __init__(self, dynamics: nn.Module, dim: int, trace: str,
                 noise: torch.Tensor | None = None, context: torch.Tensor | None = None,
                 kinetic: bool = False, jacobian: bool = False, block: int | None = None):
        self.dynamics, self.dim, self.trace, self.noise = dynamics, dim, trace, noise
        self.context = context
        self.kinetic, self.jacobian, self.block = kinetic, jacobian, block
        self.inputs_need_grad = any(p.requires_grad for p in dynamics.parameters()) or (
            context is not None and context.requires_grad)
        # The closed-form VJP and the stage-time batching need a closed-form trace, no
        # regularisers, and units shared by all points (no context).
        self.shared = (trace == "closed_form" and not (kinetic or jacobian)
                       and context is None and hasattr(dynamics, "joint_vjp"))

    @property
    def vjp_params(self) -> tuple[torch.Tensor, ...] | None:
        """The dynamics' parameters where the closed-form VJP applies (the solver core's
        VJP protocol, :mod:`cnflow.solvers.field`), else None: autograd."""
        return tuple(self.dynamics.parameters()) if self.shared else None

    def vjp(self, t: torch.Tensor, y: torch.Tensor, a: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, object]:
        """The field, ``aᵀ ∂field/∂y`` and a partial for :meth:`param_vjp`, in closed form."""
        return self._vjp(self._units(t[None])[0], y, a)

    def _units(self, ts: torch.Tensor) -> list:
        """The dynamics' units at each time in ``ts``."""
        return self.dynamics.units(ts[:, None].to(self.dynamics.hyper[0].weight.dtype))

    def _vjp(self, unit, y: torch.Tensor, a: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, object]:
        d = self.dim
        dz, dlogp, a_z, partial = self.dynamics.joint_vjp(unit, y[:, :d], a[:, :d], a[:, d])
        # No column depends on the log-density: its cotangent is zero.
        return torch.cat([dz, dlogp[:, None]], 1), nn.functional.pad(a_z, (0, 1)), partial

    def param_vjp(self, partials: list, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.dynamics.param_vjp(partials, weights)

    def at_times(self, ts: torch.Tensor) -> list[_JointFieldAt] | None:
        """The field at each time in ``ts``, the hypernetwork evaluated once for all."""
        if not self.shared:
            return None
        return [_JointFieldAt(self, unit) for unit in self._units(ts)]

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return _JointFieldAt(self, self._units(t[None])[0])(y)
        if self.block is None or len(y) <= self.block or torch.is_grad_enabled():
            return self._rows(t, y, self.noise, self.context)
        # Without a graph the rows are independent: evaluated in blocks, the field's
        # (rows, M) intermediates stay small and in cache instead of mapping fresh memory
        # at every evaluation. The solver sees one state, so the steps (and NFE) are the same.
        parts = []
        for start in range(0, len(y), self.block):
            rows = slice(start, start + self.block)
            parts.append(self._rows(
                t, y[rows], None if self.noise is None else self.noise[rows],
                None if self.context is None else self.context[rows]))
        return torch.cat(parts)

    def _rows(self, t: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None,
              context: torch.Tensor | None) -> torch.Tensor:
        kwargs = {} if context is None else {"context": context}
        z = y[:, : self.dim]
        columns = []
        if self.trace == "closed_form" and not self.jacobian:
            dz, trace = self.dynamics.forward_with_trace(t, z, **kwargs)
        else:
            # Keep the graph of the trace only when gradients will flow through it.
            create = torch.is_grad_enabled() and (z.requires_grad or self.inputs_need_grad)
            with torch.enable_grad():
                if not (create and z.requires_grad):
                    # A fresh leaf: z may be a no-grad view of a tensor that requires grad.
                    z = z.detach().requires_grad_(True)
                if self.trace == "closed_form":
                    dz, trace = self.dynamics.forward_with_trace(t, z, **kwargs)
                else:
                    dz = self.dynamics(t, z, **kwargs)
                    trace = self._trace(dz, z, create, noise)
                if self.jacobian:
                    vjp = torch.autograd.grad(dz, z, noise, create_graph=create)[0]
                    columns.append(vjp.pow(2).sum(1, keepdim=True))
            if not create:
                dz, trace = dz.detach(), trace.detach()
                columns = [c.detach() for c in columns]
        if self.kinetic:
            columns.insert(0, dz.pow(2).sum(1, keepdim=True))
        return torch.cat([dz, -trace[:, None], *columns], 1)

    def _trace(self, dz: torch.Tensor, z: torch.Tensor, create: bool,
               noise: torch.Tensor | None) -> torch.Tensor:
        if self.trace == "hutchinson":
            vjp = torch.autograd.grad(dz, z, noise, create_graph=create)[0]
            return (vjp * noise).sum(1)
        # Exact: one vector-Jacobian product per dimension.
        trace = torch.zeros_like(dz[:, 0])
        for i in range(self.dim):
            grad = torch.autograd.grad(dz[:, i].sum(), z, create_graph=True, retain_graph=True)
            trace = trace + grad[0][:, i]
        return trace


class _JointFieldAt:
    """A :class:`_JointField` at one time, with the units its hypernetwork gave there."""

    def __init__(self, field: _JointField, unit):
        self.field, self.unit = field, unit

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        block = self.field.block
        if block is None or len(y) <= block or torch.is_grad_enabled():
            return self._rows(y)
        # In row blocks, as _JointField._blocks does (no noise or context here).
        return torch.cat([self._rows(y[i: i + block]) for i in range(0, len(y), block)])

    def _rows(self, y: torch.Tensor) -> torch.Tensor:
        dz, dlogp = self.field.dynamics.joint(self.unit, y[:, : self.field.dim])
        return torch.cat([dz, dlogp[:, None]], 1)

    def vjp(self, y: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, object]:
        return self.field._vjp(self.unit, y, a)


class CNF(Flow):
    """A continuous normalizing flow that behaves like a torch distribution.

    Args:
        dynamics: the vector field ``f(t, z)`` (``f(t, z, context)`` for a conditional
            flow); a :class:`GatedHyperDynamics` gives the closed-form trace, any other
            module gets the exact autograd trace or Hutchinson's estimator. Flow matching
            calls it with one time per point (``t`` of shape ``(n,)``), as both of cnflow's
            dynamics allow.
        dim: data dimension.
        context_dim: size k of the context of a conditional flow ``p(x | c)`` (0: none);
            the dynamics must have been built with the same ``context_dim``.
        time: integration horizon T (data at ``t = T``, base at ``t = 0``).
        method: solver method for training and evaluation.
        rtol, atol: tolerances while ``self.training``.
        eval_rtol, eval_atol: tolerances in eval mode (``flow.eval()``), tight enough that
            ``log_prob`` is accurate to well below 1e-4 nats.
        gradient: ``"adjoint"`` (default, memory independent of the steps), ``"direct"`` or
            ``"checkpoint"``.
        trace: ``"auto"`` (closed form if the dynamics have one, else exact autograd trace
            for ``dim <= 8`` and Hutchinson above), or one of ``"closed_form"``,
            ``"exact"``, ``"hutchinson"``. In eval mode the trace is always exact.
        noise: Hutchinson noise, ``"rademacher"`` or ``"gaussian"``; one draw per solve.
        kinetic, jacobian: weights of the kinetic-energy ``∫‖f‖² dt`` and
            Jacobian-Frobenius ``∫‖∂f/∂z‖²_F dt`` regularisers (Finlay et al. 2020),
            integrated along training solves; add :meth:`regularization` to the loss.
        block_size: solves without a graph (``log_prob`` under ``torch.no_grad()``,
            ``sample``) evaluate the field in blocks of this many rows, which keeps its
            intermediates in cache on large batches; None evaluates all rows at once.

    Data normalisation (``set_normalization``) is part of the flow, with its log-det, so
    ``log_prob`` is always in the caller's coordinates; the context is standardised the
    same way before it reaches the dynamics.

    Example:
        >>> flow = CNF(GatedHyperDynamics(dim=2, width=16), dim=2).eval()
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
        >>> conditional = CNF(GatedHyperDynamics(2, 16, context_dim=1), 2, context_dim=1)
        >>> conditional.sample(4, context=torch.tensor([[0.0], [1.0]])).shape
        torch.Size([4, 2, 2])
    """

    def __init__(self, dynamics: nn.Module, dim: int, *, context_dim: int = 0,
                 time: float = 1.0, method: str = "dopri5", rtol: float = 1e-5,
                 atol: float = 1e-5, eval_rtol: float = 1e-8, eval_atol: float = 1e-8,
                 gradient: str = "adjoint", trace: str = "auto", noise: str = "rademacher",
                 kinetic: float = 0.0, jacobian: float = 0.0, block_size: int | None = 4096):
        super().__init__(dim, context_dim)
        if not isinstance(dynamics, nn.Module):
            raise TypeError(f"dynamics must be an nn.Module, got {type(dynamics).__name__}")
        for name, expected in (("dim", dim), ("context_dim", context_dim)):
            declared = getattr(dynamics, name, expected)
            if declared != expected:
                raise ValueError(f"dynamics {type(dynamics).__name__} has {name}={declared}, "
                                 f"but the flow has {name}={expected}")
        if not (isinstance(time, (int, float)) and math.isfinite(time) and time > 0):
            raise ValueError(f"time must be a positive number, got {time!r}")
        for name, value in (("rtol", rtol), ("atol", atol), ("eval_rtol", eval_rtol),
                            ("eval_atol", eval_atol)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name, value in (("kinetic", kinetic), ("jacobian", jacobian)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if block_size is not None:
            _check_size("block_size", block_size)
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not known; choose one of {list(METHODS)}")
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient={gradient!r} is not one of {list(GRADIENT_MODES)}")
        if trace not in TRACE_MODES:
            raise ValueError(f"trace={trace!r} is not one of {list(TRACE_MODES)}")
        if noise not in NOISE_KINDS:
            raise ValueError(f"noise={noise!r} is not one of {list(NOISE_KINDS)}")
        has_closed_form = getattr(dynamics, "closed_form_trace", False)
        if trace == "closed_form" and not has_closed_form:
            raise ValueError(f"trace='closed_form' needs dynamics with forward_with_trace; "
                             f"{type(dynamics).__name__} has none")
        if trace == "auto":
            trace = "closed_form" if has_closed_form else ("exact" if dim <= 8 else "hutchinson")
        # A container, so that the weights are saved as "field.dynamics.*".
        self.field = nn.ModuleDict({"dynamics": dynamics})
        self.time, self.method, self.gradient = float(time), method, gradient
        self.rtol, self.atol, self.eval_rtol, self.eval_atol = rtol, atol, eval_rtol, eval_atol
        self.train_trace, self.noise_kind = trace, noise
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)
        self.block_size = block_size
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("log_scale", torch.zeros(dim))
        if context_dim:
            self.register_buffer("context_shift", torch.zeros(context_dim))
            self.register_buffer("context_log_scale", torch.zeros(context_dim))
        self.last_stats: SolveStats | None = None
        self.last_regularization: torch.Tensor | None = None

    @property
    def dynamics(self) -> nn.Module:
        return self.field["dynamics"]

    @torch.no_grad()
    def set_normalization(self, data: torch.Tensor, context: torch.Tensor | None = None
                          ) -> None:
        """Standardise by the per-dimension mean and standard deviation of ``data`` (and of
        ``context``, for a conditional flow)."""
        data = self.check_points(data, "data")
        self.shift.copy_(data.mean(0))
        self.log_scale.copy_(data.std(0).clamp_min(1e-6).log())
        context = self.check_context(context)
        if context is not None:
            self.context_shift.copy_(context.mean(0))
            self.context_log_scale.copy_(context.std(0).clamp_min(1e-6).log())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Data coordinates → the standardised coordinates the ODE runs in."""
        return (x - self.shift) * torch.exp(-self.log_scale)

    def _context_input(self, context: torch.Tensor | None) -> torch.Tensor | None:
        if context is None:
            return None
        return (context - self.context_shift) * torch.exp(-self.context_log_scale)

    def velocity(self, t: torch.Tensor, z: torch.Tensor,
                 context: torch.Tensor | None = None) -> torch.Tensor:
        """The vector field ``f(t, z[, c])`` in standardised coordinates (what flow
        matching regresses); ``t`` is a scalar or one time per row of ``z``."""
        kwargs = self._context_kwargs(self._context_input(context))
        return self.dynamics(t, z, **kwargs)

    # -- integration ------------------------------------------------------------------

    def _joint_field(self, z: torch.Tensor, context: torch.Tensor | None
                     ) -> tuple[_JointField, float, float, int]:
        """The field of one solve (trace mode, noise, regularisers) and its tolerances."""
        training = self.training and torch.is_grad_enabled()
        dynamics = self.dynamics
        exact = "closed_form" if getattr(dynamics, "closed_form_trace", False) else "exact"
        trace = self.train_trace if training else exact
        kinetic, jacobian = training and self.kinetic > 0, training and self.jacobian > 0
        noise = None
        if trace == "hutchinson" or jacobian:
            noise = torch.randn_like(z)
            noise = noise.sign() if self.noise_kind == "rademacher" else noise
        field = _JointField(dynamics, self.dim, trace, noise, self._context_input(context),
                            kinetic, jacobian, self.block_size)
        extra = int(kinetic) + int(jacobian)
        if self.training:
            return field, self.rtol, self.atol, extra
        return field, self.eval_rtol, self.eval_atol, extra

    def _integrate(self, z: torch.Tensor, times: torch.Tensor, rtol: float | None = None,
                   atol: float | None = None, context: torch.Tensor | None = None
                   ) -> torch.Tensor:
        field, default_rtol, default_atol, extra = self._joint_field(z, context)
        y0 = torch.cat([z, z.new_zeros(z.shape[0], 1 + extra)], 1)
        gradient = self.gradient if torch.is_grad_enabled() else "direct"
        params = tuple(self.dynamics.parameters())
        if field.context is not None and field.context.requires_grad:
            params += (field.context,)  # a learnt embedding gets its gradient too
        # Seminorm: the parameter adjoints need no accuracy control of their own, which
        # saves a large share of the backward evaluations.
        sol = solve(field, y0, times.to(z), method=self.method,
                    rtol=default_rtol if rtol is None else rtol,
                    atol=default_atol if atol is None else atol, gradient=gradient,
                    adjoint_params=params, adjoint_options={"norm": "seminorm"})
        self.last_stats = sol.stats
        ys = sol.ys
        # The regularisers are integrals over [0, T]; solved from T to 0 (data → base, as in
        # log_prob) their state ends at minus the integral.
        backward = float(times[-1]) < float(times[0])
        reg = ys[-1, :, self.dim + 1:] if extra else None
        self.last_regularization = -reg if backward and reg is not None else reg
        return ys

    def regularization(self) -> torch.Tensor:
        """Weighted regularisers of the last training solve (batch mean); 0 if none ran."""
        reg = self.last_regularization
        if reg is None:
            return self._anchor.new_zeros(())
        weights = [w for w in (self.kinetic, self.jacobian) if w > 0]
        return sum(w * reg[:, i].mean() for i, w in enumerate(weights))

    def _log_det_normalization(self) -> torch.Tensor:
        return self.log_scale.sum()

    def to_base(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                rtol: float | None = None, atol: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Data → base for rows ``x`` ``(n, dim)`` (and ``context`` ``(n, k)``): ``z`` and
        ``log|det ∂z/∂x|``."""
        times = torch.tensor([self.time, 0.0])
        end = self._integrate(self.normalize(x), times, rtol, atol, context)[-1]
        # Integrated backwards, ℓ(0) = log p_0(z_0) − log p_T(x_n) = −log|det ∂z_0/∂x_n|.
        return end[:, : self.dim], -end[:, self.dim] - self._log_det_normalization()

    def from_base(self, z: torch.Tensor, context: torch.Tensor | None = None, *,
                  rtol: float | None = None, atol: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base → data for rows ``z`` (and ``context``): ``x`` and ``log|det ∂x/∂z|``."""
        end = self._integrate(z, torch.tensor([0.0, self.time]), rtol, atol, context)[-1]
        x = end[:, : self.dim] * torch.exp(self.log_scale) + self.shift
        return x, -end[:, self.dim] + self._log_det_normalization()

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                 rtol: float | None = None, atol: float | None = None) -> torch.Tensor:
        """Exact log-density of ``x`` (shape ``(..., dim)``) in the caller's coordinates,
        given ``context`` (shape ``(..., context_dim)``, broadcast against ``x``) for a
        conditional flow.

        In eval mode the trace is exact and the default tolerances are ``eval_rtol`` /
        ``eval_atol``; pass ``rtol``/``atol`` to override them for this call.
        """
        x, context = self.check_points(x), self.check_context(context)
        rows, context, batch = self._broadcast(x, context)
        if len(rows) == 0:
            return rows.new_zeros(batch)
        z, log_det = self.to_base(rows, context, rtol=rtol, atol=atol)
        return (standard_normal_log_prob(z) + log_det).reshape(batch)

    def trajectory(self, z: torch.Tensor, times: torch.Tensor,
                   context: torch.Tensor | None = None) -> torch.Tensor:
        """States at ``times`` (fractions of T in [0, 1]) starting from base points ``z``
        (rows ``(n, dim)``, with ``context`` rows ``(n, k)`` for a conditional flow).

        Returns shape ``(len(times), n, dim)`` in data coordinates at every time (the
        normalisation is applied throughout, so snapshots share the data's axes).
        """
        z, context = self.check_points(z, "z"), self.check_context(context)
        times = torch.as_tensor(times, dtype=torch.float64)
        if times.dim() != 1 or (times < 0).any() or (times > 1).any():
            raise ValueError(f"times must be a 1-D tensor of fractions in [0, 1], got {times}")
        ys = self._integrate(z, times * self.time, context=context)
        return ys[:, :, : self.dim] * torch.exp(self.log_scale) + self.shift
