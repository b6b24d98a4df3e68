# salad_lite: the two commands a newcomer types.
#   make book   set up, render the embedded data, run every chapter (PROFILE=default), build the HTML book
#   make test   set up, run the test suite (pytest + nbval over the chapters at the smoke profile)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
DATASET ?= nih
DATA_ROOT ?=
DEVICE ?= auto
RUN_DIR ?= runs/$(PROFILE)

.PHONY: setup test book data chapters html clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test: setup
	$(PY) -m pytest -q tests
