"""Commands and checks shared by the tests that run cnflow's commands through click's
test runner: the tiniest settings of each, a refusal that must touch nothing, and a
`cnflow fit` run folder that must be one run's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from cnflow.cli.main import cli

# The smallest settings of each command that write a run folder; the output option last.
COMMANDS = {
    "classify": ["classify", "--model", "mlp", "--data", "digits", "--epochs", "1",
                 "--device", "cpu", "--out"],
    "latent": ["latent", "--n-obs", "30", "--iterations", "2", "--rnn-iterations", "2",
               "--batch-size", "8", "--time-subsample", "4", "--no-figures", "--out"],
    "density-matching": ["compare", "density-matching", "--quick", "--targets", "U1",
                         "--out"],
    "mle": ["compare", "mle", "--quick", "--datasets", "two_moons", "--out"],
}


NEEDS_WRITE_PERMISSION = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")


def listed_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_refused(root: Path, args: list[str], *names: str, code: int | None = None) -> str:
    """Run ``args``: it must fail with one clean error naming ``names`` and touch nothing."""
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    listing = listed_files(root)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and (code is None or result.exit_code == code), result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output, \
        result.output
    for name in names:
        assert name in result.output, (name, result.output)
    assert listed_files(root) == listing
    assert all(p.read_bytes() == data for p, data in before.items())
    return result.output


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


TINY_FIT = ["fit", "two_moons", "--iterations", "30", "--width", "4", "--hidden", "4",
            "--test-size", "200", "--val-size", "200", "--no-figures"]


def check_run_folder(folder: Path, seed: int, stdout: str = "") -> None:
    """The folder's files are one run's, that of ``seed``."""
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert config["seed"] == seed
    assert state["config"] == config
    assert metrics["dataset"] == config["dataset"] == "two_moons"
    assert metrics["steps"] == state["loop"]["steps"] == config["iterations"]
    assert metrics["best_val_nll"] == state["loop"]["best_val"]
    assert [r["val_nll"] for r in metrics["history"]] == \
        [r["val_nll"] for r in state["loop"]["records"]]
    for key in ("columns", "dim", "context_columns"):
        assert metrics[key] == state["data"][key]
    if stdout:
        assert f"test NLL {metrics['test_nll']:.4f} ± " in stdout
        assert stdout.rstrip().endswith(f"-> {folder}")
