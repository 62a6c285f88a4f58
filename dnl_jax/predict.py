"""`python -m dnl_jax.predict`: see dnl_jax/cli/predict.py."""

import sys

from dnl_jax.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
