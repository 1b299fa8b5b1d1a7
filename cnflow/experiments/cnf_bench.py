"""CNF benchmark: speed against torchdiffeq's reference CNF, test NLL against the entropy
floor, and exact ``log_prob`` throughput. ``cnflow benchmark cnf`` writes ``results/cnf.md``.

The reference is the model of torchdiffeq's ``examples/cnf.py``
(:mod:`cnflow.experiments.cnf_reference`), trained with ``torchdiffeq.odeint_adjoint``.
cnflow runs the *same* field with the *same* weights: its closed-form trace replaces the
autograd loop, and cnflow's solver replaces torchdiffeq's. :func:`run` measures, and
:func:`cnflow.experiments.cnf_report.report_text` writes the report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import toydata
from cnflow.density import FitConfig, fit_run, load_checkpoint
from cnflow.experiments.cnf_reference import (
    T1,
    TOL,
    D,
    ReferenceCNF,
    ReferenceHyperNetwork,
    base_log_prob,
    reference_joint_field,
)
from cnflow.experiments.cnf_report import report_text
from cnflow.flows.cnf import CNF
from cnflow.report import (
    command_line,
    record_folder,
    record_link,
    write_record,
)
from cnflow.runs import relative_path, write_text
from cnflow.solvers import solve
from cnflow.validation import check_int, check_ints

__all__ = ["FITS", "CNFBenchConfig", "default_fits", "run", "speed_comparison", "throughput"]

FITS = ("two_moons", "two_circles")  # the default `cnflow fit` runs of section 2


@dataclass
class CNFBenchConfig:
    """What ``cnflow benchmark cnf`` measures.

    Attributes:
        iterations: timed training iterations of each model in the speed comparison.
        warmup: untimed training iterations of each model before them.
        batch: two_circles points per training iteration of the speed comparison.
        points: sizes of the exact log_prob throughput runs (points per call).
        repeats: timings of each throughput size (the median is reported).
    """

    iterations: int = 20
    warmup: int = 2
    batch: int = 512
    points: tuple[int, ...] = (1000, 10000, 100000)
    repeats: int = 3

    def __post_init__(self) -> None:
        check_int("iterations", self.iterations)
        check_int("warmup", self.warmup, minimum=0)
        check_int("batch", self.batch)
        self.points = check_ints("points", self.points)  # a tuple, also from JSON's list
        check_int("repeats", self.repeats)


def _clock(device: torch.device) -> float:
    """Wall seconds, after the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def speed_comparison(iterations: int = 20, warmup: int = 2, batch: int = 512,
                     device: str = "cpu") -> dict[str, dict[str, float]]:
    """Seconds per training iteration and NFE, both models trained side by side on
    ``device`` (the reference, cnflow like for like, cnflow with its default norms), and
    each one's error in log p against a tight solve."""
    import torchdiffeq

    device = torch.device(device)
    torch.manual_seed(0)
    hyper_ref = ReferenceHyperNetwork().to(device)
    hyper_ours = ReferenceHyperNetwork().to(device)
    hyper_ours.load_state_dict(hyper_ref.state_dict())
    reference = ReferenceCNF(hyper_ref)
    ours, module = reference_joint_field(hyper_ours)
    params = tuple(module.parameters())
    opt_ref = torch.optim.Adam(reference.parameters(), lr=1e-3)
    opt_ours = torch.optim.Adam(params, lr=1e-3)
    data = toydata.get("two_circles")
    times = torch.tensor([T1, 0.0], device=device)
    rows: dict[str, list[tuple[float, int, int, float]]] = {
        "reference": [], "cnflow": [], "cnflow_default": []}
    n = batch * (D + 1)
    sizes = [p.numel() for p in params]

    def rms(x):
        return x.pow(2).mean().sqrt()

    def tuple_norm(e):
        # torchdiffeq's norm for a tuple state: the largest RMS over its tensors.
        e = e.view(batch, D + 1)
        return torch.maximum(rms(e[:, :D]), rms(e[:, D]))

    def adjoint_tuple_norm(e):
        # The same over torchdiffeq's augmented state (z, log p, their adjoints, each
        # parameter's adjoint).
        parts = [tuple_norm(e[:n]), tuple_norm(e[n:2 * n])]
        parts += [rms(p) for p in torch.split(e[2 * n:], sizes)]
        return torch.stack(parts).max()

    counter = {"nfe": 0}

    def counted(t, states):
        counter["nfe"] += 1
        return reference(t, states)

    for it in range(warmup + iterations):
        x = torch.as_tensor(data.sample(batch, seed=10_000 + it), dtype=torch.float32,
                            device=device)
        zero = torch.zeros(batch, 1, device=device)
        # Reference: torchdiffeq's adjoint, full norm.
        counter["nfe"] = 0
        start = _clock(device)
        opt_ref.zero_grad()
        zs, dlogp = torchdiffeq.odeint_adjoint(
            counted, (x, zero), times, rtol=TOL, atol=TOL, method="dopri5",
            adjoint_params=tuple(reference.parameters()))
        nfe_forward = counter["nfe"]
        loss = -(base_log_prob(zs[-1]) - dlogp[-1].view(-1)).mean()
        loss.backward()
        opt_ref.step()
        seconds = _clock(device) - start
        if it >= warmup:
            rows["reference"].append((seconds, nfe_forward, counter["nfe"] - nfe_forward,
                                      loss.item()))
        # cnflow on the same field and batch: first with torchdiffeq's norms (like for
        # like), then with cnflow's defaults (joint RMS forward, seminorm adjoint).
        for key, forward_norm, adjoint_norm in (
                ("cnflow", tuple_norm, adjoint_tuple_norm),
                ("cnflow_default", "rms", "seminorm")):
            start = _clock(device)
            opt_ours.zero_grad()
            sol = solve(ours, torch.cat([x, zero], 1), times, rtol=TOL,
                        atol=TOL, method="dopri5", gradient="adjoint", adjoint_params=params,
                        options={"norm": forward_norm}, adjoint_options={"norm": adjoint_norm})
            end = sol.ys[-1]
            loss = -(base_log_prob(end[:, :D]) - end[:, D]).mean()
            loss.backward()
            if key == "cnflow":
                opt_ours.step()  # one optimiser step per iteration keeps the fields equal
            seconds = _clock(device) - start
            if it >= warmup:
                rows[key].append((seconds, sol.stats.forward.nfe, sol.stats.backward.nfe,
                                  loss.item()))
    # Accuracy of each forward solve on one batch, against a tight dopri8 solve of the
    # (now equal) field: fewer NFE only count if the answer is as good.
    x = torch.as_tensor(data.sample(batch, seed=99), dtype=torch.float64, device=device)
    reference.double()
    module.double()
    zero = torch.zeros(batch, 1, dtype=torch.float64, device=device)
    y0 = torch.cat([x, zero], 1)
    times64 = times.double()
    with torch.no_grad():
        exact = solve(ours, y0, times64, rtol=1e-11, atol=1e-11, method="dopri8").ys[-1]
        ours_end = {key: solve(ours, y0, times64, rtol=TOL, atol=TOL, method="dopri5",
                               options={"norm": norm}).ys[-1]
                    for key, norm in (("cnflow", tuple_norm), ("cnflow_default", "rms"))}
    ref_z, ref_logp = torchdiffeq.odeint(reference, (x, zero), times64, rtol=TOL, atol=TOL,
                                         method="dopri5")
    ref_end = torch.cat([ref_z[-1], ref_logp[-1]], 1).detach()
    ends = {"reference": ref_end, **ours_end}
    summary = {}
    for key, values in rows.items():
        arr = np.array(values)
        summary[key] = {"seconds_per_iteration": float(np.median(arr[:, 0])),
                        "nfe_forward": float(arr[:, 1].mean()),
                        "nfe_backward": float(arr[:, 2].mean()),
                        "final_loss": float(arr[-1, 3]),
                        "logp_error": float((ends[key][:, D] - exact[:, D]).abs().max())}
    return summary


