"""Click parameter types shared by the commands."""

from __future__ import annotations

import math

import click

__all__ = ["FRACTION", "NON_NEGATIVE", "POSITIVE", "FiniteFloat"]


class FiniteFloat(click.FloatRange):
    """A ``FloatRange`` that also refuses ``nan`` and ``inf`` (they pass range checks)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0)
FRACTION = FiniteFloat(min=0, max=1, max_open=True)
