# goalhorn's developer and CI entry points (GNU make). `make help` lists the targets.
#
# Quick start on a fresh Debian/Ubuntu machine with Python 3.11+:  make demo   then   make test

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
# `make test` runs its steps in order and stops at the first failure, even under -j.
.NOTPARALLEL:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check
PYTEST_ARGS ?=
BENCH_ARGS ?=
DEMO_ARGS ?=
# Only the directories that exist: bench/ and tools/ may not yet.
LINT_DIRS := $(wildcard goalhorn tests bench tools chaos)
TYPE_DIRS := $(wildcard goalhorn tests)

.PHONY: help install demo services lint typecheck pytest test bench chaos lock clean distclean

help: ## list the targets
	@echo "usage: make TARGET   (PYTHON=$(PYTHON), PYTEST_ARGS='$(PYTEST_ARGS)')"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  \1\t/' | expand -t 14

install: $(STAMP) ## create .venv and install goalhorn with the dev tools, at the versions in constraints.txt

# Rebuilt only when pyproject.toml or constraints.txt change, so re-runs cost nothing.
$(STAMP): pyproject.toml constraints.txt
	@if ! command -v $(PYTHON) >/dev/null 2>&1; then \
	  echo "error: '$(PYTHON)' not found; goalhorn needs Python 3.11 or newer (make PYTHON=/path/to/python3.11 ...)" >&2; \
	  exit 1; \
	fi
	@if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
	  echo "error: goalhorn needs Python 3.11 or newer, but '$(PYTHON)' is $$($(PYTHON) -V 2>&1);" \
	       "install one and run: make PYTHON=python3.11 ..." >&2; \
	  exit 1; \
	fi
	@if [ ! -x $(BIN)/python ]; then \
	  echo "$(PYTHON) -m venv $(VENV)"; \
	  if ! $(PYTHON) -m venv $(VENV); then \
	    rm -rf $(VENV); \
	    echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install the venv module first:" \
	         "sudo apt-get install python3-venv  (or python3.11-venv)" >&2; \
	    exit 1; \
	  fi; \
	fi
	@if ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo "error: $(VENV) was made by a Python older than 3.11, or its interpreter is gone;" \
	       "run 'make distclean' and try again" >&2; \
	  exit 1; \
	fi
	$(PIP) install --progress-bar off --upgrade pip
	$(PIP) install --progress-bar off -c constraints.txt -e '.[dev]'
	@unpinned=$$($(PIP) freeze --exclude-editable | grep -viE '^goalhorn([ =@]|$$)' \
	  | grep -vxFf <(grep -v '^#' constraints.txt) || true); \
	if [ -n "$$unpinned" ]; then \
	  echo "warning: installed but not pinned in constraints.txt (run 'make lock'):" $$unpinned >&2; \
	fi
	@touch $@

demo: $(STAMP) ## run the self-contained demo (needs no services)
	$(BIN)/goalhorn demo $(DEMO_ARGS)

services: ## make sure Redis and RabbitMQ answer on 127.0.0.1 (starts or installs them)
	PYTHON=$(PYTHON) bash scripts/ensure-services.sh

# Both checks always run, so one pass shows everything to fix; either one failing fails the target.
lint: $(STAMP) ## ruff check, ruff format --check, and the import layers (lint-imports)
	@status=0; \
	echo "$(BIN)/ruff check --no-fix $(LINT_DIRS)"; \
	$(BIN)/ruff check --no-fix $(LINT_DIRS) || status=1; \
	echo "$(BIN)/ruff format --check $(LINT_DIRS)"; \
	$(BIN)/ruff format --check $(LINT_DIRS) || status=1; \
	echo "$(BIN)/lint-imports"; \
	$(BIN)/lint-imports --no-cache || status=1; \
	exit $$status

typecheck: $(STAMP) ## mypy (strict for goalhorn, relaxed for tests)
	$(BIN)/mypy $(TYPE_DIRS)

pytest: $(STAMP) ## run the tests; PYTEST_ARGS='-k x -x' passes options
	$(BIN)/pytest $(PYTEST_ARGS)

# Prerequisites run left to right (.NOTPARALLEL); any non-zero exit, pytest's 5 for
# "no tests collected" included, stops the build.
test: install services lint typecheck pytest ## install, services, lint, typecheck, pytest; stops at the first failure

# Writes bench/RESULTS.md, each bench in a process of its own; prints its plan first. BENCH_ARGS='--quick'
# (under 3 minutes, figures that mean little) or BENCH_ARGS='e2e' (one bench).
bench: $(STAMP) services ## run the benchmarks (bench/) and write bench/RESULTS.md; BENCH_ARGS='--quick'
	@if [ -f bench/__main__.py ]; then \
	  $(PIP) install --progress-bar off -q -c constraints.txt -e '.[dev,bench]'; \
	  echo "$(BIN)/python -m bench $(BENCH_ARGS)"; \
	  $(BIN)/python -m bench $(BENCH_ARGS); \
	else \
	  echo "no benchmarks yet (bench/__main__.py does not exist)"; \
	fi

# Its own RabbitMQ node and Redis servers on free ports: never the services `make test` uses.
chaos: $(STAMP) ## the chaos suite: faults under load, a row per scenario (CHAOS_QUICK=1: the quick set, < 3 min)
	$(BIN)/python -m chaos

# The stamp is touched last: the venv now matches constraints.txt by construction.
lock: $(STAMP) ## rewrite constraints.txt from what .venv has installed
	@{ \
	  echo "# Exact versions goalhorn is tested with; 'make install' installs with -c constraints.txt."; \
	  echo "# Generated by 'make lock' (pip freeze of .venv, less goalhorn itself) with Python $$($(BIN)/python -c 'import platform; print(platform.python_version())') on $$(uname -sm)."; \
	  echo "# After changing dependencies in pyproject.toml: make install && make lock."; \
	  echo "# To move to newer releases: $(BIN)/pip install -U -e '.[dev]' && make lock."; \
	  $(PIP) freeze --exclude-editable | grep -viE '^(goalhorn([ =@]|$$)|-e )'; \
	} > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	@if [ -e $(STAMP) ]; then touch $(STAMP); fi

clean: ## remove caches and build output (keeps .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info constraints.txt.tmp
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean ## also remove .venv
	rm -rf $(VENV)
