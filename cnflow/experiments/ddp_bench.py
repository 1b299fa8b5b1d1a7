"""One process against several: ``cnflow benchmark ddp`` writes ``results/ddp.md``.

Each case is one ``cnflow fit`` command run as a user runs it: in one process, and under
``torchrun --standalone --nproc-per-node N``. The cores are shared fairly: one process gets
as many threads as the job has processes (``--threads``), each of the N processes one. The
measured wall time is the whole command's (interpreter and ``torchrun`` start-up, training,
test evaluation), the training loop's own beside it. The settings fix the number of steps
(no early stopping), so every configuration does the same optimisation work.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnflow.experiments.tabular import mix6_table
from cnflow.report import (
    command_line,
    markdown_table,
    pyplot,
    record_link,
    save_figure,
    write_record,
)
from cnflow.runs import environment, write_json, write_text
from cnflow.validation import check_int

__all__ = ["CASES", "GOAL_NLL", "GOAL_RATIO", "DDPBenchConfig", "measure", "report_text",
           "run", "run_case", "write_report"]

# (name, what it is, `cnflow fit` arguments after the data argument)
TABLE_ROWS = 20000
CASES: tuple[tuple[str, str, list[str]], ...] = (
    ("two_moons", "built-in two_moons: 800 steps of 512 fresh samples (the default run)",
     []),
    ("mix6 table", f"{TABLE_ROWS:,} x 6 rows of `mix6`: 8 epochs of batch 512, no early stopping",
     ["--epochs", "8", "--patience", "8"]),
    # Each rank's share of a batch this large is compute-bound rather than bound by the
    # fixed cost of each operation, which is where splitting a batch pays.
    ("mix6 table, batch 4096",
     f"the same {TABLE_ROWS:,} x 6 rows: 8 epochs of batch 4096, no early stopping",
     ["--batch-size", "4096", "--epochs", "8", "--patience", "8"]),
)
GOAL_NLL = 0.1  # nats of test NLL the processes may differ from one process by
GOAL_RATIO = 0.75  # their wall time against the faster one-process run's, at most


@dataclass
class DDPBenchConfig:
    """What ``cnflow benchmark ddp`` runs.

    Attributes:
        processes: processes of the torchrun runs (one thread each), and the threads of
            the one-process run they are measured against.
        repeats: runs per configuration (the run of median wall time is reported).
    """

    processes: int = 2
    repeats: int = 3

    def __post_init__(self) -> None:
        check_int("processes", self.processes, minimum=2)
        check_int("repeats", self.repeats)


def _command(data: str, args: list[str], processes: int, threads: int, out: Path
             ) -> list[str]:
    """The ``cnflow fit`` command line of one run: plain, or under ``torchrun``."""
    fit = ["fit", data, *args, "--threads", str(threads), "--out", str(out),
           "--no-figures", "--overwrite"]
    if processes == 1:
        return [sys.executable, "-m", "cnflow.cli.main", *fit]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={processes}", "-m", "cnflow.cli.main", *fit]


def run_case(data: str, args: list[str], processes: int, threads: int, out: Path
             ) -> dict[str, Any]:
    """One ``cnflow fit`` command; its wall time and what its metrics say."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = _command(data, args, processes, threads, out)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"processes": processes, "threads": threads, "wall_seconds": wall,
            "train_wall_seconds": metrics["train_wall_seconds"],
            "test_nll": metrics["test_nll"], "test_nll_stderr": metrics["test_nll_stderr"],
            "steps": metrics["steps"],
            "curve": [(r["wall_seconds"], r["val_nll"]) for r in metrics["history"]]}


