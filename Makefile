# cme: continual retraining of a melanoma classifier. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, else a private copy that `make setup` installs under .tools/ with pip.
UV ?= $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
PYTHON_VERSION ?= 3.11
DEMO_DIR ?= .cme/demo
HAM10000 ?= ../shared/data/ham10000
PYTEST_ARGS ?=

help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install uv if missing, create .venv, install the locked dependencies.
	@test -x "$(UV)" || python3 -m pip install --quiet --disable-pip-version-check --target .tools uv
	UV_COMPILE_BYTECODE=1 $(UV) sync --locked --python $(PYTHON_VERSION)
	@# Byte-compile our own packages too: with PYTHONDONTWRITEBYTECODE set, nothing else would.
	@$(UV) run --locked python -m compileall -q cme registry pipelines flows

# The demo trains from scratch at 64 px for a few epochs: no ImageNet download, minutes on
# two CPU cores. Drop these overrides on a GPU worker with internet for the real thing.
DEMO_TRAIN ?= -S train.weights=none -S train.unfreeze_from=all -S train.image_size=64 \
	-S train.epochs=3 -S train.learning_rate=0.001 -S train.batch_size=16

demo: setup ## Generate sample images, register, validate, snapshot, train, evaluate and gate.
	$(UV) run --locked cme sample-data $(DEMO_DIR)/week1 --n 200 --seed 3
	$(UV) run --locked cme labels import $(DEMO_DIR)/week1/metadata.csv --images $(DEMO_DIR)/week1/images --steward demo
	$(UV) run --locked cme labels stats
	$(UV) run --locked cme validate
	$(UV) run --locked cme snapshot --steward demo
	$(UV) run --locked cme train $(DEMO_TRAIN)
	$(UV) run --locked cme evaluate
	$(UV) run --locked cme status
	@echo "MLflow UI on this data: $(UV) run --locked mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.cme/mlflow.db"
	@echo "A challenger that passed the gate waits for a reviewer: set its tag approval=approved (and reviewer=NAME)"
	@echo "in the MLflow UI, then run '$(UV) run cme promote'; or run '$(UV) run cme approve VERSION --reviewer NAME'."

test: setup ## Run every test (unit, integration against PostgreSQL on 127.0.0.1:5432).
	$(UV) run --locked pytest -n 2 $(PYTEST_ARGS)

lint: setup ## ruff (lint + format check) and mypy on the domain packages.
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked mypy

bench: setup ## Benchmarks on the shared HAM10000 copy (prints figures and ratios).
	$(UV) run --locked python bench/label_import.py --data $(HAM10000)
	$(UV) run --locked python bench/dataset_snapshot.py --data $(HAM10000)
	$(UV) run --locked python bench/training.py --data $(HAM10000)
	$(UV) run --locked python bench/gate_simulation.py

clean: ## Remove the embedded stores and generated data (.cme/, data/, data.dvc, DVC cache).
	rm -rf .cme data data.dvc .dvc/cache .dvc/tmp

.PHONY: help setup demo test lint bench clean
