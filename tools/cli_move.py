"""One-off: the move of every command into dnl_jax/cli/ (issue 32, item 6), as a script so that it
can be redone on a tree where other branches changed the same files. Run from the repository root
on a clean tree: `python3 tools/cli_move.py`; then `ruff check --fix` and `ruff format`. Delete
this script once the old command paths are removed (one release after the move).

What it does:
  git mv dnl_jax/main.py         dnl_jax/cli/train.py
  git mv dnl_jax/evaluate.py     dnl_jax/cli/evaluate.py
  git mv dnl_jax/analyze.py      dnl_jax/cli/analyze.py
  git mv dnl_jax/command_line.py dnl_jax/cli/output.py
  the `main()` of data/prepare.py, interop/convert.py, interop/pretrained.py (and everything after
    it) → dnl_jax/cli/{prepare,convert,pretrained}.py; the library functions stay where they are
  the flag parsing of train/config.py (check_override_flags, pop_model_kwargs_flags,
    take_model_kwargs_flags, set_model_kwargs) → dnl_jax/cli/flags.py
  thin shims at every old path (`python -m dnl_jax.main` etc. and their Python names)
  import rewrites (dnl_jax.command_line → dnl_jax.cli.output, the flag functions → cli.flags).
Then `python3 tools/cli_move.py --commands` rewrites the command lines in docs, configs, the
Makefile, scripts and tests to the new paths (`rewrite_commands`; records of past runs keep theirs).
"""

import os
import re
import subprocess
import sys

CLI_DOC = '''"""The command lines, one module each (run them with `python -m dnl_jax.cli.NAME`):

    train       train and evaluate a config (`--config`, `--workdir`, `--config.KEY=VALUE`)
    evaluate    a checkpoint with the evaluators of its config
    analyze     the DNL paper's analysis of a checkpoint's non-local blocks
    prepare     a dataset's raw download into array_record files
    convert     a PyTorch checkpoint into dnl_jax variables
    pretrained  a downloaded ImageNet backbone into what the trainer loads

flags.py parses what the commands share (`--config.model.kwargs.NAME=VALUE`, the check of
`--config.KEY=VALUE` keys); output.py sets what they print. The library (dnl_jax.train,
dnl_jax.data, dnl_jax.interop, ...) never imports this package. The old paths
(`python -m dnl_jax.main`, `dnl_jax.evaluate`, `dnl_jax.analyze`, `dnl_jax.data.prepare`,
`dnl_jax.interop.convert`, `dnl_jax.interop.pretrained`) still run, for one release (CHANGELOG).
"""
'''

MOVES = {
    "dnl_jax/main.py": "dnl_jax/cli/train.py",
    "dnl_jax/evaluate.py": "dnl_jax/cli/evaluate.py",
    "dnl_jax/analyze.py": "dnl_jax/cli/analyze.py",
    "dnl_jax/command_line.py": "dnl_jax/cli/output.py",
}

SHIM = '''"""Deprecated path, kept for one release (CHANGELOG.md): `python -m {old}` runs
`python -m {new}`, and `{old}.NAME` is `{new}.NAME`."""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("{new}", run_name="__main__", alter_sys=True)
else:
    import importlib

    sys.modules[__name__] = importlib.import_module("{new}")
'''

# (library module, cli module, its package, its name, the imports of what its `main` uses)
SPLITS = (
    (
        "dnl_jax/data/prepare.py",
        "dnl_jax/cli/prepare.py",
        "dnl_jax.data",
        "prepare",
        "from dnl_jax.data.prepare import DATASETS, prepare",
    ),
    (
        "dnl_jax/interop/convert.py",
        "dnl_jax/cli/convert.py",
        "dnl_jax.interop",
        "convert",
        "from dnl_jax.interop.convert import convert\n"
        "from dnl_jax.interop.mapping import ConversionError",
    ),
    (
        "dnl_jax/interop/pretrained.py",
        "dnl_jax/cli/pretrained.py",
        "dnl_jax.interop",
        "pretrained",
        "from dnl_jax.interop.pretrained import convert_backbone\n"
        "from dnl_jax.train.initialisation import BACKBONES",
    ),
)

