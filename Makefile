# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv (if needed) and run the demo on the data shipped in the package
#   make test   create .venv (if needed) and run the whole test suite (what CI runs)
# torch is pinned to the CPU wheel these machines carry (constraints.txt); on a GPU machine install
# xkmcast with pip as in the README instead.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xkmcast-installed
PYTEST_ARGS ?=

.PHONY: demo test install clean-venv bench docs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,reference,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xkmcast demo --outdir demo-output

test: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
