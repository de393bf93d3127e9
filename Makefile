# The two commands: `make run` and `make test`. Each installs first, so each works alone on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-service test-contract test-fast bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test,bench]'
	@touch $(STAMP)

run: install
	$(BIN)/promptgen up

# Everything: the server-free tier (tests/service) is part of it.
test: install
	$(BIN)/python -m pytest

# The services on the in-memory event log and read models: no server, seconds.
test-service: install
	$(BIN)/python -m pytest -m service tests/service

# The contract suite: each adapter against real servers and its in-memory double.
test-contract: install
	$(BIN)/python -m pytest -m contract tests/contract

test-fast: install
	$(BIN)/python -m pytest -m "not e2e and not browser"

bench: install
	$(BIN)/python -m bench.run

bench-quick: install
	$(BIN)/python -m bench.run --quick --out $(or $(BENCH_OUT),/tmp/promptgen-bench-quick)

clean:
	rm -rf $(VENV) .pytest_cache .promptgen
