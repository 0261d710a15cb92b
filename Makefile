# Image embeddings: Beam jobs + Airflow DAGs. `make help` lists the targets.
SHELL := /bin/bash
# pipefail: filtering pip's noise must not hide its exit status.
.SHELLFLAGS := -eo pipefail -c
PIP_QUIET := 2>&1 | { grep -v "is ignored" || true; }
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DS ?= $(shell date -u +%Y-%m-%d)
DATA ?= data
WEIGHTS ?= random
N ?= 40

.DEFAULT_GOAL := help
.PHONY: help install test lint demo bench lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt $(PIP_QUIET)
	$(PY) -m pip install -q --no-deps -e . $(PIP_QUIET)
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP) ## create .venv/ with the pinned requirements and this package

test: $(STAMP) ## run the test suite (unit, Beam TestPipeline, end-to-end)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest

lint: $(STAMP) ## ruff lint (incl. Airflow AIR rules) and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP) ## embed N bundled sample images for date DS, all local (WEIGHTS=random|imagenet|PATH)
	$(PY) -m beam_jobs.samples --out $(DATA)/images/ds=$(DS) --n $(N) --edge_cases
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m beam_jobs.extract_embeddings \
		--input '$(DATA)/images/ds=$(DS)/*' \
		--output $(DATA)/out/embeddings/ds=$(DS) \
		--weights $(WEIGHTS) --run_id demo__$(DS) --runner FnApiRunner
	@echo; echo "embeddings: $(DATA)/out/embeddings/ds=$(DS)/embeddings-*.parquet"
	@echo "failures:   $(DATA)/out/embeddings/ds=$(DS)/failures-*.jsonl"
	@echo "manifest:   $(DATA)/out/embeddings/ds=$(DS)/manifest.json"

bench: $(STAMP) ## print the benchmark tables (several minutes)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/bench_extract.py

lock: ## re-resolve requirements.in into the pinned requirements.txt
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install -q -r requirements.in $(PIP_QUIET)
	{ echo "# Pinned lock of requirements.in for Python 3.11, generated with 'make lock' (pip freeze of a fresh venv)."; \
	  echo "# Install with: pip install -r requirements.txt"; \
	  .lockenv/bin/pip freeze 2>/dev/null; } > requirements.txt
	rm -rf .lockenv

clean: ## remove outputs of demo and bench (keeps .venv)
	rm -rf $(DATA) bench_out .pytest_cache