@torch.no_grad()
def throughput(flow: CNF, device: str = "cpu", sizes: Sequence[int] = (1000, 10000, 100000),
               repeats: int = 3) -> list[dict[str, Any]]:
    """Exact log_prob (eval mode, eval tolerance) points per second: the median of
    ``repeats`` timings (CPU seconds on the CPU, wall seconds with a synchronise on CUDA),
    with the field evaluated in the flow's row blocks and, alternated with it, in one piece."""
    flow = flow.to(device).eval()
    block = flow.block_size
    # CPU time on the CPU: it does not count what other processes take of a shared core.
    clock = time.process_time if device == "cpu" else time.perf_counter
    rows = []
    for n in sizes:
        x = torch.as_tensor(toydata.get("two_moons").sample(n, seed=7), dtype=torch.float32,
                            device=device)
        flow.log_prob(x[:100])  # warm-up
        seconds: dict[int | None, list[float]] = {block: [], None: []}
        for repeat in range(repeats):
            for size in ((block, None) if repeat % 2 == 0 else (None, block)):
                flow.block_size = size
                if device != "cpu":
                    torch.cuda.synchronize()
                start = clock()
                flow.log_prob(x)
                if device != "cpu":
                    torch.cuda.synchronize()
                seconds[size].append(clock() - start)
        flow.block_size = block
        median = {size: float(np.median(values)) for size, values in seconds.items()}
        rows.append({"device": device, "points": n, "block_size": block,
                     "seconds": median[block], "points_per_second": n / median[block],
                     "unblocked_points_per_second": n / median[None],
                     "nfe": flow.last_stats.forward.nfe})
    return rows


