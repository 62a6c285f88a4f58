"""Checks the built distributions in DIR: the wheel holds the package and its metadata only.

    python tools/check_wheel.py dist

Fails (exit 1, naming the files) if the wheel carries tests, experiment scripts or outputs
(results, figures, checkpoints), or if it lacks the licence or a subpackage of `dnl_jax`.
"""

from __future__ import annotations

import pathlib
import sys
import zipfile

# Paths no wheel member may start with, and suffixes of outputs that must stay in the repository.
_FORBIDDEN_PREFIXES = ("tests/", "experiments/", "docs/", "runs/", "tools/")
_FORBIDDEN_SUFFIXES = (".png", ".jsonl", ".ipynb", ".pth", ".msgpack")


def check_wheel(wheel: pathlib.Path, package_root: pathlib.Path) -> list[str]:
    """The problems of `wheel` (empty when it is clean)."""
    names = zipfile.ZipFile(wheel).namelist()
    problems = [
        f"{name}: not part of the package"
        for name in names
        if name.startswith(_FORBIDDEN_PREFIXES) or name.endswith(_FORBIDDEN_SUFFIXES)
    ]
    problems += [
        f"{name}: outside dnl_jax/ and its metadata"
        for name in names
        if not name.startswith(("dnl_jax/", "dnl_jax-"))
    ]
    if not any(name.endswith("licenses/LICENSE") for name in names):
        problems.append("the LICENSE file is missing from the metadata")
    for init in sorted(package_root.rglob("__init__.py")):
        member = init.relative_to(package_root.parent).as_posix()
        if member not in names:
            problems.append(f"{member}: a subpackage of the source tree is missing")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    wheels = sorted(pathlib.Path(argv[1]).glob("*.whl"))
    if len(wheels) != 1:
        print(f"check_wheel: expected one wheel in {argv[1]}, found {[w.name for w in wheels]}")
        return 1
    package_root = pathlib.Path(__file__).resolve().parent.parent / "dnl_jax"
    problems = check_wheel(wheels[0], package_root)
    for problem in problems:
        print(f"check_wheel: {wheels[0].name}: {problem}")
    if not problems:
        print(
            f"check_wheel: {wheels[0].name} holds the package only "
            f"({len(zipfile.ZipFile(wheels[0]).namelist())} files)"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
