"""Sphinx configuration of the dnl_jax documentation (built by `make docs`, warnings as errors)."""

import os
import sys
import tomllib

sys.path.insert(0, os.path.abspath(".."))

import dnl_jax  # noqa: E402  (after the path insert, so the checkout's package is documented)

project = "dnl_jax"
author = "The dnl_jax developers"
copyright = "2026, the dnl_jax developers"
release = dnl_jax.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Markdown pages and MyST markdown notebooks (executed on every build, as jax/flax/optax do).
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# Docstrings use `backticks` for code: render them as inline literals.
default_role = "code"
# Google-style sections (Args:, Returns:, Attributes:); attributes as fields, since autodoc
# already documents dataclass fields.
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_mock_imports: list = []
autosummary_generate = False

# The navigation lives in contents.md, so that the start page (index.md) has no toctree block:
# it renders as plain Markdown on a code host too.
root_doc = "contents"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "README.md"]

html_theme = "furo"
html_title = f"dnl_jax {release}"


def _repository_url():
    """pyproject.toml's `project.urls.Repository`, or None while no public address is recorded."""
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as file:
        urls = tomllib.load(file)["project"].get("urls", {})
    return urls.get("Repository") or None


# The "view/edit this page" buttons link to the repository only when its address is recorded.
html_theme_options: dict = {}
if _repository_url():
    html_theme_options = {
        "source_repository": _repository_url().rstrip("/") + "/",
        "source_branch": "main",
        "source_directory": "docs/",
    }


def _module_docstring_as_written(app, what, name, obj, options, lines):
    """Module docstrings are plain text with aligned tables and diagrams (e.g. `dnl_jax.tasks`,
    `dnl_jax.train.checkpoint`): show them as written instead of parsing them as reST."""
    del app, name, obj, options
    if what == "module" and lines:
        lines[:] = ["::", ""] + ["    " + line for line in lines] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _module_docstring_as_written)
