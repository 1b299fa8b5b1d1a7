"""CNF benchmark: speed against torchdiffeq's reference CNF, test NLL against the entropy
floor, and exact ``log_prob`` throughput. ``cnflow benchmark cnf`` writes ``results/cnf.md``.

The reference is the model of torchdiffeq's ``examples/cnf.py``, re-implemented here: a
hypernetwork ``t -> (W, B, U, G)`` of shape 1→32→32→(3·M·D + M), the field
``mean_n σ(G_n) ⊙ U_n · tanh(W_nᵀ z + B_n)``, the trace by one autograd call per dimension,
trained with ``torchdiffeq.odeint_adjoint`` (dopri5, rtol = atol = 1e-5) from t = 10 to 0.

cnflow runs the *same* field with the *same* weights: its closed-form trace replaces the
autograd loop, and cnflow's solver replaces torchdiffeq's. Equal fields make the NFE
comparable and leave only the implementation to differ.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import toydata
from cnflow.density import FitConfig, fit_run, load_checkpoint
from cnflow.flows.base import standard_normal_log_prob
from cnflow.flows.cnf import GatedHyperDynamics, JointField
from cnflow.runs import environment, write_text
from cnflow.solvers import solve

M, D, HIDDEN = 64, 2, 32
T1 = 10.0
TOL = 1e-5


class ReferenceHyperNetwork(nn.Module):
    """torchdiffeq examples/cnf.py's hypernetwork: t -> W (M, D), B (M,), gated U (M, D)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN),
                                 nn.Tanh(), nn.Linear(HIDDEN, 3 * M * D + M))

    def forward(self, t: torch.Tensor):
        p = self.net(t.reshape(1, 1)).reshape(-1)
        w = p[: M * D].view(M, D)
        u = p[M * D: 2 * M * D].view(M, D) * torch.sigmoid(p[2 * M * D: 3 * M * D].view(M, D))
        return w, p[3 * M * D:], u


class ReferenceCNF(nn.Module):
    """The reference field with the trace by autograd, one call per dimension."""

    def __init__(self, hyper: ReferenceHyperNetwork):
        super().__init__()
        self.hyper = hyper

    def forward(self, t, states):
        z = states[0]
        with torch.set_grad_enabled(True):
            z.requires_grad_(True)
            w, b, u = self.hyper(t)
            dz = (torch.tanh(z @ w.t() + b) @ u) / M
            trace = sum(torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i]
                        for i in range(D))
        return dz, -trace.view(-1, 1)


