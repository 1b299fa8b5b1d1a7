"""Every test file names the one module or package it tests.

``cnflow/solvers/odeint.py`` is tested in ``test_solvers_odeint.py``: the module's path below
``cnflow/`` with ``_`` for ``/``, ``experiments/`` left out (``cnflow/experiments/odenet/
train.py`` -> ``test_odenet_train.py``), a package by its folder (``cnflow/training/`` ->
``test_training.py``). ``cli/`` (installed as ``cnflow.cli``) and ``toydata/`` keep their
name: ``cli/flows.py`` -> ``test_cli_flows.py``, ``toydata/mixed.py`` ->
``test_toydata_mixed.py``. Helpers shared by several test files live in modules whose names
do not start with ``test_`` (``flow_checks.py``, ``solver_checks.py``, ...).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
# Source folder -> what its modules' test files start with after ``test_``.
SOURCES = {"cnflow": (), "cli": ("cli",), "toydata": ("toydata",)}
# Folders left out of the name.
SKIPPED = ("experiments",)
# The test files that check one property across many modules, and why.
CROSS_CUTTING = {
    "test_flow_contract.py": "the contract every registered flow keeps, one test per property",
    "test_layout.py": "this file: the names of the test files",
}


def module_key(folder: str, path: Path) -> str:
    """What a test file of the module or package at ``path`` (in ``folder``) is called
    between ``test_`` and ``.py``."""
    parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if len(parts) > 1 and parts[0] in SKIPPED:
        parts = parts[1:]
    return "_".join([*SOURCES[folder], *parts]) or folder


def modules() -> dict[str, list[str]]:
    """Every module and package of the source folders, by its key."""
    keys: dict[str, list[str]] = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            keys.setdefault(module_key(folder, path), []).append(str(path.relative_to(ROOT)))
    return keys


def misnamed(names: list[str], keys: dict[str, list[str]]) -> list[str]:
    """The test files among ``names`` that name no module or package (nor are allowed to)."""
    return [name for name in names if name not in CROSS_CUTTING
            and name.removeprefix("test_").removesuffix(".py") not in keys]


def test_every_test_file_names_the_module_it_tests():
    names = sorted(path.name for path in TESTS.glob("test_*.py"))
    assert len(names) > 40
    assert misnamed(names, modules()) == [], (
        "name each test file test_<module>.py after the module or package it tests "
        "(see this file's docstring); a check across many modules goes in CROSS_CUTTING")


def test_no_two_modules_share_a_test_file_name():
    keys = modules()
    assert {"solvers_odeint", "odenet_train", "cli_flows", "toydata_mixed", "training",
            "toydata", "cnflow"} <= set(keys)
    assert {key: paths for key, paths in keys.items() if len(paths) > 1} == {}


def test_the_cross_cutting_files_exist_and_name_no_module():
    keys = modules()
    for name in CROSS_CUTTING:
        assert (TESTS / name).is_file(), name
        assert name.removeprefix("test_").removesuffix(".py") not in keys, name


def test_a_misnamed_file_is_caught():
    good = ["test_solvers_odeint.py", "test_odenet_train.py", "test_cli_flows.py",
            "test_toydata_mixed.py", "test_training.py", "test_cnflow.py", "test_flow_contract.py"]
    bad = ["test_tables.py", "test_cnf.py", "test_solvers_ode.py", "test_conditional.py",
           "test_experiments_odenet_train.py", "test_cnflow_density.py", "test_flows_cnf_extra.py"]
    assert misnamed(good + bad, modules()) == bad
