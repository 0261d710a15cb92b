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
DATA_ABS = $(abspath $(DATA))
comma := ,
# Where the local runs may read and write (IMAGE_EMBEDDINGS_ALLOWED_ROOTS): the data folder, and the folder of a
# weights file when WEIGHTS names one.
ALLOWED_ROOTS ?= $(DATA_ABS)$(if $(filter-out random imagenet,$(WEIGHTS)),$(comma)$(abspath $(dir $(WEIGHTS))))
AIRFLOW_HOME ?= $(CURDIR)/airflow_home
# A self-contained local Airflow: SQLite in airflow_home/, this repo's dags/ and plugins/, sample data in DATA.
AIRFLOW_ENV = mkdir -p $(AIRFLOW_HOME) && AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins AIRFLOW__CORE__LOAD_EXAMPLES=False \
	IMAGE_EMBEDDINGS_DATA=$(DATA_ABS) IMAGE_EMBEDDINGS_WEIGHTS=$(WEIGHTS) IMAGE_EMBEDDINGS_ALLOWED_ROOTS=$(ALLOWED_ROOTS) \
	TF_CPP_MIN_LOG_LEVEL=2

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint demo airflow bench lock clean docs screenshots

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-docs.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt $(PIP_QUIET)
	$(PY) -m pip install -q -r requirements-docs.txt $(PIP_QUIET)
	$(PY) -m pip install -q --no-deps -e . $(PIP_QUIET)
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP) ## create .venv/ with the pinned requirements (+ requirements-docs.txt) and this package

test: $(STAMP) ## run every test: unit, Beam TestPipeline, end-to-end jobs, dag.test(), the live scheduler, the installed package (~40 min on 2 cores; prints the 20 slowest)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest --durations=20

test-fast: $(STAMP) ## the fast tier: everything not marked slow (< 3 min; run it while you work)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -m "not slow"

lint: $(STAMP) ## ruff lint (incl. Airflow AIR rules) and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP) ## run the nightly DAG once for date DS on N bundled sample images, all local (SQLite, FnApiRunner)
	$(PY) -m devtools.samples --out $(DATA_ABS)/images/ds=$(DS) --n $(N) --edge_cases
	@$(AIRFLOW_ENV) $(VENV)/bin/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || { tail -20 $(AIRFLOW_HOME)/db-migrate.log; exit 1; }
	@echo "running DAG image_embeddings for ds=$(DS) (log: $(AIRFLOW_HOME)/demo.log) ..."
	@$(AIRFLOW_ENV) $(VENV)/bin/airflow dags test image_embeddings $(DS) -c '{"weights": "$(WEIGHTS)", "input_wait_minutes": 0, "input_ready": "any", "store": "lance"}' \
		> $(AIRFLOW_HOME)/demo.log 2>&1 || { tail -40 $(AIRFLOW_HOME)/demo.log; exit 1; }
	@$(PY) scripts/demo_summary.py $(DATA_ABS)/out $(DS) || { grep -E "ERROR|Failed|failed" $(AIRFLOW_HOME)/demo.log | tail -20; exit 1; }

airflow: $(STAMP) ## start a local Airflow (airflow standalone, UI on http://localhost:8080) with the DAG and sample images for DS
	$(PY) -m devtools.samples --out $(DATA_ABS)/images/ds=$(DS) --n $(N) --edge_cases
	@echo "Open http://localhost:8080, unpause image_embeddings and trigger it with logical date $(DS)."
	@$(AIRFLOW_ENV) AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True PATH=$(CURDIR)/$(VENV)/bin:$$PATH airflow standalone

bench: $(STAMP) ## print the benchmark tables (extraction ~25 min: two engines, N and 4N; two models in one pass vs apart ~5 min; reduce_dim ~10 min; map ~15 min; index ~15 min: 100k and 1M 2048-d vectors; skip_known ~10 min, against a long history ~3 min; morning report ~20 min: 100k and 1M rows against 7-night windows; store ~60 min: Lance vs faiss at 100k and 1M; backfill ~25 min: 5 nights one at a time, side by side, and side by side with the pool capped)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/bench_extract.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/bench_models.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/bench_reduce.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/bench_map.py
	$(PY) scripts/bench_index.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/bench_skip_known.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/bench_known_history.py
	$(PY) scripts/bench_report.py
	$(PY) scripts/bench_report.py --rows 1000000 --distinct_window_nights 1 --no-exact
	$(PY) scripts/bench_store.py
	$(PY) scripts/bench_backfill.py

docs: $(STAMP) ## build the documentation site into site/ (mkdocs build --strict; params, flags, files read from the code)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

screenshots: $(STAMP) ## rerun a demo night in a temporary folder and redraw the docs' screenshots with headless Chromium (~10 min)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/screenshots.py --out docs/screenshots

.PHONY: kfp
WORKER_IMAGE ?= image-embeddings-worker:latest
kfp: $(STAMP) ## compile the Kubeflow pipeline to build/image_embeddings_pipeline.yaml (WORKER_IMAGE=registry/path:tag)
	IMAGE_EMBEDDINGS_WORKER_IMAGE=$(WORKER_IMAGE) $(PY) -m pipelines.image_embeddings_kfp --output build/image_embeddings_pipeline.yaml

lock: ## re-resolve requirements.in into the pinned requirements.txt
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install -q -r requirements.in $(PIP_QUIET)
	{ echo "# Pinned lock of requirements.in for Python 3.11, generated with 'make lock' (pip freeze of a fresh venv)."; \
	  echo "# Install with: pip install -r requirements.txt"; \
	  .lockenv/bin/pip freeze 2>/dev/null; } > requirements.txt
	rm -rf .lockenv

clean: ## remove outputs of demo, bench and the local Airflow home (keeps .venv)
	rm -rf $(DATA) bench_out .pytest_cache $(AIRFLOW_HOME)
