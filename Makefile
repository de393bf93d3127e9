# The two commands: `make run` and `make test`. Each installs first, so each works alone on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint test-service test-contract test-fast bench bench-quick lock check-deploy test-deploy compose-up compose-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test,bench,deploy]'
	@touch $(STAMP)

run: install
	$(BIN)/promptgen up $(ARGS)

# Everything: the static checks, then every tier (the server-free one, tests/service, included),
# in TEST_WORKERS processes (pytest-xdist), one test file per process at a time; then, in one
# process, the tests marked serial (run whether or not the others passed). Most tests wait on
# servers more than they compute, so more processes than cores pays. With NATS_URL set the
# tests share one NATS server, where each test starts from an emptied stream: one process (and
# only with TESTS_ERASE_NATS=1 as well: tests/conftest.py refuses to empty a deployment's log).
# A test process that dies (tests/timeouts.py ends one whose test hung) ends the run, with the
# rest of its tests: replacing it can leave pytest-xdist's loadfile scheduling waiting for ever.
TEST_WORKERS ?= $(if $(NATS_URL),1,4)
test: install lint
	@status=0; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --max-worker-restart 0 -m "not serial" || status=$$?; \
	$(BIN)/python -m pytest -m serial || status=$$?; \
	exit $$status

# ruff over the whole tree; mypy strict on the contracts and the pure cores (pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The services on the in-memory event log and read models: no server, seconds.
test-service: install
	$(BIN)/python -m pytest -m service tests/service

# The contract suite: each adapter against real servers and its in-memory double.
test-contract: install
	$(BIN)/python -m pytest -m contract tests/contract

# The tiers that start no process of their own: seconds to a few minutes.
test-fast: install
	$(BIN)/python -m pytest -m "unit or contract or service or integration"

bench: install
	$(BIN)/python -m bench.run

bench-quick: install
	$(BIN)/python -m bench.run --quick --out $(or $(BENCH_OUT),/tmp/promptgen-bench-quick)

# The container image's pinned runtime dependencies and build backend (CPython 3.11 on Linux), with hashes.
lock: install
	$(BIN)/uv pip compile pyproject.toml deploy/build-backend.in --quiet --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --generate-hashes \
	  --custom-compile-command "make lock" --output-file requirements.lock

# deploy/ checked without containers: compose schema, Kubernetes schemas (strict), hadolint.
check-deploy: install
	$(BIN)/python -m pytest tests/deploy/test_static.py

# deploy/compose.yaml built and run here with podman, then broken on purpose mid-job.
test-deploy: install
	PROMPTGEN_DEPLOY_TEST=1 $(BIN)/python -m pytest -s tests/deploy/test_compose_stack.py

# deploy/compose.yaml on this machine (local stand-in images, the test LLM), left running.
compose-up: install
	$(BIN)/python -m tests.deploy.stack up

compose-down: install
	$(BIN)/python -m tests.deploy.stack down

clean:
	rm -rf $(VENV) .pytest_cache .promptgen
