"""Command line: `python -m dnl_jax.cli.train --config experiments/configs/NAME.py --workdir DIR
[--config.KEY=VALUE ...]`.

Thin on purpose: flags, optional multi-host initialisation, then
`dnl_jax.train.trainer.train_and_evaluate(config, workdir)`. The model's arguments are set with
`--config.model.kwargs.NAME=VALUE` (e.g. `--config.model.kwargs.dropout_rate=0`).
Several hosts: pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on each, or
`--multihost` alone where JAX detects the cluster itself (TPU pods, SLURM, ...).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from dnl_jax.cli.output import quiet_absl_command

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and figures.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for multi-host runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, N).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() with the environment's defaults (TPU pods, SLURM, ...).",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume even when the config changes the training (schedule, optimizer, model, data, batch); "
    "the change is recorded in the workdir's config.json.",
)
_CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", None, "CPU cross-process collectives ('gloo'), for multi-process CPU runs."
)
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed(section) -> None:
    """Calls `jax.distributed.initialize` when multi-host flags are given (before any JAX use),
    with the coordination timeouts of `section` (`config.distributed`)."""
    import jax

    from dnl_jax.train import distributed

    explicit = [_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value]
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise app.UsageError(
            "give all of --coordinator_address, --num_processes and --process_id, or none of them."
        )
    if _CPU_COLLECTIVES.value:
        jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
    if all(v is not None for v in explicit):
        distributed.initialize(
            section,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _MULTIHOST.value:
        distributed.initialize(section)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_absl_command(flags.FLAGS["verbosity"])  # orbax logs every save: keep the bar clean
    config = _CONFIG.value
    try:
        initialize_distributed(config.distributed)
    except ValueError as error:
        sys.exit(f"main: {error}")
    import jax

    from dnl_jax.cli.flags import set_model_kwargs
    from dnl_jax.train import distributed
    from dnl_jax.train.checkpoint import RestoreFailed
    from dnl_jax.train.checkpoint_faults import DiskFull
    from dnl_jax.train.preemption import CTRL_C_EXIT_CODE
    from dnl_jax.train.trainer import train_and_evaluate

    try:
        set_model_kwargs(config, _MODEL_KWARGS)
        result = distributed.run_watched(
            _WORKDIR.value,
            config.distributed,
            lambda: train_and_evaluate(
                config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value
            ),
        )
    # A bad config or workdir, a full disk, a non-finite step, a checkpoint that does not
    # restore: one line (the trainer closed everything before).
    except (ValueError, DiskFull, FloatingPointError, RestoreFailed) as error:
        sys.exit(f"main: {error}")
    if result["status"] == "interrupted":  # Ctrl-C: the trainer printed where it saved
        sys.exit(CTRL_C_EXIT_CODE)
    if jax.process_index() == 0:
        print(
            f"{result['status']} at step {result['step']}: {result['summary'] or 'not evaluated'}"
        )
        print(
            f"workdir: {result['workdir']} (checkpoints/, tensorboard/, metrics.jsonl, "
            f"config.json{', ' + result['curves'] if result['curves'] else ''}"
            f"{', ' + result['attention'] if result.get('attention') else ''})"
        )


_MODEL_KWARGS: dict = {}


def run() -> None:
    """`app.run(main)` with the `--config.model.kwargs.NAME=VALUE` flags taken off first."""
    from dnl_jax.cli.flags import take_model_kwargs_flags
    from dnl_jax.cli.output import exit_on_bad_config_file, exit_quietly_on_ctrl_c

    exit_on_bad_config_file("main")
    _MODEL_KWARGS.update(take_model_kwargs_flags("main"))
    with exit_quietly_on_ctrl_c("main"):
        app.run(main)


if __name__ == "__main__":
    run()
