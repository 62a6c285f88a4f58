"""One process of a 2-process training run for the multi-host fault tests (not a test itself).

    python tests/multihost_launcher.py PORT PROCESS_ID WORKDIR [--sigterm WHEN] [KEY=VALUE ...]

jax.distributed (gloo CPU collectives on 127.0.0.1) with the config's coordination timeouts, then
the trainer under `distributed.run_watched`, as `python -m dnl_jax.cli.train` runs it. The config is
the demo config with tests/train_testing.py's TINY values and the KEY=VALUE overrides. WHEN sends
SIGTERM to this process:
    startup   before the restore and compile
    step:N    after step N (the following steps are slowed, so that the agreed stop comes first)
    eval      during this run's first evaluation (its batches are slowed), between batches
Prints 'RESULT <status> <step> <val metric>' on process 0.
"""

import ast
import importlib.util
import os
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

import jax  # noqa: E402

SLOW_SECONDS = 0.4


def _config(overrides: dict):
    from train_testing import TINY

    spec = importlib.util.spec_from_file_location(
        "demo_config", os.path.join(REPO, "experiments", "configs", "synthetic_dnl_tiny.py")
    )
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    config = demo.get_config()
    config.update_from_flattened_dict({**TINY, **overrides})
    return config


def _arm(when: str):
    """The on_step callback for WHEN (and the slowed evaluation for 'eval')."""
    from dnl_jax.data import pipeline

    terminate = lambda: os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731
    if when == "startup":
        terminate()
        return None
    if when == "eval":
        batches, sent = pipeline.eval_batches, []

        def slow_batches(*args, **kwargs):
            for index, batch in enumerate(batches(*args, **kwargs)):
                if index == 1 and not sent:
                    sent.append(terminate())
                time.sleep(SLOW_SECONDS)
                yield batch

        pipeline.eval_batches = slow_batches
        return None
    if when.startswith("step:"):
        at = int(when.split(":")[1])

        def on_step(step):
            if step == at:
                terminate()
            if step >= at:
                time.sleep(SLOW_SECONDS)

        return on_step
    return None


def main(argv) -> None:
    port, process_id, workdir, *rest = argv
    when = ""
    if rest[:1] == ["--sigterm"]:
        when, rest = rest[1], rest[2:]
    overrides = {}
    for item in rest:
        key, value = item.split("=", 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    config = _config(overrides)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from dnl_jax.train import distributed

    distributed.initialize(
        config.distributed,
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=int(process_id),
    )
    from dnl_jax.train.trainer import train_and_evaluate

    on_step = _arm(when) if when else None
    result = distributed.run_watched(
        workdir, config.distributed, lambda: train_and_evaluate(config, workdir, on_step=on_step)
    )
    if jax.process_index() == 0:
        metric = (result["val"] or {}).get("miou")
        print(f"RESULT {result['status']} {result['step']} {metric}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
