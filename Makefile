# One entry point for people and CI. `make dev` installs and starts the sidecar; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dev test lint gen gen-check bench bench-scale clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

dev: install
	$(BIN)/agentaudit dev

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check gateway clients/python/src/agentaudit_client tests bench examples scripts
	$(BIN)/ruff format --check gateway clients/python/src/agentaudit_client tests bench examples scripts
	$(BIN)/mypy gateway clients/python/src/agentaudit_client
	cd proto && ../$(BIN)/buf lint

gen: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python scripts/gen_proto.py

# Fails when the committed generated code differs from what `make gen` produces.
gen-check: gen
	git diff --exit-code --stat -- clients/python/src/agentaudit
	@test -z "$$(git status --porcelain -- clients/python/src/agentaudit)" || (echo "untracked generated files"; exit 1)

bench: install
	$(BIN)/python -m bench.run

bench-scale: install
	$(BIN)/python -m bench.scale

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
