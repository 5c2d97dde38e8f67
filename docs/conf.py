"""Sphinx configuration: build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import bcnmf_sc  # installed, e.g. pip install -e ".[doc]"

HERE = Path(__file__).parent
ROOT = HERE.parent

# sphinx-autodoc-typehints calls an API that Sphinx 9 deprecates; the notice is not ours to fix
warnings.filterwarnings("ignore", message=".*set_application.* is deprecated")

project = "bcnmf_sc"
author = "bcnmf_sc developers"
copyright = "2026, bcnmf_sc developers"
release = version = bcnmf_sc.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]

# .rst first: autosummary writes its stubs with the first suffix, and they are rst
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "README.md", "**.ipynb_checkpoints", "jupyter_execute"]
templates_path = ["_templates"]

# API pages from the numpydoc docstrings
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
typehints_document_rtype = False
always_document_param_types = False

# the notebooks store their outputs (tests/test_tutorials.py re-executes them)
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"bcnmf_sc {release}"


def _copy_tutorials() -> None:
    """The notebooks live in ``tutorials/`` at the top of the repository; Sphinx reads them from ``docs/``."""
    target = HERE / "tutorials"
    target.mkdir(exist_ok=True)
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        destination = target / notebook.name
        if not destination.exists() or destination.read_bytes() != notebook.read_bytes():
            shutil.copyfile(notebook, destination)


def _write_cli_help() -> None:
    """``bcnmf-sc --help`` and the help of every subcommand, included by ``cli.md``."""
    import argparse
    import os

    from bcnmf_sc._cli import _parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width; fix it so the pages do not change

    parser = _parser()
    out = HERE / "generated"
    out.mkdir(exist_ok=True)
    texts = {"main": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts.update({name: sub.format_help() for name, sub in action.choices.items()})
    for name, text in texts.items():
        path = out / f"cli_{name}.txt"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


_copy_tutorials()
_write_cli_help()
