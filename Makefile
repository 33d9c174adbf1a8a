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
	@$(UV) run --locked python -m compileall -q cme usecases registry pipelines flows

demo: setup ## Three weeks on generated images through the real flows: inbox, retrain, gate, review.
	$(UV) run --locked cme demo

# The backtest replays the shared HAM10000 copy as weekly arrivals through the weekly-retrain
# flow. On a CPU it trains from scratch at 64 px (no ImageNet download): drop BACKTEST_TRAIN
# on a GPU worker with internet for the real recipe.
BACKTEST_WEEKS ?= 4
BACKTEST_TRAIN ?= -S train.weights=none -S train.unfreeze_from=all -S train.image_size=64 \
	-S train.epochs=4 -S train.learning_rate=0.001 -S train.schedule=cosine \
	-S train.weight_decay=0.05 -S evaluate.target_sensitivity=0.9
backtest: setup ## Replay ../shared/data/ham10000 as weekly arrivals; report under .cme/backtest/<time>/report.
	$(UV) run --locked cme backtest --data $(HAM10000) --weeks $(BACKTEST_WEEKS) --first-week-share 0.4 \
		--out .cme/backtest/$$(date +%Y%m%dT%H%M%S) $(BACKTEST_TRAIN)

test: setup ## Run every test (unit, integration against PostgreSQL on 127.0.0.1:5432).
	$(UV) run --locked pytest -n 2 --durations=15 $(PYTEST_ARGS)

lint: setup ## ruff (lint + format check) and mypy on the domain packages and the benches.
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked mypy
	$(UV) run --locked mypy bench/*.py

bench: setup ## Benchmarks on the shared HAM10000 copy (prints figures and ratios).
	$(UV) run --locked python bench/label_import.py --data $(HAM10000)
	$(UV) run --locked python bench/dataset_snapshot.py --data $(HAM10000)
	$(UV) run --locked python bench/training.py --data $(HAM10000)
	$(UV) run --locked python bench/gate_simulation.py
	$(UV) run --locked python bench/weekly_retrain.py --demo
	$(UV) run --locked python bench/serving.py

clean: ## Remove the embedded stores and generated data (.cme/, data/, data.dvc, DVC cache).
	rm -rf .cme data data.dvc .dvc/cache .dvc/tmp

.PHONY: help setup demo backtest test lint bench clean
