"""Density matching (Figure 4): its settings, the box-conditioned KL, the soft wall and one
tiny run through ``run``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cnflow.experiments.compare.density_matching import (
    QUICK,
    DensityMatchingConfig,
    run,
    summarize,
)
from cnflow.experiments.compare.targets import box_wall, reverse_kl


def test_config_validates_its_arguments():
    with pytest.raises(ValueError, match="nf_layers entries must be an integer >= 1, got 0"):
        DensityMatchingConfig(nf_layers=(0,))
    with pytest.raises(ValueError, match="targets must not be empty"):
        DensityMatchingConfig(targets=())
    with pytest.raises(ValueError, match=r"targets has unknown entries \['U7'\]"):
        DensityMatchingConfig(targets=("U7",))
    with pytest.raises(ValueError, match="seeds entries must be an integer in"):
        DensityMatchingConfig(seeds=(0, 2**64))
    with pytest.raises(ValueError, match="box_wall must be a finite number >= 0"):
        DensityMatchingConfig(box_wall=-1.0)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        DensityMatchingConfig(threads=0)
    assert DensityMatchingConfig(seeds=[1, 0]).seeds == (1, 0)  # lists become tuples


def test_reverse_kl_is_zero_for_a_flow_that_matches_its_target():
    """A Gaussian target through the same machinery: KL(N(0,I)‖N(0,I)) = 0 (up to the box)."""
    from cnflow.flows import PlanarFlow

    class Gauss:
        box = ((-9.0, 9.0), (-9.0, 9.0))

        @staticmethod
        def energy(x):
            return 0.5 * x.pow(2).sum(-1)

        @staticmethod
        def log_normalizer():
            return math.log(2 * math.pi)

    flow = PlanarFlow(2, layers=1, direction="generative").double()
    with torch.no_grad():
        flow.layers[0].w.zero_()
        flow.layers[0].u.zero_()
    estimate = reverse_kl(flow, Gauss, n=2000, seed=0)
    assert estimate["kl"] == pytest.approx(0.0, abs=1e-12)
    assert estimate["outside_box"] == 0.0


def test_the_wall_is_zero_inside_the_box_and_quadratic_outside():
    x = torch.tensor([[0.0, 3.9], [5.0, 0.0], [-6.0, 7.0]])
    wall = box_wall(x, ((-4.0, 4.0), (-4.0, 4.0)), strength=10.0)
    torch.testing.assert_close(wall, torch.tensor([0.0, 10.0, 10.0 * (4.0 + 9.0)]))


def test_a_quick_run_writes_its_config_and_results(tmp_path):
    config = DensityMatchingConfig(**{**QUICK, "targets": ("U2",), "seeds": (0, 1)})
    result = run(config, tmp_path / "run", progress=False)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["config.json", "density_matching.json", "density_matching.md",
                     "density_matching.png"]
    # config.json alone rebuilds the run's settings.
    assert DensityMatchingConfig(**json.loads((tmp_path / "run" / "config.json").read_text())) \
        == config
    assert [s["seeds"] for s in result["summary"]] == [2, 2]
    assert result["command"].endswith(f"--out {tmp_path / 'run'} --overwrite")
    with pytest.raises(ValueError, match="already holds a run"):
        run(config, tmp_path / "run", progress=False)


def test_summary_is_mean_and_sample_std_over_seeds():
    config = DensityMatchingConfig(targets=("U1",), nf_layers=(2,), cnf_widths=(4,),
                                   seeds=(0, 1))
    runs = [{"target": "U1", "model": kind, "size": size, "kl": kl, "outside_box": out}
            for kind, size, kl, out in (("NF", 2, 1.0, 0.0), ("NF", 2, 3.0, 0.1),
                                        ("CNF", 4, 0.5, 0.0), ("CNF", 4, 0.5, 0.0))]
    nf, cnf = summarize(config, runs)
    assert (nf["kl_mean"], nf["kl_std"], nf["outside_box_max"]) == (2.0, math.sqrt(2), 0.1)
    assert (cnf["kl_mean"], cnf["kl_std"], cnf["seeds"]) == (0.5, 0.0, 2)
