# BERT4Rec pipeline. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
B4R := $(BIN)/bert4rec

.DEFAULT_GOAL := help
STAGES := raw tfrecord train_val test inference
F ?=
PORT ?= 5000
WORKERS ?= 1
.PHONY: help install check check-faults browser $(STAGES) project use pipeline ui demo bench-data sweep compare promote

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

install: ## create .venv with the pinned dependencies (requirements.lock) and the package
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -c requirements.lock -e ".[dev]"  # -qq: errors only
	@echo "installed: $$($(BIN)/python -c 'import tensorflow as tf, keras, mlflow, dvc; print("tensorflow", tf.__version__, "keras", keras.__version__, "mlflow", mlflow.__version__)' 2>/dev/null)"

check: | $(B4R) browser ## run the test suite (installs first on a fresh clone; the test *stage* is `make test`)
	$(BIN)/python -m pytest -q

check-faults: | $(B4R) ## the slow fault tests: killed runs, concurrent runs, outages, full disks (mounts a tmpfs: root), secrets (also run by CI)
	$(BIN)/python -m pytest -q -m faults

browser: ## headless Chromium for the MLflow UI test: installed with apt-get when missing (as root), else how to
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Chromium (apt-get) for the MLflow UI test ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "error: the MLflow UI test needs Chromium: run 'sudo apt-get install chromium' (Debian/Ubuntu) or put a chromium on PATH, then make check again" >&2; \
	    exit 2; \
	  fi; }

raw: ## raw stage: input -> per-user sequences; each stage target commits+pushes, opens an MLflow run, dvc repro, commits dvc.lock, dvc push (F=-f forces)
	$(B4R) run $@ $(F)

tfrecord: ## tfrecord stage: sequences -> vocabulary + sharded TFRecords (same wrapping as raw)
	$(B4R) run $@ $(F)

train_val: ## train_val stage: train the model on the active project (same wrapping as raw)
	$(B4R) run $@ $(F)

test: ## test stage: evaluate the model (ndcg/hit/mrr) (same wrapping as raw)
	$(B4R) run $@ $(F)

inference: ## inference stage: top-N items (and user embeddings) per user (same wrapping as raw)
	$(B4R) run $@ $(F)

project: | $(B4R) ## create projects/$(NAME) from DATA=<file> and make it active: make project NAME=x DATA=file
	@test -n "$$NAME" -a -n "$$DATA" || { echo "usage: make project NAME=<name> DATA=<file>" >&2; exit 2; }
	$(B4R) project -- "$$NAME" "$$DATA"

use: ## make another project active (make use NAME=x; without NAME: list projects)
	$(B4R) use $${NAME:+-- "$$NAME"}

pipeline: ## re-render dvc.yaml for the active project from config/pipeline.yaml
	$(B4R) pipeline

sweep: | $(B4R) ## make sweep SWEEP=<name>: one DVC experiment per point of config/sweeps/<name>.yaml, run by DVC's queue (WORKERS=1)
	@test -n "$$SWEEP" || { echo "usage: make sweep SWEEP=<name> [WORKERS=n]; sweep files: config/sweeps/*.yaml" >&2; exit 2; }
	$(B4R) sweep --workers "$(WORKERS)" -- "$$SWEEP"

compare: ## the newest sweep as a table (varied params, valid/test NDCG@10, HR@10, training time) + CSV
	$(B4R) compare

promote: ## apply the newest sweep's best experiment by validation NDCG@10 (or EXP=<name>), register it @champion
	$(B4R) promote $${EXP:+--exp "$$EXP"}

ui: ## MLflow UI for the local store on http://127.0.0.1:$(PORT)
	$(B4R) ui --port "$(PORT)"

demo: | $(B4R) ## MovieLens-1M (GroupLens download + MD5 check, or DATA=<local copy>) through inference
	$(B4R) demo $${DATA:+--data "$$DATA"}

# A fresh clone: `make demo` / `make project` install first.
$(B4R):
	$(MAKE) install

bench-data: ## time raw+tfrecord on ML-1M and on a 20M-event synthetic log (writes bench/data.json)
	$(B4R) bench-data

.PHONY: bench-quality bench-speed bench-inference bench-scale bench-peer
bench-quality: ## ML-1M on the params defaults, masked and causal, 60 min of training each: test NDCG@10/HR@10 + speed (bench/quality.json)
	$(B4R) bench-quality

bench-speed: ## training speed: the last release's configuration vs today's defaults in one run (bench/speed.json)
	$(B4R) bench-speed

bench-inference: ## inference speed: the last release's code vs today's on ML-1M in one run (bench/inference.json)
	$(B4R) bench-inference

bench-scale: ## 668,438 items, 1M and 250k synthetic users through all five stages (bench/scale.json)
	$(B4R) bench-scale

bench-peer: ## RecTools BERT4Rec + SASRec (own venv, CPU torch) beside ours: same split, size, budget (bench/peer.json; after bench-quality)
	$(B4R) bench-peer

.PHONY: bench-finetune
bench-finetune: ## ML-100K: pretrain before 1998, fine-tune on the later period vs from scratch (writes bench/finetune.json)
	$(B4R) bench-finetune
