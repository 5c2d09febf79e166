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

# nghttpd (Debian's nghttp2-server) is the HTTP/2 interop peer of the client tests; make bench
# also needs h2load (nghttp2-client) and sets these two for itself.
NGHTTP2_TOOLS = nghttpd
NGHTTP2_MISSING = its interop tests will be skipped
system-deps:
	@for tool in $(NGHTTP2_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing=1; done; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq nghttp2-server nghttp2-client >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nghttp2-server nghttp2-client >/dev/null 2>&1; } || \
	    echo "warning: could not install nghttp2-server, nghttp2-client; $(NGHTTP2_MISSING)"; \
	  else echo "warning: $(NGHTTP2_TOOLS) not found (apt-get install nghttp2-server nghttp2-client); $(NGHTTP2_MISSING)"; fi; }

test: lint system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The benchmark harness (benchmarks/, not part of `make test`): h2load, pushgres's HTTP/2 pool,
# aioapns and the daemon against one nghttpd sink; prints a table and writes
# benchmarks/results/bench-*.json. Options: make bench BENCH_ARGS="--quick" (python -m benchmarks -h).
bench: NGHTTP2_TOOLS = nghttpd h2load
bench: NGHTTP2_MISSING = make bench reports the steps that need them as failed
bench: $(BENCH_STAMP) system-deps
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pushgres .pytest_cache .mypy_cache .ruff_cache
