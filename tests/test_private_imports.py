"""``.ci/check_private_imports.py``: code outside avcm/ uses only avcm's public names.

It catches each way of reaching a private module or name, lets public ones and a marked line
pass, and passes on this repository as it is (what ``.ci/run`` checks before the tests).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "check_private_imports.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_private_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load()

PRIVATE = {
    "import a private module": "import avcm._sync",
    "import it under another name": "import avcm._vaspace as vaspace",
    "import a private module of a subpackage": "import avcm.testing._clock",
    "from a private module": "from avcm._sync import sync_point",
    "from a private module of a subpackage": "from avcm.testing._clock import backend_options",
    "a private module from the package": "from avcm import _sync",
    "a private name from a public module": "from avcm.lowlevel import _chain",
    "an attribute of the package": "import avcm\navcm._sync.sync_point",
    "an attribute through a public module": "import avcm.lowlevel\navcm.lowlevel._chain",
    "an attribute through an alias": "import avcm as a\na._core",
    "an attribute of an imported module": "from avcm import testing\ntesting._clock",
    "an attribute of an imported class": "from avcm import Res\nRes._create(1, 2, 3)",
    "import_module": "import importlib\nimportlib.import_module('avcm._core')",
    "__import__": "__import__('avcm.testing._explore')",
}

PUBLIC = {
    "the package and its namespaces": "import avcm\nimport avcm.lowlevel\nfrom avcm import testing",
    "public names": "from avcm.lowlevel import sync_hook\nfrom avcm.testing import check_model",
    "dunders": "import avcm\navcm.__version__\navcm.Vcm.__init__",
    "private attributes of other things": "import avcm\nobj = object()\nobj._x\nself._y",
    "a relative import": "from ._recording import make_context",
    "another package's privates": "from trio._core import _run",
    "strings": "'avcm._core'\n# import avcm._core",
    "a marked line": "from avcm._core import Res  # avcm-private: a test about it",
}


@pytest.mark.parametrize("source", PRIVATE.values(), ids=PRIVATE.keys())
def test_catches(source: str) -> None:
    found = check.findings(source)
    assert len(found) == 1, found
    line, _ = found[0]
    assert line == source.count("\n") + 1  # the use, on the last line of each sample


@pytest.mark.parametrize("source", PUBLIC.values(), ids=PUBLIC.keys())
def test_lets_pass(source: str) -> None:
    assert check.findings(source) == []


def test_scans_everything_outside_the_package() -> None:
    files = {path.relative_to(ROOT).as_posix() for path in check.python_files(ROOT)}
    assert {"drivers/carveout.py", "stress/_invariants.py", "bench/_races.py"} <= files
    assert "tests/test_private_imports.py" in files
    assert not any(name.startswith(("avcm/", ".")) for name in files)


def test_the_repository_passes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    offender = tmp_path / "offender.py"
    offender.write_text("import avcm\n\nprint(avcm._core)\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(offender)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stdout == f"{offender}:3: private avcm name used outside avcm/: avcm._core\n"
