"""Sphinx configuration: the contract, tutorials, the API reference and the commands' help."""

from __future__ import annotations

import sys
from pathlib import Path

# the repository root: drivers/, stress/ and bench/ are documented from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "avcm"
author = "the avcm developers"
copyright = "2026, the avcm developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxarg.ext",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = "avcm"
