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

from collections.abc import Sequence
from pathlib import Path

import torch

from cnflow.density import load_checkpoint
from cnflow.experiments.cnf_bench import speed_comparison, throughput
from cnflow.runs import environment, write_json, write_text

BATCHES = (512, 8192, 65536)
POINTS = (10_000, 100_000, 1_000_000)


def write_report(out: str | Path, model: str | Path, command: str, device: str = "cuda",
                 batches: Sequence[int] = BATCHES, points: Sequence[int] = POINTS,
                 iterations: int = 5) -> str:
    """Measure on ``device`` and write the Markdown report ``out`` (and a JSON beside it).

    Args:
        model: run directory of a trained two_moons CNF (``results/cnf/two_moons``).
        command: the command line that reproduces the report (written into it).
        device: ``"cuda"`` (``"cpu"`` runs the same code, for a quick check).
    """
    speed = {b: speed_comparison(iterations, batch=b, device=device) for b in batches}
    flow, _, _ = load_checkpoint(model, device)
    rates = throughput(flow, device, sizes=tuple(points))
    env = environment()
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    lines = ["# CNF benchmark on a GPU", "",
             f"Regenerate: `{command}`. Device: {name}; torch {env['torch']}.", "",
             "## Training iteration against torchdiffeq's reference CNF", "",
             (f"As section 1 of [cnf.md](cnf.md): the same field and weights, dopri5 at "
              f"1e-5, adjoint gradients; median wall seconds of {iterations} iterations "
              "after 2 warm-up ones."), "",
             ("| batch | reference s | cnflow s (like for like) | speed-up | cnflow s "
              "(default norms) | NFE reference | NFE cnflow |"), "|---|---|---|---|---|---|---|"]
    for batch, s in speed.items():
        ref, ours, semi = s["reference"], s["cnflow"], s["cnflow_default"]
        lines.append(
            f"| {batch} | {ref['seconds_per_iteration']:.4f} | "
            f"{ours['seconds_per_iteration']:.4f} | "
            f"{ref['seconds_per_iteration'] / ours['seconds_per_iteration']:.1f}x | "
            f"{semi['seconds_per_iteration']:.4f} | "
            f"{ref['nfe_forward'] + ref['nfe_backward']:.0f} | "
            f"{ours['nfe_forward'] + ours['nfe_backward']:.0f} |")
    lines += ["", "## Exact `log_prob` throughput (trained two_moons model)", "",
              "| points | seconds | points / s | points / s unblocked | NFE |",
              "|---|---|---|---|---|"]
    for r in rates:
        lines.append(f"| {r['points']:,} | {r['seconds']:.3f} | {r['points_per_second']:,.0f} "
                     f"| {r['unblocked_points_per_second']:,.0f} | {r['nfe']} |")
    text = "\n".join(lines) + "\n"
    write_text(text, out)
    write_json({"command": command, "device": name, "speed": {str(b): s for b, s in
                                                             speed.items()},
                "throughput": rates}, Path(out).with_suffix(".json"))
    return text
