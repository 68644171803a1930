# syncd — two commands on a fresh clone (only Python ≥3.11, pip and make needed):
#   make demo   run the demo (simulated gateway on loopback → local SQLite)
#   make test   lint, type-check and run the whole test suite
#   make bench N=100000   syncd beside dlt and the raw database ceiling (see bench/README.md)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest clean bench schema docs wheelhouse

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

# the suite waits on databases, subprocesses and loopback HTTP more than it computes: one pytest
# worker per core (pytest-xdist) halves its time on 2 cores; PYTEST_WORKERS=0 runs it in one process
PYTEST_WORKERS ?= auto
pytest: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test: lint typecheck pytest

# JSON Schemas and the configuration reference, generated from the model (commit the result)
schema docs: $(STAMP)
	$(BIN)/python tools/gen_docs.py

# every wheel syncd needs, for an offline (政务外网) install:
#   pip install --no-index --find-links wheelhouse syncd
wheelhouse: $(STAMP)
	rm -rf wheelhouse
	$(BIN)/python -m pip wheel --quiet . -w wheelhouse

# the benchmark's own venv: syncd plus dlt (never a dependency of syncd itself)
BENCH_VENV  ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp
N     ?= 100000
DBS   ?= sqlite,postgresql,mariadb
SIDES ?= syncd,dlt,ceiling
LATENCY_MS ?= 0
TIMEOUT ?= 900
INITIAL_TIMEOUT ?=
REPEAT ?= 1

$(BENCH_STAMP): bench/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r bench/requirements.txt -e .
	touch $(BENCH_STAMP)

# the syncd side runs as deployed: syncd and its runtime dependencies, without dlt's
BENCH_SYNCD_VENV  ?= .venv-bench-syncd
BENCH_SYNCD_STAMP := $(BENCH_SYNCD_VENV)/.installed-stamp

$(BENCH_SYNCD_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_SYNCD_VENV)
	$(BENCH_SYNCD_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_SYNCD_VENV)/bin/python -m pip install --quiet -e .
	touch $(BENCH_SYNCD_STAMP)

bench: $(BENCH_STAMP) $(BENCH_SYNCD_STAMP)
	$(BENCH_VENV)/bin/python bench/harness.py --records $(N) --dbs $(DBS) --sides $(SIDES) --latency-ms $(LATENCY_MS) --timeout $(TIMEOUT) $(if $(INITIAL_TIMEOUT),--initial-timeout $(INITIAL_TIMEOUT)) --repeat $(REPEAT) --syncd-python $(BENCH_SYNCD_VENV)/bin/python $(if $(WRITE),--write-results)

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(BENCH_SYNCD_VENV) bench/out syncd-demo .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# the full reliability proof behind docs/reliability.md: kill -9 trials, upstream and database
# faults, hostile input, security checks on all three databases (about 25 min on 2 cores), plus the
# daemon's SIGTERM and database-outage trials. The long run is separate (opt-in, see docs/reliability.md):
#   SYNCD_LONG_RUN_MINUTES=30 make reliability
#   make reliability TRIALS=20 ROWS=50000 REPORT=reliability.jsonl
.PHONY: reliability
TRIALS ?= 20
ROWS   ?= 50000
REPORT ?= reliability.jsonl
reliability: $(STAMP)
	SYNCD_RELIABILITY=1 SYNCD_REL_TRIALS=$(TRIALS) SYNCD_REL_ROWS=$(ROWS) SYNCD_REL_REPORT=$(REPORT) \
	$(BIN)/python -m pytest -q tests/test_reliability_crash.py tests/test_reliability_upstream.py \
	  tests/test_reliability_database.py tests/test_hostile_records.py tests/test_hostile_config.py \
	  tests/test_hostile_http.py tests/test_security.py tests/test_reliability_daemon.py
