# Two commands on a fresh clone: `make run` (install + the main job offline on the tiny_world
# preset: the shipped pretrained tiny T5s) and `make test` (install + the test suite).
# Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/tiny_world
CONFIG ?= tiny_world
PYTEST_ARGS ?=

# Offline by construction: the presets ship (tiny_world) or build (tiny) their models and ship their data.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
export LMCOT_TINY_DIR ?= $(CURDIR)/artifacts/tiny-models
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/artifacts/torch-extensions
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: install install-dev tiny-models run seeds test test-fast bench clean

# torch first and pinned (a bare `torch` would pull a multi-GB CUDA build), then the
# package with the exact versions the tests ran on (constraints.txt).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

tiny-models: install
	$(VENV)/bin/lmcot make-tiny-models

# The whole method on $(CONFIG) (`make run CONFIG=tiny` for the random models): rationales -> distill -> refine -> evaluations -> report.
# A rerun skips every finished stage.
run: tiny-models
	$(VENV)/bin/lmcot run --config $(CONFIG) --run-dir $(RUN_DIR)
	@echo "report: $(RUN_DIR)/report.md"

# The method again for each training seed (pipeline.training_seeds, default 0 1 2) on $(RUN_DIR)'s teacher
# rationales; the claims per seed and pooled in $(RUN_DIR)/seeds.md. The config's own seed reuses `make run`.
seeds: tiny-models
	$(VENV)/bin/lmcot seeds --config $(CONFIG) --run-dir $(RUN_DIR)

test: tiny-models
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: tiny-models
	$(PY) -m pytest -m "not ray and not slow" $(PYTEST_ARGS)

clean:
	rm -rf runs artifacts .pytest_cache
