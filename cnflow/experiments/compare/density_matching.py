"""Density matching (the paper's Figure 4): planar NFs and CNFs fitted to ``p ∝ exp(−U)``
for the energies U1–U4 by reverse KL; :func:`run` writes the table, the figure and JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import toydata
from cnflow.experiments.compare.common import (
    EVAL_SEED,
    FIGURE_EXTENT,
    Clock,
    base_noise,
    claim,
    model_label,
    progress_bar,
    torch_threads,
    train_flow,
    write_comparison,
)
from cnflow.experiments.compare.targets import box_wall, reverse_kl
from cnflow.flows.base import Flow
from cnflow.flows.cnf import CNF, GatedHyperDynamics
from cnflow.flows.planar import PlanarFlow
from cnflow.objectives import ReverseKL
from cnflow.plots import flow_log_prob
from cnflow.report import command_line
from cnflow.runs import environment
from cnflow.validation import check_choices, check_float, check_int, check_ints

#: Folder name of this comparison's run beside the other's, and the stem of its files.
NAME = "density_matching"
#: The command that runs it (its options are :class:`DensityMatchingConfig`'s fields).
COMMAND = ("cnflow", "compare", "density-matching")
#: Largest seed: evaluation samples use the 64-bit torch seed ``EVAL_SEED + seed``.
MAX_SEED = 2**64 - 1 - EVAL_SEED
#: The density-matching goal: the widest CNF's KL(q‖p) on every target, in nats.
GOAL_KL = 0.1
# Written last: its presence marks a finished run.
RESULT_FILE = f"{NAME}.json"
FIGURES = (f"{NAME}.png",)
OUTPUTS = (f"{NAME}.md", *FIGURES)


@dataclass
class DensityMatchingConfig:
    """Settings of the density-matching comparison (Figure 4).

    Attributes:
        targets: energy names from toydata.energy.names().
        nf_layers: planar-flow depths K.
        cnf_widths: CNF hidden units M.
        seeds: one fit per seed and model.
        nf_iterations, cnf_iterations: Adam steps (cosine decay to lr/100).
        batch_size: samples from q per step.
        nf_lr, cnf_lr: Adam learning rates.
        hidden: width of the CNF's hypernetwork.
        rtol, atol: CNF solver tolerances while training.
        eval_tol: CNF solver tolerance for the KL estimate and the density figure.
        eval_samples: samples of q for each final KL estimate.
        grid: points per axis of the density figure.
        box_wall: strength κ of the soft wall κ Σ_i relu(|x_i| − 4)² added to the energy
            while training (0 disables it); it keeps q inside the box on which the target
            is defined.
        jobs: worker processes, one fit at a time each; the fits are independent and
            seeded, so the numbers do not depend on it.
        threads: torch CPU threads of each process.
    """

    targets: tuple[str, ...] = ("U1", "U2", "U3", "U4")
    nf_layers: tuple[int, ...] = (2, 8, 32)
    cnf_widths: tuple[int, ...] = (2, 8, 32)
    seeds: tuple[int, ...] = (0, 1)
    # The paper trained far longer (its appendix); these reach a plateau at an affordable
    # cost (results/comparisons.md records the CPU time).
    nf_iterations: int = 20000
    cnf_iterations: int = 2000
    batch_size: int = 256
    nf_lr: float = 3e-3
    cnf_lr: float = 1e-2
    hidden: int = 32
    rtol: float = 1e-5
    atol: float = 1e-5
    eval_tol: float = 1e-6
    eval_samples: int = 10000
    grid: int = 80
    box_wall: float = 100.0
    jobs: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        self.targets = check_choices("targets", self.targets, toydata.energy.names())
        self.nf_layers = check_ints("nf_layers", self.nf_layers)
        self.cnf_widths = check_ints("cnf_widths", self.cnf_widths)
        self.seeds = check_ints("seeds", self.seeds, minimum=0, maximum=MAX_SEED)
        for name in ("nf_iterations", "cnf_iterations", "batch_size", "hidden", "jobs",
                     "threads"):
            check_int(name, getattr(self, name))
        # A standard error needs two samples; a figure two grid points per axis.
        check_int("eval_samples", self.eval_samples, minimum=2)
        check_int("grid", self.grid, minimum=2)
        for name in ("nf_lr", "cnf_lr", "rtol", "atol", "eval_tol"):
            check_float(name, getattr(self, name))
        check_float("box_wall", self.box_wall, allow_minimum=True)

    def models(self) -> list[tuple[str, int]]:
        """``(kind, size)`` of every model: the planar flows, then the CNFs."""
        return [("NF", k) for k in self.nf_layers] + [("CNF", m) for m in self.cnf_widths]

    def iterations(self, kind: str) -> int:
        """Training steps of a model of ``kind`` (``"NF"`` or ``"CNF"``)."""
        return self.nf_iterations if kind == "NF" else self.cnf_iterations


#: The settings ``--quick`` shrinks (a run of seconds, for tests).
QUICK: dict[str, Any] = {"nf_layers": (2,), "cnf_widths": (2,), "seeds": (0,),
                         "nf_iterations": 3, "cnf_iterations": 2, "batch_size": 32,
                         "eval_samples": 200, "grid": 12}


def build_model(kind: str, size: int, config: DensityMatchingConfig) -> Flow:
    """A planar flow of ``size`` layers (generative direction) or a CNF of ``size`` units."""
    if kind == "NF":
        return PlanarFlow(2, layers=size, direction="generative")
    return CNF(GatedHyperDynamics(2, width=size, hidden=config.hidden), 2,
               rtol=config.rtol, atol=config.atol, eval_rtol=config.eval_tol,
               eval_atol=config.eval_tol)


Task = tuple[str, str, int, int]  # target, model kind, size, seed


def fit_one(config: DensityMatchingConfig, task: Task, bar: tqdm | None = None
            ) -> tuple[dict[str, Any], np.ndarray | None]:
    """One fit: train, estimate the KL and, for the first seed, the density on the figure's
    grid. Runs in a worker process with ``jobs > 1`` (``bar`` is then None)."""
    from cnflow.plots import density_grid

    torch.set_num_threads(config.threads)  # a worker process starts with torch's default
    name, kind, size, seed = task
    bar = tqdm(disable=True) if bar is None else bar
    clock = Clock()
    target = toydata.energy.get(name)
    torch.manual_seed(seed)
    flow = build_model(kind, size, config)

    def energy(x: torch.Tensor) -> torch.Tensor:
        if config.box_wall > 0:
            return target.energy(x) + box_wall(x, target.box, config.box_wall)
        return target.energy(x)

    lr = config.nf_lr if kind == "NF" else config.cnf_lr
    record = {"target": name, "model": kind, "size": size, "seed": seed,
              **train_flow(flow, base_noise, ReverseKL(energy, target.log_normalizer()),
                           config.iterations(kind), lr, config.batch_size, seed, bar,
                           f"{name} {model_label(kind, size)} seed {seed}")}
    record.update(reverse_kl(flow, target, config.eval_samples, EVAL_SEED + seed))
    grid = density_grid(flow_log_prob(flow), FIGURE_EXTENT, n=config.grid) \
        if seed == config.seeds[0] else None
    record.update(clock.read())
    return record, grid


def fit_all(config: DensityMatchingConfig, progress: bool | None
            ) -> list[tuple[dict[str, Any], np.ndarray | None]]:
    """Every fit, ``config.jobs`` at a time, in the order target, model, seed."""
    tasks = [(name, kind, size, seed) for name in config.targets
             for kind, size in config.models() for seed in config.seeds]
    # The most expensive fits first, so parallel workers finish together (a CNF step costs
    # about as much as forty planar layers).
    queue = sorted(tasks, key=lambda t: -(config.cnf_iterations * 40 if t[1] == "CNF"
                                          else config.nf_iterations * t[2]))
    done: dict[Task, tuple[dict[str, Any], np.ndarray | None]] = {}
    with progress_bar(sum(config.iterations(t[1]) for t in tasks), progress) as bar:
        if config.jobs == 1:
            done = {task: fit_one(config, task, bar) for task in queue}
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn: a forked child would inherit torch's thread pools in an undefined state.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=config.jobs, mp_context=context) as pool:
                futures = {pool.submit(fit_one, config, task): task for task in queue}
                for future in as_completed(futures):
                    task = futures[future]
                    done[task] = future.result()
                    bar.set_description(f"{task[0]} {model_label(*task[1:3])} seed "
                                        f"{task[3]} done")
                    bar.update(config.iterations(task[1]))
    return [done[task] for task in tasks]


def summarize(config: DensityMatchingConfig, runs: list[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """Mean and sample std of the KL over the seeds, per target and model."""
    summary = []
    for name in config.targets:
        for kind, size in config.models():
            group = [r for r in runs if (r["target"], r["model"], r["size"]) ==
                     (name, kind, size)]
            kls = np.array([r["kl"] for r in group])
            std = float(kls.std(ddof=1)) if len(kls) > 1 else math.nan
            summary.append({"target": name, "model": kind, "size": size,
                            "kl_mean": float(kls.mean()), "kl_std": std,
                            "outside_box_max": max(r["outside_box"] for r in group),
                            "seeds": len(group)})
    return summary


def run(config: DensityMatchingConfig, out_dir: str | Path, *, progress: bool | None = None,
        overwrite: bool = False) -> dict[str, Any]:
    """Fit NFs and CNFs to the targets by reverse KL; write ``config.json`` (the settings),
    ``density_matching.{json,md,png}`` into ``out_dir``.

    Args:
        config: the comparison's settings.
        out_dir: this comparison's run folder.
        progress: show a progress bar; None shows it only on a terminal. With
            ``jobs > 1`` it advances when a fit finishes.
        overwrite: replace a run already in ``out_dir`` (refused otherwise).

    Returns:
        The dictionary written to ``density_matching.json``.
    """
    from cnflow.experiments.compare.figures import density_matching_figure
    from cnflow.experiments.compare.report import density_matching_markdown
    from cnflow.plots import density_grid

    with claim(out_dir, RESULT_FILE, OUTPUTS, overwrite) as out:
        with torch_threads(config.threads):
            clock = Clock()
            fits = fit_all(config, progress)
        runs = [record for record, _ in fits]
        grids = {(r["target"], r["model"], r["size"]): grid for r, grid in fits
                 if grid is not None}
        for name in config.targets:
            grids[(name, "target", 0)] = density_grid(toydata.energy.get(name).log_prob,
                                                      FIGURE_EXTENT, n=config.grid)
        summary = summarize(config, runs)
        result = {"experiment": NAME, "command": command_line(COMMAND, config, out=out_dir,
                                                              overwrite=True),
                  "config": asdict(config), "runs": runs, "summary": summary,
                  "log_normalizers": {n: toydata.energy.get(n).log_normalizer()
                                      for n in config.targets},
                  **clock.read(), "environment": environment()}
        density_matching_figure(grids, config, summary, out / FIGURES[0])
        write_comparison(out, NAME, config, result, density_matching_markdown(result))
    return result