class ReferenceGated(GatedHyperDynamics):
    """The reference field as cnflow's gated layer, so that it runs with the closed-form
    trace and vector-Jacobian product: the reference's parameterisation (a gate per unit
    and dimension, the mean over the M units) through the layer's two hooks, ``_hyper`` and
    ``_raw_cotangent``, on the reference's own hypernetwork (shared weights)."""

    def __init__(self, hyper: ReferenceHyperNetwork):
        super().__init__(D, M, HIDDEN)
        self.hyper = hyper.net

    def _hyper(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        md = M * D
        h1 = torch.tanh(self.hyper[0](x))
        h2 = torch.tanh(self.hyper[2](h1))
        raw = self.hyper[4](h2)
        w, u = raw[:, :md].view(-1, M, D), raw[:, md:2 * md].view(-1, M, D)
        sig = torch.sigmoid(raw[:, 2 * md:3 * md]).view(-1, M, D)
        return h1, h2, w, u * sig / M, raw[:, 3 * md:], sig, u

    def _raw_cotangent(self, units, d_w_t, d_gated_t, d_b):
        sig, u = (torch.stack([x.rest[j][x.i] for x in units]) for j in (3, 4))
        d_gated = d_gated_t.transpose(1, 2)
        k = len(units)
        return torch.cat([d_w_t.transpose(1, 2).reshape(k, -1),
                          (d_gated * sig / M).reshape(k, -1),
                          (d_gated * u / M * sig * (1 - sig)).reshape(k, -1), d_b], 1)


def reference_joint_field(hyper: ReferenceHyperNetwork) -> tuple[JointField, ReferenceGated]:
    """The reference field for cnflow's solver: ``[z, log p]`` jointly, closed-form trace
    and VJP; and the module that holds its weights."""
    dynamics = ReferenceGated(hyper)
    return JointField(dynamics, D, "closed_form", block=None), dynamics


def _base_log_prob(z: torch.Tensor) -> torch.Tensor:
    # The reference's base density N(0, 0.1 I).
    return standard_normal_log_prob(z / np.sqrt(0.1)) - D * 0.5 * np.log(0.1)


def _clock(device: torch.device) -> float:
    """Wall seconds, after the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def speed_comparison(iterations: int = 20, warmup: int = 2, batch: int = 512,
                     device: str = "cpu") -> dict:
    """Seconds per training iteration and NFE, both models trained side by side on
    ``device``."""
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
    rows = {"reference": [], "cnflow": [], "cnflow_default": []}
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
        loss = -(_base_log_prob(zs[-1]) - dlogp[-1].view(-1)).mean()
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
            loss = -(_base_log_prob(end[:, :D]) - end[:, D]).mean()
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
    errors = {"reference": ref_end, **ours_end}
    summary = {}
    for key, values in rows.items():
        arr = np.array(values)
        summary[key] = {"seconds_per_iteration": float(np.median(arr[:, 0])),
                        "nfe_forward": float(arr[:, 1].mean()),
                        "nfe_backward": float(arr[:, 2].mean()),
                        "final_loss": float(arr[-1, 3]),
                        "logp_error": float((errors[key][:, D] - exact[:, D]).abs().max())}
    return summary


SPEED_GOAL = 8.0  # training iteration against the reference, like for like (issue 12)
THROUGHPUT_GOAL = 10_000  # points/s at 1e5 points, one thread (issue 12)


@torch.no_grad()
def throughput(flow, device: str = "cpu", sizes=(1000, 10000, 100000), repeats: int = 3
               ) -> list[dict]:
    """Exact log_prob (eval mode, eval tolerance) points per second: the median of
    ``repeats`` timings (CPU seconds on the CPU, wall seconds with a synchronise on CUDA),
    with the field evaluated in the flow's row blocks and, alternated with it, in one piece."""
    flow = flow.to(device).eval()
    block = flow.block_size
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


def write_report(out: str | Path, runs_dir: str | Path, iterations: int = 20,
                 refit: bool = True) -> str:
    """Run the three measurements and write the markdown report ``out``."""
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    runs_dir = Path(runs_dir)
    speed = speed_comparison(iterations)
    fits = {}
    for dataset in ("two_moons", "two_circles"):
        run = runs_dir / dataset
        if refit or not (run / "metrics.json").exists():
            fit_run(FitConfig(dataset=dataset), run, device="cpu", progress=False,
                    overwrite=True)
        fits[dataset] = json.loads((run / "metrics.json").read_text())
    flow, _, _ = load_checkpoint(runs_dir / "two_moons")
    rates = throughput(flow, "cpu")
    if torch.cuda.is_available():
        rates += throughput(flow, "cuda")

    ref, ours, semi = speed["reference"], speed["cnflow"], speed["cnflow_default"]
    speedup = ref["seconds_per_iteration"] / ours["seconds_per_iteration"]
    nfe_ref = ref["nfe_forward"] + ref["nfe_backward"]
    nfe_ours = ours["nfe_forward"] + ours["nfe_backward"]
    nfe_diff = 100 * (nfe_ours - nfe_ref) / nfe_ref
    met = "met" if speedup >= SPEED_GOAL else "NOT met"
    nfe_met = "met" if nfe_ours <= nfe_ref else "NOT met"
    env = environment()
    lines = [
        "# CNF benchmark",
        "",
        ("Regenerate with `cnflow benchmark cnf --out results/cnf.md` (needs the `bench` "
        "extra for torchdiffeq). Every number below is written by "
        "`cnflow/experiments/cnf_bench.py`."),
        "",
        (f"Machine: {platform.machine()}, 1 torch thread, torch {env['torch']}, Python "
        f"{env['python']}. Machine load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (wall times grow with load)."),
        "",
        "## 1. Speed against torchdiffeq's reference CNF (`examples/cnf.py`)",
        "",
        (f"Same field (hypernetwork 1→{HIDDEN}→{HIDDEN}→(3·M·D+M), M = {M}, D = {D}), same "
        f"initial weights, same batches of {512} two_circles points, dopri5 at rtol = atol = "
        f"{TOL:g}, adjoint gradients, t from {T1:g} to 0. Reference: torchdiffeq "
        "`odeint_adjoint`, trace by one autograd call per dimension. cnflow: the same field "
        "as its gated layer, with the closed-form trace and vector-Jacobian product, "
        "cnflow's solver and adjoint. Median seconds over "
        f"{iterations} training iterations after 2 warm-up iterations; NFE are means."),
        "",
        ("| implementation | s / iteration | NFE forward | NFE backward | speed-up | "
        "max log p error |"),
        "|---|---|---|---|---|---|",
        (f"| torchdiffeq reference | {ref['seconds_per_iteration']:.4f} | "
        f"{ref['nfe_forward']:.1f} | {ref['nfe_backward']:.1f} | 1.0× | "
        f"{ref['logp_error']:.1e} |"),
        (f"| cnflow, torchdiffeq's norms (like for like) | "
        f"{ours['seconds_per_iteration']:.4f} | {ours['nfe_forward']:.1f} | "
        f"{ours['nfe_backward']:.1f} | {speedup:.1f}× | {ours['logp_error']:.1e} |"),
        (f"| cnflow, its default norms (joint RMS; seminorm adjoint) | "
        f"{semi['seconds_per_iteration']:.4f} | {semi['nfe_forward']:.1f} | "
        f"{semi['nfe_backward']:.1f} | "
        f"{ref['seconds_per_iteration'] / semi['seconds_per_iteration']:.1f}× | "
        f"{semi['logp_error']:.1e} |"),
        "",
        (f"Goal: at least {SPEED_GOAL:g}× faster per iteration — **{met}** ({speedup:.1f}× "
        f"like for like). Goal: no more NFE than the reference — **{nfe_met}** (total NFE "
        f"{nfe_ours:.0f} vs "
        f"{nfe_ref:.0f}, {nfe_diff:+.1f} %). The optimiser steps on the like-for-like "
        "model only, so the reference and that model see the same field throughout; the "
        "default-norm row is timed on that same field. The last column is the largest "
        "error in log p of one forward solve of a batch (float64) against dopri8 at "
        "rtol = atol = 1e-11."),
        "",
        "## 2. Test NLL of the default `cnflow fit` against the entropy floor",
        "",
        ("Test NLL on fresh held-out points with the exact trace at the eval tolerance; the "
        "floor is the dataset's true entropy (`toydata`). The KL column is the mean of "
        "log p_true − log q over the same points: the same gap, with a much smaller error."),
        "",
        ("| dataset | test NLL | floor | gap (NLL − floor) | KL(p‖q) estimate | goal | "
        "iterations | CPU s | wall s |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    goals = {"two_moons": 0.03, "two_circles": 0.05}
    for dataset, m in fits.items():
        goal = goals[dataset]
        verdict = "met" if m["gap"] <= goal else "NOT met"
        lines.append(
            f"| {dataset} | {m['test_nll']:.4f} ± {m['test_nll_stderr']:.4f} | "
            f"{m['entropy_floor']:.4f} | {m['gap']:+.4f} | {m['kl_estimate']:.4f} ± "
            f"{m['kl_stderr']:.4f} | ≤ {goal} ({verdict}) | {m['steps']} | "
            f"{m['cpu_seconds']:.0f} | {m['wall_seconds']:.0f} |")
    lines += [
        "",
        ("CPU s is the process's CPU time; wall s depends on what else ran on the machine. "
        "The 5-minute goal is judged on the CPU time of the single-threaded run."),
        "",
        "Figures: " + ", ".join(f"[{d}](cnf/{d}/density.png) ([snapshots](cnf/{d}/"
                                f"snapshots.png))" for d in fits),
        "",
        "## 3. Exact `log_prob` throughput (trained two_moons model, eval tolerance)",
        "",
        (f"Median of 3 timings (CPU seconds on the CPU, one thread). The field is evaluated "
         f"in blocks of {rates[0]['block_size']} rows (`CNF(block_size=…)`); the last "
         "column is the same solve with all rows at once, timed alternately with it. "
         f"Goal at 1e5 points: at least {THROUGHPUT_GOAL:,} points/s."),
        "",
        ("| device | points | seconds | points / s | points / s unblocked | blocked / unblocked "
         "| NFE |"),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rates:
        lines.append(f"| {r['device']} | {r['points']} | {r['seconds']:.2f} | "
                     f"{r['points_per_second']:.0f} | {r['unblocked_points_per_second']:.0f} | "
                     f"{r['points_per_second'] / r['unblocked_points_per_second']:.1f}x | "
                     f"{r['nfe']} |")
    largest = max((r for r in rates if r["device"] == "cpu"), key=lambda r: r["points"])
    lines += ["", (f"Goal on the CPU at {largest['points']:,} points: "
                   + ("met" if largest["points_per_second"] >= THROUGHPUT_GOAL else "NOT met")
                   + f" ({largest['points_per_second']:,.0f} points/s).")]
    if not torch.cuda.is_available():
        lines += ["", "No CUDA device was available to this run, so there is no GPU row."]
    text = "\n".join(lines) + "\n"
    write_text(text, out)
    return text
