"""The type check: mypy over `dnl_jax`, zero errors in the public core, no new ones elsewhere.

    python tools/check_types.py            # what `make lint` runs
    python tools/check_types.py --update   # rewrite the baseline after removing errors

The public core (`CORE`) must type-check cleanly. Every other module may keep the errors recorded
per file in `tools/mypy_baseline.txt` (counts, since line numbers move), and no more: a file with
more errors than its baseline, or errors in a file not listed, fails. The baseline only shrinks:
when a file has fewer errors than recorded, the check asks for `--update`, so fixed errors stay
fixed.
"""

from __future__ import annotations

import collections
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASELINE = ROOT / "tools" / "mypy_baseline.txt"
# The public core, which must type-check cleanly: the layer library and its old-path aliases.
CORE = ("dnl_jax/core/", "dnl_jax/_compat.py")
_ERROR = re.compile(r"^(?P<path>[^:]+\.py):\d+: error: ")


def mypy_errors() -> tuple[collections.Counter, list[str]]:
    """(errors per file, the error lines) of mypy over the package, configured in pyproject."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "dnl_jax"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 1) or "error: " in result.stderr:
        sys.exit(
            f"check_types: mypy could not run (exit {result.returncode}):\n"
            f"{result.stderr or result.stdout}"
        )
    lines = [line for line in result.stdout.splitlines() if _ERROR.match(line)]
    return collections.Counter(_ERROR.match(line)["path"] for line in lines), lines


def read_baseline() -> dict[str, int]:
    if not BASELINE.exists():
        return {}
    entries = (
        line.split()
        for line in BASELINE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {path: int(count) for path, count in entries}


def write_baseline(counts: collections.Counter) -> None:
    header = (
        "# mypy errors per file outside the public core (tools/check_types.py). Counts may\n"
        "# only go down: fix errors, then run `python tools/check_types.py --update`.\n"
    )
    BASELINE.write_text(header + "".join(f"{path} {counts[path]}\n" for path in sorted(counts)))


def main(argv: list[str]) -> int:
    counts, lines = mypy_errors()
    core = [line for line in lines if _ERROR.match(line)["path"].startswith(CORE)]
    if core:
        print("check_types: the public core must type-check cleanly:\n" + "\n".join(core))
        return 1
    if "--update" in argv:
        write_baseline(counts)
        print(
            f"check_types: baseline written: {sum(counts.values())} errors in {len(counts)} files"
        )
        return 0
    baseline = read_baseline()
    grown = {
        path: (count, baseline.get(path, 0))
        for path, count in counts.items()
        if count > baseline.get(path, 0)
    }
    for path, (count, allowed) in sorted(grown.items()):
        print(f"check_types: {path}: {count} mypy errors, the baseline allows {allowed}:")
        print("\n".join(line for line in lines if line.startswith(path + ":")))
    if grown:
        return 1
    shrunk = {path for path, allowed in baseline.items() if counts.get(path, 0) < allowed}
    if shrunk:
        print(
            f"check_types: fewer errors than the baseline in {sorted(shrunk)}: run "
            "`python tools/check_types.py --update` to lock the improvement in."
        )
        return 1
    print(
        f"check_types: core clean; {sum(counts.values())} baseline errors in "
        f"{len(counts)} other files, none new"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
