"""The tabular benchmark's harness: splits, the zuko adapter, one tiny run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnflow.experiments.tabular import TabularConfig, benchmark_split, write_report


@pytest.mark.parametrize("name", ["wine", "digits", "mix4"])
def test_splits_are_disjoint_reproducible_and_drop_constant_columns(name):
    parts, floor = benchmark_split(name, 0)
    again, _ = benchmark_split(name, 0)
    other, _ = benchmark_split(name, 1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["test"], other["test"])
    assert (np.ptp(parts["train"], axis=0) > 0).all()
    assert (floor is not None) == name.startswith("mix")
    if name == "digits":
        assert parts["train"].shape[1] < 64
        assert sum(len(v) for v in parts.values()) == 1797


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown entries \\['nope'\\]"):
        TabularConfig(sets=("nope",))
    with pytest.raises(ValueError, match="models"):
        TabularConfig(models=("realnvp",))


def test_zuko_adapter_reports_nll_in_data_coordinates():
    pytest.importorskip("zuko")
    from cnflow.experiments.tabular import ZukoFlow, _zuko_model

    flow = _zuko_model("zuko_maf", 3)
    x = torch.randn(50, 3) * 4 + 2
    before = flow.log_prob(x).detach()
    flow.set_normalization(x)
    z = (x - flow.shift) / flow.log_scale.exp()
    expected = flow.flow().log_prob(z) - flow.log_scale.sum()
    torch.testing.assert_close(flow.log_prob(x), expected)
    assert not torch.allclose(before, expected)
    assert isinstance(flow, ZukoFlow) and flow.sample(7).shape == (7, 3)


def test_a_tiny_benchmark_writes_its_report_and_reuses_its_cache(tmp_path):
    config = TabularConfig(sets=("wine",), models=("cnflow",), seeds=(0, 1), budget=0.5,
                           jobs=1, sweep_sets=(), full_runs=False)
    out = tmp_path / "tabular.md"
    lines = []
    text = write_report(config, out, tmp_path / "work", command="cnflow benchmark tabular",
                        echo=lines.append)
    assert "| wine | 13 | 142 |" in text and (tmp_path / "tabular.png").is_file()
    fits = json.loads((tmp_path / "tabular.json").read_text())["fits"]
    assert len(fits) == 2 and all(f["fit_cpu_seconds"] < 5 for f in fits)
    assert lines[0].startswith("0 fits cached, 2 to run")
    write_report(config, out, tmp_path / "work", command="x", echo=lines.append)
    assert lines[-1].startswith("2 fits cached, 0 to run")
