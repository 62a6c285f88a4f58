"""Old module paths that still import, for one release: each is an alias of its new home.

The layer library moved into `dnl_jax.core` in 0.2.0 (CHANGELOG). `import dnl_jax.attention`
(or `from dnl_jax import attention`) still works: it gives the very module object of
`dnl_jax.core.attention`, so attributes set or monkeypatched through the old name change the
real module, and warns once per old name (DeprecationWarning) with the path to import instead.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings

# old module path -> new module path
MOVED = {
    "dnl_jax.ops": "dnl_jax.core.ops",
    "dnl_jax.layers": "dnl_jax.core.layers",
    "dnl_jax.blocks": "dnl_jax.core.blocks",
    "dnl_jax.blocks_official": "dnl_jax.core.blocks_official",
    "dnl_jax.attention": "dnl_jax.core.attention",
    "dnl_jax.chunked": "dnl_jax.core.attention.chunked",
    "dnl_jax.pallas_attention": "dnl_jax.core.attention.pallas",
    "dnl_jax.sharded_attention": "dnl_jax.core.attention.sharded",
}


_IMPORTLIB_DIR = os.path.dirname(importlib.__file__)


def _importer_stacklevel() -> int:
    """The `stacklevel` that points a warning raised by `create_module` at the importing line.

    `warnings` counts only frames outside the frozen import machinery ('<frozen importlib.
    _bootstrap>'), so each `importlib` function between (e.g. `importlib.import_module`) adds one.
    """
    level = 2  # 1: create_module; `frame`: the import system's call of it, and on outwards
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_IMPORTLIB_DIR):
            level += 1
        elif not filename.startswith("<frozen importlib"):
            break
        frame = frame.f_back
    return level


class _AliasLoader(importlib.abc.Loader):
    """Loads an old path as the already-imported module of its new path."""

    def __init__(self, new_name: str):
        self.new_name = new_name
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new_name}; import {self.new_name} instead (the old "
            "path goes in the next release).",
            DeprecationWarning,
            stacklevel=_importer_stacklevel(),
        )
        module = importlib.import_module(self.new_name)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system stamped the alias's spec on the shared module; give it its own back.
        module.__spec__ = self.spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(MOVED[fullname]))


def install() -> None:
    """Puts the alias finder first on `sys.meta_path` (once): before any finder that could find
    a stale file at an old path (e.g. an editable install's, pointing at another checkout)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
