"""The flow-matching benchmark's measurements: whole ``cnflow fit`` runs in 2-D, the
conditional fit, the torchcfm anchor and the OT assignment timing. Each runs in a worker
process and is cached in the work folder, keyed by its full config."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import toydata
from cnflow.density import FitConfig, fit_run, load_checkpoint
from cnflow.experiments.flow_matching.config import GAP_TARGET
from cnflow.report import mean_and_stderr
from cnflow.runs import write_text

# Fresh points that measure the NFE of one log_prob solve of a trained 2-D model.
NFE_POINTS, NFE_SEED = 2000, 7
# Fresh labelled points that measure the conditional model's KL to each moon.
CONDITIONAL_TEST_ROWS, CONDITIONAL_TEST_SEED = 4000, 1


def slug(text: str) -> str:
    """A variant's name as a folder name."""
    return text.replace(" + ", "_").replace(" ", "_").replace("-", "")


def finished_run(folder: Path, config: FitConfig, reuse: bool) -> dict[str, Any]:
    """``fit_run``'s metrics: from ``folder`` if it holds this very run, finished (and
    ``reuse``), else from a new run into it."""
    if reuse and (folder / "metrics.json").is_file():
        metrics = json.loads((folder / "metrics.json").read_text())
        if json.loads((folder / "config.json").read_text()) == asdict(config) and \
                metrics.get("figures"):  # written last: the run got to its end
            return metrics
    return fit_run(config, folder, device="cpu", progress=False, overwrite=True)


def two_d_run(dataset: str, variant: str, settings: dict[str, Any], work: str,
              reuse: bool = True) -> dict[str, Any]:
    """One whole ``cnflow fit`` of ``dataset`` with ``variant``'s FitConfig ``settings``."""
    torch.set_num_threads(1)
    seed = settings.get("seed", 0)
    folder = Path(work) / (f"{dataset}-{slug(variant)}" + (f"-seed{seed}" if seed else ""))
    config = FitConfig(dataset=dataset, **settings)
    metrics = finished_run(folder, config, reuse)
    floor = metrics["entropy_floor"]
    curve = [(r["cpu_seconds"], r["step"], r["val_nll"] - floor) for r in metrics["history"]]
    reached = next((cpu for cpu, _, gap in curve if gap <= GAP_TARGET), None)
    flow, _, _ = load_checkpoint(folder, "cpu")
    points = torch.as_tensor(toydata.get(dataset).sample(NFE_POINTS, seed=NFE_SEED),
                             dtype=torch.float32)
    with torch.no_grad():
        flow.log_prob(points)
    return {"dataset": dataset, "variant": variant, "seed": seed, "floor": floor,
            "test_nll": metrics["test_nll"], "test_nll_stderr": metrics["test_nll_stderr"],
            "gap": metrics["gap"], "kl": metrics["kl_estimate"],
            "kl_stderr": metrics["kl_stderr"], "cpu_seconds": metrics["cpu_seconds"],
            "train_cpu_seconds": metrics["train_cpu_seconds"], "reached_cpu": reached,
            "steps": metrics["steps"], "eval_nfe": flow.last_stats.forward.nfe,
            "stop_reason": metrics["stop_reason"], "curve": curve,
            # What the report says about the run's settings.
            "settings": {k: getattr(config, k) for k in ("objective", "iterations",
                                                         "batch_size", "lr", "finetune",
                                                         "finetune_lr", "eval_tol",
                                                         "val_size", "test_size")}}


def conditional_run(rows: int, epochs: int, work: str, reuse: bool = True) -> dict[str, Any]:
    """``cnflow fit moons.csv --context label`` on ``rows`` labelled points, and its KL to
    each moon's exact density."""
    torch.set_num_threads(1)
    moons = toydata.get("two_moons")
    folder = Path(work) / "conditional"
    folder.mkdir(parents=True, exist_ok=True)
    # The row count is in the name, so a cached run of another size is not taken for this.
    table = folder / f"moons-{rows}.csv"
    x, label = moons.sample_with_labels(rows, seed=0)
    np.savetxt(table, np.column_stack([x, label]), delimiter=",", header="x,y,label",
               comments="", fmt=["%.8g", "%.8g", "%d"])
    config = FitConfig(dataset=str(table), context="label", epochs=epochs)
    run = folder / f"run-{rows}"
    metrics = finished_run(run, config, reuse)
    flow, _, _ = load_checkpoint(run, "cpu")
    test_x, test_label = moons.sample_with_labels(CONDITIONAL_TEST_ROWS,
                                                  seed=CONDITIONAL_TEST_SEED)
    with torch.no_grad():
        log_q = flow.log_prob(torch.as_tensor(test_x, dtype=torch.float32),
                              torch.as_tensor(test_label[:, None], dtype=torch.float32))
    log_p = moons.conditional_log_prob(test_x, test_label)
    kl = {}
    for moon in (0, 1):
        chosen = test_label == moon
        kl[moon] = mean_and_stderr(log_p[chosen] - log_q.double().numpy()[chosen])
    return {"command": f"cnflow fit {table.name} --context label --epochs {epochs}",
            "rows": rows, "kl": kl, "objective": metrics["objective"],
            "finetune": metrics["finetune"], "test_nll": metrics["test_nll"],
            "cpu_seconds": metrics["cpu_seconds"], "figure": str(run / "conditional.png")}


