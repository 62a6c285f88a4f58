"""Import structure of experiments/, run from the project root (the scripts' counterpart of the
package check, tools-wise): import cycles between the scripts (imports inside functions count),
imports of dnl_jax modules that do not exist or of the layer library's deprecated old paths, and
any dnl_jax module importing experiments/. Prints one line per finding and a summary; exit 1 when
there is a finding.

A script imports its neighbours by bare name (`import bench_utils`): Python puts the script's own
folder first on sys.path, so a bare name resolves to a file in the importing file's folder.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's dnl_jax (its root module imports no layer)
from dnl_jax._compat import MOVED  # noqa: E402

# The layer library's old paths: kept for users for one release, not for our own scripts.
DEPRECATED = set(MOVED)


def imported_names(path: pathlib.Path, *, items: bool = True) -> set[str]:
    """Every absolute module name `path` imports; with `items`, `from a import b` gives a.b too
    (b may be a module or a name in a)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
            if items:
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def script_graph(folder: pathlib.Path) -> dict[pathlib.Path, set[pathlib.Path]]:
    """file → the files of `folder` (recursively) it imports by bare name from its own folder."""
    files = sorted(folder.rglob("*.py"))
    graph: dict[pathlib.Path, set[pathlib.Path]] = {}
    for path in files:
        neighbours = {
            path.parent / f"{name}.py" for name in imported_names(path) if "." not in name
        }
        graph[path] = {n for n in neighbours if n.exists() and n != path}
    return graph


def cycles(graph: dict) -> list[list]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    found: list[list] = []

    def visit(node) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def _module_exists(name: str, root: pathlib.Path) -> bool:
    base = root / pathlib.Path(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def findings(root: pathlib.Path = ROOT) -> tuple[list[str], int, int]:
    """(one line per problem, number of scripts, number of script → script imports)."""
    experiments = root / "experiments"
    graph = script_graph(experiments)
    problems = [
        "import cycle: " + " <-> ".join(str(p.relative_to(root)) for p in component)
        for component in cycles(graph)
    ]
    for path in graph:
        where = path.relative_to(root)
        problems += [
            f"{where} imports the deprecated path {name}"
            for name in sorted(imported_names(path) & DEPRECATED)
        ]
        problems += [
            f"{where} imports {name}: no such module"
            for name in sorted(imported_names(path, items=False) - DEPRECATED)
            if name.split(".")[0] == "dnl_jax" and not _module_exists(name, root)
        ]
    for path in sorted((root / "dnl_jax").rglob("*.py")):
        if any(name.split(".")[0] == "experiments" for name in imported_names(path)):
            problems.append(f"{path.relative_to(root)} imports experiments/: nothing may")
    return problems, len(graph), sum(len(targets) for targets in graph.values())


def main() -> int:
    problems, scripts, imports = findings()
    for line in problems:
        print("FAIL", line)
    print(
        f"experiments/: {scripts} scripts, {imports} imports between them, "
        f"{sum(p.startswith('import cycle') for p in problems)} cycles; {len(problems)} failures"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
