"""The CNF benchmark on a CUDA device: ``cnflow benchmark gpu`` writes ``results/gpu.md``.

Two measurements, each a few minutes on one GPU:

* a CNF training iteration of cnflow against torchdiffeq's reference CNF
  (:func:`cnflow.experiments.cnf_bench.speed_comparison`: the same field, weights and
  batches, dopri5 at 1e-5, adjoint gradients) at growing batch sizes;
* exact ``log_prob`` throughput of the trained two_moons model of ``results/cnf/`` up to a
  million points (:func:`cnflow.experiments.cnf_bench.throughput`).

Wall seconds after a ``torch.cuda.synchronize``; medians of repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cnflow.density import load_checkpoint
from cnflow.experiments.cnf_bench import speed_comparison, throughput
from cnflow.report import command_line, markdown_table, record_link, write_record
from cnflow.runs import environment, write_json, write_text
from cnflow.validation import check_int, check_ints

__all__ = ["GPUBenchConfig", "run"]


@dataclass
class GPUBenchConfig:
    """What ``cnflow benchmark gpu`` measures.

    Attributes:
        iterations: timed training iterations per batch size.
        warmup: untimed training iterations before them.
        batches: batch sizes of the training comparison.
        points: sizes of the exact log_prob throughput runs (points per call).
        repeats: timings of each throughput size (the median is reported).
    """

    iterations: int = 5
    warmup: int = 2
    batches: tuple[int, ...] = (512, 8192, 65536)
    points: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    repeats: int = 3

    def __post_init__(self) -> None:
        check_int("iterations", self.iterations)
        check_int("warmup", self.warmup, minimum=0)
        self.batches = check_ints("batches", self.batches)  # tuples, also from JSON's lists
        self.points = check_ints("points", self.points)
        check_int("repeats", self.repeats)


def run(config: GPUBenchConfig, out: str | Path, model: str | Path,
        device: str = "cuda") -> str:
    """Measure on ``device`` and write the Markdown report ``out``, a JSON of the numbers
    beside it and the settings to its ``config.json``; return the report.

    Args:
        config: the settings.
        out: the report's path (``results/gpu.md``).
        model: run directory of a trained two_moons CNF (``results/cnf/two_moons``).
        device: ``"cuda"`` (``"cpu"`` runs the same code, for a quick check).
    """
    speed = {b: speed_comparison(config.iterations, config.warmup, batch=b, device=device)
             for b in config.batches}
    flow, _, _ = load_checkpoint(model, device)
    rates = throughput(flow, device, sizes=config.points, repeats=config.repeats)
    env = environment()
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    command = command_line(("cnflow", "benchmark", "gpu"), config, changed_only=True, model=model, out=out)
    speed_rows = []
    for batch, s in speed.items():
        ref, ours, semi = s["reference"], s["cnflow"], s["cnflow_default"]
        speed_rows.append([
            batch, f"{ref['seconds_per_iteration']:.4f}", f"{ours['seconds_per_iteration']:.4f}",
            f"{ref['seconds_per_iteration'] / ours['seconds_per_iteration']:.1f}x",
            f"{semi['seconds_per_iteration']:.4f}",
            f"{ref['nfe_forward'] + ref['nfe_backward']:.0f}",
            f"{ours['nfe_forward'] + ours['nfe_backward']:.0f}"])
    rate_rows = [[f"{r['points']:,}", f"{r['seconds']:.3f}", f"{r['points_per_second']:,.0f}",
                  f"{r['unblocked_points_per_second']:,.0f}", r["nfe"]] for r in rates]
    lines = [
        "# CNF benchmark on a GPU", "",
        (f"Regenerate: `{command}`; the settings are in [{record_link(out)}]"
         f"({record_link(out)}). Device: {name}; torch {env['torch']}."), "",
        "## Training iteration against torchdiffeq's reference CNF", "",
        (f"As section 1 of [cnf.md](cnf.md): the same field and weights, dopri5 at 1e-5, "
         f"adjoint gradients; median wall seconds of {config.iterations} iterations after "
         f"{config.warmup} warm-up ones."), "",
        markdown_table(["batch", "reference s", "cnflow s (like for like)", "speed-up",
                        "cnflow s (default norms)", "NFE reference", "NFE cnflow"],
                       speed_rows), "",
        "## Exact `log_prob` throughput (trained two_moons model)", "",
        (f"Median of {config.repeats} timings (wall seconds after a synchronise on CUDA, "
         "CPU seconds on the CPU)."), "",
        markdown_table(["points", "seconds", "points / s", "points / s unblocked", "NFE"],
                       rate_rows),
    ]
    text = "\n".join(lines) + "\n"
    write_text(text, out)
    write_json({"command": command, "device": name,
                "speed": {str(b): s for b, s in speed.items()}, "throughput": rates},
               Path(out).with_suffix(".json"))
    write_record(config, out)
    return text
