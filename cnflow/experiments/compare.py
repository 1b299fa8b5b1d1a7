"""CNF versus planar normalizing flows: the paper's Figures 4 and 5 as plain functions.

* :func:`density_matching` (Figure 4): fit ``q`` to ``p ∝ exp(−U)`` for the energies
  U1–U4 by reverse KL, ``loss = E_q[log q(x) + U(x)] + log Z`` with ``Z`` the target's
  normaliser on its box, so the loss *is* ``KL(q‖p)`` whenever ``q`` keeps its mass in
  the box (the fraction it puts outside is reported with every number). U2–U4 do not
  decay along z1, so without a box ``exp(−U)`` has infinite mass and the plain loss is
  lowered, below zero, by spilling mass along the ridges past the box; training therefore
  adds a soft wall ``κ Σ_i relu(|x_i| − 4)²`` (``box_wall = κ``) to ``U``, and the
  reported KL uses ``U`` alone. Planar NFs with K layers (generative direction) against
  CNFs with M hidden units.
* :func:`maximum_likelihood` (Figure 5): a CNF with M = 64 against 64 planar layers
  (normalizing direction), trained on the same batches of two_circles / two_moons; test
  NLL beside the data's entropy, the floor no model can beat.
* :func:`write_report` merges both into one markdown document.

Every function writes PNG + markdown + JSON into an output folder; the JSON holds the
exact command line, the configuration, per-run numbers and CPU/wall times, and the
markdown is generated from it (no number is typed by hand).
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import toydata
from cnflow.flows.base import Flow
from cnflow.flows.cnf import CNF, GatedHyperDynamics
from cnflow.flows.planar import PlanarFlow
from cnflow.objectives import MaximumLikelihood, ReverseKL
from cnflow.runs import environment, relative_path, run_directory, write_json, write_text
from cnflow.training import EndlessSamples, TrainConfig, evaluate, fit, mean_and_stderr
from cnflow.validation import check_choices, check_float, check_int, check_ints

# Disjoint seed ranges: training batches, evaluation samples and test sets never overlap.
_EVAL_SEED = 10**6
_TEST_SEED = 3 * 10**6
_NORMALIZATION_SEED = 4 * 10**6
#: Largest density-matching seed: evaluation samples use the 64-bit torch seed
#: ``_EVAL_SEED + seed``.
DENSITY_MAX_SEED = 2**64 - 1 - _EVAL_SEED
#: The density-matching goal: the widest CNF's KL(q‖p) on every target, in nats.
GOAL_KL = 0.1
#: Largest maximum-likelihood seed: step ``i``'s batch is drawn with the seed
#: ``seed * 10**7 + i``, which sklearn's data sets need below 2**32 (for fewer than 10**7
#: steps).
MLE_MAX_SEED = (2**32 - 1) // 10**7 - 1


@dataclass
class DensityMatchingConfig:
    """Settings of the density-matching comparison (Figure 4).

    Attributes:
        targets: energy names from ``toydata.energy.names()``.
        nf_layers: planar-flow depths K.
        cnf_widths: CNF hidden units M.
        seeds: one fit per seed and model.
        nf_iterations, cnf_iterations: Adam steps (cosine decay to lr/100).
        batch_size: samples from ``q`` per step.
        nf_lr, cnf_lr: Adam learning rates.
        hidden: width of the CNF's hypernetwork.
        rtol, atol: CNF solver tolerances while training.
        eval_tol: CNF solver tolerance for the KL estimate and the density figure.
        eval_samples: samples of ``q`` for each final KL estimate.
        grid: points per axis of the density figure.
        box_wall: strength κ of the soft wall ``κ Σ_i relu(|x_i| − edge)²`` added to the
            energy while training (0 disables it); it keeps ``q`` inside the box on which
            the target is defined.
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

    def __post_init__(self) -> None:
        self.targets = check_choices("targets", self.targets, toydata.energy.names())
        self.nf_layers = check_ints("nf_layers", self.nf_layers)
        self.cnf_widths = check_ints("cnf_widths", self.cnf_widths)
        self.seeds = check_ints("seeds", self.seeds, minimum=0, maximum=DENSITY_MAX_SEED)
        for name in ("nf_iterations", "cnf_iterations", "batch_size", "hidden",
                     "eval_samples", "grid"):
            check_int(name, getattr(self, name))
        for name in ("nf_lr", "cnf_lr", "rtol", "atol", "eval_tol"):
            check_float(name, getattr(self, name))
        check_float("box_wall", self.box_wall, allow_minimum=True)


