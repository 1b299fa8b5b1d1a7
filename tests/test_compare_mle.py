"""Maximum likelihood (Figure 5): its settings, the shared batches and one tiny run."""

from __future__ import annotations

import json

import pytest
import torch

from cnflow.experiments.compare.mle import QUICK, MLEConfig, build_models, run


def test_config_validates_its_arguments():
    with pytest.raises(ValueError, match="datasets has unknown entries"):
        MLEConfig(datasets=("spiral",))
    with pytest.raises(ValueError, match="nf_lr must be a finite number > 0, got -1"):
        MLEConfig(nf_lr=-1)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 428\], got 429"):
        MLEConfig(seed=429)
    with pytest.raises(ValueError, match="test_size must be an integer >= 2"):
        MLEConfig(test_size=1)


def test_both_models_standardise_by_the_same_points():
    nf, cnf = build_models(MLEConfig(**QUICK), "two_moons").values()
    torch.testing.assert_close(nf.shift, cnf.shift)
    torch.testing.assert_close(nf.log_scale, cnf.log_scale)


def test_a_quick_run_writes_its_config_and_results(tmp_path):
    config = MLEConfig(**{**QUICK, "datasets": ("two_circles",)})
    result = run(config, tmp_path, progress=False)
    assert MLEConfig(**json.loads((tmp_path / "config.json").read_text())) == config
    assert [(r["dataset"], r["model"]) for r in result["runs"]] == [
        ("two_circles", "NF"), ("two_circles", "CNF")]
    assert all(r["iterations"] == (3 if r["model"] == "NF" else 2) for r in result["runs"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "mle.json", "mle.md", "mle.png", "mle_snapshots.png"]
