"""The test RMSE of the latent-ODE experiment and its standard error over the spirals
(cnflow.experiments.latent_ode.evaluate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnflow.experiments.latent_ode.evaluate import per_spiral_rmse, rmse, rmse_stderr


def test_rmse_and_its_standard_error_over_the_spirals():
    prediction = torch.zeros(3, 2, 1)
    target = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1).expand(3, 2, 1)
    assert rmse(prediction, target) == pytest.approx(math.sqrt(14 / 3))
    # Per-spiral squared errors 1, 4, 9: se of their mean, through d sqrt(m) = dm / 2 sqrt(m).
    se_mean = np.std([1.0, 4.0, 9.0], ddof=1) / math.sqrt(3)
    assert rmse_stderr(prediction, target) == pytest.approx(se_mean / (2 * math.sqrt(14 / 3)))


def test_per_spiral_rmse_is_each_spirals_own():
    prediction = torch.zeros(2, 2, 2)
    target = torch.tensor([[[3.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]])
    torch.testing.assert_close(per_spiral_rmse(prediction, target),
                               torch.tensor([math.sqrt(25 / 4), 1.0]))
