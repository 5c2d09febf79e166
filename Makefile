# pushgres — the two quickstart commands and the developer targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pushgres demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy --strict src

# nghttpd (Debian's nghttp2-server) is the HTTP/2 interop peer of the client tests.
system-deps:
	@command -v nghttpd >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq nghttp2-server nghttp2-client >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nghttp2-server nghttp2-client >/dev/null 2>&1; } || \
	    echo "warning: could not install nghttp2-server; its interop tests will be skipped"; \
	  else echo "warning: nghttpd not found (apt-get install nghttp2-server); its interop tests will be skipped"; fi; }

test: lint system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pushgres .pytest_cache .mypy_cache .ruff_cache
