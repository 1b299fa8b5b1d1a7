"""``cnflow.density``: the settings of a ``cnflow fit`` run and their data-dependent defaults."""

from __future__ import annotations

import pytest

from cnflow.density import DEFAULT_FINETUNE, DEFAULT_ITERATIONS, FitConfig


@pytest.mark.parametrize("objective", ["fm", "otfm"])
def test_flow_matching_on_builtin_data_defaults_to_a_maximum_likelihood_fine_tune(objective):
    config = FitConfig(dataset="two_moons", objective=objective)
    assert config.iterations == DEFAULT_ITERATIONS["flow matching"] == 1000
    assert config.finetune == DEFAULT_FINETUNE["builtin"] == 300


def test_maximum_likelihood_and_files_have_no_fine_tune_by_default(tmp_path):
    mle = FitConfig(dataset="two_moons")
    assert (mle.objective, mle.iterations, mle.finetune) == ("mle", 800, 0)
    table = tmp_path / "t.csv"
    table.write_text("a,b\n1,2\n")
    assert FitConfig(dataset=str(table), objective="otfm").finetune == DEFAULT_FINETUNE["file"] == 0
