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

**The parameter adjoint as a quadrature.** Under the seminorm the error norm measures
``(y, a)`` only. Their derivatives do not depend on ``a_θ`` either, so every stage of
``(y, a)``, every error ratio and hence every accept/reject decision is the same whether
``a_θ`` is carried in the Runge–Kutta state or not; and the Runge–Kutta update of the
``a_θ`` components is ``a_θ ← a_θ + h Σ_i b_i g_i`` with ``g_i = a_iᵀ ∂f/∂θ`` at stage
``i`` — a quadrature over the accepted steps' stages. Accumulating that sum directly is
therefore the same computation up to the order of floating-point additions, not an
approximation; it skips the parameter VJPs of rejected steps and of zero weights ``b_i``,
never combines the (large) parameter vector into stages, and lets a field compute all
stages' parameter cotangents of a step at once. Without the seminorm ``a_θ`` enters the
error norm, so it is carried in the state as before.
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
        quadrature = self.norm_kind == "seminorm"
        system = _AdjointSystem(problem.func.vjp_for(params), n, self.tableau,
                                carry=not quadrature, like=ys)
        norm = make_norm(self.norm_kind, [], measured=2 * n)
        # One controller for every interval carries the step size across them. Its
        # initial-step probe skips the parameter VJPs under the seminorm, which does not
        # measure them; a full norm does, so its probe needs them.
        controller = make_controller(self.tableau, self.rtol, self.atol, self.control, norm,
                                     probe=system.probe if quadrature else None)
        stats = problem.stats.backward_stats()
        a = grad_ys[-1]
        a_params = ys.new_zeros(sum(p.numel() for p in params))
        times = problem.times
        for i in range(len(times) - 1, 0, -1):
            z = torch.cat([ys[i], a] if quadrature else [ys[i], a, a_params])
            system.partials.clear()  # the interval's first evaluation is its first stage
            z = integrate(system, z, [-times[i], -times[i - 1]], self.tableau, controller,
                           stats, on_step=system.on_step if quadrature else None)[-1]
            a = z[n:2 * n] + grad_ys[i - 1]
            a_params = z[2 * n:]
        if quadrature:
            return a, system.totals(params)
        return a, [g.view_as(p) for g, p in
                   zip(torch.split(a_params, [p.numel() for p in params]), params)]


class _AdjointSystem:
    """The augmented field in backward time: ``[y, a]``, or ``[y, a, a_θ]`` when carried.

    In quadrature mode it keeps the partial parameter VJP of each evaluation until
    :func:`~cnflow.solvers.runge_kutta.integrate` reports whether the step that made it
    was accepted (``on_step``), relying on its contract that a step's stages are its
    ``f0`` and the next ``stages − 1`` evaluations.
    """

    def __init__(self, vjp: FieldVJP, n: int, tab: ButcherTableau, carry: bool,
                 like: torch.Tensor):
        self.vjp, self.n, self.tab, self.carry = vjp, n, tab, carry
        self.partials: list[Any] = []
        self.total: list[torch.Tensor] | None = None
        # The quadrature's nonzero weights, and the weight of one evaluation, on the state's
        # device once per backward pass.
        self.b = torch.tensor([b for b in tab.b if b != 0.0], dtype=like.dtype,
                              device=like.device)
        self.one = self.b.new_ones(1)

    def __call__(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self._evaluate(partial(self.vjp, -s), z)  # the field at t = −s

    def at_times(self, ss: torch.Tensor) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
        """The system at each backward time in ``ss``, from the VJP's own ``at_times``."""
        vjps = self.vjp.at_times(-ss)
        return None if vjps is None else [partial(self._evaluate, v) for v in vjps]

    def _evaluate(self, vjp: Callable[..., tuple], z: torch.Tensor) -> torch.Tensor:
        n = self.n
        neg_f, a_y, partial_vjp = vjp(z[:n], z[n:2 * n])
        if not self.carry:
            self.partials.append(partial_vjp)
            return torch.cat([neg_f, a_y])
        grads = self.vjp.params([partial_vjp], self.one)
        return torch.cat([neg_f, a_y, *(g.reshape(-1) for g in grads)])

    def probe(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The ``(y, a)`` field alone, for the initial-step probe, which the seminorm makes
        blind to the parameter adjoint anyway."""
        n = self.n
        neg_f, a_y, _ = self.vjp(-s, z[:n], z[n:2 * n], with_params=False)
        return torch.cat([neg_f, a_y])

    def on_step(self, accepted: bool, h: float) -> None:
        stages = self.tab.stages
        if not accepted:
            del self.partials[1:]  # the retried step starts from the same f0
            return
        if len(self.partials) != stages:
            raise RuntimeError(f"internal error: {len(self.partials)} evaluations logged for "
                               f"a step of {stages} stages")
        used = [p for p, b in zip(self.partials, self.tab.b) if b != 0.0]
        grads = self.vjp.params(used, self.b * h)
        if self.total is None:
            self.total = [g.clone() for g in grads]  # accumulated in place below
        else:
            for acc, g in zip(self.total, grads):
                acc.add_(g)
        # An FSAL method's last stage is the next step's f0; otherwise the next f0 is the
        # evaluation integrate makes after this call.
        self.partials = self.partials[-1:] if self.tab.fsal else []

    def totals(self, params: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        if self.total is None:
            return [torch.zeros_like(p) for p in params]
        return self.total


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
