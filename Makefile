# Quickstart targets. Each creates ./.venv on first use and installs what it needs (idempotent).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vlprompt demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 -q

test-fast: $(STAMP)  # the developer loop: everything but the end-to-end runs marked slow
	$(VENV)/bin/python -m pytest -n 2 -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check vlprompt tests bench

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_coop.py
