"""The tabular benchmark's fits: the zuko adapter, the jobs and the cache keys."""

from __future__ import annotations

import pytest
import torch

from cnflow.experiments.tabular.config import DEFAULT_VARIANT, VARIANTS, TabularConfig
from cnflow.experiments.tabular.fits import ZukoFlow, cache_key, fit_jobs, zuko_model


def test_zuko_adapter_reports_nll_in_data_coordinates():
    pytest.importorskip("zuko")
    flow = zuko_model("zuko_maf", 3)
    x = torch.randn(50, 3) * 4 + 2
    before = flow.log_prob(x).detach()
    flow.set_normalization(x)
    z = (x - flow.shift) / flow.log_scale.exp()
    expected = flow.flow().log_prob(z) - flow.log_scale.sum()
    torch.testing.assert_close(flow.log_prob(x), expected)
    assert not torch.allclose(before, expected)
    assert isinstance(flow, ZukoFlow) and flow.sample(7).shape == (7, 3)


def test_the_sweep_adds_seed_0_fits_of_each_variant_once():
    config = TabularConfig(sets=("mix8",), models=("cnflow", "zuko_nsf"), seeds=(0, 1),
                           sweep_sets=("mix8", "wine"))
    jobs = fit_jobs(config)
    assert jobs[:4] == [("mix8", "cnflow", 0, ""), ("mix8", "cnflow", 1, ""),
                        ("mix8", "zuko_nsf", 0, ""), ("mix8", "zuko_nsf", 1, "")]
    # The default variant is the benchmark's own seed-0 fit: not run twice.
    assert len(jobs) == 4 + (len(VARIANTS) - 1) + len(VARIANTS)
    assert ("wine", "cnflow", 0, "") in jobs and ("mix8", "cnflow", 0, DEFAULT_VARIANT) \
        not in jobs
    without = TabularConfig(sets=("mix8",), models=("cnflow",), seeds=(0,), sweep=False)
    assert fit_jobs(without) == [("mix8", "cnflow", 0, "")]


def test_a_cached_row_and_its_job_have_the_same_key():
    row = {"set": "wine", "model": "cnflow_otfm_ft", "seed": 1, "overrides": {},
           "objective": "otfm", "finetune": 300}
    assert cache_key(row, 60.0) == cache_key(("wine", "cnflow_otfm_ft", 1, ""), 60.0)
    # A row from before objectives existed was maximum likelihood.
    old = {"set": "wine", "model": "cnflow_fm", "seed": 1, "overrides": {}}
    assert cache_key(old, 60.0) != cache_key(("wine", "cnflow_fm", 1, ""), 60.0)
