"""The benchmark's fits: one model on one split through :func:`cnflow.training.fit` (zuko's
flows behind cnflow's :class:`Flow` interface), the whole default ``cnflow fit`` on the
full-run table, and both run in parallel with a cache of finished fits."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

import toydata
from cnflow.data.run_data import dequantizer, load_data
from cnflow.density import FitConfig, build_cnf, train_phases
from cnflow.experiments.tabular.config import (
    DEFAULT_VARIANT,
    FULL_RUNS,
    OBJECTIVE_MODELS,
    VARIANTS,
    ZUKO_BATCH,
    ZUKO_HIDDEN,
    ZUKO_LR,
    ZUKO_TRANSFORMS,
    TabularConfig,
)
from cnflow.experiments.tabular.data import benchmark_split, mix6_table
from cnflow.flows.base import Flow
from cnflow.report import mean_and_stderr
from cnflow.runs import write_text
from cnflow.training import TrainConfig, evaluate, fit

Job = tuple[str, str, int, str]  # set, model, seed, variant ("" outside the sweep)
# Far more epochs than a budget allows: the CPU budget (or early stopping) ends every fit.
UNBOUNDED_EPOCHS = 10**6


class ZukoFlow(Flow):
    """A zuko flow behind cnflow's :class:`Flow` interface, so the one loop trains it.

    The standardisation is a fixed affine map on the data side with its log-det, exactly as
    in cnflow's flows, so both report NLL in the same coordinates.
    """

    def __init__(self, flow: torch.nn.Module, dim: int):
        super().__init__(dim)
        self.flow = flow

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(self.normalize(self.check_points(x))) - self.log_scale.sum()

    @torch.no_grad()
    def sample(self, shape=()) -> torch.Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return self.denormalize(self.flow().sample(shape))


def zuko_model(model: str, dim: int) -> ZukoFlow:
    """zuko's NSF or MAF (``ZUKO_TRANSFORMS`` transforms) or CNF, hidden ``ZUKO_HIDDEN``."""
    import zuko

    make: dict[str, Callable[[], torch.nn.Module]] = {
        "zuko_nsf": lambda: zuko.flows.NSF(dim, transforms=ZUKO_TRANSFORMS,
                                           hidden_features=ZUKO_HIDDEN),
        "zuko_maf": lambda: zuko.flows.MAF(dim, transforms=ZUKO_TRANSFORMS,
                                           hidden_features=ZUKO_HIDDEN),
        "zuko_cnf": lambda: zuko.flows.CNF(dim, hidden_features=ZUKO_HIDDEN),
    }
    return ZukoFlow(make[model](), dim)


def cnflow_config(folder: Path, model: str, seed: int, budget: float,
                  overrides: dict[str, Any] | None) -> FitConfig:
    """``cnflow fit train.npy --val val.npy --test test.npy`` with the budget (and, for the
    cnflow models, their objective); zuko's fits read the data through it too."""
    return FitConfig(dataset=str(folder / "train.npy"), val=str(folder / "val.npy"),
                     test=str(folder / "test.npy"), dequantize=True, seed=seed,
                     max_time=budget, epochs=UNBOUNDED_EPOCHS, **OBJECTIVE_MODELS.get(model, {}),
                     **(overrides or {}))


