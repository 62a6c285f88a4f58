# One-command set-up and checks. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test demo clean

install: $(STAMP)

# Re-install whenever the project's dependency list changes. The OpenMMLab wheels whose model
# files the parity tests run go in without their dependencies (see requirements-openmmlab.txt).
$(STAMP): pyproject.toml requirements-openmmlab.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,torch]"
	$(PY) -m pip install --quiet --no-deps -r requirements-openmmlab.txt
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

# Train + evaluate the tiny DNL model on the embedded synthetic scenes (CPU, a few minutes).
DEMO_DIR ?= runs/demo
demo: install
	rm -rf $(DEMO_DIR)
	$(PY) -m dnl_jax.main --config experiments/configs/synthetic_dnl_tiny.py --workdir $(DEMO_DIR)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
