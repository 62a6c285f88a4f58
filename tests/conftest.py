"""Suite-wide set-up: every test process sees 4 fake CPU devices (for sharding/pmap tests).

This must run before JAX initialises its backend, hence here at import time. Tests that need a
different device count or several processes start their own subprocesses.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
