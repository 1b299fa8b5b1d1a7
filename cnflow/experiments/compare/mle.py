"""Maximum likelihood (the paper's Figure 5): a CNF against a deep planar flow (normalizing
direction), trained on the same batches of 2-D toy data; :func:`run` writes the test-NLL
table, the figures and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import toydata
from cnflow.experiments.compare.common import (
    NORMALIZATION_SEED,
    TEST_SEED,
    Clock,
    claim,
    progress_bar,
    torch_threads,
    train_flow,
    write_comparison,
)
from cnflow.flows.base import Flow
from cnflow.flows.planar import PlanarFlow
from cnflow.objectives import MaximumLikelihood
from cnflow.report import command_line, mean_and_stderr
from cnflow.runs import environment
from cnflow.training import evaluate
from cnflow.validation import check_choices, check_float, check_int

#: Folder name of this comparison's run beside the other's, and the stem of its files.
NAME = "mle"
#: The command that runs it (its options are :class:`MLEConfig`'s fields).
COMMAND = ("cnflow", "compare", "mle")
#: Largest seed: step ``i``'s batch is drawn with the seed ``seed * 10**7 + i``, which
#: sklearn's data sets need below 2**32 (for fewer than 10**7 steps).
MAX_SEED = (2**32 - 1) // 10**7 - 1
#: Points that fix both models' standardisation (drawn apart from training and test).
NORMALIZATION_POINTS = 20000
RESULT_FILE = f"{NAME}.json"  # written last: its presence marks a finished run
FIGURES = (f"{NAME}.png", f"{NAME}_snapshots.png")
OUTPUTS = (f"{NAME}.md", *FIGURES)


@dataclass
class MLEConfig:
    """Settings of the maximum-likelihood comparison (Figure 5).

    Attributes:
        datasets: 2-D toy data sets from toydata.names(dim=2).
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
        figure_samples: samples of the data and of each model in the figure.
        threads: torch CPU threads.
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
    figure_samples: int = 20000
    threads: int = 1

    def __post_init__(self) -> None:
        self.datasets = check_choices("datasets", self.datasets, toydata.names(dim=2))
        for name in ("nf_layers", "cnf_width", "nf_iterations", "cnf_iterations",
                     "batch_size", "hidden", "threads"):
            check_int(name, getattr(self, name))
        # A standard error needs two points; a figure two per axis.
        for name in ("test_size", "grid", "figure_samples"):
            check_int(name, getattr(self, name), minimum=2)
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        for name in ("nf_lr", "cnf_lr", "rtol", "atol", "eval_tol"):
            check_float(name, getattr(self, name))


#: The settings ``--quick`` shrinks (a run of seconds, for tests).
QUICK: dict[str, Any] = {"nf_layers": 2, "cnf_width": 4, "nf_iterations": 3,
                         "cnf_iterations": 2, "batch_size": 32, "test_size": 200, "grid": 12,
                         "figure_samples": 200}


def sample(name: str, n: int, seed: int) -> torch.Tensor:
    """``n`` points of the toy data set ``name`` (float32)."""
    return torch.as_tensor(toydata.get(name).sample(n, seed=seed), dtype=torch.float32)


def build_models(config: MLEConfig, dataset: str) -> dict[str, Flow]:
    """The planar NF and the CNF, each initialised from ``config.seed``, standardising the
    data by the same separate points."""
    from cnflow.density import FitConfig, build_cnf

    torch.manual_seed(config.seed)
    nf = PlanarFlow(2, layers=config.nf_layers, direction="normalizing")
    torch.manual_seed(config.seed)
    cnf = build_cnf(FitConfig(dataset=dataset, width=config.cnf_width, hidden=config.hidden,
                              rtol=config.rtol, atol=config.atol, eval_tol=config.eval_tol,
                              seed=config.seed))
    normalization = sample(dataset, NORMALIZATION_POINTS, NORMALIZATION_SEED)
    nf.set_normalization(normalization)
    cnf.set_normalization(normalization)
    return {"NF": nf, "CNF": cnf}


def point_nll(flow: Flow, points: torch.Tensor) -> np.ndarray:
    """Per-point NLL: a CNF through :func:`cnflow.training.evaluate` (exact trace at its eval
    tolerance, in chunks); a planar flow's density is exact in one pass."""
    if isinstance(flow, PlanarFlow):
        with torch.no_grad():
            return -flow.log_prob(points).double().numpy()
    return evaluate(flow, points)[0]


def fit_all(config: MLEConfig, progress: bool | None
            ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], Flow]]:
    """Both models on every data set: their records and the trained flows."""
    runs, trained = [], {}
    total = len(config.datasets) * (config.nf_iterations + config.cnf_iterations)
    with progress_bar(total, progress) as bar:
        for dataset in config.datasets:
            data = toydata.get(dataset)
            test = sample(dataset, config.test_size, TEST_SEED + config.seed)
            true_log_p = data.log_prob(test.double().numpy())
            for kind, flow in build_models(config, dataset).items():
                clock = Clock()

                def batches(n: int, seed: int, dataset: str = dataset) -> torch.Tensor:
                    # Step i's batch has the seed `config.seed * 10**7 + i`: both models
                    # see the same batch at the same step.
                    return sample(dataset, n, seed)

                nf = kind == "NF"
                record = {"dataset": dataset, "model": kind,
                          "size": config.nf_layers if nf else config.cnf_width,
                          **train_flow(flow, batches, MaximumLikelihood(),
                                       config.nf_iterations if nf else config.cnf_iterations,
                                       config.nf_lr if nf else config.cnf_lr,
                                       config.batch_size, config.seed, bar,
                                       f"{dataset} {kind}")}
                nll = point_nll(flow, test)
                record["test_nll"], record["test_nll_stderr"] = mean_and_stderr(nll)
                # KL(p‖q) from the same points: far less noisy than NLL − entropy.
                record["kl"], record["kl_stderr"] = mean_and_stderr(true_log_p + nll)
                record["entropy_floor"] = data.entropy()
                record.update(clock.read())
                runs.append(record)
                trained[(dataset, kind)] = flow
    return runs, trained


def run(config: MLEConfig, out_dir: str | Path, *, progress: bool | None = None,
        overwrite: bool = False) -> dict[str, Any]:
    """Train a planar NF and a CNF by maximum likelihood on each data set; write
    ``config.json`` (the settings), ``mle.{json,md,png}`` and ``mle_snapshots.png`` into
    ``out_dir``.

    Args:
        config: the comparison's settings.
        out_dir: this comparison's run folder.
        progress: show a progress bar; None shows it only on a terminal.
        overwrite: replace a run already in ``out_dir`` (refused otherwise).

    Returns:
        The dictionary written to ``mle.json``.
    """
    from cnflow.experiments.compare.figures import mle_figure, snapshot_figure
    from cnflow.experiments.compare.report import mle_markdown

    with claim(out_dir, RESULT_FILE, OUTPUTS, overwrite) as out:
        with torch_threads(config.threads):
            clock = Clock()
            runs, trained = fit_all(config, progress)
            result = {"experiment": NAME, "command": command_line(COMMAND, config,
                                                                  out=out_dir, overwrite=True),
                      "config": asdict(config), "runs": runs,
                      "test_seed": TEST_SEED + config.seed,
                      **clock.read(), "environment": environment()}
            mle_figure(trained, config, out / FIGURES[0])
            snapshot_figure(trained, config, out / FIGURES[1])
        write_comparison(out, NAME, config, result, mle_markdown(result))
    return result
