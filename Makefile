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
RUN_DIR ?=  # empty: runs/$(PROFILE), decided by salad_lite.book.run_folder (the chapters' own rule)

.PHONY: setup test book data chapters html pages clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test: setup
	$(PY) -m pytest -q tests -p no:cacheprovider  # includes nbval over book/ at the smoke profile (tests/test_chapters_smoke.py)

# ---------------------------------------------------------------- the book
# make data                    render the embedded synthetic data (data/embedded or $SALAD_LITE_DATA)
# make chapters                execute every chapter of _toc.yml (papermill) into _build/executed/
# make chapter NB=book/06_eval_nih.ipynb PROFILE=full DATASET=nih DATA_ROOT=/data/nih DEVICE=cuda
# make html                    build _build/html from the executed chapters (execution off, warnings = errors)
# make pages                   open the built pages in headless Chromium: screenshots in _build/page_checks/;
#                              figures, sliders and chapter 5's explorers drawn, no network request made
# Chapter 7 (MURA) reads MURA_ROOT; DATASET / DATA_ROOT steer the other chapters.
MURA_ROOT ?=
NB ?=
BOOK_SCRIPT := $(PY) scripts/build_book.py
CHAPTER_ARGS = --profile '$(PROFILE)' --dataset '$(DATASET)' --data-root '$(DATA_ROOT)' \
	--mura-root '$(MURA_ROOT)' --run-dir '$(RUN_DIR)' --device '$(DEVICE)'

.PHONY: chapter

data: setup
	$(PY) data_scripts/make_embedded.py --cache-profile $(if $(DATA_ROOT),none,$(PROFILE))

chapters: setup
	$(BOOK_SCRIPT) chapters $(CHAPTER_ARGS)

chapter: setup
	@test -n "$(NB)" || { echo "usage: make chapter NB=book/06_eval_nih.ipynb [PROFILE=full DATASET=nih DATA_ROOT=/data/nih DEVICE=cuda]"; exit 2; }
	$(BOOK_SCRIPT) chapters --only $(NB) $(CHAPTER_ARGS)

html: setup
	$(BOOK_SCRIPT) html

pages: setup
	$(PY) scripts/check_pages.py _build/html/book/04_aggregation.html --min-plotly 1 --min-sliders 1 >/dev/null
	$(PY) scripts/check_pages.py _build/html/book/05_scoring.html --min-explorers 2 --window 1280,9000 >/dev/null
	$(PY) scripts/check_pages.py _build/html/book/0[1-8]_*.html --min-images 1 --window 1280,9000 >/dev/null
	@echo "pages OK: screenshots in _build/page_checks/"

book: setup
	$(MAKE) data
	$(MAKE) chapters
	$(MAKE) html

clean:  # the built book and executed chapters; keeps data/ and runs/
	rm -rf _build
