# The two commands: `make up` and `make test`. Both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: up test lint typecheck pytest clean native

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# the gateway's hot path compiled with mypyc (docs/native.md): optional, so a failed build leaves
# the pure-Python path, except on CI, where the suite checks the compiled one is in use
native: $(STAMP)
	$(BIN)/python -m tandem.native build || test "$$CI" != true

up: native
	$(BIN)/tandem demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: native
	$(BIN)/pytest -q -p no:cacheprovider tests

test: lint typecheck pytest

clean:
	rm -rf $(VENV) tandem-home src/tandem/_native