LIBRARY_TAIL = '''

def main(argv=None) -> int:
    """Deprecated (one release, CHANGELOG.md): the command is `dnl_jax.cli.{name}.main`."""
    import importlib

    return importlib.import_module("dnl_jax.cli.{name}").main(argv)


# The old command path, {old} run with python's -m:
if __name__ == "__main__":
    import runpy

    runpy.run_module("dnl_jax.cli.{name}", run_name="__main__", alter_sys=True)
'''

FLAG_FUNCTIONS = (
    "check_override_flags",
    "pop_model_kwargs_flags",
    "take_model_kwargs_flags",
    "set_model_kwargs",
)


def run(*args: str) -> None:
    subprocess.run(args, check=True)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def split_main(library: str, cli: str, package: str, name: str, uses: str) -> None:
    """Moves `def main(` and what follows it from `library` into `cli`."""
    text = read(library)
    start = text.index("\ndef main(")
    body = text[start:]
    body = body.replace(
        f'prog="python -m {package}.{name}"', f'prog="python -m dnl_jax.cli.{name}"'
    )
    body = body.replace("description=__doc__", "description=library.__doc__")
    old = f"{package}.{name}"
    write(library, text[:start].rstrip() + "\n" + LIBRARY_TAIL.format(name=name, old=old))
    header = (
        f'"""Command line: `python -m dnl_jax.cli.{name}`; what it does: `{old}`."""\n\n'
        "from __future__ import annotations\n\n"
        "import argparse\nimport os\nimport sys\nfrom collections.abc import Sequence\n\n"
        f"from {package} import {name} as library\n"
        f"{uses}\n"
        "from dnl_jax.cli.output import add_log_level_argument, set_library_log_level\n"
    )
    write(cli, header + "\n" + body)


def function_block(text: str, name: str) -> tuple[int, int]:
    """(start, end) of the top-level `def name(` in `text`, through the line before the next
    top-level statement."""
    start = text.index(f"\ndef {name}(") + 1
    match = re.compile(r"^\S", re.M).search(text, text.index("\n", start) + 1)
    end = match.start() if match else len(text)
    return start, end


def move_flag_functions() -> None:
    path = "dnl_jax/train/config.py"
    text = read(path)
    blocks = []
    for name in FLAG_FUNCTIONS:
        start, end = function_block(text, name)
        blocks.append(text[start:end].rstrip() + "\n")
        text = text[:start] + text[end:]
    write(path, text.replace("(`pop_model_kwargs_flags`)", "(dnl_jax/cli/flags.py)"))
    write(
        "dnl_jax/cli/flags.py",
        '"""What the commands parse before absl or ml_collections do: `--config.model.kwargs.NAME='
        "VALUE`\n(model.kwargs is free-form, so ml_collections cannot override it) and the check "
        "of "
        '`--config.KEY`\nkeys (one line naming a typo or a replaced key instead of a traceback)."""'
        "\n\nfrom __future__ import annotations\n\nimport ast\nimport sys\n"
        "from collections.abc import Sequence\nfrom typing import Any\n\nimport ml_collections\n\n"
        "from dnl_jax.train.config import CONFIG_FLAG, MODEL_KWARGS_FLAG, _flatten, base_config, "
        "check_key\n\n\n" + "\n\n".join(blocks),
    )


def _split_import(match: re.Match) -> str:
    indent, names = match.group(1), [n.strip() for n in match.group(2).split(",") if n.strip()]
    flags = [n for n in names if n in FLAG_FUNCTIONS]
    if not flags:
        return match.group(0)
    rest = [n for n in names if n not in FLAG_FUNCTIONS]
    lines = [f"{indent}from dnl_jax.cli.flags import {', '.join(flags)}"]
    if rest:
        lines.append(f"{indent}from dnl_jax.train.config import {', '.join(rest)}")
    return "\n".join(lines)


def rewrite_imports() -> None:
    files = subprocess.run(
        ["git", "ls-files", "*.py"], check=True, capture_output=True, text=True
    ).stdout.split()
    single_line = re.compile(r"^([ \t]*)from dnl_jax\.train\.config import ([^(\n]+)$", re.M)
    for path in files + ["dnl_jax/cli/flags.py"]:
        if path.startswith("tools/") or not os.path.exists(path):
            continue
        text = original = read(path)
        text = text.replace("dnl_jax.command_line", "dnl_jax.cli.output")
        if path != "dnl_jax/cli/flags.py":
            text = single_line.sub(_split_import, text)
        if text != original:
            write(path, text)


