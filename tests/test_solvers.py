"""The solver package (cnflow.solvers): its registries, and every module importing on
its own."""

from __future__ import annotations

import subprocess
import sys

import cnflow
from cnflow.solvers import ADAPTIVE_METHODS, GRADIENT_MODES, GRADIENTS, METHODS, Gradient


def test_registries_and_import_order():
    assert GRADIENT_MODES == tuple(GRADIENTS) == ("direct", "adjoint", "checkpoint")
    assert all(issubclass(kind, Gradient) for kind in GRADIENTS.values())
    assert set(ADAPTIVE_METHODS) | set(cnflow.solvers.FIXED_STEP_METHODS) == set(METHODS)
    # Every solver module imports on its own: no module needs another imported first.
    for module in ("adjoint", "gradients", "problem", "field", "controllers", "runge_kutta"):
        subprocess.run([sys.executable, "-c", f"import cnflow.solvers.{module}"], check=True)