@dataclass
class MLEConfig:
    """Settings of the maximum-likelihood comparison (Figure 5).

    Attributes:
        datasets: 2-D toy data sets from ``toydata.names(dim=2)``.
        nf_layers: planar layers of the NF (normalizing direction).
        cnf_width: hidden units M of the CNF.
        seed: model initialisation and training batches.
        nf_iterations, cnf_iterations: Adam steps (cosine decay to lr/100); both models
            see the same batch at the same step.
        batch_size: fresh data points per step.
        nf_lr, cnf_lr: Adam learning rates.
        hidden: width of the CNF's hypernetwork.
        rtol, atol: CNF solver tolerances while training.
        eval_tol: CNF solver tolerance for test NLL and figures.
        test_size: held-out points for the test NLL.
        grid: points per axis of the density figure.
    """

    datasets: tuple[str, ...] = ("two_circles", "two_moons")
    nf_layers: int = 64
    cnf_width: int = 64
    seed: int = 0
    nf_iterations: int = 1500
    cnf_iterations: int = 500
    batch_size: int = 512
    nf_lr: float = 5e-3
    cnf_lr: float = 1e-2
    hidden: int = 32
    rtol: float = 1e-5
    atol: float = 1e-5
    eval_tol: float = 1e-6
    test_size: int = 20000
    grid: int = 120
    # Not a model setting: how many samples the figures show.
    figure_samples: int = field(default=20000, repr=False)

    def __post_init__(self) -> None:
        self.datasets = check_choices("datasets", self.datasets, toydata.names(dim=2))
        for name in ("nf_layers", "cnf_width", "nf_iterations", "cnf_iterations",
                     "batch_size", "hidden", "test_size", "grid", "figure_samples"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, minimum=0, maximum=MLE_MAX_SEED)
        for name in ("nf_lr", "cnf_lr", "rtol", "atol", "eval_tol"):
            check_float(name, getattr(self, name))


# -- shared pieces --------------------------------------------------------------------------


#: What each comparison writes into its output folder; the JSON, written last, marks a
#: finished run.
_OUTPUTS = {"density_matching": ("density_matching.json", "density_matching.md",
                                 "density_matching.png"),
            "mle": ("mle.json", "mle.md", "mle.png", "mle_snapshots.png")}


