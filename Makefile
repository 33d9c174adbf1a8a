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
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-9s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install uv if missing, create .venv, install the locked dependencies.
	@test -x "$(UV)" || python3 -m pip install --quiet --disable-pip-version-check --target .tools uv
	UV_COMPILE_BYTECODE=1 $(UV) sync --locked --python $(PYTHON_VERSION)
	@# Byte-compile our own packages too: with PYTHONDONTWRITEBYTECODE set, nothing else would.
	@$(UV) run --locked python -m compileall -q cme usecases registry pipelines flows

demo: setup ## Three weeks on generated images through the real flows: inbox, retrain, gate, review.
	$(UV) run --locked cme demo

# The backtest replays ../shared/data/ham10000 as weekly arrivals through the weekly-retrain
# flow, twice: the loop (each week warm-started from the champion) and restarting from scratch
# every week at the same compute per week; then both champions' curves side by side. On a CPU
# it trains from scratch at BACKTEST_SIZE px (no ImageNet download): week 1 the from-scratch
# recipe for BACKTEST_FIRST_EPOCHS, each later week BACKTEST_WEEK_EPOCHS in both arms.
BACKTEST_WEEKS ?= 6
BACKTEST_SIZE ?= 64
BACKTEST_FIRST_EPOCHS ?= 32
BACKTEST_WEEK_EPOCHS ?= 6
# The weight average's momentum in week 1: 0.999 suits 32 epochs of the whole copy; fewer
# steps need less (Keras' average has no bias correction and starts from random weights).
BACKTEST_FIRST_EMA ?= 0.999
# Operated at 90% sensitivity, a week-1 model trained on 40% of the lesions has an F1 near
# 0.4 (about 11% of lesions are melanoma): the first-model floor would stop the replay itself.
BACKTEST_FIRST_F1 ?= 0.3
# Every HAM10000 confirmation (histopathology, follow-up, consensus, confocal), as the
# training bench uses: the default policy (histo only) keeps about half, the harder half.
BACKTEST_SOURCES ?= [histo,follow_up,consensus,confocal]
BACKTEST_STAMP := $(shell date +%Y%m%dT%H%M%S)
BACKTEST_OUT ?= .cme/backtest/$(BACKTEST_STAMP)
BACKTEST_TRAIN ?= -S train.weights=none -S train.unfreeze_from=all -S train.image_size=$(BACKTEST_SIZE) \
	-S train.epochs=$(BACKTEST_FIRST_EPOCHS) -S train.patience=$(BACKTEST_FIRST_EPOCHS) \
	-S train.learning_rate=0.0003 -S train.schedule=cosine -S train.warmup_epochs=1 \
	-S train.weight_decay=0.05 -S train.zoom=0.2 -S train.ema_momentum=$(BACKTEST_FIRST_EMA) \
	-S train.gradient_clip_norm=1.0 -S train.diagnosis_weight=0.5 \
	-S evaluate.target_sensitivity=0.9 -S retrain.full_every=0 -S retrain.full_on_drift=false \
	-S gate.first_model_f1=$(BACKTEST_FIRST_F1) -S snapshot.label_sources='$(BACKTEST_SOURCES)'
BACKTEST_RUN = $(UV) run --locked cme backtest --data $(HAM10000) --weeks $(BACKTEST_WEEKS) \
	--first-week-share 0.4 $(BACKTEST_TRAIN)

backtest: setup ## Replay ../shared/data/ham10000 weekly: the loop against restarting; report under .cme/backtest/.
	mkdir -p $(BACKTEST_OUT)
	@# The two arms side by side (outside training each is mostly one thread), a log each.
	$(BACKTEST_RUN) --out $(BACKTEST_OUT)/loop -S train.init=champion \
		--later-weeks-set train.warm_epochs=$(BACKTEST_WEEK_EPOCHS) \
		--later-weeks-set train.ema_momentum=0.99 > $(BACKTEST_OUT)/loop.log 2>&1 & loop=$$!; \
	sleep 30; \
	$(BACKTEST_RUN) --out $(BACKTEST_OUT)/restart -S train.init=base \
		--later-weeks-set train.epochs=$(BACKTEST_WEEK_EPOCHS) \
		--later-weeks-set train.patience=$(BACKTEST_WEEK_EPOCHS) \
		--later-weeks-set train.ema_momentum=0.99 > $(BACKTEST_OUT)/restart.log 2>&1 & restart=$$!; \
	wait $$loop; looped=$$?; wait $$restart; restarted=$$?; \
	grep -h '^week\|^verdict' $(BACKTEST_OUT)/loop.log $(BACKTEST_OUT)/restart.log; \
	test $$looped -eq 0 -a $$restarted -eq 0
	$(UV) run --locked cme backtest-compare loop=$(BACKTEST_OUT)/loop \
		restart=$(BACKTEST_OUT)/restart --out $(BACKTEST_OUT)

# Whole modules to each worker, slowest first (tests/conftest.py): a module's fixtures are
# built once, and the session's trained installation once per worker that needs it.
test: setup ## Run every test (unit, integration against PostgreSQL on 127.0.0.1:5432).
	$(UV) run --locked pytest -n 2 --dist loadscope --no-loadscope-reorder --durations=15 \
		--ignore=tests/e2e $(PYTEST_ARGS)

# One process: the tests share one installation and run in file order (faults last).
e2e: setup ## The production topology as processes: a week of the clinic, faults, load.
	PATH="$(CURDIR)/.venv/bin:$$PATH" $(UV) run --locked pytest tests/e2e --durations=0 \
		$(PYTEST_ARGS)

test-fast: setup ## Unit tests only (the edit loop, under 3 minutes).
	$(UV) run --locked pytest -n 2 -m "not slow" tests/unit $(PYTEST_ARGS)

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
	$(UV) run --locked python bench/backbones.py
	$(UV) run --locked python bench/feature_cache.py --data $(HAM10000)

clean: ## Remove the embedded stores and generated data (.cme/, data/, data.dvc, DVC cache).
	rm -rf .cme data data.dvc .dvc/cache .dvc/tmp

.PHONY: help setup demo backtest test test-fast e2e lint bench clean
