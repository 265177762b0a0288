"""The README's examples run as written."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def run_example(opening: str) -> dict[str, object]:
    text = README.read_text()
    start = text.index(f"```python\n{opening}")
    code = text[start + len("```python\n") : text.index("```", start + 10)]
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_readme_example_runs() -> None:
    run_example("import anyio, avcm, drivers")


def test_readme_race_test_runs() -> None:
    namespace = run_example("import avcm, drivers\nfrom avcm import testing")
    assert callable(namespace["two_binds"])
