"""Fail when code outside avcm/ uses a private part of avcm.

avcm's public API is ``avcm``, ``avcm.lowlevel`` and ``avcm.testing`` (and their public
submodules); anything spelled with a leading underscore is avcm's own business and may change
under the code that uses it. This finds, with the ``ast`` module (so comments and strings in
docstrings do not count):

* ``import avcm._x`` (also ``import avcm.testing._x``, with or without ``as``);
* ``from avcm._x import y`` (also deeper, ``from avcm.testing._x import y``);
* ``from avcm import _x`` (a private module or name);
* ``avcm._x`` as an attribute, also through an alias (``import avcm as a; a._x``) or through a
  name imported from avcm (``from avcm import Res; Res._create``);
* ``importlib.import_module("avcm._x")`` and ``__import__("avcm._x")``.

A line may opt out with a ``# avcm-private: <why>`` comment, for a test that is about an
internal. Usage: ``python .ci/check_private_imports.py [PATH...]`` (default: every Python file
of the repository outside avcm/ and hidden or virtual-environment directories). Exit status 1
and one line per finding if there is any, else 0.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "avcm"
OPT_OUT = "# avcm-private:"
ROOT = Path(__file__).resolve().parent.parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_path(dotted: str) -> bool:
    """Whether a dotted path into avcm names something private (``avcm.testing._clock``)."""
    parts = dotted.split(".")
    return parts[0] == PACKAGE and any(_private(part) for part in parts[1:])


def _in_package(dotted: str) -> bool:
    return dotted == PACKAGE or dotted.startswith(PACKAGE + ".")


def findings(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """``(line, what)`` for every private use of avcm in *source*."""
    tree = ast.parse(source, filename)
    lines = source.splitlines()
    found: list[tuple[int, str]] = []
    # Local names bound to avcm or to something imported from it.
    bound: set[str] = set()

    def report(node: ast.AST, what: str) -> None:
        line = getattr(node, "lineno", 0)
        if 0 < line <= len(lines) and OPT_OUT in lines[line - 1]:
            return
        found.append((line, what))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _in_package(alias.name):
                    continue
                if _private_path(alias.name):
                    report(node, f"import {alias.name}")
                bound.add(alias.asname or PACKAGE)  # ``import avcm.x`` binds ``avcm``
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or not _in_package(module):
                continue
            if _private_path(module):
                report(node, f"from {module} import ...")
                continue
            for alias in node.names:
                if _private(alias.name):
                    report(node, f"from {module} import {alias.name}")
                bound.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            dotted = _dotted(node.value)
            if dotted is not None and dotted.split(".", 1)[0] in bound:
                report(node, f"{dotted}.{node.attr}")
        elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args:
            first = node.args[0]
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _private_path(first.value)
            ):
                report(node, f"import of {first.value!r}")
    return sorted(set(found))


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _is_import_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def _is_skipped(directory: Path) -> bool:
    return directory.name.startswith(".") or (directory / "pyvenv.cfg").exists()


def python_files(root: Path = ROOT) -> Iterator[Path]:
    """Every Python file of the repository outside avcm/, hidden and virtual-env directories."""
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            if entry.name == PACKAGE or _is_skipped(entry) or entry.name.endswith(".egg-info"):
                continue
            yield from _walk(entry)
        elif entry.suffix == ".py":
            yield entry


def _walk(directory: Path) -> Iterator[Path]:
    for entry in sorted(directory.iterdir()):
        if entry.is_dir():
            if not _is_skipped(entry) and entry.name != "__pycache__":
                yield from _walk(entry)
        elif entry.suffix == ".py":
            yield entry


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] if argv else list(python_files())
    problems = 0
    for path in paths:
        for line, what in findings(path.read_text(encoding="utf-8"), str(path)):
            print(f"{path}:{line}: private avcm name used outside avcm/: {what}")
            problems += 1
    if problems:
        print(
            f"{problems} use(s) of private avcm names: use avcm, avcm.lowlevel or avcm.testing "
            f"(or mark a test about an internal with '{OPT_OUT} <why>')",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
