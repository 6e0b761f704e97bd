# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv (if needed), install the core package only, run the demo on the shipped data
#   make test   also install the test, reference (PhysicsNeMo), docs and grib extras, run the whole suite (CI)
# torch is pinned to the CPU wheel these machines carry (constraints.txt); on a GPU machine install
# xkmcast with pip as in the README instead.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CORE_STAMP := $(VENV)/.xkmcast-core-installed
STAMP := $(VENV)/.xkmcast-installed
#: what `make test` adds to the core package: the suite's own tools, the PhysicsNeMo reference the
#: parity tests compare against, the docs toolchain (the suite builds the site) and GRIB reading
TEST_EXTRAS := test,reference,docs,grib
PYTEST_ARGS ?=

.PHONY: demo test install install-core clean-venv bench docs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(CORE_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(TEST_EXTRAS)]"
	touch $(STAMP)

install-core: $(CORE_STAMP)

install: $(STAMP)

demo: $(CORE_STAMP)
	$(VENV)/bin/xkmcast demo --outdir demo-output

test: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
