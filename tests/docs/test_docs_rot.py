"""The documentation cannot rot: every command it shows parses, every path and link it gives exists.

Reads README.md, docs/ (pages, API pages, record pages, the notebooks' Markdown cells),
experiments/results/*.md and experiments/benchmarks/RESULTS.md with a Markdown parser
(tests/docs/doc_commands.py) and checks, without running anything past argument parsing:
- each `python -m MODULE` names a module that exists, each `python SCRIPT.py` a script in the
  repository;
- each `--flag` of such a command is one the command defines (its absl flags or argparse options,
  read by tests/docs/command_flags.py in one subprocess);
- each `--config.KEY` is a key of the config it goes with (the `--config` file of its command, else
  the base config that every recipe extends);
- each repository path in code (`dnl_jax/...`, `tests/...`, ...) exists, and none leaves the
  repository; each relative link and image resolves; each MyST include and toctree entry exists.
"""

import functools
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from doc_commands import DOCUMENT_GLOBS as GLOBS
from doc_commands import (
    REPO,
    Command,
    Snippet,
    commands_in,
    config_overrides_in,
    expand_braces,
    flags_of,
    read_document,
    repository_paths_in,
)

# absl adds these in app.run, after the point where command_flags.py stops the command.
ABSL_RUN_FLAGS = {"help", "helpfull", "helpshort", "helpxml"}


def _documents():
    paths = sorted({p for pattern in GLOBS for p in glob.glob(pattern, root_dir=REPO)})
    assert paths, f"no documents found under {REPO}"
    return paths


@functools.cache
def _read_all():
    """(code snippets, links, prose naming repository paths) of every document."""
    code, links, prose = [], [], []
    for path in _documents():
        page_code, page_links, page_prose = read_document(path)
        code += page_code
        links += page_links
        prose += page_prose
    return code, links, prose


def _commands(snippets):
    return [command for snippet in snippets for command in commands_in(snippet)]


_FLAGS_BY_TARGET: dict = {}


def _flags_by_target(targets):
    """{target: {"parser", "flags"} | {"error"}} from tests/docs/command_flags.py, which reads
    those not yet known in one subprocess."""
    missing = sorted(set(targets) - set(_FLAGS_BY_TARGET))
    if missing:
        _FLAGS_BY_TARGET.update(_read_flags(missing))
    return _FLAGS_BY_TARGET


def _read_flags(targets):
    script = os.path.join(REPO, "tests", "docs", "command_flags.py")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, script, *targets],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@functools.cache
