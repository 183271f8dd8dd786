# Every target is idempotent; up, dev and test install what is missing first.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup up down dev env status test lint bench example build-SharedLayer chaos

setup:
	@scripts/setup.sh

up: setup
	@$(PY) -m stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m stack down; fi

dev: setup
	@$(PY) -m stack dev

env:
	@$(PY) -m stack env

status:
	@$(PY) -m stack status

test: setup
	@$(PY) -m pytest $(PYTEST_ARGS)

# The chaos soak: >= 1,000 workflows under random faults, on a stack of its own
# (.stack-tests/chaos-*, ports 61421-61425); at most 15 minutes. CHAOS_ARGS="--seed 7" to replay.
chaos: setup
	@$(PY) -m bench.chaos $(CHAOS_ARGS)

lint: setup
	@$(PY) -m ruff check .
	@$(PY) -m mypy shared stack tests bench testkit models/supaflow_models client/supaflow_client
	@for f in functions/*/app.py; do $(PY) -m mypy "$$f" | grep -v "^Success" || true; done

# Benchmarks on their own stack (.stack-bench/, ports 55421-55425), ours interleaved with the
# peers (DBOS, Procrastinate: the `bench` extra, installed here only); ~30 min. BENCH_ARGS=--quick to try.
bench: setup
	@if [ ! -f .venv/.installed-bench ] || [ pyproject.toml -nt .venv/.installed-bench ]; then \
	  echo "setup: installing the benchmark's peers (.[bench])"; \
	  $(PY) -m pip install -q --disable-pip-version-check -e '.[bench]' && touch .venv/.installed-bench; \
	fi
	@$(PY) -m bench.run_all $(BENCH_ARGS)

# SAM builds the shared layer with this target (template.yaml: BuildMethod makefile).
build-SharedLayer:
	mkdir -p "$(ARTIFACTS_DIR)/python"
	cp -r shared "$(ARTIFACTS_DIR)/python/"
	python3 -m pip install --quiet --target "$(ARTIFACTS_DIR)/python" ./models ".[executors]"

# The audio transcription example, end to end on the local stack.
example: up
	@$(PY) -m stack.demo
