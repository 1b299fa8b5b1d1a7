"""Continuous normalizing flows (Chen et al. 2018, Sec. 4; Grathwohl et al. 2019).

The state ``z(t)`` follows ``dz/dt = f(z, t)`` and its log-density follows
``d log p(z(t))/dt = −tr(∂f/∂z)``. Both are integrated together by the solver core, as one
``(batch, dim + 1 [+ regularisers])`` tensor. The data live at ``t = T``, the standard-normal
base at ``t = 0``.

Two vector fields, in :mod:`cnflow.flows.dynamics` (and importable from here):
:class:`GatedHyperDynamics`, the paper's layer with its closed-form trace and vector-Jacobian
product, and :class:`ConcatSquashMLP` (FFJORD), with the exact trace by autograd or
Hutchinson's estimator.
"""

from __future__ import annotations

import torch
from torch import nn

from cnflow.flows.base import Flow, standard_normal_log_prob
from cnflow.flows.dynamics import ConcatSquashMLP, GatedHyperDynamics
from cnflow.solvers import GRADIENT_MODES, METHODS, SolveStats, solve
from cnflow.validation import check_choice, check_float, check_int

__all__ = ["CNF", "NOISE_KINDS", "TRACE_MODES", "ConcatSquashMLP", "GatedHyperDynamics", "JointField"]

TRACE_MODES = ("auto", "closed_form", "exact", "hutchinson")
NOISE_KINDS = ("rademacher", "gaussian")
#: Rows of equal context are evaluated as one group while there are at least this many rows
#: per distinct context (see JointField).
MIN_GROUP_ROWS = 16


