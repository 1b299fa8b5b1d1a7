"""Gradient strategies: how a solve is differentiated.

A strategy is an object with one method, :meth:`Gradient.solve`, that runs the forward
solve so that autograd gets the gradient it chooses; the string registry of
:mod:`cnflow.solvers.odeint` (``gradient="direct"``) is a thin layer over these classes.

* :class:`Direct` backpropagates through the solver's operations.
* :class:`Checkpoint`: the forward solve keeps the state at the start of every accepted
  step; the backward pass recomputes one step at a time with autograd. It gives the
  gradient of the discrete forward solution — the same as direct backpropagation — even
  where reconstructing ``y`` backwards in time is unstable (the paper's Sec. 6 caveat),
  with memory of one state per step instead of the whole graph.
* :class:`~cnflow.solvers.adjoint.Adjoint` solves the adjoint ODE backwards in time.

Time gradients use exact identities instead of an extra integrated component:
``dL/dt_i = g_i · f(t_i, y_i)`` for each output, and ``dL/dt_0 = −(dL/dy_0) · f(t_0, y_0)``
(shifting the start time along the trajectory leaves every output unchanged). This equals
the paper's Appendix C quantity and costs one evaluation per output time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.autograd.function import once_differentiable

from cnflow.solvers.problem import Problem
from cnflow.solvers.runge_kutta import DenseStep, StepRecord, rk_step, time_tensor
from cnflow.solvers.tableaus import ButcherTableau

__all__ = ["Checkpoint", "Direct", "Gradient", "GradientArgs", "OutputTimeGradient",
           "StartTimeGradient"]


@dataclass(frozen=True)
class GradientArgs:
    """The arguments of :func:`~cnflow.solvers.odeint.solve` a strategy may configure from:
    the forward method, tolerances and raw options, the state's dtype and the ``adjoint_*``
    arguments."""

    tableau: ButcherTableau
    rtol: float
    atol: float
    options: Any
    dtype: torch.dtype
    adjoint_rtol: Any = None
    adjoint_atol: Any = None
    adjoint_method: Any = None
    adjoint_options: Any = None


class Gradient(ABC):
    """How a solve is differentiated (a strategy object)."""

    needs_params: ClassVar[bool] = True  # whether it differentiates ``adjoint_params``

    @classmethod
    def configure(cls, args: GradientArgs) -> Gradient:
        """The strategy for one solve, after checking the arguments it uses."""
        return cls()

    @abstractmethod
    def solve(self, problem: Problem, y0: torch.Tensor,
              params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The outputs ``(len(times), n)`` of ``problem`` from the flat ``y0``, connected
        to ``y0`` and ``params`` in the autograd graph."""


class Direct(Gradient):
    """Backpropagation through the solver's operations (autograd keeps every step)."""

    needs_params = False

    def solve(self, problem: Problem, y0: torch.Tensor,
              params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.stack(problem.run(y0))


class Checkpoint(Gradient):
    """The direct gradient from one stored state per accepted step (module docstring)."""

    def solve(self, problem: Problem, y0: torch.Tensor,
              params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return _CheckpointSolve.apply(y0, problem, *params)


class _CheckpointSolve(torch.autograd.Function):
    """Forward solve keeping each accepted step's start; backward recomputes step by step."""

    @staticmethod
    def forward(ctx, y0, problem, *params):
        record = StepRecord()
        with torch.no_grad():
            ys = torch.stack(problem.run(y0, record))
        ctx.problem, ctx.record = problem, record
        ctx.save_for_backward(*params)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys):
        params = ctx.saved_tensors
        problem: Problem = ctx.problem
        record: StepRecord = ctx.record
        tab = problem.tableau
        stats = problem.stats.backward_stats()
        in_step: dict[int, list[tuple[int, float | None]]] = {}
        for k, (step, theta) in enumerate(record.outputs, start=1):
            in_step.setdefault(step, []).append((k, theta))

        a = torch.zeros_like(grad_ys[0])
        grad_params = [torch.zeros_like(p) for p in params]
        for step in range(len(record.starts) - 1, -1, -1):
            t, h, y = record.starts[step]
            outputs = in_step.get(step, [])
            for k, theta in outputs:
                if theta is None:
                    a = a + grad_ys[k]
            with torch.enable_grad():
                y_in = y.detach().requires_grad_(True)
                f0 = problem.func(time_tensor(t, y), y_in)
                y1, ks = rk_step(problem.func, tab, t, y_in, f0, h)
                stats.nfe += tab.stages
                stats.n_accepted += 1
                total = (a * y1).sum()
                dense = DenseStep(problem.func, tab, t, h, y_in, y1, ks, stats)
                for k, theta in outputs:
                    if theta is not None:
                        total = total + (grad_ys[k] * dense(theta)).sum()
                grads = torch.autograd.grad(total, (y_in, *params), allow_unused=True)
            a = grads[0]
            for acc, g in zip(grad_params, grads[1:]):
                if g is not None:
                    acc.add_(g)
        return (a + grad_ys[0], None, *grad_params)


class StartTimeGradient(torch.autograd.Function):
    """Identity on ``y0`` whose backward gives ``dL/dt_0 = −(dL/dy_0) · f(t_0, y_0)``."""

    @staticmethod
    def forward(ctx, y0, t, problem):
        ctx.problem = problem
        ctx.save_for_backward(y0, t)
        return y0.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y0):
        y0, t = ctx.saved_tensors
        f0 = ctx.problem.func(t[0].to(y0.dtype), y0)
        ctx.problem.stats.backward_stats().nfe += 1
        grad_t = torch.zeros_like(t)
        grad_t[0] = -(grad_y0 * f0).sum().to(t.dtype)
        return grad_y0, grad_t, None


class OutputTimeGradient(torch.autograd.Function):
    """Identity on the outputs whose backward gives ``dL/dt_i = g_i · f(t_i, y_i)``."""

    @staticmethod
    def forward(ctx, ys, t, problem):
        ctx.problem = problem
        ctx.save_for_backward(ys, t)
        return ys.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys):
        ys, t = ctx.saved_tensors
        fs = torch.stack([ctx.problem.func(ti.to(ys.dtype), yi) for ti, yi in zip(t, ys)])
        ctx.problem.stats.backward_stats().nfe += len(ys)
        return grad_ys, (grad_ys * fs).sum(1).to(t.dtype), None
