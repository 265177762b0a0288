"""What an installed avcm gives a user: typed packages, declared dependencies, console scripts."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_installed_package_is_typed(package: str) -> None:
    assert (ROOT / package / "py.typed").is_file()


def _imported_top_levels(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.partition(stop)[0]
    return requirement.lower().replace("-", "_")


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    # modules that only the test extra's users import (the pytest plugin, the Hypothesis
    # strategies) or the cluster extra's (campaigns on Dask), and the packages of this
    # distribution
    extras = PYPROJECT["project"]["optional-dependencies"]
    optional = {_requirement_name(r) for extra in ("test", "cluster") for r in extras[extra]}
    ours = set(PACKAGES)
    for package in PACKAGES:
        third_party = {
            name
            for name in _imported_top_levels(package)
            if name not in sys.stdlib_module_names and name not in ours
        }
        undeclared = third_party - declared - optional
        assert not undeclared, f"{package} imports undeclared {sorted(undeclared)}"


@pytest.mark.parametrize(
    "script", sorted(PYPROJECT["project"]["scripts"]), ids=str
)  # fmt: skip
def test_console_scripts_are_installed_and_answer_help(script: str) -> None:
    path = Path(sys.executable).parent / script
    assert path.is_file(), f"{script} is not installed next to {sys.executable}"
    run = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "usage:" in run.stdout


def test_pytest_plugin_is_registered_by_entry_point() -> None:
    entry_points = metadata.entry_points(group="pytest11")
    assert [ep.value for ep in entry_points if ep.value.startswith("avcm")] == [
        "avcm.testing.pytest_plugin"
    ]
