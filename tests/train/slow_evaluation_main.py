"""`python tests/train/slow_evaluation_main.py MARKER [dnl_jax.cli.train flags]`: the training
command, whose evaluation before training first writes the file MARKER and then sleeps for up to
five minutes before it evaluates. A signal sent once MARKER exists therefore always arrives while
the process is busy (the real evaluation is over in well under a second on the tiny config, too
short a window to send two Ctrl-Cs into without a race)."""

import sys
import time

from dnl_jax.train import trainer

MARKER = sys.argv.pop(1)
_evaluate = trainer.evaluate


def _slow_evaluate(run, state, step, **kwargs):
    if step == 0:
        with open(MARKER, "w") as file:
            file.write("evaluating")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # a signal handler that returns resumes the sleep
            time.sleep(0.1)
    return _evaluate(run, state, step, **kwargs)


trainer.evaluate = _slow_evaluate

if __name__ == "__main__":
    from dnl_jax.cli import train as main

    sys.argv[0] = main.__file__
    main.run()
