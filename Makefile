# One-command set-up and checks. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# One venv, two levels: the runtime stamp (what `make demo` needs: the package and its runtime
# dependencies, no torch, no test/docs/lint tools) and the full stamp on top of it (everything
# `make test` needs). `make demo` after `make test` reuses the full venv; `make test` after
# `make demo` adds the extras to the same venv.
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install install-runtime test pytest lint docs package demo clean

install: $(STAMP)
install-runtime: $(RUNTIME_STAMP)

# Re-install whenever the project's dependency list changes. The runtime level: the package
# (editable) and its [project] dependencies only.
$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(RUNTIME_STAMP)

# The full level adds the test, torch, docs and lint extras. The OpenMMLab wheels whose model
# files the parity tests run go in without their dependencies (see requirements-openmmlab.txt).
$(STAMP): $(RUNTIME_STAMP) pyproject.toml requirements-openmmlab.txt
	$(PY) -m pip install --quiet -e ".[test,torch,docs,lint]"
	$(PY) -m pip install --quiet --no-deps -r requirements-openmmlab.txt
	touch $(STAMP)

# Everything CI checks: lint and types, the test suite, the docs with executed tutorials, the package.
test: lint tpu-aot pytest docs package

pytest: install
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

# Ahead-of-time TPU compilation on this CPU host (experiments/benchmarks/tpu_aot.py and the smoke
# test tests/core/test_tpu_aot.py): jax[tpu] at the main venv's exact JAX version (it brings the
# matching libtpu) plus the project, in a venv of its own, so libtpu never enters $(VENV).
.PHONY: tpu-aot
TPU_VENV ?= build/tpu-venv
tpu-aot: $(TPU_VENV)/.installed
$(TPU_VENV)/.installed: pyproject.toml | $(STAMP)
	$(PYTHON) -m venv $(TPU_VENV)
	$(TPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TPU_VENV)/bin/python -m pip install --quiet \
	  "jax[tpu]==$$($(PY) -c 'import jax; print(jax.__version__)')" -e .
	touch $@

# Ahead-of-time compilation for NVIDIA H100s on this GPU-less host (experiments/benchmarks/
# cuda_aot.py): JAX's CUDA 12 plugin at the main venv's exact JAX version, plus nvcc's wheel for
# ptxas and libdevice (the PTX → SASS step and the math library), no CUDA runtime, cuDNN or driver
# (the [with-cuda] extra). Its own venv, like tpu-aot; not part of `make test`.
.PHONY: cuda-aot
CUDA_VENV ?= build/cuda-venv
cuda-aot: $(CUDA_VENV)/.installed
$(CUDA_VENV)/.installed: pyproject.toml | $(STAMP)
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install --quiet --upgrade pip
	version=$$($(PY) -c 'import jax; print(jax.__version__)') && \
	$(CUDA_VENV)/bin/python -m pip install --quiet "jax==$$version" "jaxlib==$$version" \
	  "jax-cuda12-plugin==$$version" "jax-cuda12-pjrt==$$version" \
	  "nvidia-cuda-nvcc-cu12>=12.6.85,<13" -e .
	touch $@

# ruff (lint + format, configured in pyproject.toml) and mypy: the public core with zero errors,
# the rest against a recorded baseline that may only shrink (tools/check_types.py).
lint: install
	$(VENV)/bin/ruff check dnl_jax experiments tests docs/conf.py tools
	$(VENV)/bin/ruff format --check dnl_jax experiments tests docs/conf.py tools
	$(PY) tools/check_types.py

# The documentation site into docs/_build/html; every tutorial is executed, warnings are errors.
docs: install
	rm -rf docs/_build docs/jupyter_execute
	PYTHONPATH=$(CURDIR) $(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

# A wheel and an sdist in dist/, checked by twine, installed into a fresh venv and imported.
package: install
	rm -rf dist build/package-venv
	$(PY) -m build --outdir dist . > /dev/null
	$(VENV)/bin/twine check --strict dist/*
	$(PY) tools/check_wheel.py dist
	$(PYTHON) -m venv build/package-venv
	build/package-venv/bin/pip install --quiet dist/*.whl
	cd build && package-venv/bin/python -c "import dnl_jax, dnl_jax.recipes; print('package: dnl_jax', dnl_jax.__version__, 'installs and imports')"

# Train + evaluate the tiny DNL model on the embedded synthetic scenes (CPU; timings in
# experiments/results/demo_fresh_clone.md).
# Needs the runtime install only (no torch, no test tools).
# Each run gets a fresh directory runs/demo-<UTC date-time> (earlier runs are kept) and
# runs/demo-latest points to it. `make demo DEMO_DIR=DIR` resumes DIR if it holds checkpoints
# (e.g. DEMO_DIR=runs/demo-latest), else trains afresh in it. Nothing is deleted.
DEMO_DIR ?=
demo: install-runtime
	@dir="$(DEMO_DIR)"; \
	if [ -z "$$dir" ]; then \
	  dir="runs/demo-$$(date -u +%Y%m%d-%H%M%S)"; while [ -e "$$dir" ]; do sleep 1; \
	    dir="runs/demo-$$(date -u +%Y%m%d-%H%M%S)"; done; \
	  mkdir -p "$$dir" && ln -sfn "$$(basename "$$dir")" runs/demo-latest; \
	  echo "make demo: fresh run in $$dir (runs/demo-latest points to it; earlier runs are kept)"; \
	elif [ -d "$$dir/checkpoints" ]; then \
	  echo "make demo: resuming $$dir from its latest checkpoint"; \
	else \
	  echo "make demo: fresh run in $$dir"; \
	fi; \
	$(PY) -m dnl_jax.cli.train --config experiments/configs/synthetic_dnl_tiny.py --workdir "$$dir"

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info docs/_build docs/jupyter_execute
