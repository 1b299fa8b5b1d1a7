"""What both comparisons share: their seed ranges, the training driver, the run folder and
the clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cnflow.flows.base import Flow
from cnflow.runs import run_directory, write_json, write_text
from cnflow.training import EndlessSamples, TrainConfig, fit

# Disjoint seed ranges: training batches, evaluation samples and test sets never overlap.
EVAL_SEED = 10**6
TEST_SEED = 3 * 10**6
NORMALIZATION_SEED = 4 * 10**6
#: The box ``[-4, 4]²`` of every density figure (the energies' box).
FIGURE_EXTENT = (-4.0, 4.0, -4.0, 4.0)
# Twenty training records per fit: the last one's mean loss is that of the last 5 % of steps.
RECORDS_PER_FIT = 20


class Clock:
    """CPU seconds (this process) and wall seconds since creation."""

    def __init__(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def read(self) -> dict[str, float]:
        """``cpu_seconds`` and ``wall_seconds`` spent so far."""
        return {"cpu_seconds": time.process_time() - self.cpu,
                "wall_seconds": time.perf_counter() - self.wall}


def claim(out_dir: str | Path, marker: str, outputs: Sequence[str], overwrite: bool
          ) -> AbstractContextManager[Path]:
    """:func:`cnflow.runs.run_directory` for one comparison's folder: locked while it runs,
    refused if it holds a run (its ``config.json`` or ``marker``, the results file written
    last) unless ``overwrite``, which first removes those and ``outputs``. Other files in
    the folder are left alone."""
    return run_directory(out_dir, overwrite=overwrite, files=("config.json", marker),
                         clear=outputs, resumable=False, keep_lock=False)


def progress_bar(total: int, progress: bool | None) -> tqdm:
    """One bar over every training step of a comparison; ``progress=None`` shows it only on
    a terminal."""
    return tqdm(total=total, unit="it", dynamic_ncols=True,
                disable=(not progress) if progress is not None else None)


def train_flow(flow: Flow, batches: Callable[[int, int], torch.Tensor], objective: Callable,
               iterations: int, lr: float, batch_size: int, seed: int, bar: tqdm, label: str
               ) -> dict[str, Any]:
    """``iterations`` steps of :func:`cnflow.training.fit` on ``batches(n, seed)`` (Adam,
    cosine decay to lr/100, no validation: the last weights are kept); ``bar`` counts the
    steps. Returns the last record's mean loss, why the fit stopped and its steps."""
    bar.set_description(label)
    source = EndlessSamples(batches, max(1, iterations // RECORDS_PER_FIT), seed=seed,
                            steps=iterations)

    def advance(record: dict[str, Any]) -> None:
        bar.update()
        bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)

    history = fit(flow, source, None, TrainConfig(batch_size=batch_size, lr=lr, patience=None,
                                                  seed=seed),
                  objective=objective, on_step=advance, progress=False)
    flow.eval()
    return {"final_train_loss": history.records[-1]["train_loss"],
            "stop_reason": history.stop_reason, "iterations": history.steps}


def base_noise(n: int, seed: int) -> torch.Tensor:
    """A seeded batch of the planar/CNF base distribution's noise (2-D)."""
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))




def model_label(kind: str, size: int) -> str:
    """``NF K=8`` or ``CNF M=8``: a planar flow's depth K, a CNF's width M."""
    return f"{kind} {'K' if kind == 'NF' else 'M'}={size}"


def stopped_early(runs: list[dict[str, Any]]) -> int:
    """How many fits a non-finite loss stopped."""
    # Results written before the one training loop counted skipped steps instead.
    return sum(r["stop_reason"] == "non-finite loss" if "stop_reason" in r
               else r.get("skipped_steps", 0) > 0 for r in runs)


@contextmanager
def torch_threads(n: int):
    """torch's thread count set to ``n`` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_comparison(out: Path, name: str, config: Any, result: dict[str, Any],
                     markdown: str) -> None:
    """A finished comparison's files: its Markdown, then ``config.json``, then
    ``NAME.json``, last because its presence marks a finished run (a run that fails
    before leaves no record behind)."""
    write_text(markdown, out / f"{name}.md")
    write_json(asdict(config), out / "config.json")
    write_json(result, out / f"{name}.json")
