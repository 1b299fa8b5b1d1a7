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
from pathlib import Path
from typing import Any

from cnflow.experiments.tabular import mix6_table
from cnflow.report import save_figure
from cnflow.runs import environment, write_json, write_text

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
GOAL_NLL = 0.1
GOAL_RATIO = 0.75


def _command(data: str, args: list[str], processes: int, threads: int, out: Path
             ) -> list[str]:
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
    import matplotlib.pyplot as plt

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


def write_report(out: str | Path, work: str | Path, command: str, processes: int = 2,
                 repeats: int = 3, echo=print) -> str:
    """Run every case with 1 process (1 and ``processes`` threads) and ``processes``
    processes of one thread, ``repeats`` times with the configurations alternated; keep
    each configuration's run of median wall time; write the Markdown report, a JSON of the
    runs and a figure."""
    out, work = Path(out), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    table = mix6_table(work / "mix6.csv", TABLE_ROWS)
    configurations = [(1, 1), (1, processes), (processes, 1)]
    results: dict[str, list[dict[str, Any]]] = {}
    for case, _, args in CASES:
        data = "two_moons" if case == "two_moons" else str(table)
        runs: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configurations}
        for repeat in range(repeats):
            # A different order each repeat, so no configuration always runs first.
            shift = repeat % len(configurations)
            for p, t in configurations[shift:] + configurations[:shift]:
                echo(f"{case}: {p} process(es) x {t} thread(s), run {repeat + 1}/{repeats}")
                folder = work / f"{case.replace(' ', '_')}_{p}x{t}"
                runs[(p, t)].append(run_case(data, args, p, t, folder))
        results[case] = []
        for c in configurations:
            ordered = sorted(runs[c], key=lambda r: r["wall_seconds"])
            median = ordered[(len(ordered) - 1) // 2]
            median["wall_seconds_all"] = [r["wall_seconds"] for r in runs[c]]
            results[case].append(median)
    figure = out.with_name(out.stem + ".png")
    _figure(results, figure)

    protocol = (f"Each row is one whole `cnflow fit` command, the run of median wall time "
                f"of {repeats} (the configurations alternated). The fair comparison is one "
                f"process with {processes} threads against {processes} processes of one "
                "thread each; one process of one thread (the default `--threads 1`) is shown "
                "too. Wall seconds are the command's (start-up and test evaluation included), "
                "training seconds the loop's. Every configuration takes the same steps on the "
                "same global batches; the processes share each batch out and average their "
                "gradients.")
    goal = (f"Goal: {processes} processes reach the same test NLL (within {GOAL_NLL} nats) "
            f"in at most {GOAL_RATIO}x the wall time of the faster one-process run.")
    regenerate = (f"Regenerate: `{command}` (the cases run one after another on this "
                  f"machine, {os.cpu_count()} cores).")
    lines = ["# Several processes: `torchrun ... cnflow fit`", "", regenerate, "", protocol,
             "", goal, ""]
    header = ("| processes x threads | wall s | training s | steps | test NLL | "
              f"wall time / {processes} threads in 1 process |")
    verdicts = []
    for case, description, _ in CASES:
        runs = results[case]
        fair, parallel = runs[1], runs[2]
        best_single = min(runs[:2], key=lambda r: r["wall_seconds"])
        lines += [f"## {case}", "", description + ".", "", header, "|---|---|---|---|---|---|"]
        for run in runs:
            lines.append(f"| {run['processes']} x {run['threads']} | "
                         f"{run['wall_seconds']:.1f} | {run['train_wall_seconds']:.1f} | "
                         f"{run['steps']} | {run['test_nll']:.4f} ± "
                         f"{run['test_nll_stderr']:.4f} | "
                         f"{run['wall_seconds'] / fair['wall_seconds']:.2f} |")
        ratio = parallel["wall_seconds"] / best_single["wall_seconds"]
        gap = abs(parallel["test_nll"] - best_single["test_nll"])
        met = ratio <= GOAL_RATIO and gap <= GOAL_NLL
        verdicts.append(met)
        verdict = (f"{processes} processes against the faster one-process run "
                   f"({best_single['processes']} x {best_single['threads']}): wall-time ratio "
                   f"{ratio:.2f}, test NLL difference {gap:.4f} nats: goal "
                   f"**{'met' if met else 'not met'}**.")
        lines += ["", verdict, ""]
    no_gpu = ("No GPU figure exists yet: no CUDA machine was at hand for this report. Under "
              "CUDA, `cnflow fit` picks `nccl` and one GPU per rank by itself.")
    lines += [f"![validation NLL against training wall time]({figure.name})", "", no_gpu, "",
              # The threads of each run are in its row, not this process's.
              "Environment: " + ", ".join(f"{k} {v}" for k, v in environment().items()
                                          if k != "cpu_threads"), ""]
    text = "\n".join(lines)
    write_text(text, out)
    write_json({"command": command, "results": results, "goals_met": verdicts},
               out.with_suffix(".json"))
    return text