def _config(path_and_argument):
    """The ConfigDict that `--config path[:argument]` loads; None for the base config."""
    from dnl_jax.train.config import base_config

    if path_and_argument is None:
        return base_config()
    path, _, argument = path_and_argument.partition(":")
    spec = importlib.util.spec_from_file_location("doc_config", os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(argument) if argument else module.get_config()


def _has_key(config, key):
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


# The checks, each returning a list of "where: problem" lines (empty when the docs are right).


def module_and_script_problems(commands):
    problems = []
    for command in commands:
        where = command.snippet.where()
        if command.module and not _module_exists(command.module):
            problems.append(f"{where}: `python -m {command.module}`: no such module")
        if command.script and not os.path.isfile(os.path.join(REPO, command.script)):
            problems.append(f"{where}: `python {command.script}`: no such script in the repository")
    return problems


def _module_exists(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def flag_problems(commands):
    ours = [c for c in commands if _is_ours(c)]
    known = _flags_by_target({c.target for c in ours})
    problems = []
    for command in ours:
        report, where = known[command.target], command.snippet.where()
        if "error" in report:
            problems += _flags_without_a_parser(command, report["error"])
            continue
        defined = set(report["flags"]) | (ABSL_RUN_FLAGS if report["parser"] == "absl" else set())
        for name, _ in flags_of(command):
            bare = name.split(".")[0]  # --config.KEY is checked against the config below
            negated = report["parser"] == "absl" and bare.startswith("no") and bare[2:] in defined
            if bare not in defined and not negated:
                problems.append(f"{where}: `{command.target}` has no flag --{name}")
    return problems


def _flags_without_a_parser(command, error):
    """A script that reads sys.argv itself (tools/check_types.py): each flag must appear in its
    source as "--NAME"; a module or a script that fails before parsing is a problem."""
    where, flags = command.snippet.where(), flags_of(command)
    reads_argv_itself = "ran to the end" in error or "SystemExit" in error
    if reads_argv_itself and not flags:
        return []  # nothing to check
    if command.module or not reads_argv_itself:
        return [f"{where}: `{command.target}`: {error}"]
    with open(os.path.join(REPO, command.script), encoding="utf-8") as file:
        source = file.read()
    return [
        f"{where}: `{command.target}` has no flag --{name} (it parses sys.argv itself)"
        for name, _ in flags
        if f'"--{name}"' not in source
    ]


def _is_ours(command):
    """Commands of this repository (not `python -m build`, `pip`, ...), whose target exists."""
    if command.module:
        return command.module.split(".")[0] == "dnl_jax" and _module_exists(command.module)
    return os.path.isfile(os.path.join(REPO, command.script))


def _config_file_of(command):
    """The `--config` value of a command if it is a file in the repository, else None."""
    for name, value in flags_of(command):
        if name == "config" and os.path.isfile(os.path.join(REPO, value.partition(":")[0])):
            return value
    return None


def config_key_problems(snippets):
    """Every `--config.KEY`: checked against its command's config file, else the base config."""
    problems, in_commands = [], set()
    for command in _commands(snippets):
        config_file = _config_file_of(command)
        for name, _ in flags_of(command):
            if name.startswith("config."):
                in_commands.add((command.snippet, name[len("config.") :]))
                problems += _key_problem(command.snippet, name[len("config.") :], config_file)
    for snippet in snippets:
        for key in config_overrides_in(snippet.text):
            if (snippet, key) not in in_commands:
                problems += _key_problem(snippet, key, None)
    return problems


def _key_problem(snippet, key, config_file):
    if key.startswith("model.kwargs."):
        return _model_option_problem(snippet, key, config_file)
    if _has_key(_config(config_file), key):
        return []
    named = config_file or "the base config (dnl_jax/train/config.py)"
    return [f"{snippet.where()}: --config.{key} is not a key of {named}"]


def _model_option_problem(snippet, key, config_file):
    """model.kwargs is free-form in the config: NAME must be an option of the config's model
    (its task's `model_defaults`), or of some task's models for a key outside a command."""
    from dnl_jax import tasks

    name = key[len("model.kwargs.") :]
    if config_file:
        model = _config(config_file).model.name
        options, whose = set(tasks.for_model(model).model_defaults), f"model {model}"
    else:
        options = {o for task in tasks.TASKS.values() for o in task.model_defaults}
        whose = "any task's models"
    if name in options:
        return []
    return [f"{snippet.where()}: --config.{key}: {name} is not an option of {whose}"]


def path_problems(snippets):
    problems = []
    for snippet in snippets:
        for path in repository_paths_in(snippet.text):
            if path.startswith("../"):
                problems.append(f"{snippet.where()}: {path} is outside the repository")
                continue
            for expanded in expand_braces(path.split("::")[0].split(":")[0]):
                if not glob.glob(expanded, root_dir=REPO):
                    problems.append(f"{snippet.where()}: {expanded} does not exist")
    return problems


def link_problems(links):
    problems = []
    for link in links:
        target = link.text.split("#")[0].split("?")[0]
        if not target or "://" in target or target.startswith("mailto:"):
            continue
        resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(link.path), target))
        if not os.path.exists(resolved):
            problems.append(f"{link.where()}: link to {link.text} does not resolve")
        elif not resolved.startswith(REPO + os.sep):
            problems.append(f"{link.where()}: link to {link.text} leaves the repository")
    return problems


def directive_problems(snippets):
    """MyST ```{include}``` files and ```{toctree}``` entries exist."""
    problems = []
    for snippet in snippets:
        folder = os.path.join(REPO, os.path.dirname(snippet.path))
        lines = [line.strip() for line in snippet.text.splitlines()]
        entries = [line for line in lines if line and not line.startswith(":")]
        if snippet.directive == "include":
            targets = [os.path.join(folder, snippet.argument)]
        elif snippet.directive == "toctree":
            targets = [os.path.join(folder, entry) for entry in entries]
        else:
            continue
        for target in targets:
            if not any(os.path.exists(target + suffix) for suffix in ("", ".md", ".ipynb")):
                problems.append(f"{snippet.where()}: {snippet.directive} entry {target} is missing")
    return problems


