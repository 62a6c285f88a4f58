"""Prints, as JSON, the flags each command accepts, without running the command.

    python tests/docs/command_flags.py dnl_jax.main experiments/soak.py ...

For each target (a module run with `python -m`, or a script path) a forked child runs it as
`__main__` with the two parsers patched: absl's `app.run` and argparse's `parse_known_args` stop
the command the moment it would parse its command line, and report the flags defined by then.
Nothing past argument parsing runs. The parent imports the heavy shared libraries once, so each
child costs only its own imports. Output: {target: {"parser": "absl"|"argparse", "flags": [...]}}
or {target: {"error": "..."}}.
"""

import argparse
import contextlib
import importlib
import json
import os
import runpy
import sys
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import absl.app  # noqa: E402
import absl.flags  # noqa: E402

# Imported once in the parent, so that each child pays only for its own imports (the commands
# import these; PyTorch only the parity and benchmark scripts). A missing one is left to the child.
SHARED_IMPORTS = ("jax", "flax.linen", "optax", "orbax.checkpoint", "dnl_jax.train", "torch")


class _Parsed(Exception):
    """Raised by the patched parsers: the command reached its argument parsing."""

    def __init__(self, parser, flags):
        super().__init__(parser)
        self.report = {"parser": parser, "flags": sorted(flags)}


def _absl_run(*args, **kwargs):
    del args, kwargs
    raise _Parsed("absl", list(absl.flags.FLAGS))


def _argparse_parse(self, *args, **kwargs):
    del args, kwargs
    options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
    raise _Parsed("argparse", [option[2:] for option in options])


def _flags_of(target):
    """{"parser", "flags"} of one target, or {"error"}: runs in the forked child."""
    absl.app.run = _absl_run
    argparse.ArgumentParser.parse_known_args = _argparse_parse
    sys.argv = [target]
    try:
        if target.endswith(".py"):
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except _Parsed as parsed:
        return parsed.report
    except BaseException as error:  # noqa: BLE001  (any failure is the answer for this target)
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        return {"error": f"it failed before parsing its command line: {last}"}
    return {"error": "it ran to the end without parsing a command line with absl or argparse"}


def _in_child(target):
    """Forks; the child writes _flags_of(target) as JSON to a pipe. Returns the decoded report."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(json.dumps(_flags_of(target)))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(text) if text else {"error": "the child process died without an answer"}


def main(targets):
    for name in SHARED_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    print(json.dumps({target: _in_child(target) for target in targets}))


if __name__ == "__main__":
    main(sys.argv[1:])
