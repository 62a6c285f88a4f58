"""`python tests/train/full_disk_main.py STEP [dnl_jax.main flags]`: the training command, with a
disk that fills up while checkpoint step STEP is written. Orbax's own write of each array of that
step raises ENOSPC from inside its save threads, after the first array of the step reached the
disk, so the library reports it the way it reports a real full disk (its thread exceptions at
ERROR, with tracebacks) and a partial `STEP.orbax-checkpoint-tmp` is left to clean up."""

import errno
import sys

from orbax.checkpoint._src.serialization import serialization

_write = serialization.async_serialize_from_host
FULL_AT = f"/{int(sys.argv.pop(1))}.orbax-checkpoint-tmp/"
_written = []


async def _filling_disk(rslices_on_host, tensorstore_spec, **kwargs):
    if FULL_AT not in str(tensorstore_spec):
        return await _write(rslices_on_host, tensorstore_spec, **kwargs)
    if not _written:  # the first array of the step fits
        _written.append(True)
        return await _write(rslices_on_host, tensorstore_spec, **kwargs)
    raise OSError(errno.ENOSPC, "No space left on device")


serialization.async_serialize_from_host = _filling_disk

if __name__ == "__main__":
    from dnl_jax.cli import train as main

    sys.argv[0] = main.__file__
    main.run()
