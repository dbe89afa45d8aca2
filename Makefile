# Two commands for a fresh machine: `make run` (the whole pipeline) and `make test` (everything).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins packaging<24, which pytest 9 cannot share: it gets a venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: run test token lint typecheck jstest unit migrate bench clean

# Installs quietly, on stderr, so `TOKEN=$$(make token)` captures only the token.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@echo "installing $(VENV) (first run only)" >&2
	@$(PYTHON) -m venv $(VENV) >&2
	@$(BIN)/python -m pip install --quiet --upgrade pip >&2
	@$(BIN)/python -m pip install --quiet -r requirements-dev.txt >&2
	@$(BIN)/python -m pip install --quiet --no-deps -e . >&2
	@touch $@

$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $@

run: $(STAMP) ## api, worker, dead_letter, sweeper, Pub/Sub emulator, stub model, embedded Postgres
	$(BIN)/genjobs dev

test: lint typecheck jstest $(CHECKOV_STAMP) ## ruff, mypy, the browser client's tests, then every test (checkov included)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser client's tests need Node (>= 20); without it they are skipped, loudly, except in CI.
jstest:
	@if command -v node >/dev/null; then node --test clients/js/genjobs.test.js; \
	elif [ -n "$$CI" ]; then echo "CI: node is required for clients/js tests" >&2; exit 1; \
	else echo "*** SKIPPED clients/js tests: install Node.js >= 20 to run them ***" >&2; fi

token: $(STAMP) ## print an access token for the demo user
	@$(BIN)/genjobs token

migrate: $(STAMP) ## apply migrations to DATABASE_URL (or the embedded Postgres)
	$(BIN)/genjobs migrate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP) ## benchmarks against baselines: prints a table, writes bench/results/latest.json
	$(BIN)/python -m bench $(BENCH_ARGS)

unit: $(STAMP) ## the fast tests only
	$(BIN)/python -m pytest tests/unit -q

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .local .mypy_cache .ruff_cache .pytest_cache
