"""`python -m dnl_jax.export`: see dnl_jax/cli/export.py."""

import sys

from dnl_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
