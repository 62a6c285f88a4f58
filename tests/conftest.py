"""Suite-wide set-up: every test process sees 4 fake CPU devices (for sharding/pmap tests).

This must run before JAX initialises its backend, hence here at import time. Tests that need a
different device count or several processes start their own subprocesses.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)


@pytest.fixture(scope="module")
def tiny():
    """The registered tiny segmentor (5 classes) and its initialised variables."""
    from dnl_jax import models, tasks

    bundle = tasks.get_model("dnl_tiny", num_classes=5)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = models.init_variables(bundle.module, jax.random.key(1), images)
    return bundle, variables


def pytest_terminal_summary(terminalreporter):
    """One line for CI's log with every count, zeros included: what ran and what did not."""
    counts = {
        outcome: len(terminalreporter.stats.get(outcome, []))
        for outcome in ("passed", "failed", "error", "skipped", "deselected", "xfailed", "xpassed")
    }
    terminalreporter.write_line("tests: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
