# devito_uq — every target sets itself up: `make demo` and `make test` work on a
# fresh machine with only Python, gcc and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
DOCS_STAMP := $(VENV)/.docs-stamp
# One OpenMP thread was faster than two for these small 2D/1D kernels on the
# 2-core machine (../shared/MEASURED.md); users may override.
export OMP_NUM_THREADS ?= 1
export DEVITO_LANGUAGE ?= C
export DEVITO_LOGGING ?= WARNING

.PHONY: install demo imaging avp-demo calibrate amortize amortize-2d test lint format bench bench-deps docs docs-check clean

install: $(STAMP)

# torch is pinned and installed first, in the same environment, so that no
# dependency can pull a multi-GB CUDA build of another torch version.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]' torch==2.13.0
	touch $@

bench-deps: $(BENCH_STAMP)
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]' torch==2.13.0
	touch $@

# The main job: 2D imaging UQ on Marmousi-II (simulate, then invert; outputs/imaging/),
# after the Sleipner AVP experiment of the seed talk (outputs/demo/).
demo: avp-demo imaging

avp-demo: install
	$(PY) -m devito_uq.cli demo --out outputs/demo

imaging: install
	$(PY) -m devito_uq.cli imaging --out outputs/imaging

# SBC, coverage and TARP of VI and MALA over 100 prior truths (README "Calibration").
# Rerunning continues where it stopped; 2 ranks: $(VENV)/bin/mpiexec -n 2 in front of $(PY).
calibrate: install
	$(PY) -m devito_uq.cli calibrate examples/avp_calibrate.toml --out outputs/calibrate --resume

# Amortized posteriors (README "Amortized posteriors"): simulate the AVP training set,
# train the conditional flow, then study it on the Sleipner survey and shifted ones.
# Rerunning continues where it stopped (dataset shards, training checkpoint).
amortize: install
	$(PY) -m devito_uq.cli amortize all --out outputs/amortize --resume

# The 2D Marmousi-derived linearized case (examples/amortize_marmousi.toml).
amortize-2d: install
	$(PY) -m devito_uq.cli amortize all examples/amortize_marmousi.toml --out outputs/amortize2d --resume

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check devito_uq tests examples benchmarks
	$(VENV)/bin/ruff format --check devito_uq tests examples benchmarks

format: install
	$(VENV)/bin/ruff format devito_uq tests examples benchmarks
	$(VENV)/bin/ruff check --fix devito_uq tests examples benchmarks

bench: bench-deps
	$(PY) benchmarks/bench_acoustic.py
	$(PY) benchmarks/bench_flows.py
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_avp.py
	$(PY) benchmarks/bench_parallel.py
	$(PY) benchmarks/bench_imaging.py
	$(PY) benchmarks/bench_conditional.py
	@if [ -f outputs/amortize/amortized.pt ]; then $(PY) benchmarks/bench_amortized.py; \
	else echo 'bench_amortized: skipped, run make amortize first'; fi

# The documentation site (docs/_build/html): Sphinx, offline, every warning an error
# (docstrings included; docs/conf.py).
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[docs]' torch==2.13.0
	touch $@

docs: $(DOCS_STAMP)
	rm -rf docs/_build docs/_autosummary
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# The site, then every code block of README.md and docs/ executed (tests/test_docs.py).
docs-check: docs
	DEVITO_UQ_DOCS_CHECK=1 $(PY) -m pytest -q tests/test_docs.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache *.egg-info
