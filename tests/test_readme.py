"""The README's example runs as written."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs() -> None:
    text = README.read_text()
    start = text.index("```python\nimport anyio, avcm, drivers")
    code = text[start + len("```python\n") : text.index("```", start + 10)]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
