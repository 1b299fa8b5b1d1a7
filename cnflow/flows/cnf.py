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

import torch
from torch import nn

from cnflow.flows.base import Flow, standard_normal_log_prob
from cnflow.solvers import GRADIENT_MODES, METHODS, SolveStats, solve

TRACE_MODES = ("auto", "closed_form", "exact", "hutchinson")
NOISE_KINDS = ("rademacher", "gaussian")


class GatedHyperDynamics(nn.Module):
    """The paper's gated, time-dependent CNF layer with a closed-form trace.

    Args:
        dim: data dimension D.
        width: number of hidden units M.
        hidden: width of the hypernetwork ``t -> (W, U, b, gate)``.

    The hypernetwork's output layer starts at zero for ``U``, so an untrained flow is the
    identity map: training starts from the base density and from cheap solves.
    """

    closed_form_trace = True

    def __init__(self, dim: int, width: int = 64, hidden: int = 32):
        super().__init__()
        for name, value in (("dim", dim), ("width", width), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.dim, self.width = dim, width
        self.hyper = nn.Sequential(
            nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 2 * width * dim + 2 * width),
        )
        with torch.no_grad():
            out = self.hyper[-1]
            u = slice(width * dim, 2 * width * dim)
            out.weight[u].zero_()
            out.bias[u].zero_()

    def unit_parameters(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``W (M, D)``, gated ``σ ⊙ U (M, D)`` and ``b (M,)`` at time ``t``."""
        m, d = self.width, self.dim
        params = self.hyper(t.reshape(1, 1).to(self.hyper[0].weight.dtype)).reshape(-1)
        w = params[: m * d].view(m, d)
        u = params[m * d: 2 * m * d].view(m, d)
        b = params[2 * m * d: 2 * m * d + m]
        gate = torch.sigmoid(params[2 * m * d + m:])
        return w, gate[:, None] * u, b

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        w, u, b = self.unit_parameters(t)
        return torch.tanh(torch.addmm(b, z, w.t())) @ u

    def forward_with_trace(self, t: torch.Tensor, z: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(z, t)`` and ``tr(∂f/∂z)`` per point, in closed form."""
        w, u, b = self.unit_parameters(t)
        h = torch.tanh(torch.addmm(b, z, w.t()))
        return h @ u, (1 - h * h) @ (u * w).sum(1)


class ConcatSquash(nn.Module):
    """``(W x + b) · σ(a t + c) + d t``: a linear layer modulated by time (FFJORD)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.gate = nn.Linear(1, n_out)
        self.shift = nn.Linear(1, n_out, bias=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(1, 1).to(x.dtype)
        return self.linear(x) * torch.sigmoid(self.gate(tt)) + self.shift(tt)


class ConcatSquashMLP(nn.Module):
    """A general time-dependent vector field for any dimension.

    Args:
        dim: data dimension.
        hidden: widths of the hidden layers.
        activation: ``"tanh"`` or ``"softplus"``.
    """

    closed_form_trace = False

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64, 64),
                 activation: str = "tanh"):
        super().__init__()
        acts = {"tanh": nn.Tanh, "softplus": nn.Softplus}
        if activation not in acts:
            raise ValueError(f"activation={activation!r} is not one of {list(acts)}")
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(ConcatSquash(a, b) for a, b in pairwise(sizes))
        self.act = acts[activation]()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class _JointField(nn.Module):
    """The vector field of ``[z, log-density change, regularisers]`` solved together."""

    def __init__(self, dynamics: nn.Module, dim: int):
        super().__init__()
        self.dynamics = dynamics
        self.dim = dim
        self.trace = "closed_form"
        self.noise: torch.Tensor | None = None
        self.kinetic = False
        self.jacobian = False

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = y[:, : self.dim]
        columns = []
        if self.trace == "closed_form" and not self.jacobian:
            dz, trace = self.dynamics.forward_with_trace(t, z)
        else:
            # Keep the graph of the trace only when gradients will flow through it.
            create = torch.is_grad_enabled() and (z.requires_grad or any(
                p.requires_grad for p in self.dynamics.parameters()))
            with torch.enable_grad():
                if not (create and z.requires_grad):
                    # A fresh leaf: z may be a no-grad view of a tensor that requires grad.
                    z = z.detach().requires_grad_(True)
                if self.trace == "closed_form":
                    dz, trace = self.dynamics.forward_with_trace(t, z)
                else:
                    dz = self.dynamics(t, z)
                    trace = self._trace(dz, z, create)
                if self.jacobian:
                    eps = self.noise
                    vjp = torch.autograd.grad(dz, z, eps, create_graph=create)[0]
                    columns.append(vjp.pow(2).sum(1, keepdim=True))
            if not create:
                dz, trace = dz.detach(), trace.detach()
                columns = [c.detach() for c in columns]
        if self.kinetic:
            columns.insert(0, dz.pow(2).sum(1, keepdim=True))
        return torch.cat([dz, -trace[:, None], *columns], 1)

    def _trace(self, dz: torch.Tensor, z: torch.Tensor, create: bool) -> torch.Tensor:
        if self.trace == "hutchinson":
            vjp = torch.autograd.grad(dz, z, self.noise, create_graph=create)[0]
            return (vjp * self.noise).sum(1)
        # Exact: one vector-Jacobian product per dimension.
        trace = torch.zeros_like(dz[:, 0])
        for i in range(self.dim):
            grad = torch.autograd.grad(dz[:, i].sum(), z, create_graph=True, retain_graph=True)
            trace = trace + grad[0][:, i]
        return trace


class CNF(Flow):
    """A continuous normalizing flow that behaves like a torch distribution.

    Args:
        dynamics: the vector field ``f(t, z)``; a :class:`GatedHyperDynamics` gives the
            closed-form trace, any other module gets the exact autograd trace or
            Hutchinson's estimator.
        dim: data dimension.
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

    Data normalisation (``set_normalization``) is part of the flow, with its log-det, so
    ``log_prob`` is always in the caller's coordinates.

    Example:
        >>> flow = CNF(GatedHyperDynamics(dim=2, width=16), dim=2).eval()
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(self, dynamics: nn.Module, dim: int, *, time: float = 1.0,
                 method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 eval_rtol: float = 1e-8, eval_atol: float = 1e-8, gradient: str = "adjoint",
                 trace: str = "auto", noise: str = "rademacher", kinetic: float = 0.0,
                 jacobian: float = 0.0):
        super().__init__(dim)
        if not (isinstance(time, (int, float)) and math.isfinite(time) and time > 0):
            raise ValueError(f"time must be a positive number, got {time!r}")
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
        self.field = _JointField(dynamics, dim)
        self.time, self.method, self.gradient = float(time), method, gradient
        self.rtol, self.atol, self.eval_rtol, self.eval_atol = rtol, atol, eval_rtol, eval_atol
        self.train_trace, self.noise_kind = trace, noise
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("log_scale", torch.zeros(dim))
        self.last_stats: SolveStats | None = None
        self.last_regularization: torch.Tensor | None = None

    @property
    def dynamics(self) -> nn.Module:
        return self.field.dynamics

    @torch.no_grad()
    def set_normalization(self, data: torch.Tensor) -> None:
        """Standardise by the per-dimension mean and standard deviation of ``data``."""
        data = self.check_points(data, "data")
        self.shift.copy_(data.mean(0))
        self.log_scale.copy_(data.std(0).clamp_min(1e-6).log())

    # -- integration ------------------------------------------------------------------

    def _configure(self, z: torch.Tensor) -> tuple[float, float, int]:
        """Set the trace mode, noise and regularisers for one solve; return tolerances."""
        field = self.field
        training = self.training and torch.is_grad_enabled()
        exact = "closed_form" if getattr(field.dynamics, "closed_form_trace", False) else "exact"
        field.trace = self.train_trace if training else exact
        field.kinetic = training and self.kinetic > 0
        field.jacobian = training and self.jacobian > 0
        if field.trace == "hutchinson" or field.jacobian:
            noise = torch.randn_like(z)
            field.noise = noise.sign() if self.noise_kind == "rademacher" else noise
        else:
            field.noise = None
        extra = int(field.kinetic) + int(field.jacobian)
        if self.training:
            return self.rtol, self.atol, extra
        return self.eval_rtol, self.eval_atol, extra

    def _integrate(self, z: torch.Tensor, times: torch.Tensor, rtol: float | None = None,
                   atol: float | None = None) -> torch.Tensor:
        default_rtol, default_atol, extra = self._configure(z)
        y0 = torch.cat([z, z.new_zeros(z.shape[0], 1 + extra)], 1)
        gradient = self.gradient if torch.is_grad_enabled() else "direct"
        # Seminorm: the parameter adjoints need no accuracy control of their own, which
        # saves a large share of the backward evaluations.
        sol = solve(self.field, y0, times.to(z), method=self.method,
                    rtol=default_rtol if rtol is None else rtol,
                    atol=default_atol if atol is None else atol, gradient=gradient,
                    adjoint_options={"norm": "seminorm"})
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

    def to_base(self, x: torch.Tensor, rtol: float | None = None, atol: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Data → base: ``z`` and ``log|det ∂z/∂x|``."""
        z = (x - self.shift) * torch.exp(-self.log_scale)
        times = torch.tensor([self.time, 0.0])
        end = self._integrate(z, times, rtol, atol)[-1]
        # Integrated backwards, ℓ(0) = log p_0(z_0) − log p_T(x_n) = −log|det ∂z_0/∂x_n|.
        return end[:, : self.dim], -end[:, self.dim] - self._log_det_normalization()

    def from_base(self, z: torch.Tensor, rtol: float | None = None, atol: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base → data: ``x`` and ``log|det ∂x/∂z|``."""
        end = self._integrate(z, torch.tensor([0.0, self.time]), rtol, atol)[-1]
        x = end[:, : self.dim] * torch.exp(self.log_scale) + self.shift
        return x, -end[:, self.dim] + self._log_det_normalization()

    def log_prob(self, x: torch.Tensor, *, rtol: float | None = None,
                 atol: float | None = None) -> torch.Tensor:
        """Exact log-density of ``x`` (shape ``(..., dim)``) in the caller's coordinates.

        In eval mode the trace is exact and the default tolerances are ``eval_rtol`` /
        ``eval_atol``; pass ``rtol``/``atol`` to override them for this call.
        """
        x = self.check_points(x)
        batch = x.shape[:-1]
        z, log_det = self.to_base(x.reshape(-1, self.dim), rtol, atol)
        return (standard_normal_log_prob(z) + log_det).reshape(batch)

    def trajectory(self, z: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """States at ``times`` (fractions of T in [0, 1]) starting from base points ``z``.

        Returns shape ``(len(times), n, dim)`` in data coordinates at every time (the
        normalisation is applied throughout, so snapshots share the data's axes).
        """
        z = self.check_points(z, "z")
        times = torch.as_tensor(times, dtype=torch.float64)
        if times.dim() != 1 or (times < 0).any() or (times > 1).any():
            raise ValueError(f"times must be a 1-D tensor of fractions in [0, 1], got {times}")
        ys = self._integrate(z, times * self.time)
        return ys[:, :, : self.dim] * torch.exp(self.log_scale) + self.shift
