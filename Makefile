# perceptlab — every target that runs code depends on `setup`, so on a fresh machine each is one command.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PL     := $(VENV)/bin/perceptlab
STAMP  := $(VENV)/.perceptlab-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# No hub access at run time: every model and dataset comes from a local path.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup test test-fast demo smoke tensorboard bench clean help

help:
	@echo "make demo        the whole toy-world study (set-up included), report in runs/demo/report"
	@echo "make test        the test suite (set-up included)"
	@echo "make smoke       a seconds-long end-to-end run on the tiny toy world"
	@echo "make bench       every benchmark in benchmarks/, one JSON line each"
	@echo "make tensorboard serve runs/ on port 6006"

setup: $(STAMP)

# Rebuilt only when the dependency list changes. torch/torchvision are pinned first so that the
# resolver never reaches for another build; pyiqa imports pkg_resources, hence setuptools<81.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools<81" wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir runs --port 6006

clean:
	rm -rf runs/ data/toyworld* .pytest_cache

demo: setup
	$(PL) demo --out runs/demo

smoke: setup
	$(PL) demo --quick --out runs/smoke

bench: setup
	$(PY) benchmarks/run_all.py
