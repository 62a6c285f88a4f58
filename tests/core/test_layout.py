"""The layer library's place: dnl_jax/core imports nothing of dnl_jax outside itself, and the old
module paths (dnl_jax.ops, dnl_jax.attention, ...) still import, as the same module objects, with
one DeprecationWarning each."""

import ast
import importlib
import pathlib
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import dnl_jax
from dnl_jax import _compat

CORE = pathlib.Path(dnl_jax.__file__).parent / "core"


def _imported_modules(path: pathlib.Path) -> set[str]:
    """The absolute names of every module `path` imports (function-level imports included)."""
    package = ".".join(path.relative_to(CORE.parent.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    else:
        package = package.removesuffix(".__init__")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_core_imports_nothing_of_dnl_jax_outside_core():
    files = sorted(CORE.rglob("*.py"))
    assert {f.name for f in files} >= {"ops.py", "layers.py", "blocks.py", "chunked.py"}
    outside = {
        str(f.relative_to(CORE.parent.parent)): sorted(
            name
            for name in _imported_modules(f)
            if name.split(".")[0] == "dnl_jax" and not name.startswith("dnl_jax.core")
        )
        for f in files
    }
    assert {path: names for path, names in outside.items() if names} == {}


def test_ops_imports_no_other_module_of_dnl_jax():
    assert not {n for n in _imported_modules(CORE / "ops.py") if n.startswith("dnl_jax")}


def test_loading_all_of_core_loads_nothing_else():
    code = (
        "import sys, dnl_jax.core.blocks, dnl_jax.core.blocks_official, "
        "dnl_jax.core.attention.sharded; "
        "print(sorted(m for m in sys.modules if m.startswith('dnl_jax')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    assert {"dnl_jax.core.attention.pallas", "dnl_jax.core.layers"} <= loaded
    assert {m for m in loaded if not m.startswith("dnl_jax.core")} == {"dnl_jax", "dnl_jax._compat"}


def _imports_with_items(path: pathlib.Path) -> set[str]:
    """Absolute names `path` imports, `from a import b` giving a and a.b (relative ones aside)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_of_ours_imports_an_old_path():
    """The aliases are for users: the package and the tests use the new paths (experiments/ is
    checked by tools/check_experiment_imports.py). After a merge, a hit names what to rewrite."""
    repo = CORE.parent.parent
    this_file = pathlib.Path(__file__).resolve()
    files = [*(repo / "dnl_jax").rglob("*.py"), *(repo / "tests").rglob("*.py")]
    old = set(_compat.MOVED)
    found = {
        str(f.relative_to(repo)): sorted(_imports_with_items(f) & old)
        for f in files
        if f.resolve() != this_file
    }
    assert {path: names for path, names in found.items() if names} == {}


@pytest.mark.parametrize("old, new", sorted(_compat.MOVED.items()))
def test_old_module_path_is_the_new_module(old, new, monkeypatch):
    # Forget any earlier import of the old name, so this one goes through the alias again.
    monkeypatch.delitem(sys.modules, old, raising=False)
    # (Not monkeypatch.delattr: its hasattr check would import the old path through __getattr__.)
    monkeypatch.delitem(vars(dnl_jax), old.rsplit(".", 1)[1], raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}; import {new} instead"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == new and module.__spec__.name == new
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second import warns no more
        assert importlib.import_module(old) is module
        assert getattr(dnl_jax, old.rsplit(".", 1)[1]) is module


def test_patching_through_an_old_path_patches_the_real_module(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tested above
        from dnl_jax import attention as old_attention
    from dnl_jax.core import attention

    monkeypatch.setattr("dnl_jax.attention.platform", lambda: "tpu")
    assert attention.platform() == "tpu"
    assert old_attention.dnl_attention is attention.dnl_attention


@pytest.mark.parametrize(
    "statement", ["import dnl_jax.blocks", "importlib.import_module('dnl_jax.blocks')"]
)
def test_old_path_warning_points_at_the_importing_line(statement):
    code = f"import importlib, warnings; warnings.simplefilter('default')\n{statement}\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.startswith("<string>:2: DeprecationWarning: dnl_jax.blocks moved to")


def test_unknown_attribute_of_the_package_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_module'"):
        _ = dnl_jax.no_such_module


def test_a_new_kernel_is_one_table_line(monkeypatch):
    from dnl_jax.core import attention, blocks, ops

    calls = []

    def toy_kernel(q, k, v, *, scale, whiten):
        calls.append(q.shape)
        return ops.materialised_pairwise_attention(q, k, v, scale=scale, whiten=whiten)

    monkeypatch.setitem(attention.KERNELS, "toy", attention.Kernel(toy_kernel))
    block = blocks.DisentangledNonLocal(reduction=2, implementation="toy")
    x = jax.random.normal(jax.random.key(0), (2, 4, 5, 8))
    variables = block.init(jax.random.key(1), x)
    out = block.apply(variables, x)
    reference = block.clone(implementation="xla").apply(variables, x)
    assert calls and calls[-1] == (2, 20, 4)  # the block's flattened queries [B, N, C/2]
    np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown attention implementation 'tpyo'; choose one of"):
        attention.dnl_attention(x[:, 0], x[:, 0], x[:, 0], implementation="tpyo")
