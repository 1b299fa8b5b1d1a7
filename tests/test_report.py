"""The report layer: Markdown tables, the atomic figure saver, the saved-tensor meter."""

from __future__ import annotations

import os

import pytest
import torch

from cnflow.models.odenet import ODENet
from cnflow.report import SavedTensorMemory, markdown_table, pyplot, save_figure, state_bytes


def test_markdown_table_rows_and_refusal():
    text = markdown_table(["a", "b"], [[1, 2.5], ["x", None]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2.5 |", "| x | None |"]
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [[1, 2], [3]])


def test_save_figure_is_atomic_and_closes(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "sub" / "line.png")
    assert (tmp_path / "sub" / "line.png").read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)

    broken, _ = plt.subplots()

    def refuse(*args, **kwargs):
        raise RuntimeError("disk on fire")

    broken.savefig = refuse
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_figure(broken, tmp_path / "broken.png")
    assert sorted(os.listdir(tmp_path)) == ["sub"]  # nothing half-written
    assert not plt.fignum_exists(broken.number)


def test_saved_tensor_memory_counts_and_releases():
    w = torch.randn(100, 100, requires_grad=True)
    x = torch.randn(50, 100)
    with SavedTensorMemory(exclude=[w]) as meter:
        out = torch.tanh(x @ w)  # saves x (w excluded) and tanh's output
        assert meter.current_bytes == 2 * 50 * 100 * 4
        out.sum().backward()
        del out
    assert meter.current_bytes == 0
    assert meter.peak_bytes == 2 * 50 * 100 * 4


def test_saved_tensor_memory_does_not_leak_unvisited_branches():
    # dopri5's last stage is evaluated with a graph but is not part of the output, so
    # backward never visits it; the meter must not keep that branch alive.
    model = ODENet(channels=8, gradient="direct")
    meter = SavedTensorMemory(exclude=list(model.parameters()))
    for _ in range(2):
        with meter:
            model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert meter.current_bytes == 0


def test_state_bytes_counts_parameters_gradients_and_adam_moments():
    model = torch.nn.Linear(10, 5)  # 55 float32 parameters
    optimizer = torch.optim.Adam(model.parameters())
    assert state_bytes(model, optimizer) == 2 * 55 * 4
    model(torch.randn(3, 10)).sum().backward()
    optimizer.step()  # Adam now holds two moments per parameter (and a step count each)
    steps = sum(s["step"].numel() * s["step"].element_size() for s in optimizer.state.values())
    assert state_bytes(model, optimizer) == 4 * 55 * 4 + steps
