# pushgres — the two quickstart commands and the developer targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

.PHONY: demo test lint bench clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev,bench]'
	touch $(STAMP) $(BENCH_STAMP)

demo: $(STAMP)
	$(BIN)/pushgres demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy --strict src benchmarks

# nghttpd (Debian's nghttp2-server) is the HTTP/2 interop peer of the client tests, and chromium
# (Debian's) renders the dashboard in its page tests; make bench also needs h2load
# (nghttp2-client) and sets these for itself. Installed with apt-get when run as root.
SYSTEM_TOOLS = nghttpd chromium
SYSTEM_PACKAGES = nghttp2-server nghttp2-client chromium
SYSTEM_MISSING = the tests that need them will be skipped
system-deps:
	@for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing=1; done; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null 2>&1; } || \
	    echo "warning: could not install $(SYSTEM_PACKAGES); $(SYSTEM_MISSING)"; \
	  else echo "warning: $(SYSTEM_TOOLS) not all found (apt-get install $(SYSTEM_PACKAGES)); $(SYSTEM_MISSING)"; fi; }

test: lint system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The benchmark harness (benchmarks/, not part of `make test`): h2load, pushgres's HTTP/2 pool,
# aioapns and the daemon against one nghttpd sink; prints a table and writes
# benchmarks/results/bench-*.json. Options: make bench BENCH_ARGS="--quick" (python -m benchmarks -h).
bench: SYSTEM_TOOLS = nghttpd h2load
bench: SYSTEM_PACKAGES = nghttp2-server nghttp2-client
bench: SYSTEM_MISSING = make bench reports the steps that need them as failed
bench: $(BENCH_STAMP) system-deps
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pushgres .pytest_cache .mypy_cache .ruff_cache
