"""cnflow: continuous normalizing flows and neural ODEs in PyTorch.

The solver core is torchdiffeq-compatible: ``from cnflow import odeint, odeint_adjoint``
runs code written for torchdiffeq; :func:`cnflow.solve` also returns solve statistics.
"""

from cnflow.solvers import (
    GRADIENT_MODES,
    METHODS,
    ODESolution,
    ODESolverError,
    SolveStats,
    StepStats,
    odeint,
    odeint_adjoint,
    solve,
)

__version__ = "0.1.0"

__all__ = [
    "GRADIENT_MODES",
    "METHODS",
    "ODESolution",
    "ODESolverError",
    "SolveStats",
    "StepStats",
    "__version__",
    "odeint",
    "odeint_adjoint",
    "solve",
]
