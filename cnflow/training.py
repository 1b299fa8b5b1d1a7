"""Maximum-likelihood training of a CNF on a 2-D toy dataset, as plain functions.

``fit_mle`` is what ``cnflow fit`` runs: fresh samples every iteration (the infinite-data
regime of the paper's toy experiments), Adam with cosine decay, a run directory holding the
config, an atomically written checkpoint, ``metrics.json`` and figures.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import toydata
from cnflow.flows.cnf import CNF, GatedHyperDynamics
from cnflow.runs import environment, resolve_device, save_checkpoint, write_json

CHECKPOINT_FORMAT = "cnflow-cnf"
CHECKPOINT_VERSION = 1
# Fixed seeds keep training batches, the normalisation sample and the test sample disjoint.
_NORMALIZATION_SEED = 10**6
_TEST_SEED = 2 * 10**6


@dataclass
class FitConfig:
    """Everything that defines a ``cnflow fit`` run (saved as ``config.json``)."""

    dataset: str = "two_moons"
    iterations: int = 800
    batch_size: int = 512
    width: int = 128
    hidden: int = 64
    time: float = 1.0
    lr: float = 1e-2
    # Training solves can be loose: the reported test NLL is computed separately, at
    # eval_tol with the exact trace.
    rtol: float = 1e-4
    atol: float = 1e-4
    method: str = "dopri5"
    gradient: str = "adjoint"
    eval_tol: float = 1e-7
    test_size: int = 20000
    seed: int = 0
    kinetic: float = 0.0
    jacobian: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}")
        return cls(**data)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or not a cnflow CNF checkpoint."""


def build_cnf(config: FitConfig) -> CNF:
    """The model a config describes (untrained)."""
    dynamics = GatedHyperDynamics(dim=2, width=config.width, hidden=config.hidden)
    return CNF(dynamics, dim=2, time=config.time, method=config.method, rtol=config.rtol,
               atol=config.atol, eval_rtol=config.eval_tol, eval_atol=config.eval_tol,
               gradient=config.gradient, kinetic=config.kinetic, jacobian=config.jacobian)


