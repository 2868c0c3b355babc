# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create or update the same .venv. torch is installed first and pinned: a plain or
# unpinned torch, or a dependency asking for one, would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
AZURITE := autoretrain_tests/azurite
export AUTORETRAIN_HOME ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(AUTORETRAIN_HOME)/dagster

.PHONY: venv demo test test-fast lint format azurite node-agent chromium ui validate bench clean

# -qq keeps pip's warnings and the build backend's editable-install notice out of `make demo`.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --quiet --upgrade pip
	$(BIN)/pip install --quiet --quiet torch==2.13.0
	$(BIN)/pip install --quiet --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/autoretrain loop

# Azurite (the Azure Storage emulator) for the Blob mirror tests, pinned in its package-lock.
azurite:
	@if [ -f $(AZURITE)/package.json ] && [ ! -d $(AZURITE)/node_modules ]; then \
		npm ci --prefix $(AZURITE) --no-audit --no-fund --loglevel=error; fi

# The Node.js reference agent (examples/node-agent), its `openai` package pinned in its
# package-lock: the end-to-end test runs it against the gateway.
node-agent:
	@if command -v npm >/dev/null 2>&1 && [ ! -d examples/node-agent/node_modules ]; then \
		npm ci --prefix examples/node-agent --no-audit --no-fund --loglevel=error; fi

# Debian's Chromium for the browser test of the UI (Playwright drives it; it downloads no
# browser). Installed when missing and we are root (CI, on a fresh machine); otherwise it says how.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
		else \
			echo "chromium not found: the UI browser test needs it (apt-get install chromium)" >&2; \
		fi; \
	fi

# --durations: CI's log names the slowest tests, so a slower machine's overrun can be traced.
# Two workers, handed whole groups in the suite's own order (autoretrain_tests/conftest.py): the
# shared loop on one, the other long loops and the short tests on the other.
# OMP_WAIT_POLICY: the two workers' torch threads must not spin (autoretrain_tests/conftest.py).
XDIST := -n 2 --no-loadscope-reorder
PYTEST := OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/pytest
test: venv azurite node-agent chromium
	$(PYTEST) -q --durations=25 $(XDIST)

test-fast: venv
	$(PYTEST) -q -m "not integration" $(XDIST)

lint: venv
	$(BIN)/ruff check autoretrain autoretrain_tests bench
	$(BIN)/ruff format --check autoretrain autoretrain_tests bench

format: venv
	$(BIN)/ruff format autoretrain autoretrain_tests bench
	$(BIN)/ruff check --fix autoretrain autoretrain_tests bench

# `dg check defs` (what `dagster definitions validate` now points to) reads pyproject's [tool.dg].
validate: venv
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs

# The Dagster UI (`dg dev`, with the daemon) over the same instance `autoretrain loop` records into.
ui: venv
	$(BIN)/autoretrain ui

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
