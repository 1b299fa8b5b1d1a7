"""Training on several processes (torch.distributed, gloo on CPU): the gradient DDP averages
equals the single-process gradient of the union batch, validation gathers every row, and
`torchrun ... cnflow fit` writes one run directory that the other commands read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from cnflow import distributed
from cnflow.flows.cnf import CNF, GatedHyperDynamics
from cnflow.objectives import MaximumLikelihood
from cnflow.training import evaluate, shard_batch, training_objective

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

RANKS = 2


def _flow() -> CNF:
    torch.manual_seed(3)
    flow = CNF(GatedHyperDynamics(dim=2, width=8, hidden=6), dim=2, rtol=1e-9, atol=1e-9,
               gradient="adjoint").double()
    return flow


def _batch() -> torch.Tensor:
    # 37 rows: the ranks get 19 and 18, so the loss weights are exercised too.
    return torch.randn(37, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _worker(out: str) -> None:
    """One rank of the gradient test, started by torchrun (this file run as a script)."""
    torch.set_num_threads(1)
    distributed.setup()
    rank = distributed.rank()
    try:
        flow = _flow()
        if rank == 1:
            # DDP starts every rank from rank 0's weights.
            with torch.no_grad():
                for p in flow.parameters():
                    p.add_(1.0)
        step = training_objective(flow, MaximumLikelihood())
        (x,), weight = shard_batch((_batch(),))
        loss, _ = step(x)
        (loss * weight).backward()
        grads = [p.grad.clone() for p in flow.parameters()]
        nll, nfe = evaluate(flow, _batch())
        torch.save({"grads": grads, "rows": len(x), "nll": torch.from_numpy(nll), "nfe": nfe},
                   Path(out) / f"rank{rank}.pt")
        distributed.teardown(synchronize=True)
    finally:
        distributed.teardown()


def test_two_process_gradient_equals_union_batch_gradient(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={RANKS}", __file__, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    flow = _flow()
    nll = -flow.log_prob(_batch())
    nll.mean().backward()
    reference = [p.grad for p in flow.parameters()]
    with torch.no_grad():
        expected_nll = -flow.eval().log_prob(_batch())
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(RANKS)]
    assert [r["rows"] for r in results] == [19, 18]
    for result in results:
        for got, want in zip(result["grads"], reference, strict=True):
            # Each rank's adaptive solve takes its own steps: equal up to the solver's
            # tolerance (1e-9), far below the gradient's size.
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
        # Every rank gets every row's NLL back, in order.
        np.testing.assert_allclose(result["nll"].numpy(), expected_nll.numpy(), rtol=1e-7)
    assert results[0]["nfe"] == results[1]["nfe"] > 0


def test_shard_splits_like_array_split(monkeypatch):
    for n in (2, 5, 37):
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        parts = []
        for r in range(3):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            parts.append(np.arange(n)[distributed.shard(n)])
        for got, want in zip(parts, np.array_split(np.arange(n), 3), strict=True):
            np.testing.assert_array_equal(got, want)


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cnflow = shutil.which("cnflow", path=str(Path(sys.executable).parent)) or "cnflow"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={RANKS}", cnflow, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _cnflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from cnflow.cli.main import main; main()",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def test_torchrun_fit_writes_one_run_that_logprob_reads_and_resume_continues(tmp_path):
    rows = np.random.default_rng(0).normal(size=(300, 3)) * [1.0, 2.0, 0.5]
    np.savetxt(tmp_path / "table.csv", rows, delimiter=",", header="a,b,c", comments="")
    fit = ["fit", "table.csv", "--out", "run", "--width", "8", "--hidden", "8",
           "--epochs", "4", "--min-epoch-steps", "3", "--batch-size", "64", "--no-figures"]
    # A budget this small stops the run after its first step (inside epoch 1).
    done = _torchrun(*fit, "--max-time", "0.001", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test NLL") == 1  # rank 0 alone reports
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == [".lock", "checkpoint.pt", "config.json", "metrics.json"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == RANKS
    assert (metrics["steps"], metrics["stop_reason"]) == (1, "time budget")
    np.save(tmp_path / "points.npy", rows[:5])
    logp = _cnflow("logprob", "-c", "run", "points.npy", cwd=tmp_path)
    assert logp.returncode == 0, logp.stderr
    assert len(logp.stdout.split()) == 5

    # The resumed job continues at the next batch; the checkpoint holds each rank's
    # random state.
    resumed = _torchrun(*fit, "--resume", "run", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["steps"], metrics["epochs_run"]) == (12, 4)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert len(state["rank_rngs"]) == RANKS


def test_torchrun_bad_input_fails_with_one_message(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,nan\n")
    failed = _torchrun("fit", "bad.csv", "--out", "run", cwd=tmp_path)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "bad.csv" in errors[0]
    assert not (tmp_path / "run").exists()


def test_torchrun_batch_smaller_than_the_processes_fails_before_writing(tmp_path):
    np.savetxt(tmp_path / "table.csv", np.random.default_rng(0).normal(size=(50, 2)),
               delimiter=",")
    failed = _torchrun("fit", "table.csv", "--batch-size", "1", "--out", "run", cwd=tmp_path)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [("Error: batch_size=1 gives fewer rows than the 2 processes; use a "
                       "batch of at least 2 rows")]
    assert not (tmp_path / "run").exists()


if __name__ == "__main__":
    _worker(sys.argv[1])
