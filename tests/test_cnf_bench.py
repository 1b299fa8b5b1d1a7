"""The CNF benchmark's cnflow side is the reference field itself: the gated layer with the
reference's parameterisation gives the same field, log-density and gradients as the
reference model of torchdiffeq's examples/cnf.py (autograd trace), in float64."""

from __future__ import annotations

import torch

import cnflow
from cnflow.experiments.cnf_bench import (
    D,
    ReferenceCNF,
    ReferenceHyperNetwork,
    reference_joint_field,
)

F64 = torch.float64


def _hyper() -> ReferenceHyperNetwork:
    torch.manual_seed(0)
    hyper = ReferenceHyperNetwork().double()
    with torch.no_grad():  # large enough weights that the gates and every unit matter
        for p in hyper.parameters():
            p.mul_(3)
    return hyper


def test_reference_field_and_trace_match_the_autograd_reference():
    hyper = _hyper()
    field, _ = reference_joint_field(hyper)
    z = torch.randn(7, D, dtype=F64)
    t = torch.tensor(0.4, dtype=F64)
    dz, dlogp = ReferenceCNF(hyper)(t, (z, torch.zeros(7, 1, dtype=F64)))
    joint = field(t, torch.cat([z, torch.zeros(7, 1, dtype=F64)], 1))
    torch.testing.assert_close(joint[:, :D], dz.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(joint[:, D], dlogp.detach().view(-1), rtol=1e-12, atol=1e-12)


def test_closed_form_adjoint_gradients_equal_direct_backpropagation():
    """The benchmark's hooks (_hyper, _raw_cotangent) give the reference's chain rule: the
    adjoint through them equals backpropagation through the solver's steps."""
    hyper = _hyper()
    field, module = reference_joint_field(hyper)
    params = tuple(module.parameters())
    assert field.vjp_params == params  # so the adjoint takes the closed-form path
    y0 = torch.cat([torch.randn(6, D, dtype=F64), torch.zeros(6, 1, dtype=F64)], 1)
    times = torch.tensor([1.0, 0.0], dtype=F64)
    grads = {}
    for mode in ("adjoint", "direct"):
        sol = cnflow.solve(field, y0, times, rtol=1e-10, atol=1e-10, gradient=mode,
                           adjoint_params=params, adjoint_options={"norm": "seminorm"})
        loss = sol.ys[-1, :, :D].pow(2).sum() + sol.ys[-1, :, D].sum()
        grads[mode] = torch.autograd.grad(loss, params)
    for adjoint, direct in zip(grads["adjoint"], grads["direct"], strict=True):
        # Both are the exact gradient up to the solver tolerance 1e-10.
        torch.testing.assert_close(adjoint, direct, rtol=1e-6, atol=1e-8)


def test_gpu_report_runs_its_code_on_the_cpu(tmp_path):
    """The GPU benchmark's code path, shrunk and on the CPU (the GPU run itself needs a
    device): every number in the report comes from a measurement."""
    import pytest

    pytest.importorskip("torchdiffeq")
    from cnflow.density import FitConfig, fit_run
    from cnflow.experiments.gpu_bench import write_report

    fit_run(FitConfig(dataset="two_moons", iterations=2, val_size=50, test_size=50,
                      width=4, hidden=4), tmp_path / "run", device="cpu", progress=False,
            figures=False)
    text = write_report(tmp_path / "gpu.md", tmp_path / "run", "cnflow benchmark gpu",
                        device="cpu", batches=(16,), points=(100,), iterations=1)
    assert "| 16 |" in text and "| 100 |" in text
    assert (tmp_path / "gpu.json").exists()