def run_one(name: str, model: str, seed: int, budget: float, work: str,
            cnflow_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One fit of ``model`` on ``name``'s split ``seed``; returns its measured numbers."""
    torch.set_num_threads(1)
    folder = Path(work) / f"{name}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    parts, floor = benchmark_split(name, seed)
    for part, rows in parts.items():
        if not (folder / f"{part}.npy").exists():
            np.save(folder / f"{part}.npy", rows)
    # Dequantisation only touches integer-valued columns (digits' pixels, some of wine's).
    config = cnflow_config(folder, model, seed, budget, cnflow_overrides)
    cpu0 = time.process_time()
    data = load_data(config)
    torch.manual_seed(seed)
    if model in OBJECTIVE_MODELS:
        flow = build_cnf(config, data.dim)
        flow.set_normalization(data.normalization)
        # The phases of `cnflow fit` (a flow-matching objective, then its fine-tune).
        history = train_phases(config, data, flow, None, None, False, {})
    else:
        flow = zuko_model(model, data.dim)
        loop = TrainConfig(epochs=UNBOUNDED_EPOCHS, batch_size=ZUKO_BATCH, lr=ZUKO_LR,
                           max_time=budget, seed=seed)
        flow.set_normalization(data.normalization)
        history = fit(flow, data.train, data.val, loop, augment=dequantizer(data),
                      progress=False)
    test, _ = evaluate(flow, data.test)
    nll, stderr = mean_and_stderr(test)
    return {"set": name, "model": model, "seed": seed, "dim": data.dim,
            "train_rows": len(data.train), "test_rows": len(data.test), "floor": floor,
            "test_nll": nll, "test_nll_stderr": stderr, "val_nll": history.best_val_nll,
            "best_epoch": history.best_epoch, "epochs": history.epochs_run,
            "steps": history.steps, "stop_reason": history.stop_reason,
            "fit_cpu_seconds": history.cpu_seconds,
            "total_cpu_seconds": time.process_time() - cpu0,
            "parameters": sum(p.numel() for p in flow.parameters()),
            "nfe_forward_mean": history.summary()["nfe_forward_mean"],
            **({"objective": config.objective, "finetune": config.finetune}
               if model in OBJECTIVE_MODELS else {})}


def full_run(variant: str, work: str) -> dict[str, Any]:
    """``cnflow fit table.csv`` to its end on the full-run rows of ``mix6`` (known floor)."""
    from cnflow.density import fit_run

    torch.set_num_threads(1)
    folder = Path(work) / "full"
    folder.mkdir(parents=True, exist_ok=True)
    table = mix6_table(folder / "mix6.csv")
    metrics = fit_run(FitConfig(dataset=str(table), **FULL_RUNS[variant]),
                      folder / variant.replace(" ", "_").replace(",", ""), device="cpu",
                      progress=False, overwrite=True)
    return {"variant": variant, "test_nll": metrics["test_nll"],
            "test_nll_stderr": metrics["test_nll_stderr"],
            "floor": toydata.get("mix6").entropy(), "cpu_seconds": metrics["cpu_seconds"],
            "wall_seconds": metrics["wall_seconds"], "epochs_run": metrics["epochs_run"],
            "best_epoch": metrics["best_epoch"], "stop_reason": metrics["stop_reason"],
            "nfe_forward_max": max(r["nfe_forward"] or 0 for r in metrics["history"]),
            "val_nll_last": metrics["history"][-1]["val_nll"]}


def pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` worker processes for the fits."""
    # spawn: a forked child would inherit torch's thread pools in an undefined state.
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def run_full(work: str | Path, jobs: int, reuse: bool = True,
             echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Every :data:`FULL_RUNS` variant, cached in ``work/full_runs.json``."""
    cache = Path(work) / "full_runs.json"
    done = json.loads(cache.read_text()) if reuse and cache.exists() else {}
    todo = [v for v in FULL_RUNS if v not in done]
    echo(f"{len(done)} full runs cached, {len(todo)} to run")
    with pool(jobs) as workers:
        futures = {workers.submit(full_run, v, str(work)): v for v in todo}
        for future in as_completed(futures):
            variant = futures[future]
            done[variant] = future.result()
            write_text(json.dumps(done, indent=1) + "\n", cache)
            echo(f"  full run {variant}: test NLL {done[variant]['test_nll']:.3f}")
    return {v: done[v] for v in FULL_RUNS}


def fit_jobs(config: TabularConfig) -> list[Job]:
    """Every fit of the benchmark, then those of the defaults sweep (seed 0) not among them."""
    main = [(s, m, seed, "") for s in config.sets for m in config.models for seed in config.seeds]
    sweep = [(s, "cnflow", 0, "" if v == DEFAULT_VARIANT else v) for s in config.sweep_sets
             for v in VARIANTS] if config.sweep else []
    return list(dict.fromkeys(main + sweep))


def cache_key(row_or_job: dict[str, Any] | Job, budget: float) -> tuple:
    """What identifies a fit in the cache: set, model, seed, the variant's settings and, for
    a cnflow fit, its objective (so a fit cached under other defaults is not taken for the
    current default's; rows from before objectives existed were maximum likelihood)."""
    if isinstance(row_or_job, dict):
        r = row_or_job
        objective = (r.get("objective", "mle"), r.get("finetune", 0)) \
            if r["model"] in OBJECTIVE_MODELS else None
        return (r["set"], r["model"], r["seed"], json.dumps(r["overrides"], sort_keys=True),
                objective)
    s, m, seed, variant = row_or_job
    overrides = VARIANTS.get(variant, {})
    objective = None
    if m in OBJECTIVE_MODELS:
        resolved = cnflow_config(Path("x"), m, seed, budget, overrides)
        objective = (resolved.objective, resolved.finetune)
    return s, m, seed, json.dumps(overrides, sort_keys=True), objective


def run_fits(config: TabularConfig, work: str | Path, reuse: bool = True,
             echo: Callable[[str], None] = print) -> dict[Job, dict[str, Any]]:
    """Every fit of the benchmark and of the defaults sweep, ``config.jobs`` at a time.

    Results are cached in ``work/results.jsonl`` (keyed by :func:`cache_key` and the budget),
    so an interrupted benchmark continues where it stopped.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "results.jsonl"
    cached: dict[tuple, dict] = {}
    if reuse and cache.exists():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            if row.get("budget") == config.budget:
                cached[cache_key(row, config.budget)] = row
    every = fit_jobs(config)
    todo = list(dict.fromkeys(cache_key(job, config.budget) for job in every
                              if cache_key(job, config.budget) not in cached))
    echo(f"{len(every) - len(todo)} fits cached, {len(todo)} to run at {config.budget:g} "
         f"CPU-s each ({config.jobs} at a time)")
    with pool(config.jobs) as workers:
        futures = {workers.submit(run_one, s, m, seed, config.budget, str(work),
                                  json.loads(o)): (s, m, seed, o) for s, m, seed, o, _ in todo}
        for future in as_completed(futures):
            s, m, seed, o = futures[future]
            row = {**future.result(), "budget": config.budget, "overrides": json.loads(o)}
            cached[cache_key(row, config.budget)] = row
            with open(cache, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            echo(f"  {s:<14} {m:<9} seed {seed} {o if o != '{}' else ''}: test NLL "
                 f"{row['test_nll']:.3f} ({row['epochs']} epochs, {row['stop_reason']})")
    return {job: cached[cache_key(job, config.budget)] for job in every}