def assignment_timing(sizes: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """Median CPU ms of the exact OT assignment of n Gaussian noise points to n standardised
    two_moons points (otfm's minibatch problem): scipy's ``linear_sum_assignment`` and POT's
    ``emd``, in alternating order."""
    import ot
    from scipy.optimize import linear_sum_assignment

    torch.set_num_threads(1)
    moons = toydata.get("two_moons").sample(20000, seed=0)
    moons = (moons - moons.mean(0)) / moons.std(0)
    rows = []
    generator = np.random.default_rng(0)
    for n in sizes:
        times: dict[str, list[float]] = {"scipy": [], "pot": []}
        weights = np.full(n, 1.0 / n)
        for repeat in range(repeats):
            a, b = generator.normal(size=(n, 2)), moons[generator.choice(len(moons), n)]
            cost = ((a[:, None] - b[None]) ** 2).sum(-1)
            order = list(times.items()) if repeat % 2 else list(times.items())[::-1]
            for name, spent in order:
                start = time.process_time()
                if name == "scipy":
                    linear_sum_assignment(cost)
                else:
                    ot.emd(weights, weights, cost)
                spent.append(time.process_time() - start)
        rows.append({"n": n, **{k: 1e3 * float(np.median(v)) for k, v in times.items()}})
    return rows


class TorchCFMObjective:
    """torchcfm's exact-OT matcher as a cnflow objective: the same network and loop, only
    the pairing, path and target come from torchcfm (its time runs from noise at 0 to data
    at 1, cnflow's over [0, T], hence the rescaling)."""

    name = "torchcfm otcfm"

    def __init__(self):
        from torchcfm.conditional_flow_matching import (
            ExactOptimalTransportConditionalFlowMatcher,
        )

        self.matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)

    def __call__(self, flow, x, context=None):
        x1 = flow.normalize(x)
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(torch.randn_like(x1), x1)
        loss = (flow.velocity(t * flow.time, xt) - ut / flow.time).pow(2).sum(1).mean()
        return loss, loss.detach()


def anchor_run(matcher: str, settings: dict[str, Any], work: str, reuse: bool = True
               ) -> dict[str, Any] | None:
    """cnflow's otfm or torchcfm's matcher training the network, loop and settings of the
    FitConfig ``settings`` (`cnflow fit two_moons --objective otfm`'s); None without
    torchcfm. Cached in ``work``, keyed by the matcher and the whole config."""
    from cnflow.data.run_data import load_data
    from cnflow.density import build_cnf
    from cnflow.objectives import FlowMatching
    from cnflow.training import evaluate, fit

    config = FitConfig(**settings)
    cache = Path(work) / f"anchor-{matcher}-{config.seed}.json"
    if reuse and cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("config") == asdict(config):
            return cached
    torch.set_num_threads(1)
    try:
        objective = TorchCFMObjective() if matcher == "torchcfm" else FlowMatching("ot")
    except ImportError:
        return None
    np.random.seed(config.seed)  # torchcfm draws its pairs from the OT plan with numpy
    data = load_data(config)
    torch.manual_seed(config.seed)
    flow = build_cnf(config, data.dim)
    flow.set_normalization(data.normalization)
    history = fit(flow, data.train, data.val, config, objective=objective, progress=False)
    nll, _ = evaluate(flow, data.test)
    result = {"matcher": matcher, "seed": config.seed, "test_nll": float(nll.mean()),
              "losses": [r["train_loss"] for r in history.records],
              "steps": [r["step"] for r in history.records], "config": asdict(config)}
    write_text(json.dumps(result) + "\n", cache)
    return result
