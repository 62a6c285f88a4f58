"""What the documentation says a reader can run or open, read with a Markdown parser.

`read_document(path)` walks a Markdown page (or a notebook's Markdown cells) with markdown-it-py
and returns its code (fenced blocks and inline code, with their line numbers), its link targets
and its MyST include/toctree entries. `commands_in(snippet)` finds `python -m MODULE ...` and
`python SCRIPT.py ...` in a piece of code, `repository_paths_in(text)` the repository paths it
names. Nothing here runs a command; tests/docs/test_docs_rot.py checks what these return.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex

from markdown_it import MarkdownIt

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The pages a reader follows: README, the docs site, the notebooks' prose, the records.
DOCUMENT_GLOBS = (
    "README.md",
    "docs/*.md",
    "docs/api/*.md",
    "docs/records/*.md",
    "docs/tutorials/*.ipynb",
    "experiments/results/*.md",
    "experiments/benchmarks/RESULTS.md",
)
# Top-level folders whose paths the docs name as repository files.
REPOSITORY_ROOTS = ("dnl_jax", "experiments", "tests", "docs", "tools", ".ci")
PLACEHOLDER = "PLACEHOLDER"


@dataclasses.dataclass(frozen=True)
class Snippet:
    """A piece of code in a document: `text`, from `path` (repo-relative) at 1-based `line`."""

    path: str
    line: int
    text: str
    directive: str = ""  # a MyST directive's name for ```{name} fences, else ""
    argument: str = ""  # what follows the directive's name: {include}'s file

    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Command:
    """`python -m module ...` (module set) or `python script.py ...` (script set), and its args."""

    snippet: Snippet
    module: str
    script: str
    args: tuple[str, ...]

    @property
    def target(self) -> str:
        return self.module or self.script


def _markdown_sources(path: str) -> list[tuple[str, int]]:
    """(Markdown text, line offset) pairs: the page itself, or a notebook's Markdown cells."""
    with open(os.path.join(REPO, path), encoding="utf-8") as file:
        text = file.read()
    if not path.endswith(".ipynb"):
        return [(text, 0)]
    cells = json.loads(text)["cells"]
    # A notebook has no line numbers a reader sees: cell k's lines count from 1000 * k.
    return [
        ("".join(cell["source"]), 1000 * index)
        for index, cell in enumerate(cells)
        if cell["cell_type"] == "markdown"
    ]


def read_document(path: str) -> tuple[list[Snippet], list[Snippet], list[Snippet]]:
    """(code snippets, link targets, prose naming a repository path) of one document; a link's
    `text` is its target."""
    parser = MarkdownIt("commonmark").enable("table")
    code, links, prose = [], [], []
    for source, offset in _markdown_sources(path):
        for token in parser.parse(source):
            line = offset + (token.map[0] + 1 if token.map else 0)
            if token.type in ("fence", "code_block"):
                directive = re.fullmatch(r"\{([\w-]+)\}\s*(.*)", token.info.strip())
                name, argument = directive.groups() if directive else ("", "")
                line += token.type == "fence"  # the content starts below the fence
                code.append(Snippet(path, line, token.content, name, argument))
            for child in token.children or ():
                if child.type == "code_inline":
                    code.append(Snippet(path, line, child.content))
                elif child.type == "text" and _PATH.search(child.content):
                    prose.append(Snippet(path, line, child.content))
                elif child.type == "link_open":
                    links.append(Snippet(path, line, str(child.attrs["href"])))
                elif child.type == "image":
                    links.append(Snippet(path, line, str(child.attrs["src"])))
    return code, links, prose


def _shell_lines(text: str) -> list[str]:
    """Logical shell lines: continuations joined, `<...>` placeholders made one word."""
    text = re.sub(r"\\\n", " ", text)
    text = re.sub(r"<[^<>\n]*>", PLACEHOLDER, text)
    return [line.strip().removeprefix("$ ") for line in text.splitlines() if line.strip()]


def _words(line: str) -> list[str]:
    """Shell words of one line (comments dropped, operators as their own words); [] if broken."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: prose in backticks, not a command
        return []


def _is_python(word: str) -> bool:
    return word in ("$PY", "$(PY)") or re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", word) is not None


def _is_operator(word: str) -> bool:
    return set(word) <= set("();<>|&")


def commands_in(snippet: Snippet) -> list[Command]:
    """Every `python -m MODULE args` and `python path.py args` in the snippet's shell lines."""
    commands = []
    for line in _shell_lines(snippet.text):
        words = _words(line)
        for start, word in enumerate(words[:-1]):
            if not _is_python(word):
                continue
            rest = words[start + 1 :]
            module = script = ""
            if rest[0] == "-m" and len(rest) > 1:
                module, rest = rest[1], rest[2:]
            elif rest[0].endswith(".py"):
                script, rest = rest[0], rest[1:]
            else:
                continue
            end = next((i for i, w in enumerate(rest) if _is_operator(w)), len(rest))
            commands.append(Command(snippet, module, script, tuple(rest[:end])))
    return commands


def flags_of(command: Command) -> list[tuple[str, str]]:
    """(flag name, value or '') of each `--flag[=value]` / `--flag value` argument."""
    flags = []
    for index, arg in enumerate(command.args):
        if not arg.startswith("--") or arg == "--":
            continue
        name, equals, value = arg[2:].partition("=")
        if not equals and index + 1 < len(command.args):
            following = command.args[index + 1]
            value = "" if following.startswith("-") else following
        flags.append((name, value))
    return flags


def config_overrides_in(text: str) -> list[str]:
    """The KEY of each `--config.KEY[=value]` in the text."""
    return re.findall(r"--config\.([A-Za-z_][\w.]*[\w])", text)


_ROOTS = "|".join(re.escape(root) for root in REPOSITORY_ROOTS)
_PATH = re.compile(r"(?<![\w./-])((?:\.\./)+[\w.-][\w./-]*|(?:" + _ROOTS + r")/[\w./*{},-]*[\w*}])")


# Paths a page names on purpose although they are not in a clone: what a build writes, and the
# file the README's "adding a task" walk-through tells the reader to create.
NOT_IN_A_CLONE = ("docs/_build", "dnl_jax/tasks/depth.py")


def repository_paths_in(text: str) -> list[str]:
    """Repository paths named in code text (`tests/x.py::test` and `x.py:12` lose the suffix);
    `../` paths, which leave the repository, are returned as written. Paths with a placeholder
    (`<name>`, or an upper-case word such as `NAME.py`) and those in NOT_IN_A_CLONE are left out."""
    text = re.sub(r"<[^<>\n]*>", PLACEHOLDER, text)
    return [
        path
        for path in _PATH.findall(text)
        if PLACEHOLDER not in path
        and not re.search(r"(^|/)[A-Z][A-Z_]*(\.\w+)?(/|$)", path)
        and not path.startswith(NOT_IN_A_CLONE)
    ]


def expand_braces(path: str) -> list[str]:
    """`a_{x,y}.py` → [`a_x.py`, `a_y.py`] (the shell's brace expansion, one level)."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", path)
    if not match:
        return [path]
    return [
        expanded
        for part in match.group(1).split(",")
        for expanded in expand_braces(path[: match.start()] + part + path[match.end() :])
    ]
