"""cnflow: continuous normalizing flows and neural ODEs in PyTorch.

The solver core is torchdiffeq-compatible: ``from cnflow import odeint, odeint_adjoint``
runs code written for torchdiffeq; :func:`cnflow.solve` also returns solve statistics.
:func:`cnflow.fit` is the training loop of every flow (validation, early stopping, best
weights, time budget, resume), with maximum likelihood or flow matching
(:class:`cnflow.FlowMatching`) as its objective.
"""

from cnflow.objectives import FlowMatching, MaximumLikelihood
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
from cnflow.training import EndlessSamples, History, TrainConfig, fit

__version__ = "0.1.0"

__all__ = [
    "GRADIENT_MODES",
    "METHODS",
    "EndlessSamples",
    "FlowMatching",
    "History",
    "MaximumLikelihood",
    "ODESolution",
    "ODESolverError",
    "SolveStats",
    "StepStats",
    "TrainConfig",
    "__version__",
    "fit",
    "odeint",
    "odeint_adjoint",
    "solve",
]
