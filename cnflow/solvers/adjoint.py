"""Gradient strategies that do not keep the solver's graph: adjoint and checkpointed.

Adjoint (Chen et al. 2018, Sec. 2 and Algorithm 1): one augmented solve backwards in time
per output interval, of the state ``y``, its adjoint ``a = dL/dy`` and the parameter
adjoint; at every output time the adjoint jumps by that output's incoming gradient (the
paper's Figure 2), and the state restarts from the stored forward value, which keeps the
backward reconstruction of ``y`` from drifting over many intervals.

Checkpointed: the forward solve keeps the state at the start of every accepted step; the
backward pass recomputes one step at a time with autograd. It gives the gradient of the
discrete forward solution — the same as direct backpropagation — even where reconstructing
``y`` backwards in time is unstable (the paper's Sec. 6 caveat), with memory of one state
per step instead of the whole graph.

Time gradients use exact identities instead of an extra integrated component:
``dL/dt_i = g_i · f(t_i, y_i)`` for each output, and ``dL/dt_0 = −(dL/dy_0) · f(t_0, y_0)``
(shifting the start time along the trajectory leaves every output unchanged). This equals
the paper's Appendix C quantity and costs one evaluation per output time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

from cnflow.solvers.odeint import Problem, _check_options, make_norm
from cnflow.solvers.runge_kutta import DenseStep, StepRecord, StepStats, integrate, rk_step
from cnflow.solvers.tableaus import ButcherTableau


def _time(t: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((), t, dtype=like.dtype, device=like.device)


def _backward_stats(problem: Problem) -> StepStats:
    if problem.stats.backward is None:
        problem.stats.backward = StepStats()
    return problem.stats.backward


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
        _backward_stats(ctx.problem).nfe += 1
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
        _backward_stats(ctx.problem).nfe += len(ys)
        return grad_ys, (grad_ys * fs).sum(1).to(t.dtype), None


@dataclass
class ReverseSolve:
    """Method, tolerances and options of the adjoint's backward solve."""

    tableau: ButcherTableau
    rtol: float
    atol: float
    options: dict | None
    name: str = "adjoint_options"  # what messages call the options
    control: object = field(init=False)
    norm_kind: object = field(init=False)

    def __post_init__(self) -> None:
        self.control, self.norm_kind = _check_options(self.options, self.tableau, self.name)
        if self.norm_kind in ("per_sample", "per_sample_max"):
            raise ValueError(f"adjoint_options['norm']={self.norm_kind!r} is not supported; use "
                             "'rms', 'max', 'seminorm' or a callable")


def _flat_grads(grads, like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(x).reshape(-1) if g is None else g.reshape(-1)
            for g, x in zip(grads, like)]


class AdjointSolve(torch.autograd.Function):
    """Forward solve without a graph; gradients from the augmented reverse-time ODE."""

    @staticmethod
    def forward(ctx, y0, problem, reverse, *params):
        with torch.no_grad():
            ys = torch.stack(problem.run(y0))
        ctx.problem, ctx.reverse = problem, reverse
        ctx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys):
        ys, *params = ctx.saved_tensors
        problem: Problem = ctx.problem
        rev: ReverseSolve = ctx.reverse
        n = ys.shape[1]
        func = problem.func

        def augmented(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                y = z[:n].detach().requires_grad_(True)
                f = func(t, y)
                if f.requires_grad:
                    vjps = torch.autograd.grad(f, (y, *params), -z[n:2 * n],
                                               allow_unused=True)
                else:
                    # A field that depends on neither y nor the parameters (a constant, a
                    # function of t alone) has no graph: both adjoints have zero derivative.
                    vjps = (None,) * (1 + len(params))
            return torch.cat([f.detach(), *_flat_grads(vjps, [y, *params])])

        def backwards_in_time(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return -augmented(-s, z)

        norm = make_norm(rev.norm_kind, [], measured=2 * n)
        stats = _backward_stats(problem)
        a = grad_ys[-1]
        a_params = torch.zeros(sum(p.numel() for p in params), dtype=ys.dtype,
                               device=ys.device)
        times = problem.times
        for i in range(len(times) - 1, 0, -1):
            z = torch.cat([ys[i], a, a_params])
            z = integrate(backwards_in_time, z, [-times[i], -times[i - 1]], rev.tableau,
                          rev.rtol, rev.atol, rev.control, norm, stats)[-1]
            a = z[n:2 * n] + grad_ys[i - 1]
            a_params = z[2 * n:]
        grads = [g.view_as(p) for g, p in
                 zip(torch.split(a_params, [p.numel() for p in params]), params)]
        return (a, None, None, *grads)


class CheckpointSolve(torch.autograd.Function):
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
        stats = _backward_stats(problem)
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
                f0 = problem.func(_time(t, y), y_in)
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
