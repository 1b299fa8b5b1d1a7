"""The ODE solver core: explicit Runge–Kutta methods, adaptive steps, adjoint gradients."""

from cnflow.solvers.odeint import (
    GRADIENT_MODES,
    ODESolution,
    SolveStats,
    odeint,
    odeint_adjoint,
    solve,
)
from cnflow.solvers.runge_kutta import ODESolverError, StepStats
from cnflow.solvers.tableaus import METHODS, TABLEAUS, ButcherTableau, get_tableau

__all__ = [
    "GRADIENT_MODES", "METHODS", "TABLEAUS", "ButcherTableau", "ODESolution", "ODESolverError",
    "SolveStats", "StepStats", "get_tableau", "odeint", "odeint_adjoint", "solve",
]
