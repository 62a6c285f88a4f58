"""The commands live in dnl_jax/cli/; their old paths still run for one release (CHANGELOG.md):
each old `python -m` path answers --help with the new command's usage, and the old Python names
are the new modules' (the same module objects, so patching either patches both)."""

import importlib
import os
import subprocess
import sys

import pytest

OLD_TO_NEW = {
    "dnl_jax.main": "dnl_jax.cli.train",
    "dnl_jax.evaluate": "dnl_jax.cli.evaluate",
    "dnl_jax.analyze": "dnl_jax.cli.analyze",
    "dnl_jax.data.prepare": "dnl_jax.cli.prepare",
    "dnl_jax.interop.convert": "dnl_jax.cli.convert",
    "dnl_jax.interop.pretrained": "dnl_jax.cli.pretrained",
    "dnl_jax.predict": "dnl_jax.cli.predict",
    "dnl_jax.export": "dnl_jax.cli.export",
}
# A flag of each command, which its --help must list.
FLAG = {
    "dnl_jax.main": "--workdir",
    "dnl_jax.evaluate": "--checkpoint",
    "dnl_jax.analyze": "--num_images",
    "dnl_jax.data.prepare": "--manual_dir",
    "dnl_jax.interop.convert": "--partial",
    "dnl_jax.interop.pretrained": "--pretrained_dir",
    "dnl_jax.predict": "--explain",
    "dnl_jax.export": "--input_size",
}


def _help(module: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_command_path_runs_the_new_command(old):
    old_run, new_run = _help(old), _help(OLD_TO_NEW[old])
    # argparse exits 0 after --help, absl 1; either way the same as the new path, with its flags.
    assert old_run.returncode == new_run.returncode in (0, 1), old_run.stderr[-2000:]
    assert "Traceback" not in old_run.stderr + new_run.stderr
    assert FLAG[old] in old_run.stdout + old_run.stderr
    assert FLAG[old] in new_run.stdout + new_run.stderr


@pytest.mark.parametrize("old", ["dnl_jax.evaluate", "dnl_jax.analyze", "dnl_jax.main"])
def test_old_module_names_are_the_new_modules(old):
    assert importlib.import_module(old) is importlib.import_module(OLD_TO_NEW[old])


def test_library_modules_keep_their_functions_and_the_old_main():
    from dnl_jax.cli import convert as convert_command
    from dnl_jax.cli import prepare as prepare_command
    from dnl_jax.data import prepare
    from dnl_jax.interop import convert

    assert callable(prepare.prepare) and callable(convert.convert)
    assert prepare_command.DATASETS == prepare.DATASETS
    # The old `main` names run the new commands: a bad argument is the same usage error (2).
    with pytest.raises(SystemExit) as old_exit:
        prepare.main(["no_such_dataset", "--manual_dir", "x", "--data_dir", "y"])
    with pytest.raises(SystemExit) as new_exit:
        prepare_command.main(["no_such_dataset", "--manual_dir", "x", "--data_dir", "y"])
    assert old_exit.value.code == new_exit.value.code == 2
    assert convert.main.__module__ == "dnl_jax.interop.convert"
    assert convert_command.main.__module__ == "dnl_jax.cli.convert"
