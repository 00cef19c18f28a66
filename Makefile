# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo serve test lint protos bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo,test]'
	touch $@ $(VENV)/.demo-deps

demo: $(VENV)/.demo-deps
	$(BIN)/remixer demo

serve: $(VENV)/.demo-deps
	$(BIN)/remixer serve

test: $(VENV)/.test-deps
	./tests/system-deps.sh
	$(MAKE) --no-print-directory lint
	@# pytest exits 5 when it collected no test: say so instead of failing on it.
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected"; [ $$rc -eq 5 ]; }

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

protos: $(VENV)/.test-deps
	$(BIN)/python protos/regenerate.py

bench: $(VENV)/.test-deps
	@# bench/check.py drives the servers with h2load (Debian nghttp2-client) when it is installed.
	@command -v h2load >/dev/null || { sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq nghttp2-client >/dev/null || true; }
	$(BIN)/python bench/check.py
	$(BIN)/python bench/als.py
	$(BIN)/python bench/controller.py