class JointField:
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
        # The closed-form VJP needs a closed-form trace; of the regularisers it covers the
        # kinetic energy (a function of f alone), not the Jacobian's Frobenius norm.
        self.closed_form_vjp = (trace == "closed_form" and not jacobian
                                and hasattr(dynamics, "joint_vjp"))
        # Rows of equal context share their units. With few distinct contexts (a label, or
        # one context broadcast over a sample) each group of rows takes the shared path:
        # one hypernetwork row per group instead of one per point. A context that needs a
        # gradient is never grouped (torch.unique has none). Grouping reads the group sizes
        # back once per solve (one host sync on CUDA), not per step.
        self.groups = None
        if self.closed_form_vjp and context is not None and not context.requires_grad:
            values, inverse = torch.unique(context, dim=0, return_inverse=True)
            if 0 < len(values) * MIN_GROUP_ROWS <= len(context):
                order = torch.argsort(inverse, stable=True)
                counts = torch.bincount(inverse, minlength=len(values)).tolist()
                self.groups = (values, order, counts, torch.argsort(order))
        # Units shared by all rows of a group: the forward evaluations and the stage-time
        # batching go through them too. Otherwise (many distinct contexts) the units are per
        # point, (N, P) numbers per evaluation: computed for the VJP stage by stage, and
        # never for a forward solve, whose rows may be many (log_prob evaluates in blocks).
        self.shared = self.closed_form_vjp and (context is None or self.groups is not None)

    @property
    def vjp_params(self) -> tuple[torch.Tensor, ...] | None:
        """The dynamics' parameters where the closed-form VJP applies (the solver core's
        VJP protocol, :mod:`cnflow.solvers.field`), else None: autograd."""
        return tuple(self.dynamics.parameters()) if self.closed_form_vjp else None

    def vjp(self, t: torch.Tensor, y: torch.Tensor, a: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """The field, ``aᵀ ∂field/∂y`` and a partial for :meth:`param_vjp`, in closed form."""
        return _JointFieldAt(self, self._units(t[None])[0]).vjp(y, a)

    def _units(self, ts: torch.Tensor) -> list[list]:
        """The dynamics' units at each time in ``ts``: one per group of rows (all rows
        without a context; per point with many distinct contexts)."""
        x = ts[:, None].to(self.dynamics.hyper[0].weight.dtype)
        if self.groups is None:
            return [[unit] for unit in self.dynamics.units(x, self.context)]
        values = self.groups[0]
        g = len(values)
        units = self.dynamics.units(torch.cat(
            [x.repeat_interleave(g, 0), values.to(x.dtype).repeat(len(ts), 1)], 1))
        return [units[i * g: (i + 1) * g] for i in range(len(ts))]

    def _split(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The rows of ``y`` of each group."""
        if self.groups is None or len(self.groups[2]) == 1:
            return [y]
        _, order, counts, _ = self.groups
        return list(torch.split(y[order], counts))

    def _merge(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`_split`."""
        return parts[0] if len(parts) == 1 else torch.cat(parts)[self.groups[3]]

    def _vjp(self, unit, y: torch.Tensor, a: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, object]:
        d = self.dim
        dz, dlogp, a_z, partial = self.dynamics.joint_vjp(
            unit, y[:, :d], a[:, :d], a[:, d], a[:, d + 1] if self.kinetic else None)
        # No column depends on the log-density or the kinetic energy: their cotangents are 0.
        return (self._closed_form_columns(dz, dlogp),
                nn.functional.pad(a_z, (0, 1 + self.kinetic)), partial)

    def _closed_form_columns(self, dz: torch.Tensor, dlogp: torch.Tensor) -> torch.Tensor:
        """The joint state's derivative from the closed forms: ``f``, ``d log p/dt`` and,
        with the kinetic regulariser, ``‖f‖²``."""
        columns = [dz, dlogp[:, None]]
        if self.kinetic:
            columns.append(dz.pow(2).sum(1, keepdim=True))
        return torch.cat(columns, 1)

    def param_vjp(self, partials: list[list], weights: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
        # Each evaluation's partial holds one entry per group, all with its weight.
        return self.dynamics.param_vjp([q for p in partials for q in p],
                                       weights.repeat_interleave(len(partials[0])))

    def at_times(self, ts: torch.Tensor) -> list[_JointFieldAt] | None:
        """The field at each time in ``ts``, the hypernetwork evaluated once for all."""
        if not self.shared:
            return None
        return [_JointFieldAt(self, units) for units in self._units(ts)]

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
    """A :class:`JointField` at one time, with the units its hypernetwork gave there (one
    per group of rows)."""

    def __init__(self, field: JointField, units: list):
        self.field, self.units = field, units

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        field = self.field
        return field._merge([self._rows(unit, rows)
                             for unit, rows in zip(self.units, field._split(y))])

    def _rows(self, unit, y: torch.Tensor) -> torch.Tensor:
        block = self.field.block
        if block is not None and len(y) > block and not torch.is_grad_enabled():
            # In row blocks, as JointField.__call__ does.
            return torch.cat([self._rows(unit, y[i: i + block])
                              for i in range(0, len(y), block)])
        return self.field._closed_form_columns(
            *self.field.dynamics.joint(unit, y[:, : self.field.dim]))

    def vjp(self, y: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        field = self.field
        parts = [field._vjp(unit, rows, cotangent) for unit, rows, cotangent in
                 zip(self.units, field._split(y), field._split(a))]
        return (field._merge([p[0] for p in parts]), field._merge([p[1] for p in parts]),
                [p[2] for p in parts])


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
        check_float("time", time)
        for name, value in (("rtol", rtol), ("atol", atol), ("eval_rtol", eval_rtol),
                            ("eval_atol", eval_atol)):
            check_float(name, value)
        for name, value in (("kinetic", kinetic), ("jacobian", jacobian)):
            check_float(name, value, allow_minimum=True)
        check_int("block_size", block_size, optional=True)
        check_choice("method", method, METHODS)
        check_choice("gradient", gradient, GRADIENT_MODES)
        check_choice("trace", trace, TRACE_MODES)
        check_choice("noise", noise, NOISE_KINDS)
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
        self.last_stats: SolveStats | None = None
        self.last_regularization: torch.Tensor | None = None

    @property
    def dynamics(self) -> nn.Module:
        return self.field["dynamics"]

    def velocity(self, t: torch.Tensor, z: torch.Tensor,
                 context: torch.Tensor | None = None) -> torch.Tensor:
        """The vector field ``f(t, z[, c])`` in standardised coordinates (what flow
        matching regresses); ``t`` is a scalar or one time per row of ``z``."""
        kwargs = self._context_kwargs(self.normalize_context(context))
        return self.dynamics(t, z, **kwargs)

    # -- integration ------------------------------------------------------------------

    def _joint_field(self, z: torch.Tensor, context: torch.Tensor | None
                     ) -> tuple[JointField, float, float, int]:
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
        field = JointField(dynamics, self.dim, trace, noise, self.normalize_context(context),
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
        x = self.denormalize(end[:, : self.dim])
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
        return self.denormalize(ys[:, :, : self.dim])
