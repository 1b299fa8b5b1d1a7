"""The ODE solver core: explicit Runge–Kutta methods, adaptive steps, adjoint gradients."""

from cnflow.solvers.adjoint import Adjoint
from cnflow.solvers.controllers import FixedGrid, PIController, StepControl
from cnflow.solvers.field import VJPField
from cnflow.solvers.gradients import Checkpoint, Direct, Gradient
from cnflow.solvers.odeint import (
    GRADIENT_MODES,
    GRADIENTS,
    ODESolution,
    SolveStats,
    odeint,
    odeint_adjoint,
    solve,
)
from cnflow.solvers.runge_kutta import ODESolverError, StepStats
from cnflow.solvers.tableaus import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    METHODS,
    TABLEAUS,
    ButcherTableau,
    get_tableau,
)

__all__ = [
    "ADAPTIVE_METHODS", "FIXED_STEP_METHODS", "GRADIENTS", "GRADIENT_MODES", "METHODS",
    "TABLEAUS", "Adjoint", "ButcherTableau", "Checkpoint", "Direct", "FixedGrid", "Gradient",
    "ODESolution", "ODESolverError", "PIController", "SolveStats", "StepControl", "StepStats",
    "VJPField", "get_tableau", "odeint", "odeint_adjoint", "solve",
]
