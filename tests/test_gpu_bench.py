"""The GPU benchmark's code path, shrunk and on the CPU (the GPU run itself needs a device):
every number in the report comes from a measurement."""

from __future__ import annotations

import json

import pytest

from cnflow.density import FitConfig, fit_run
from cnflow.experiments.gpu_bench import GPUBenchConfig, run


def test_settings_are_checked():
    with pytest.raises(ValueError, match="batches has repeated entries"):
        GPUBenchConfig(batches=(16, 16))


def test_gpu_report_runs_its_code_on_the_cpu(tmp_path):
    pytest.importorskip("torchdiffeq")
    fit_run(FitConfig(dataset="two_moons", iterations=2, val_size=50, test_size=50,
                      width=4, hidden=4), tmp_path / "run", device="cpu", progress=False,
            figures=False)
    config = GPUBenchConfig(iterations=1, warmup=0, batches=(16,), points=(100,), repeats=1)
    text = run(config, tmp_path / "gpu.md", tmp_path / "run", device="cpu")
    assert "| 16 |" in text and "| 100 |" in text
    assert f"--model {tmp_path / 'run'} --out {tmp_path / 'gpu.md'}`" in text
    assert json.loads((tmp_path / "gpu.json").read_text())["throughput"][0]["points"] == 100
    assert GPUBenchConfig(**json.loads((tmp_path / "gpu" / "config.json").read_text())) == config