# The tests: the real documents.


def _assert_none(problems):
    assert not problems, f"{len(problems)} stale references:\n" + "\n".join(problems)


def test_the_documents_are_read():
    code, links, _ = _read_all()
    commands = _commands(code)
    assert len(_documents()) >= 20 and len(commands) >= 50 and len(links) >= 20
    assert {"dnl_jax.cli.train", "dnl_jax.cli.evaluate"} <= {c.module for c in commands}


def test_every_command_names_a_module_or_script_that_exists():
    _assert_none(module_and_script_problems(_commands(_read_all()[0])))


def test_every_flag_of_every_command_is_defined_by_it():
    _assert_none(flag_problems(_commands(_read_all()[0])))


def test_every_config_override_is_a_key_of_its_config():
    _assert_none(config_key_problems(_read_all()[0]))


def test_every_repository_path_in_code_and_prose_exists():
    code, _, prose = _read_all()
    _assert_none(path_problems(code + prose))


def test_every_relative_link_resolves():
    _assert_none(link_problems(_read_all()[1]))


def test_every_include_and_toctree_entry_exists():
    _assert_none(directive_problems(_read_all()[0]))


# The checks themselves catch stale text: each kind of rot, in a page written here.


STALE_PAGE = """# A stale page

```bash
python -m dnl_jax.main --config experiments/configs/synthetic_dnl_tiny.py \\
    --workdir runs/x --config.eval_every_steps=100
python -m dnl_jax.evaluate --workdir runs/x --no_such_flag=1
python -m dnl_jax.no_such_command --workdir runs/x
python experiments/no_such_script.py --out x.json
python ../shared/tools/check_imports.py
```

Tests live in `tests/test_no_such_file.py` and tests/core/test_no_such_file.py; see
[the guide](no_such_page.md).
"""


@pytest.fixture
def stale_page(tmp_path, monkeypatch):
    page = tmp_path / "stale.md"
    page.write_text(STALE_PAGE)
    import doc_commands

    monkeypatch.setattr(doc_commands, "REPO", str(tmp_path))
    code, links, prose = read_document("stale.md")
    return code + prose, links


def test_the_checks_find_each_kind_of_stale_reference(stale_page):
    code, links = stale_page
    commands = _commands(code)
    assert [c.target for c in commands] == [
        "dnl_jax.main",
        "dnl_jax.evaluate",
        "dnl_jax.no_such_command",
        "experiments/no_such_script.py",
        "../shared/tools/check_imports.py",
    ]
    assert commands[0].snippet.line == 4  # the first line of the fence's content
    problems = "\n".join(
        module_and_script_problems(commands)
        + flag_problems(commands)
        + config_key_problems(code)
        + path_problems(code)
        + link_problems(links)
    )
    for expected in (
        "--config.eval_every_steps is not a key of experiments/configs/synthetic_dnl_tiny.py",
        "`dnl_jax.evaluate` has no flag --no_such_flag",
        "`python -m dnl_jax.no_such_command`: no such module",
        "`python experiments/no_such_script.py`: no such script",
        "../shared/tools/check_imports.py is outside the repository",
        "tests/test_no_such_file.py does not exist",
        "tests/core/test_no_such_file.py does not exist",
        "link to no_such_page.md does not resolve",
    ):
        assert expected in problems, problems


def test_a_snippet_outside_a_command_is_checked_against_the_base_config():
    snippet = Snippet("page.md", 1, "--config.total_steps=5 and --config.no_such_key=1")
    assert config_key_problems([snippet]) == [
        "page.md:1: --config.no_such_key is not a key of the base config (dnl_jax/train/config.py)"
    ]


def test_commands_are_split_at_shell_operators_and_placeholders_are_words():
    snippet = Snippet("p.md", 1, "nice python -m dnl_jax.main --workdir <dir> 2>&1 | tee log\n")
    (command,) = commands_in(snippet)
    assert isinstance(command, Command) and command.module == "dnl_jax.main"
    assert flags_of(command) == [("workdir", "PLACEHOLDER")]