def default_fits(runs: str | Path, refit: bool = True) -> dict[str, dict[str, Any]]:
    """The metrics of the default ``cnflow fit`` of each of :data:`FITS`, run into
    ``runs/<dataset>`` (with ``refit=False``, a finished run there is kept)."""
    fits = {}
    for dataset in FITS:
        folder = Path(runs) / dataset
        if refit or not (folder / "metrics.json").exists():
            fit_run(FitConfig(dataset=dataset), folder, device="cpu", progress=False,
                    overwrite=True)
        fits[dataset] = json.loads((folder / "metrics.json").read_text())
    return fits


def run(config: CNFBenchConfig, out: str | Path, runs: str | Path,
        refit: bool = True) -> str:
    """Run the three measurements on one thread and write the Markdown report ``out``, and
    the settings to its ``config.json``; return the report.

    Args:
        config: the settings.
        out: the report's path (``results/cnf.md``).
        runs: where the default fits' run directories go (``results/cnf``).
        refit: train the fits again even where a finished run exists.
    """
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    speed = speed_comparison(config.iterations, config.warmup, config.batch)
    fits = default_fits(runs, refit)
    flow, _, _ = load_checkpoint(Path(runs) / "two_moons")  # the model of section 3
    rates = throughput(flow, "cpu", config.points, config.repeats)
    if torch.cuda.is_available():
        rates += throughput(flow, "cuda", config.points, config.repeats)
    # --runs goes into the command line only where it is not the report's own folder.
    where = {} if Path(runs) == record_folder(out) else {"runs": runs}
    command = command_line(("cnflow", "benchmark", "cnf"), config, changed_only=True, **where, out=out)
    folder = Path(out).parent
    text = report_text(config, command, speed, fits, rates,
                       load=(load_before, os.getloadavg()[0]),
                       record=record_link(out),
                       links={d: relative_path(Path(runs) / d, folder) for d in fits})
    write_text(text, out)
    write_record(config, out)
    return text
