"""The adjoint gradient strategy (Chen et al. 2018, Sec. 2 and Algorithm 1).

One augmented solve backwards in time per output interval, of the state ``y``, its adjoint
``a = dL/dy`` and the parameter adjoint ``a_θ = dL/dθ``: in backward time ``s = −t``

    dy/ds = −f,    da/ds = aᵀ ∂f/∂y,    da_θ/ds = aᵀ ∂f/∂θ.

At every output time the adjoint jumps by that output's incoming gradient (the paper's
Figure 2), and the state restarts from the stored forward value, which keeps the backward
reconstruction of ``y`` from drifting over many intervals. One step-size controller serves
all intervals, so the step size carries over instead of each interval restarting with an
initial-step probe and a small first step.

The vector-Jacobian products come from the field's own ``vjp`` when it has one (see
:mod:`cnflow.solvers.field`), else from ``torch.autograd.grad``.

**The parameter adjoint as a quadrature.** The derivatives of ``(y, a)`` do not depend on
``a_θ``, so every stage of ``(y, a)`` is the same whether ``a_θ`` is carried in the
Runge–Kutta state or not, and the Runge–Kutta update of the ``a_θ`` components is
``a_θ ← a_θ + h Σ_i b_i g_i`` with ``g_i = a_iᵀ ∂f/∂θ`` at stage ``i``: a quadrature over
the accepted steps' stages. Only ``(y, a)`` is stepped; the ``g_i`` of a step are computed
together, when the step needs them — for the error estimate ``h Σ_i (b_i − b̂_i) g_i`` that a
full norm measures (:class:`~cnflow.solvers.controllers.MeasuredQuadrature`), and for the
update once the step is accepted. That is the same computation as carrying ``a_θ`` up to the
order of floating-point additions, not an approximation; it never combines the (large)
parameter vector into stages, and lets a field compute all stages' parameter cotangents of a
step in one pass. Under the seminorm, which measures ``(y, a)`` only, rejected steps then
cost no parameter VJPs at all, and neither does the initial-step probe.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from cnflow.solvers.controllers import StepControl, make_controller
from cnflow.solvers.field import FieldVJP
from cnflow.solvers.gradients import Gradient, GradientArgs
from cnflow.solvers.problem import Problem, check_options, check_tolerances, make_norm
from cnflow.solvers.runge_kutta import integrate
from cnflow.solvers.tableaus import ButcherTableau, get_tableau

__all__ = ["Adjoint"]


class Adjoint(Gradient):
    """Gradients from the adjoint ODE; memory independent of the number of steps.

    Args:
        tableau: method of the backward solve.
        rtol, atol: its tolerances.
        control: its step options.
        norm_kind: its error norm (``"seminorm"``: the parameter adjoint is left out of the
            step control and integrated as a quadrature).
    """

    def __init__(self, tableau: ButcherTableau, rtol: float, atol: float,
                 control: StepControl, norm_kind: Any):
        self.tableau, self.rtol, self.atol = tableau, rtol, atol
        self.control, self.norm_kind = control, norm_kind

    @classmethod
    def configure(cls, args: GradientArgs) -> Adjoint:
        tableau = get_tableau(args.adjoint_method or args.tableau.name)
        rtol, atol = check_tolerances(
            args.rtol if args.adjoint_rtol is None else args.adjoint_rtol,
            args.atol if args.adjoint_atol is None else args.adjoint_atol, tableau, args.dtype,
            names=("rtol" if args.adjoint_rtol is None else "adjoint_rtol",
                   "atol" if args.adjoint_atol is None else "adjoint_atol"))
        options, name = args.adjoint_options, "adjoint_options"
        if options is None:
            # The forward's norm may not suit the augmented state; its step options do.
            options = {k: v for k, v in (args.options or {}).items() if k != "norm"}
            name = "options"
        control, norm_kind = check_options(options, tableau, name)
        if norm_kind in ("per_sample", "per_sample_max"):
            raise ValueError(f"adjoint_options['norm']={norm_kind!r} is not supported; use "
                             "'rms', 'max', 'seminorm' or a callable")
        return cls(tableau, rtol, atol, control, norm_kind)

    def solve(self, problem: Problem, y0: torch.Tensor,
              params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return _AdjointSolve.apply(y0, problem, self, *params)

    def gradients(self, problem: Problem, ys: torch.Tensor, grad_ys: torch.Tensor,
                  params: tuple[torch.Tensor, ...]
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``dL/dy0`` and ``dL/dθ`` for each parameter, from the outputs' gradients."""
        n = ys.shape[1]
        system = _AdjointSystem(problem.func.vjp_for(params), n, self.tableau, params,
                                like=ys)
        measured = self.norm_kind != "seminorm"
        norm = make_norm(self.norm_kind, [], measured=2 * n)
        # One controller for every interval carries the step size across them. Its
        # initial-step probe records nothing for the quadrature; a full norm sees the
        # parameter adjoint beside (y, a) in every error estimate and in the probe.
        controller = make_controller(self.tableau, self.rtol, self.atol, self.control, norm,
                                     probe=system.probe,
                                     quadrature=system if measured else None)
        stats = problem.stats.backward_stats()
        a = grad_ys[-1]
        times = problem.times
        for i in range(len(times) - 1, 0, -1):
            system.partials.clear()  # the interval's first evaluation is its first stage
            z = integrate(system, torch.cat([ys[i], a]), [-times[i], -times[i - 1]],
                          self.tableau, controller, stats, on_step=system.on_step)[-1]
            a = z[n:] + grad_ys[i - 1]
        return a, system.total


