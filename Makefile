# syncd — two commands on a fresh clone (only Python ≥3.11, pip and make needed):
#   make demo   run the demo (simulated gateway on loopback → local SQLite)
#   make test   lint, type-check and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest clean schema docs wheelhouse

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/syncd demo

lint: $(STAMP)
	$(BIN)/ruff check syncd tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# JSON Schemas and the configuration reference, generated from the model (commit the result)
schema docs: $(STAMP)
	$(BIN)/python tools/gen_docs.py

# every wheel syncd needs, for an offline (政务外网) install:
#   pip install --no-index --find-links wheelhouse syncd
wheelhouse: $(STAMP)
	rm -rf wheelhouse
	$(BIN)/python -m pip wheel --quiet . -w wheelhouse

clean:
	rm -rf $(VENV) syncd-demo .pytest_cache .mypy_cache .ruff_cache build *.egg-info
