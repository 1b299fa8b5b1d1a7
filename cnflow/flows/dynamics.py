"""The vector fields of cnflow's CNFs, ``f(t, z[, context])``.

* :class:`GatedHyperDynamics`, the paper's layer (Chen et al. 2018, Sec. 4)
  ``f(z, t) = Σ_n σ_n(t) u_n(t) tanh(w_n(t)ᵀ z + b_n(t))`` whose time-dependent parameters
  come from a hypernetwork of ``t``. Its trace has the closed form
  ``Σ_n σ_n (u_n·w_n)(1 − tanh²(w_nᵀz + b_n))``: O(M·D) per point, no autograd; so has
  the vector-Jacobian product of the joint field (state and log-density) that the adjoint
  needs.
* :class:`ConcatSquashMLP`, a general network for any dimension (FFJORD's concat-squash
  layers), whose trace the CNF takes by autograd or Hutchinson's estimator.
"""

from __future__ import annotations

from itertools import pairwise
from typing import NamedTuple

import torch
from torch import nn

from cnflow.validation import check_int


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
            check_int(name, value)
        check_int("context_dim", context_dim, minimum=0)
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

    def units(self, x: torch.Tensor, context: torch.Tensor | None = None) -> list[_Unit]:
        """The units at each time row of ``x`` (``(K, 1)``), for the joint field's closed
        forms: shared by all points without a context; with a context ``(N, k)``, one set
        per point (its hypernetwork rows are ``[t, c_n]``), from one call for all K times."""
        if context is None:
            h1, h2, w, gated, b, sig, u = self._hyper(x)
            s = (gated * w).sum(2)
            rest = (x, h1, h2, sig, u)  # for param_vjp only: indexed there, not here
            return [_Unit(*row, rest, i) for i, row in enumerate(zip(
                w.transpose(1, 2), gated.transpose(1, 2), b, s, s.sum(1)))]
        n = len(context)
        rows = torch.cat([x.repeat_interleave(n, 0), context.to(x.dtype).repeat(len(x), 1)], 1)
        h1, h2, w, gated, b, sig, u = self._hyper(rows)
        s = (gated * w).sum(2)
        rest = (rows, h1, h2, sig, u)
        # Row block k of the hypernetwork's outputs is time k; each unit keeps its block.
        return [_Unit(w[k], gated[k], b[k], s[k], s[k].sum(1), rest, k)
                for k in (slice(i * n, (i + 1) * n) for i in range(len(x)))]

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

    # The joint field's closed forms. With units shared by all points, products with a few
    # output columns are written transposed, (Uᵀ hᵀ)ᵀ for h U: MKL's kernel for that shape
    # measured about twice as fast at (512, 64) @ (64, 2); the results are transposed views,
    # which the joint field copies into its state anyway. Per-point units (a context) are
    # (N, M, D) and contract point by point.

    def joint(self, unit: _Unit, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f`` and ``d log p/dt = −tr(∂f/∂z) = Σ_m (h_m² − 1) s_m`` at ``unit``."""
        if unit.per_point:
            h = _tanh(torch.einsum("nmd,nd->nm", unit.w_t, z) + unit.b)
            return (torch.einsum("nm,nmd->nd", h, unit.gated_t),
                    (h * h * unit.s).sum(1) - unit.s_sum)
        h = _tanh_affine(unit.b, z, unit.w_t)
        return (unit.gated_t @ h.t()).t(), (h * h) @ unit.s - unit.s_sum

    def joint_vjp(self, unit: _Unit, z: torch.Tensor, a_z: torch.Tensor,
                  a_logp: torch.Tensor, a_kinetic: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, ...]:
        """:meth:`joint`, and ``∂(a_z·f + a_logp·d log p/dt)/∂z`` in closed form, with a
        partial for :meth:`param_vjp`.

        With ``h = tanh(Wz + b)``, ``s_m = u_m·w_m`` and ``d log p/dt = Σ_m (h_m² − 1) s_m``,
        the cotangent of ``h`` is ``a_z Uᵀ + 2 a_logp h s``; ``z`` gets it through
        ``(1 − h²)`` and ``W``. With ``a_kinetic``, the cotangent of the kinetic energy
        ``‖f‖²`` joins ``a_z`` as ``2 a_kinetic f``: ``f`` is the only path it takes.
        """
        if unit.per_point:
            h = _tanh(torch.einsum("nmd,nd->nm", unit.w_t, z) + unit.b)
            f = torch.einsum("nm,nmd->nd", h, unit.gated_t)
        else:
            h = _tanh_affine(unit.b, z, unit.w_t)
            f = (unit.gated_t @ h.t()).t()
        if a_kinetic is not None:
            a_z = torch.addcmul(a_z, f, a_kinetic[:, None], value=2)
        hh = h * h
        slope = 1 - hh
        if unit.per_point:
            g = (torch.einsum("nd,nmd->nm", a_z, unit.gated_t)
                 .addcmul_(h * unit.s, a_logp[:, None], value=2).mul_(slope))
            return (f, (hh * unit.s).sum(1) - unit.s_sum,
                    torch.einsum("nm,nmd->nd", g, unit.w_t), (unit, z, h, slope, g, a_z, a_logp))
        g = (a_z @ unit.gated_t).addcmul_(h * unit.s, a_logp[:, None], value=2).mul_(slope)
        return (f, hh @ unit.s - unit.s_sum, (unit.w_t @ g.t()).t(),
                (unit, z, h, slope, g, a_z, a_logp))

    def param_vjp(self, partials: list[tuple], weights: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
        """``Σ_k w_k ∂(a_z·f + a_logp·d log p/dt)/∂θ`` over :meth:`joint_vjp` partials, for
        ``θ = self.parameters()``: the units' cotangents of every evaluation, then one pass
        back through the hypernetwork for all of them (its rows are their times, or with a
        context their (time, point) pairs).

        ``s = Σ_d gated ⊙ W`` enters d log p/dt with cotangent ``−a_logp (1 − h²) = −ds``,
        which both ``W`` and gated ``U`` receive through the product.
        """
        units = [p[0] for p in partials]
        if units[0].per_point:
            d_raw = []
            for (unit, z, h, slope, g, a_z, a_logp), weight in zip(partials, weights):
                ds = (a_logp[:, None] * slope)[:, :, None]
                d_gated = (h[:, :, None] * a_z[:, None, :]).addcmul_(ds, unit.w_t, value=-1)
                d_w = (g[:, :, None] * z[:, None, :]).addcmul_(ds, unit.gated_t, value=-1)
                sig, u = (unit.rest[j][unit.i] for j in (3, 4))
                d_raw.append(self._raw_cotangent(sig, u, d_w, d_gated, g).mul_(weight))
            rows = [torch.cat([u.rest[j][u.i] for u in units]) for j in range(3)]
            return self._hyper_vjp(torch.cat(d_raw), *rows)
        ds, d_gated_t, d_w_t, d_b = (torch.stack(v) for v in zip(*(
            (a_logp @ slope, a_z.t() @ h, z.t() @ g, g.sum(0))
            for _, z, h, slope, g, a_z, a_logp in partials)))
        w_t, gated_t = (torch.stack([getattr(u, name) for u in units])
                        for name in ("w_t", "gated_t"))
        d_gated_t.addcmul_(w_t, ds[:, None, :], value=-1)
        d_w_t.addcmul_(gated_t, ds[:, None, :], value=-1)
        sig, u = (torch.stack([x.rest[j][x.i] for x in units]) for j in (3, 4))
        d_raw = self._raw_cotangent(sig, u, d_w_t.transpose(1, 2), d_gated_t.transpose(1, 2),
                                    d_b).mul_(weights[:, None])
        return self._hyper_vjp(d_raw, *(torch.stack([u.rest[j][u.i] for u in units])
                                        for j in range(3)))

    def _hyper_vjp(self, d_raw: torch.Tensor, x: torch.Tensor, h1: torch.Tensor,
                   h2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The parameter cotangents of the hypernetwork from those ``d_raw`` ``(R, P)`` of
        its outputs at the rows ``x`` (hidden activations ``h1``, ``h2``)."""
        second, out = self.hyper[2], self.hyper[4]
        d_q2 = (d_raw @ out.weight) * (1 - h2 * h2)
        d_q1 = (d_q2 @ second.weight) * (1 - h1 * h1)
        return (d_q1.t() @ x, d_q1.sum(0), d_q2.t() @ h1, d_q2.sum(0), d_raw.t() @ h2,
                d_raw.sum(0))

    def _raw_cotangent(self, sig: torch.Tensor, u: torch.Tensor, d_w: torch.Tensor,
                       d_gated: torch.Tensor, d_b: torch.Tensor) -> torch.Tensor:
        """The cotangents ``(R, P)`` of the hypernetwork's outputs at R rows, from those of
        ``W`` and gated ``U`` (``(R, M, D)``) and ``b`` (``(R, M)``), given the rows' gates
        ``sig`` and ungated ``u`` (as :meth:`_hyper` returns them): the chain rule of its
        parameterisation."""
        d_gate = sig * (1 - sig) * (u * d_gated).sum(2)
        r = len(d_b)
        return torch.cat([d_w.reshape(r, -1), (sig[:, :, None] * d_gated).reshape(r, -1),
                          d_b, d_gate], 1)


class _Unit(NamedTuple):
    """:class:`GatedHyperDynamics`' units at one time: ``Wᵀ`` and gated ``Uᵀ`` (``(D, M)``),
    ``b``, ``s = Σ_d gated ⊙ W`` and its sum, shared by all points; or, with a context, one
    set per point: ``W`` and gated ``U`` ``(N, M, D)``, ``b`` and ``s`` ``(N, M)``, the sums
    ``(N,)``. And, for the parameter cotangents, row(s) ``i`` of ``rest``: the
    hypernetwork's inputs, hidden activations, gates ``σ`` and ungated ``U`` at all the rows
    it was evaluated at."""

    w_t: torch.Tensor
    gated_t: torch.Tensor
    b: torch.Tensor
    s: torch.Tensor
    s_sum: torch.Tensor
    rest: tuple[torch.Tensor, ...]
    i: int | slice

    @property
    def per_point(self) -> bool:
        """Whether every point has its own units (a conditional field)."""
        return self.w_t.dim() == 3


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
        check_int("dim", dim)
        check_int("context_dim", context_dim, minimum=0)
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