def _claim(out_dir: str | Path, experiment: str, overwrite: bool):
    """:func:`cnflow.runs.run_directory` for one comparison: lock ``out_dir`` while it runs
    and refuse it if it holds that comparison's results, unless ``overwrite`` (which removes
    them first). The other comparison's results in the same folder are left alone."""
    marker, *others = _OUTPUTS[experiment]
    return run_directory(out_dir, overwrite=overwrite, files=(marker,), clear=others,
                         resumable=False, keep_lock=False)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _pm(mean: float, spread: float, digits: int = 3) -> str:
    if spread is None or not math.isfinite(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _flow_log_prob(flow: Flow) -> Callable[[np.ndarray], np.ndarray]:
    def log_prob(points: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(points, dtype=torch.float32)
        with torch.no_grad():
            return flow.log_prob(x).double().numpy()

    return log_prob


class _Clock:
    """CPU seconds (this process) and wall seconds since creation."""

    def __init__(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def read(self) -> dict[str, float]:
        return {"cpu_seconds": time.process_time() - self.cpu,
                "wall_seconds": time.perf_counter() - self.wall}


def _train(flow: Flow, batches: Callable[[int, int], torch.Tensor], objective: Callable,
           iterations: int, lr: float, batch_size: int, seed: int, bar: tqdm, label: str
           ) -> dict[str, Any]:
    """``iterations`` steps of :func:`cnflow.training.fit` on ``batches(n, seed)`` (Adam,
    cosine decay to lr/100, no validation: the last weights are kept); ``bar`` counts them."""
    bar.set_description(label)
    # Twenty records: the last one's mean loss is that of the last 5 % of the steps.
    source = EndlessSamples(batches, max(1, iterations // 20), seed=seed, steps=iterations)
    done = [0]

    def advance(record: dict[str, Any]) -> None:
        bar.update(record["step"] - done[0])
        done[0] = record["step"]
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", refresh=False)

    history = fit(flow, source, None, TrainConfig(batch_size=batch_size, lr=lr, patience=None,
                                                  seed=seed),
                  objective=objective, on_epoch=advance, progress=False)
    flow.eval()
    return {"final_train_loss": history.records[-1]["train_loss"],
            "stop_reason": history.stop_reason, "iterations": history.steps}


def _base_noise(n: int, seed: int) -> torch.Tensor:
    """A seeded batch of the planar/CNF base distribution's noise (2-D)."""
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


# -- density matching (Figure 4) ----------------------------------------------------------


def _density_model(kind: str, size: int, config: DensityMatchingConfig) -> Flow:
    if kind == "NF":
        return PlanarFlow(2, layers=size, direction="generative")
    return CNF(GatedHyperDynamics(2, width=size, hidden=config.hidden), 2,
               rtol=config.rtol, atol=config.atol, eval_rtol=config.eval_tol,
               eval_atol=config.eval_tol)


def box_wall(x: torch.Tensor, box, strength: float) -> torch.Tensor:
    """``κ Σ_i relu(dist. of x_i outside [lo_i, hi_i])²`` per point: zero inside the box."""
    lo = torch.tensor([b[0] for b in box], dtype=x.dtype)
    hi = torch.tensor([b[1] for b in box], dtype=x.dtype)
    outside = torch.relu(lo - x) + torch.relu(x - hi)
    return strength * outside.pow(2).sum(-1)


@torch.no_grad()
def reverse_kl(flow: Flow, target: toydata.energy.EnergyTarget, n: int, seed: int,
               chunk: int = 10000) -> dict[str, float]:
    """Monte-Carlo ``KL(q_B‖p)`` from ``n`` samples of ``q``, with ``q_B`` the flow's density
    conditioned on the target's box ``B`` (where ``p = e^{−U}/Z`` lives):

        KL(q_B‖p) = E_{q|B}[log q + U] + log Z − log q(B)  ≥ 0.

    ``q`` itself is not a density on the box once a fit spills mass past its edges (the
    soft wall of training allows a little), and the plain ``E_q[log q + U] + log Z`` then
    stops being a divergence: with ``U`` continued past the box it can fall below zero.
    Conditioning on the box keeps a divergence, and ``−log q(B)`` charges the spilt mass.

    Returns:
        ``kl``, its standard error ``kl_stderr`` (of the mean over the samples inside; the
        error of ``log q(B)`` is far smaller) and ``outside_box``: ``1 − q(B)``.
    """
    was_training = flow.training
    flow.eval()
    torch.manual_seed(seed)
    log_z = target.log_normalizer()
    values = []
    (a1, b1), (a2, b2) = target.box
    for start in range(0, n, chunk):
        x, log_q = flow.sample_and_log_prob(min(chunk, n - start))
        x, log_q = x.double(), log_q.double()
        inside = (x[:, 0] >= a1) & (x[:, 0] <= b1) & (x[:, 1] >= a2) & (x[:, 1] <= b2)
        values.append((log_q + target.energy(x) + log_z)[inside].numpy())
    flow.train(was_training)
    values = np.concatenate(values)
    inside_share = len(values) / n
    kl, stderr = mean_and_stderr(values)
    return {"kl": kl - math.log(inside_share), "kl_stderr": stderr,
            "outside_box": 1 - inside_share}


def _density_task(config: DensityMatchingConfig, name: str, kind: str, size: int, seed: int,
                  want_grid: bool, bar: tqdm | None = None, threads: int | None = None
                  ) -> tuple[dict[str, Any], np.ndarray | None]:
    """One fit: train, estimate the KL, and (if asked) the density on the figure's grid."""
    from cnflow.plots import density_grid

    if threads is not None:  # a worker process: pin its own thread count
        torch.set_num_threads(threads)
    if bar is None:
        bar = tqdm(disable=True)
    run_clock = _Clock()
    target = toydata.energy.get(name)
    log_z = target.log_normalizer()
    torch.manual_seed(seed)
    flow = _density_model(kind, size, config)
    iterations = config.nf_iterations if kind == "NF" else config.cnf_iterations
    lr = config.nf_lr if kind == "NF" else config.cnf_lr

    def energy(x: torch.Tensor) -> torch.Tensor:
        if config.box_wall > 0:
            return target.energy(x) + box_wall(x, target.box, config.box_wall)
        return target.energy(x)

    label = f"{name} {kind} {'K' if kind == 'NF' else 'M'}={size} seed {seed}"
    record = {"target": name, "model": kind, "size": size, "seed": seed,
              **_train(flow, _base_noise, ReverseKL(energy, log_z), iterations, lr,
                       config.batch_size, seed, bar, label)}
    record.update(reverse_kl(flow, target, config.eval_samples, _EVAL_SEED + seed))
    grid = density_grid(_flow_log_prob(flow), (-4.0, 4.0, -4.0, 4.0), n=config.grid) \
        if want_grid else None
    record.update(run_clock.read())
    return record, grid


def density_matching(config: DensityMatchingConfig, out_dir: str | Path, command: str,
                     progress: bool | None = None, jobs: int = 1,
                     overwrite: bool = False) -> dict[str, Any]:
    """Fit NFs and CNFs to U1–U4 by reverse KL; write the table, figure and JSON.

    Args:
        config: the comparison's settings.
        out_dir: receives ``density_matching.{json,md,png}``.
        command: the exact command line that reproduces this run (recorded).
        progress: show a progress bar; ``None`` shows it only on a terminal.
        jobs: worker processes, each with one torch thread; the fits are independent
            and seeded, so the numbers do not depend on ``jobs``. With ``jobs > 1`` the
            bar advances when a fit finishes.
        overwrite: replace the density-matching results already in ``out_dir`` (refused
            otherwise); maximum-likelihood results there are kept either way.

    Returns:
        The dictionary written to ``density_matching.json``.
    """
    check_int("jobs", jobs)
    with _claim(out_dir, "density_matching", overwrite) as out:
        return _density_matching(config, out, command, progress, jobs)


def _density_matching(config: DensityMatchingConfig, out: Path, command: str,
                      progress: bool | None, jobs: int) -> dict[str, Any]:
    clock = _Clock()
    models = [("NF", k) for k in config.nf_layers] + [("CNF", m) for m in config.cnf_widths]
    tasks = [(name, kind, size, seed, seed == config.seeds[0])
             for name in config.targets for kind, size in models for seed in config.seeds]
    # The most expensive fits first, so parallel workers finish together.
    tasks.sort(key=lambda t: -(config.cnf_iterations * 40 if t[1] == "CNF" else
                               config.nf_iterations * t[2]))

    def its(task) -> int:
        return config.nf_iterations if task[1] == "NF" else config.cnf_iterations

    runs: list[dict[str, Any]] = []
    grids: dict[tuple[str, str, int], np.ndarray] = {}
    with tqdm(total=sum(its(t) for t in tasks), unit="it", dynamic_ncols=True,
              disable=(not progress) if progress is not None else None) as bar:
        if jobs == 1:
            results = [(t, _density_task(config, *t, bar=bar)) for t in tasks]
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")
            results = []
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                futures = {pool.submit(_density_task, config, *t,
                                       threads=torch.get_num_threads()): t for t in tasks}
                for future in as_completed(futures):
                    task = futures[future]
                    results.append((task, future.result()))
                    bar.set_description(f"{task[0]} {task[1]} {task[2]} seed {task[3]} done")
                    bar.update(its(task))
    order = {t: i for i, t in enumerate(
        (name, kind, size, seed, seed == config.seeds[0])
        for name in config.targets for kind, size in models for seed in config.seeds)}
    for task, (record, grid) in sorted(results, key=lambda item: order[item[0]]):
        runs.append(record)
        if grid is not None:
            grids[(task[0], task[1], task[2])] = grid
    from cnflow.plots import density_grid

    for name in config.targets:
        target = toydata.energy.get(name)
        grids[(name, "target", 0)] = density_grid(target.log_prob, (-4.0, 4.0, -4.0, 4.0),
                                                  n=config.grid)

    summary = []
    for name in config.targets:
        for kind, size in models:
            kls = [r["kl"] for r in runs if (r["target"], r["model"], r["size"]) ==
                   (name, kind, size)]
            outs = [r["outside_box"] for r in runs if (r["target"], r["model"], r["size"]) ==
                    (name, kind, size)]
            mean, std = _mean_std(kls)
            summary.append({"target": name, "model": kind, "size": size, "kl_mean": mean,
                            "kl_std": std, "outside_box_max": float(max(outs)),
                            "seeds": len(kls)})
    result = {"experiment": "density_matching", "command": command,
              "config": asdict(config), "jobs": jobs, "runs": runs, "summary": summary,
              "log_normalizers": {n: toydata.energy.get(n).log_normalizer()
                                  for n in config.targets},
              **clock.read(), "environment": environment()}
    _density_matching_figure(grids, config, models, summary, out / "density_matching.png")
    result["figure"] = "density_matching.png"
    write_text(density_matching_markdown(result), out / "density_matching.md")
    write_json(result, out / "density_matching.json")  # last: it marks a finished run
    return result


def _density_matching_figure(grids, config: DensityMatchingConfig, models, summary,
                             path: Path) -> None:
    import matplotlib.pyplot as plt

    from cnflow.report import save_figure

    kl = {(s["target"], s["model"], s["size"]): s["kl_mean"] for s in summary}
    rows, cols = len(config.targets), 1 + len(models)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows), squeeze=False)
    extent = (-4.0, 4.0, -4.0, 4.0)
    for i, name in enumerate(config.targets):
        panels = [("target", 0, f"{name}: target")] + [
            (kind, size, (f"{kind} {'K' if kind == 'NF' else 'M'}={size}\n"
                         f"KL {kl[(name, kind, size)]:.2f}")) for kind, size in models]
        for ax, (kind, size, title) in zip(axes[i], panels):
            ax.imshow(grids[(name, kind, size)], origin="lower", extent=extent,
                      cmap="viridis", aspect="equal", interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Density matching, reverse KL (density of seed {config.seeds[0]}; "
                 f"KL = mean over {len(config.seeds)} seed(s))", fontsize=10)
    save_figure(fig, path)


def density_matching_markdown(result: dict[str, Any]) -> str:
    """The KL table and settings of a :func:`density_matching` result, as markdown."""
    config = result["config"]
    models = [("NF", k) for k in config["nf_layers"]] + \
        [("CNF", m) for m in config["cnf_widths"]]
    head = ["target"] + [f"{kind} {'K' if kind == 'NF' else 'M'}={size}"
                         for kind, size in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table = {(s["target"], s["model"], s["size"]): s for s in result["summary"]}
    for name in config["targets"]:
        cells = [name]
        for kind, size in models:
            s = table[(name, kind, size)]
            cells.append(_pm(s["kl_mean"], s["kl_std"]))
        lines.append("| " + " | ".join(cells) + " |")
    outside = max(s["outside_box_max"] for s in result["summary"])
    stopped = _stopped_early(result["runs"])
    cpu = sum(r["cpu_seconds"] for r in result["runs"])
    text = [
        _density_goal(config, table), "",
        ("KL(q_B‖p) in nats, mean ± sample std over seeds "
        f"{', '.join(map(str, config['seeds']))}; each estimate from "
        f"{config['eval_samples']} samples of q "
        f"(largest standard error of one estimate: "
        f"{max(r['kl_stderr'] for r in result['runs']):.3g} nats)."),
        "",
        *lines,
        "",
        (f"- Training: Adam with cosine decay to lr/100, batch {config['batch_size']}; "
        f"NF (planar, generative direction) {config['nf_iterations']} steps at lr "
        f"{config['nf_lr']:g}; CNF (gated hypernetwork layer, hypernetwork width "
        f"{config['hidden']}) {config['cnf_iterations']} steps at lr {config['cnf_lr']:g}, "
        f"dopri5 rtol {config['rtol']:g} / atol {config['atol']:g}, adjoint gradients; "
        f"KL estimates and figures at solver tolerance {config['eval_tol']:g}."),
        (f"- Training energy: U + {config['box_wall']:g}·Σ_i relu(|x_i| − 4)² (a soft wall "
         "at the box; 0 = none). U2–U4 do not decay along z1, so without it the loss "
         "rewards spilling q's mass along the ridges past the box. The KL column uses U "
         "alone."),
        "- log Z of each target on the box [-4, 4]²: " + ", ".join(
            f"{k} {v:.4f}" for k, v in result["log_normalizers"].items()) + ".",
        (f"- The KL is that of q conditioned on the box, KL(q_B‖p) = E_q|B[log q + U] + "
         f"log Z − log q(B): the target is zero outside the box, and a fit may spill a little "
         f"mass past it (largest share of q's samples outside in any run: {outside:.2g}), "
         "which −log q(B) charges."),
        f"- Fits stopped by a non-finite loss (last finite weights kept): {stopped}.",
        (f"- Time: {cpu / 60:.1f} CPU-minutes in the fits (training, KL estimate and "
         f"density grid, summed over {result.get('jobs', 1)} worker process(es) with one "
         f"thread each), plus {result['cpu_seconds'] / 60:.1f} in the main process; "
         f"{result['wall_seconds'] / 60:.1f} wall-minutes on a shared machine."),
    ]
    return "\n".join(text) + "\n"


def _density_goal(config: dict[str, Any], table: dict[tuple, dict[str, Any]]) -> str:
    """The goal of the paper reproduction: the widest CNF at KL <= 0.1 on every target and
    at least 2x below the deepest planar flow."""
    m, k = max(config["cnf_widths"]), max(config["nf_layers"])
    cnf = {t: table[(t, "CNF", m)]["kl_mean"] for t in config["targets"]}
    nf = {t: table[(t, "NF", k)]["kl_mean"] for t in config["targets"]}
    met = all(cnf[t] <= GOAL_KL and 2 * cnf[t] <= nf[t] for t in config["targets"])
    worst = max(config["targets"], key=lambda t: cnf[t])
    ratio = min(nf[t] / cnf[t] for t in config["targets"])
    return (f"**Goal** (CNF M = {m} at KL ≤ {GOAL_KL} on every target and at least 2x below "
            f"the planar flow K = {k}): **{'met' if met else 'not met'}**. Largest CNF KL "
            f"{cnf[worst]:.3f} ({worst}); smallest planar/CNF KL ratio {ratio:.1f}.")


# -- maximum likelihood (Figure 5) --------------------------------------------------------


def _data(name: str, n: int, seed: int) -> torch.Tensor:
    return torch.as_tensor(toydata.get(name).sample(n, seed=seed), dtype=torch.float32)


def _mle_models(config: MLEConfig, dataset: str) -> dict[str, Flow]:
    from cnflow.density import FitConfig, build_cnf

    torch.manual_seed(config.seed)
    nf = PlanarFlow(2, layers=config.nf_layers, direction="normalizing")
    torch.manual_seed(config.seed)
    cnf = build_cnf(FitConfig(dataset=dataset, width=config.cnf_width, hidden=config.hidden,
                              rtol=config.rtol, atol=config.atol, eval_tol=config.eval_tol,
                              seed=config.seed))
    normalization = _data(dataset, 20000, _NORMALIZATION_SEED)
    nf.set_normalization(normalization)
    cnf.set_normalization(normalization)
    return {"NF": nf, "CNF": cnf}


def maximum_likelihood(config: MLEConfig, out_dir: str | Path, command: str,
                       progress: bool | None = None, overwrite: bool = False
                       ) -> dict[str, Any]:
    """Train a planar NF and a CNF by maximum likelihood on each data set; compare.

    Args:
        config: the comparison's settings.
        out_dir: receives ``mle.{json,md,png}`` and ``mle_snapshots.png``.
        command: the exact command line that reproduces this run (recorded).
        progress: show a progress bar; ``None`` shows it only on a terminal.
        overwrite: replace the maximum-likelihood results already in ``out_dir`` (refused
            otherwise); density-matching results there are kept either way.

    Returns:
        The dictionary written to ``mle.json``.
    """
    with _claim(out_dir, "mle", overwrite) as out:
        return _maximum_likelihood(config, out, command, progress)


def _maximum_likelihood(config: MLEConfig, out: Path, command: str,
                        progress: bool | None) -> dict[str, Any]:
    clock = _Clock()
    total = len(config.datasets) * (config.nf_iterations + config.cnf_iterations)
    runs, trained = [], {}
    with tqdm(total=total, disable=(not progress) if progress is not None else None,
              unit="it", dynamic_ncols=True) as bar:
        for dataset in config.datasets:
            data = toydata.get(dataset)
            test = _data(dataset, config.test_size, _TEST_SEED + config.seed)
            true_log_p = data.log_prob(test.double().numpy())
            models = _mle_models(config, dataset)
            for kind, flow in models.items():
                run_clock = _Clock()

                def batches(n: int, seed: int, dataset: str = dataset) -> torch.Tensor:
                    # Step i's batch has the seed `config.seed * 10**7 + i`: both models
                    # see the same batch at the same step.
                    return _data(dataset, n, seed)

                iterations = config.nf_iterations if kind == "NF" else config.cnf_iterations
                lr = config.nf_lr if kind == "NF" else config.cnf_lr
                record = {"dataset": dataset, "model": kind,
                          "size": config.nf_layers if kind == "NF" else config.cnf_width,
                          **_train(flow, batches, MaximumLikelihood(), iterations, lr,
                                   config.batch_size, config.seed, bar, f"{dataset} {kind}")}
                if kind == "CNF":
                    nll = evaluate(flow, test)[0]
                else:
                    with torch.no_grad():
                        nll = -flow.log_prob(test).double().numpy()
                record["test_nll"], record["test_nll_stderr"] = mean_and_stderr(nll)
                # KL(p‖q) from the same points: far less noisy than NLL − entropy.
                record["kl"], record["kl_stderr"] = mean_and_stderr(true_log_p + nll)
                record["entropy_floor"] = data.entropy()
                record.update(run_clock.read())
                runs.append(record)
                trained[(dataset, kind)] = flow
    result = {"experiment": "mle", "command": command, "config": asdict(config),
              "runs": runs, "test_seed": _TEST_SEED + config.seed,
              **clock.read(), "environment": environment()}
    _mle_figure(trained, config, out / "mle.png")
    _snapshot_figure(trained, config, out / "mle_snapshots.png")
    result["figures"] = ["mle.png", "mle_snapshots.png"]
    write_text(mle_markdown(result), out / "mle.md")
    write_json(result, out / "mle.json")  # last: it marks a finished run
    return result


def _mle_figure(trained: dict, config: MLEConfig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from cnflow.plots import density_grid, plot_extent
    from cnflow.report import save_figure

    n = config.figure_samples
    fig, axes = plt.subplots(len(config.datasets), 5, figsize=(14, 2.9 * len(config.datasets)),
                             squeeze=False)
    for row, dataset in zip(axes, config.datasets):
        data = toydata.get(dataset).sample(n, seed=_EVAL_SEED)
        extent = plot_extent(data)
        bins = [np.linspace(*extent[:2], 121), np.linspace(*extent[2:], 121)]
        panels = [("hist", data, f"data ({dataset})")]
        for kind in ("NF", "CNF"):
            flow = trained[(dataset, kind)]
            panels.append(("density", density_grid(_flow_log_prob(flow), extent,
                                                   n=config.grid), f"{kind} density"))
        for kind in ("NF", "CNF"):
            torch.manual_seed(_EVAL_SEED)
            samples = trained[(dataset, kind)].sample(n).numpy()
            panels.append(("hist", samples, f"{kind} samples"))
        for ax, (how, values, title) in zip(row, panels):
            if how == "hist":
                ax.hist2d(values[:, 0], values[:, 1], bins=bins, cmap="viridis")
            else:
                ax.imshow(values, origin="lower", extent=extent, cmap="viridis",
                          interpolation="nearest")
            ax.set_aspect("equal")
            ax.set_xlim(extent[:2])
            ax.set_ylim(extent[2:])
            ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Maximum likelihood: planar NF (K={config.nf_layers}) vs CNF "
                 f"(M={config.cnf_width})", fontsize=11)
    save_figure(fig, path)


def _snapshot_figure(trained: dict, config: MLEConfig, path: Path,
                     fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                     n: int = 5000) -> None:
    """Noise → data for both models: CNF time ``t/T``; NF layers applied so far."""
    import matplotlib.pyplot as plt

    from cnflow.plots import plot_extent
    from cnflow.report import save_figure

    rows = [(d, k) for d in config.datasets for k in ("NF", "CNF")]
    fig, axes = plt.subplots(len(rows), len(fractions),
                             figsize=(2.8 * len(fractions), 2.9 * len(rows)), squeeze=False)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(_EVAL_SEED))
    for row, (dataset, kind) in zip(axes, rows):
        flow = trained[(dataset, kind)]
        with torch.no_grad():
            states = flow.trajectory(z, torch.tensor(fractions, dtype=torch.float64)).numpy()
        extent = plot_extent(np.concatenate([states[0], states[-1]]))
        for ax, frac, points in zip(row, fractions, states):
            ax.hist2d(points[:, 0], points[:, 1], bins=100, range=[extent[:2], extent[2:]],
                      cmap="viridis")
            ax.set_aspect("equal")
            if kind == "NF":
                title = f"{dataset} NF: layer {round(frac * config.nf_layers)}/{config.nf_layers}"
            else:
                title = f"{dataset} CNF: t = {frac:.2f} T"
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    save_figure(fig, path)


def mle_markdown(result: dict[str, Any]) -> str:
    """The NLL table and settings of a :func:`maximum_likelihood` result, as markdown."""
    config = result["config"]
    lines = [("| data | model | test NLL (nats) | entropy floor | NLL − floor | "
             "KL(p‖q) from the same points | CPU-min |"),
             "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        label = f"NF (planar, K={r['size']})" if r["model"] == "NF" else \
            f"CNF (M={r['size']})"
        lines.append(
            f"| {r['dataset']} | {label} | {_pm(r['test_nll'], r['test_nll_stderr'], 4)} | "
            f"{r['entropy_floor']:.4f} | {r['test_nll'] - r['entropy_floor']:.4f} | "
            f"{_pm(r['kl'], r['kl_stderr'], 4)} | {r['cpu_seconds'] / 60:.1f} |")
    stopped = _stopped_early(result["runs"])
    text = [
        (f"Test NLL ± standard error on {config['test_size']} held-out points "
        f"(seed {result['test_seed']}), one training seed ({config['seed']})."),
        "",
        *lines,
        "",
        (f"- Training: fresh batches of {config['batch_size']} points per step, the same "
        "batch for both models at the same step; Adam with cosine decay to lr/100. NF: "
        f"{config['nf_layers']} planar layers, normalizing direction, "
        f"{config['nf_iterations']} steps at lr {config['nf_lr']:g}. CNF: gated "
        f"hypernetwork layer M={config['cnf_width']} (hypernetwork width "
        f"{config['hidden']}), {config['cnf_iterations']} steps at lr {config['cnf_lr']:g}, "
        f"dopri5 rtol {config['rtol']:g} / atol {config['atol']:g}, adjoint gradients; "
        f"test NLL and figures at solver tolerance {config['eval_tol']:g}."),
        ("- Both models standardise the data by the mean and standard deviation of 20000 "
        "separate points; the log-det of that map is part of every density."),
        f"- Fits stopped by a non-finite loss (last finite weights kept): {stopped}.",
        (f"- Time: {result['cpu_seconds'] / 60:.1f} CPU-minutes on one thread, "
         f"{result['wall_seconds'] / 60:.1f} wall-minutes on a shared machine."),
    ]
    return "\n".join(text) + "\n"


# -- the combined report ------------------------------------------------------------------


def write_report(out_dir: str | Path, md_path: str | Path) -> str:
    """Merge ``density_matching.json`` and ``mle.json`` of ``out_dir`` into ``md_path``.

    Raises:
        FileNotFoundError: if neither result exists in ``out_dir``.
        ValueError: a result file is not valid JSON or lacks what the report shows.
    """
    out = Path(out_dir)
    md_path = Path(md_path)
    parts = ["# CNF vs planar normalizing flows (paper Figures 4 and 5)", "",
             ("Generated by `cnflow compare report` from the JSON results; no number here "
             "is typed by hand."), ""]
    found = False
    rel = Path(relative_path(out, md_path.parent))
    for stem, title, figures in (
            ("density_matching", "Density matching (Figure 4)", ["density_matching.png"]),
            ("mle", "Maximum likelihood (Figure 5)", ["mle.png", "mle_snapshots.png"])):
        file = out / f"{stem}.json"
        if not file.exists():
            continue
        found = True
        render = density_matching_markdown if stem == "density_matching" else mle_markdown
        try:
            result = _null_as_nan(json.loads(file.read_text()))
            env = result.get("environment", {})
            parts += [f"## {title}", "", "Command:", "", "```", result["command"], "```", "",
                      render(result), *[f"![{f}]({(rel / f).as_posix()})" for f in figures],
                      "", (f"Environment: torch {env.get('torch', '?')}, python "
                      f"{env.get('python', '?')}."), ""]
        except (json.JSONDecodeError, KeyError) as error:
            problem = f"it has no {error}" if isinstance(error, KeyError) else \
                f"it is not JSON ({error})"
            raise ValueError(f"{str(file)!r} is not a result of `cnflow compare "
                             f"{stem.replace('_', '-')}`: {problem}") from None
    parts += ["## Caveats", "",
              ("- Budget: the paper's fits ran orders of magnitude more steps (see its "
              "appendix) than the step counts above, which keep each full command within "
              "about half an hour of CPU time on one thread. Every number here is from a "
              "short fit; the planar NFs, which learn slowly, are the furthest from "
              "convergence, so the table compares the flows at small budgets, not "
              "at their best."),
              ("- Seeds: density matching reports mean ± sample std over the seeds listed "
              "(a std from two seeds is a rough spread, not a confidence interval); "
              "maximum likelihood uses one training seed, its ± is the standard error "
              "over test points only."),
              ("- Snapshots: for the NF the intermediate states are the outputs after that "
              "many of the NF's layers on the way noise → data; they may leave the plotted "
              "window (set by the first and last panel), where the CNF's states stay "
              "near the data at all times."), ""]
    parts += ["This file was written by:", "", "```",
              shlex.join(["cnflow", "compare", "report", "--out", str(out), "--md",
                          str(md_path)]), "```", ""]
    if not found:
        raise FileNotFoundError(f"no density_matching.json or mle.json in {str(out)!r}; "
                                "run `cnflow compare density-matching` / `mle` first")
    text = "\n".join(parts)
    write_text(text, md_path)
    return text


def _stopped_early(runs: list[dict[str, Any]]) -> int:
    # Reports written before the one training loop counted skipped steps instead.
    return sum(r["stop_reason"] == "non-finite loss" if "stop_reason" in r
               else r.get("skipped_steps", 0) > 0 for r in runs)


def _null_as_nan(obj: Any) -> Any:
    """A result read back from its strict JSON, where a non-finite number became null."""
    if obj is None:
        return float("nan")
    if isinstance(obj, dict):
        return {k: _null_as_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_null_as_nan(v) for v in obj]
    return obj