def _figure(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Validation NLL against training wall time, one panel per case."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (case, runs) in zip(axes[0], results.items()):
        for run in runs:
            seconds, nll = zip(*run["curve"])
            ax.plot(seconds, nll, marker=".",
                    label=f"{run['processes']} process(es) x {run['threads']} thread(s)")
        ax.set(title=case, xlabel="training wall seconds", ylabel="validation NLL (nats)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def measure(config: DDPBenchConfig, work: str | Path, echo: Callable[[str], None] = print
            ) -> dict[str, list[dict[str, Any]]]:
    """Run every case with 1 process (1 and ``config.processes`` threads) and
    ``config.processes`` processes of one thread, ``config.repeats`` times with the
    configurations alternated; keep each configuration's run of median wall time (with every
    run's wall time in ``wall_seconds_all``), in that order, by case."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    table = mix6_table(work / "mix6.csv", TABLE_ROWS)
    configurations = [(1, 1), (1, config.processes), (config.processes, 1)]
    results: dict[str, list[dict[str, Any]]] = {}
    for case, _, args in CASES:
        data = "two_moons" if case == "two_moons" else str(table)
        runs: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configurations}
        for repeat in range(config.repeats):
            # A different order each repeat, so no configuration always runs first.
            shift = repeat % len(configurations)
            for p, t in configurations[shift:] + configurations[:shift]:
                echo(f"{case}: {p} process(es) x {t} thread(s), run {repeat + 1}/"
                     f"{config.repeats}")
                folder = work / f"{case.replace(' ', '_')}_{p}x{t}"
                runs[(p, t)].append(run_case(data, args, p, t, folder))
        results[case] = []
        for c in configurations:
            ordered = sorted(runs[c], key=lambda r: r["wall_seconds"])
            median = ordered[(len(ordered) - 1) // 2]
            median["wall_seconds_all"] = [r["wall_seconds"] for r in runs[c]]
            results[case].append(median)
    return results


def _verdict(runs: list[dict[str, Any]], processes: int) -> tuple[bool, str]:
    """Whether the processes met the goal against the faster one-process run, and why."""
    parallel, best_single = runs[2], min(runs[:2], key=lambda r: r["wall_seconds"])
    ratio = parallel["wall_seconds"] / best_single["wall_seconds"]
    gap = abs(parallel["test_nll"] - best_single["test_nll"])
    met = ratio <= GOAL_RATIO and gap <= GOAL_NLL
    return met, (f"{processes} processes against the faster one-process run "
                 f"({best_single['processes']} x {best_single['threads']}): wall-time ratio "
                 f"{ratio:.2f}, test NLL difference {gap:.4f} nats: goal "
                 f"**{'met' if met else 'not met'}**.")


def report_text(config: DDPBenchConfig, results: dict[str, list[dict[str, Any]]],
                command: str, figure: str, record: str) -> tuple[str, list[bool]]:
    """The report of :func:`measure`'s ``results``, and whether each case met the goal.

    Args:
        config: the settings.
        results: :func:`measure`'s runs by case.
        command: the command line that regenerates the report.
        figure: the link from the report to its figure.
        record: the link from the report to its ``config.json``.
    """
    processes = config.processes
    protocol = (f"Each row is one whole `cnflow fit` command, the run of median wall time "
                f"of {config.repeats} (the configurations alternated). The fair comparison "
                f"is one process with {processes} threads against {processes} processes of "
                "one thread each; one process of one thread (the default `--threads 1`) is "
                "shown too. Wall seconds are the command's (start-up and test evaluation "
                "included), training seconds the loop's. Every configuration takes the same "
                "steps on the same global batches; the processes share each batch out and "
                "average their gradients.")
    goal = (f"Goal: {processes} processes reach the same test NLL (within {GOAL_NLL} nats) "
            f"in at most {GOAL_RATIO}x the wall time of the faster one-process run.")
    regenerate = (f"Regenerate: `{command}` (the cases run one after another on this "
                  f"machine, {os.cpu_count()} cores); the settings are in "
                  f"[{record}]({record}).")
    lines = ["# Several processes: `torchrun ... cnflow fit`", "", regenerate, "", protocol,
             "", goal, ""]
    header = ["processes x threads", "wall s", "training s", "steps", "test NLL",
              f"wall time / {processes} threads in 1 process"]
    verdicts = []
    for case, description, _ in CASES:
        runs = results[case]
        fair = runs[1]
        rows = [[f"{run['processes']} x {run['threads']}", f"{run['wall_seconds']:.1f}",
                 f"{run['train_wall_seconds']:.1f}", run["steps"],
                 f"{run['test_nll']:.4f} ± {run['test_nll_stderr']:.4f}",
                 f"{run['wall_seconds'] / fair['wall_seconds']:.2f}"] for run in runs]
        met, verdict = _verdict(runs, processes)
        verdicts.append(met)
        lines += [f"## {case}", "", description + ".", "", markdown_table(header, rows), "",
                  verdict, ""]
    no_gpu = ("No GPU figure exists yet: no CUDA machine was at hand for this report. Under "
              "CUDA, `cnflow fit` picks `nccl` and one GPU per rank by itself.")
    lines += [f"![validation NLL against training wall time]({figure})", "", no_gpu, "",
              # The threads of each run are in its row, not this process's.
              "Environment: " + ", ".join(f"{k} {v}" for k, v in environment().items()
                                          if k != "cpu_threads"), ""]
    return "\n".join(lines), verdicts


def run(config: DDPBenchConfig, out: str | Path, work: str | Path,
        echo: Callable[[str], None] = print) -> str:
    """Measure (:func:`measure`, run directories and the table in ``work``) and write the
    Markdown report ``out``, a JSON of the runs and a figure beside it, and the settings to
    its ``config.json``; return the report."""
    return write_report(config, measure(config, work, echo), out)


def write_report(config: DDPBenchConfig, results: dict[str, list[dict[str, Any]]],
                 out: str | Path) -> str:
    """Write the report of :func:`measure`'s ``results`` to ``out``, with its JSON, figure
    and ``config.json``; return the report."""
    out = Path(out)
    figure = out.with_name(out.stem + ".png")
    _figure(results, figure)
    command = command_line(("cnflow", "benchmark", "ddp"), config, changed_only=True, out=out)
    text, verdicts = report_text(config, results, command, figure.name, record_link(out))
    write_text(text, out)
    write_json({"command": command, "results": results, "goals_met": verdicts},
               out.with_suffix(".json"))
    write_record(config, out)
    return text
