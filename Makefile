# BERT4Rec pipeline. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
B4R := $(BIN)/bert4rec

.DEFAULT_GOAL := help
.PHONY: help install check raw tfrecord bench-data

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-14s\033[0m %s\n", $$1, $$2}'

install: ## create .venv with the pinned dependencies (requirements.lock) and the package
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	@echo "installed: $$($(BIN)/python -c 'import tensorflow as tf, keras, mlflow, dvc; print("tensorflow", tf.__version__, "keras", keras.__version__, "mlflow", mlflow.__version__)' 2>/dev/null)"

check: ## run the test suite (the test *stage* is `make test`)
	$(BIN)/python -m pytest -q

raw: ## raw stage: input file -> per-user sequences
	$(B4R) raw

tfrecord: ## tfrecord stage: sequences -> vocabulary + sharded TFRecords
	$(B4R) tfrecord

bench-data: ## time raw+tfrecord on ML-1M and on a 20M-event synthetic log (writes bench/data.json)
	$(B4R) bench-data
