# One entry point for people and CI. `make dev` installs and starts the sidecar; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := clients/node
NODE_STAMP := $(NODE_DIR)/dist/.built
# The redaction modules compiled with mypyc (ADR 0027); skipped with a note where no C compiler is found.
NATIVE_SOURCES := $(addprefix gateway/redaction/,names.py detectors.py redactor.py native.py)
NATIVE_STAMP := gateway/redaction/_native/SOURCES

.PHONY: install dev test lint gen gen-check bench bench-scale bench-peers clean system-deps

install: $(STAMP) $(NODE_STAMP) $(NATIVE_STAMP)

# A cold install is quiet pip for about a minute: one line before each step says what is happening.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	@echo "make: creating $(VENV) (a Python virtualenv, once)"
	@$(PYTHON) -m venv $(VENV)
	@echo "make: upgrading pip in $(VENV)"
	@$(BIN)/pip install --quiet --upgrade pip
	@echo "make: installing agentaudit and its dependencies into $(VENV) (about a minute on a cold cache)"
	@$(BIN)/pip install --quiet -e clients/python -e '.[dev]'
	@touch $(STAMP)
	@echo "make: installed; $(BIN)/agentaudit is ready"

# Compiled after the install (mypyc comes with the dev extra's mypy); the package checks the stamp at import, so
# a build older than its sources is never loaded even when make is not run. No compiler: a note, no stamp, and
# this rule runs again next time (it takes a second to say so).
$(NATIVE_STAMP): $(NATIVE_SOURCES) scripts/build_native.py | $(STAMP)
	@echo "make: compiling the redaction modules with mypyc (scripts/build_native.py, about 10 s)"
	@$(BIN)/python scripts/build_native.py

# The Node client (clients/node): pinned dependencies, compiled once; the cross-client test runs its example.
$(NODE_STAMP): $(NODE_DIR)/package-lock.json $(NODE_DIR)/tsconfig.json $(wildcard $(NODE_DIR)/src/*.ts $(NODE_DIR)/src/gen/*/*/*.ts $(NODE_DIR)/examples/*.ts $(NODE_DIR)/test/*.ts)
	@echo "make: installing and compiling the Node client in $(NODE_DIR) (npm ci, then tsc)"
	@cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build
	@touch $@

# Tools the tests call that are not Python packages (promtool, tini, Go); installed with apt when run as root.
system-deps:
	scripts/system_deps.sh

dev: $(STAMP) $(NATIVE_STAMP)
	@echo "make: starting the sidecar: $(BIN)/agentaudit dev (Ctrl-C stops it)"
	@$(BIN)/agentaudit dev

test: install system-deps
	$(BIN)/pytest -q
	cd $(NODE_DIR) && AGENTAUDIT_BIN=$(abspath $(BIN))/agentaudit npm test --silent
	AGENTAUDIT_BIN=$(abspath $(BIN))/agentaudit BUF=$(abspath $(BIN))/buf clients/go/ci.sh

lint: install
	$(BIN)/ruff check gateway clients/python/src/agentaudit_client tests bench examples scripts
	$(BIN)/ruff format --check gateway clients/python/src/agentaudit_client tests bench examples scripts
	$(BIN)/mypy gateway clients/python/src/agentaudit_client
	$(BIN)/lint-imports --no-cache
	cd proto && ../$(BIN)/buf lint
	cd $(NODE_DIR) && npm run --silent lint

# Python and Node stubs; the Go stubs need Debian's protoc-gen-go(-grpc): `cd clients/go && buf generate`
# (clients/go/ci.sh, run by `make test`, fails when they are stale).
gen: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python scripts/gen_proto.py
	cd $(NODE_DIR) && BUF=$(abspath $(BIN))/buf npm run --silent gen

# Fails when the committed generated code differs from what `make gen` produces.
gen-check: gen
	git diff --exit-code --stat -- clients/python/src/agentaudit
	@test -z "$$(git status --porcelain -- clients/python/src/agentaudit)" || (echo "untracked generated files"; exit 1)
	cd $(NODE_DIR) && BUF=$(abspath $(BIN))/buf npm run --silent gen:check

bench: install
	$(BIN)/python -m bench.run

bench-scale: install
	$(BIN)/python -m bench.scale

# agentaudit beside Tracekit (tracekit-ai, installed by the bench into .bench-venvs/tracekit, never a dependency).
bench-peers: install
	$(BIN)/python -m bench.peers

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache gateway/redaction/_native