def main() -> int:
    os.makedirs("dnl_jax/cli", exist_ok=True)
    write("dnl_jax/cli/__init__.py", CLI_DOC)
    for old, new in MOVES.items():
        run("git", "mv", old, new)
        old_module, new_module = old[:-3].replace("/", "."), new[:-3].replace("/", ".")
        write(old, SHIM.format(old=old_module, new=new_module))
    for library, cli, package, name, uses in SPLITS:
        split_main(library, cli, package, name, uses)
    move_flag_functions()
    rewrite_imports()
    run("git", "add", "dnl_jax/cli", *MOVES)
    return 0


if __name__ == "__main__" and not sys.argv[1:]:
    sys.exit(main())


COMMANDS = {
    "dnl_jax.main": "dnl_jax.cli.train",
    "dnl_jax.evaluate": "dnl_jax.cli.evaluate",
    "dnl_jax.analyze": "dnl_jax.cli.analyze",
    "dnl_jax.data.prepare": "dnl_jax.cli.prepare",
    "dnl_jax.interop.convert": "dnl_jax.cli.convert",
    "dnl_jax.interop.pretrained": "dnl_jax.cli.pretrained",
}
# Records of past runs keep the command they ran; the shims and this script name the old paths.
KEEP = ("CHANGELOG.md", "experiments/results/", "tools/cli_move.py", "tests/cli/test_old_paths.py")


def _split_analyze_import(match: re.Match) -> str:
    """`from dnl_jax import analyze, tasks` → `from dnl_jax import tasks` + `from dnl_jax.cli
    import analyze`."""
    indent, names = match.group(1), [n.strip() for n in match.group(2).split(",")]
    if "analyze" not in names:
        return match.group(0)
    rest = [n for n in names if n != "analyze"]
    lines = [f"{indent}from dnl_jax import {', '.join(rest)}"] if rest else []
    return "\n".join(lines + [f"{indent}from dnl_jax.cli import analyze"])


def rewrite_commands() -> None:
    """`python -m OLD` → `python -m NEW` (also `-m OLD` in the Makefile and "OLD" as a quoted
    module name in tests and scripts) in every tracked text file but `KEEP` and the shims; and
    the tests' imports of the moved command modules."""
    files = subprocess.run(["git", "ls-files"], check=True, capture_output=True, text=True)
    shims = set(MOVES)  # the library modules of SPLITS are rewritten too (their docstrings)
    for path in files.stdout.split():
        if path.startswith(KEEP) or path in shims or not os.path.isfile(path):
            continue
        if not path.endswith(
            (".py", ".md", ".ipynb", ".toml", ".yml", ".yaml", ".cfg", ".txt")
        ) and (os.path.basename(path) != "Makefile"):
            continue
        text = original = read(path)
        for old, new in COMMANDS.items():
            text = re.sub(rf"-m {re.escape(old)}\b(?!\.)", f"-m {new}", text)
            text = re.sub(rf"([\"']){re.escape(old)}\1", rf"\g<1>{new}\g<1>", text)
        # `dnl_jax.data.prepare NAME` in messages and the tests that match them
        text = re.sub(r"\bdnl_jax\.data\.prepare (?=[a-z])", "dnl_jax.cli.prepare ", text)
        text = re.sub(
            r"^([ \t]*)from dnl_jax import ([^(\n]+)$", _split_analyze_import, text, flags=re.M
        )
        text = text.replace("from dnl_jax.evaluate import", "from dnl_jax.cli.evaluate import")
        text = text.replace("from dnl_jax.analyze import", "from dnl_jax.cli.analyze import")
        text = text.replace(
            "from dnl_jax.data.prepare import main", "from dnl_jax.cli.prepare import main"
        )
        if text != original:
            write(path, text)


if __name__ == "__main__" and sys.argv[1:] == ["--commands"]:
    rewrite_commands()
