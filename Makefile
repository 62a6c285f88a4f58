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
# Each run gets a fresh directory runs/demo-<UTC date-time> (earlier runs are kept) and
# runs/demo-latest points to it. `make demo DEMO_DIR=DIR` resumes DIR if it holds checkpoints
# (e.g. DEMO_DIR=runs/demo-latest), else trains afresh in it. Nothing is deleted.
DEMO_DIR ?=
demo: install
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
	$(PY) -m dnl_jax.main --config experiments/configs/synthetic_dnl_tiny.py --workdir "$$dir"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