class _AdjointSystem:
    """The augmented field ``[y, a]`` in backward time, and the parameter adjoint as a
    quadrature over its accepted steps.

    It keeps the partial parameter VJP of each evaluation until
    :func:`~cnflow.solvers.runge_kutta.integrate` reports whether the step that made it was
    accepted (``on_step``), relying on its contract that a step's stages are its ``f0`` and
    the next ``stages − 1`` evaluations.
    """

    def __init__(self, vjp: FieldVJP, n: int, tab: ButcherTableau,
                 params: tuple[torch.Tensor, ...], like: torch.Tensor):
        self.vjp, self.n, self.tab = vjp, n, tab
        self.partials: list[Any] = []
        # The parameter adjoint so far (what the quadrature has summed).
        self.total = [torch.zeros_like(p) for p in params]
        self.increment: list[torch.Tensor] | None = None  # the current step's, once known
        # Each weight row's nonzero entries on the state's device, made once per backward
        # pass: combining a step then needs no host-to-device copy. A fixed-step method
        # has no error weights.
        rows = [row for row in (tab.b, tab.b_error, tab.b_error_low) if row is not None]
        self.weights = {row: ([i for i, w in enumerate(row) if w != 0.0],
                              torch.tensor([w for w in row if w != 0.0], dtype=like.dtype,
                                           device=like.device)) for row in rows}
        self.one = torch.ones(1, dtype=like.dtype, device=like.device)
        self.empty = like.new_zeros(0)  # the flat parameter adjoint without parameters

    def __call__(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self._evaluate(partial(self.vjp, -s), z)  # the field at t = −s

    def at_times(self, ss: torch.Tensor) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
        """The system at each backward time in ``ss``, from the VJP's own ``at_times``."""
        vjps = self.vjp.at_times(-ss)
        return None if vjps is None else [partial(self._evaluate, v) for v in vjps]

    def _evaluate(self, vjp: Callable[..., tuple], z: torch.Tensor) -> torch.Tensor:
        n = self.n
        neg_f, a_y, partial_vjp = vjp(z[:n], z[n:])
        self.partials.append(partial_vjp)
        return torch.cat([neg_f, a_y])

    def probe(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The ``(y, a)`` field alone, recording nothing (the initial-step probe)."""
        n = self.n
        neg_f, a_y, _ = self.vjp(-s, z[:n], z[n:], with_params=False)
        return torch.cat([neg_f, a_y])

    def _combine(self, h: float, row: tuple[float, ...]) -> list[torch.Tensor]:
        """``h Σ_i w_i g_i`` over the current step's stages, one tensor per parameter."""
        if len(self.partials) != self.tab.stages:
            raise RuntimeError(f"internal error: {len(self.partials)} evaluations logged for "
                               f"a step of {self.tab.stages} stages")
        used, weights = self.weights[row]
        return self.vjp.params([self.partials[i] for i in used], weights * h)

    def _step_increment(self, h: float) -> list[torch.Tensor]:
        if self.increment is None:
            self.increment = self._combine(h, self.tab.b)
        return self.increment

    # The measured quadrature (see cnflow.solvers.controllers.MeasuredQuadrature).

    def combination(self, h: float, weights: tuple[float, ...]) -> torch.Tensor:
        return self._flat(self._combine(h, weights))

    def step_ends(self, h: float) -> tuple[torch.Tensor, torch.Tensor]:
        start = self._flat(self.total)
        return start, start + self._flat(self._step_increment(h))

    def extend(self, y0: torch.Tensor, f0: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, Callable]:
        n = self.n

        def full(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            neg_f, a_y, partial_vjp = self.vjp(-s, z[:n], z[n:2 * n])
            return torch.cat([neg_f, a_y, self._flat(self.vjp.params([partial_vjp], self.one))])

        g0 = self._flat(self.vjp.params(self.partials[:1], self.one))  # f0's own stage
        return torch.cat([y0, self._flat(self.total)]), torch.cat([f0, g0]), full

    def _flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors]) if tensors else self.empty

    def on_step(self, accepted: bool, h: float) -> None:
        if not accepted:
            self.increment = None
            del self.partials[1:]  # the retried step starts from the same f0
            return
        for acc, g in zip(self.total, self._step_increment(h)):
            acc.add_(g.view_as(acc))
        self.increment = None
        # An FSAL method's last stage is the next step's f0; otherwise the next f0 is the
        # evaluation integrate makes after this call.
        self.partials = self.partials[-1:] if self.tab.fsal else []


class _AdjointSolve(torch.autograd.Function):
    """Forward solve without a graph; gradients from the augmented reverse-time ODE."""

    @staticmethod
    def forward(ctx, y0, problem, strategy, *params):
        with torch.no_grad():
            ys = torch.stack(problem.run(y0))
        ctx.problem, ctx.strategy = problem, strategy
        ctx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys):
        ys, *params = ctx.saved_tensors
        grad_y0, grads = ctx.strategy.gradients(ctx.problem, ys, grad_ys, tuple(params))
        return (grad_y0, None, None, *grads)