def checkpoint_path(path: str | Path) -> Path:
    """Accept a run directory or a checkpoint file."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu"
                    ) -> tuple[CNF, FitConfig, dict[str, Any]]:
    """Load a CNF written by ``cnflow fit``: the flow (eval mode), its config, the raw state.

    Raises:
        CheckpointError: missing file, unreadable or foreign content.
    """
    file = checkpoint_path(path)
    if not file.exists():
        raise CheckpointError(f"checkpoint {str(file)!r} does not exist")
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged file raises many types
        raise CheckpointError(f"checkpoint {str(file)!r} cannot be read "
                              f"({type(error).__name__}); it is corrupt or not a "
                              "checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(file)!r} is not a cnflow CNF checkpoint (expected "
                              f"format {CHECKPOINT_FORMAT!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{str(file)!r} has checkpoint version {state.get('version')!r}; "
                              f"this cnflow reads version {CHECKPOINT_VERSION}")
    try:
        config = FitConfig.from_dict(state["config"])
        flow = build_cnf(config)
        flow.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{str(file)!r} does not hold a valid CNF: {error}") from None
    return flow.to(device).eval(), config, state


def _dataset_samples(name: str, n: int, seed: int) -> torch.Tensor:
    return torch.as_tensor(toydata.get(name).sample(n, seed=seed), dtype=torch.float32)


@torch.no_grad()
def evaluate(flow: CNF, x: torch.Tensor, batch: int = 10000) -> tuple[np.ndarray, int]:
    """Per-point test NLL with the exact trace at the eval tolerance, and the NFE."""
    was_training = flow.training
    flow.eval()
    nll, nfe = [], 0
    for chunk in torch.split(x, batch):
        nll.append(-flow.log_prob(chunk))
        nfe += flow.last_stats.forward.nfe
    flow.train(was_training)
    return torch.cat(nll).double().cpu().numpy(), nfe


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def fit_mle(config: FitConfig, out_dir: str | Path, device: str = "auto",
            resume: str | Path | None = None, progress: bool | None = None,
            figures: bool = True) -> dict[str, Any]:
    """Train a CNF on ``config.dataset`` by maximum likelihood and write a run directory.

    Args:
        config: the run's settings.
        out_dir: run directory (created); receives config.json, checkpoint.pt,
            metrics.json and the figures.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        resume: a run directory or checkpoint to continue from (same model settings).
        progress: show a progress bar; ``None`` shows it only on a terminal.
        figures: write the PNG figures.

    Returns:
        The metrics written to ``metrics.json``.
    """
    dataset = toydata.get(config.dataset)  # raises with the list of names
    dev = resolve_device(device)
    out = Path(out_dir)
    start = time.perf_counter()
    cpu_start = time.process_time()
    torch.manual_seed(config.seed)
    flow = build_cnf(config).to(dev)
    flow.set_normalization(_dataset_samples(config.dataset, 20000, _NORMALIZATION_SEED).to(dev))
    optimizer = torch.optim.Adam(flow.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.iterations, eta_min=config.lr * 1e-2)
    first = 0
    if resume is not None:
        _, previous_config, state = load_checkpoint(resume, dev)
        model_keys = ("width", "hidden", "time", "dataset")
        changed = [k for k in model_keys if getattr(previous_config, k) != getattr(config, k)]
        if changed:
            raise ValueError(f"cannot resume {str(resume)!r}: it was trained with different "
                             f"{changed}; use the same settings or start a new run")
        flow.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first = int(state["iteration"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(asdict(config), out / "config.json")

    def checkpoint(iteration: int) -> None:
        save_checkpoint({
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": asdict(config), "model": flow.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "iteration": iteration,
        }, out / "checkpoint.pt")

    flow.train()
    nfe_forward, nfe_backward, losses = [], [], []
    bar = tqdm(range(first, config.iterations), initial=first, total=config.iterations,
               disable=(not progress) if progress is not None else None,
               desc=f"fit {config.dataset}", unit="it", dynamic_ncols=True)
    every = max(1, config.iterations // 10)
    for iteration in bar:
        x = _dataset_samples(config.dataset, config.batch_size, config.seed * 10**7 + iteration)
        loss = -flow.log_prob(x.to(dev)).mean()
        optimizer.zero_grad(set_to_none=True)
        (loss + flow.regularization()).backward()
        optimizer.step()
        scheduler.step()
        stats = flow.last_stats
        nfe_forward.append(stats.forward.nfe)
        nfe_backward.append(stats.backward.nfe if stats.backward else 0)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", nfe_f=nfe_forward[-1],
                        nfe_b=nfe_backward[-1], refresh=False)
        if (iteration + 1) % every == 0:
            checkpoint(iteration + 1)
    bar.close()
    checkpoint(config.iterations)
    train_seconds = time.perf_counter() - start

    test = _dataset_samples(config.dataset, config.test_size, _TEST_SEED + config.seed).to(dev)
    per_point, eval_nfe = evaluate(flow, test)
    nll, stderr = _mean_and_stderr(per_point)
    floor = dataset.entropy()
    kl = kl_stderr = None
    if floor is not None:
        # KL(p || q) from the same points: log p − log q varies far less than −log q alone,
        # so this pins the gap down much more tightly than test NLL − floor does.
        true_log_p = dataset.log_prob(test.double().cpu().numpy())
        kl, kl_stderr = _mean_and_stderr(true_log_p + per_point)
    metrics = {
        "dataset": config.dataset,
        "test_nll": nll, "test_nll_stderr": stderr, "test_size": config.test_size,
        "entropy_floor": floor, "gap": None if floor is None else nll - floor,
        "kl_estimate": kl, "kl_stderr": kl_stderr,
        "eval_tol": config.eval_tol, "eval_nfe": eval_nfe,
        "iterations": config.iterations, "final_train_loss": float(np.mean(losses[-20:]))
        if losses else None,
        "nfe_forward_mean": float(np.mean(nfe_forward)) if nfe_forward else None,
        "nfe_backward_mean": float(np.mean(nfe_backward)) if nfe_backward else None,
        "nfe_forward_last": nfe_forward[-1] if nfe_forward else None,
        "nfe_backward_last": nfe_backward[-1] if nfe_backward else None,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - start,
        # CPU time of this process: what the run costs without other load on the machine.
        "cpu_seconds": time.process_time() - cpu_start,
        "device": str(dev), "environment": environment(),
        "parameters": sum(p.numel() for p in flow.parameters()),
    }
    write_json(metrics, out / "metrics.json")
    if figures:
        from cnflow import plots

        plots.density_panels(flow, config.dataset, out / "density.png")
        plots.flow_snapshots(flow, out / "snapshots.png")
        metrics["figures"] = ["density.png", "snapshots.png"]
        write_json(metrics, out / "metrics.json")
    return metrics
