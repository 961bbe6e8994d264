# refedit — `make help` lists the targets. Every target installs first (on a fresh machine) via the stamp.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# extra pip args for torch, e.g. TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124" on GPU nodes
TORCH_INDEX ?=
METHOD ?= sd_inpaint
PRESET ?=
ARGS ?=
CKPT ?=
DATA ?=
JOBS ?= 2
CKPTS ?=
# `make demo` binds here; `=`, not `?=`: a HOST or PORT in the environment (zsh sets HOST) must not move it
HOST = 127.0.0.1
PORT = 7860

PY := $(VENV)/bin/python
comma := ,
empty :=
space := $(empty) $(empty)
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2
export GOMP_SPINCOUNT ?= 10000
# the one W&B switch (read by refedit itself): REFEDIT_WANDB_OFFLINE=false make train logs online
export REFEDIT_WANDB_OFFLINE ?= true
export WANDB_SILENT ?= true
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

preset_arg = $(if $(PRESET),experiment=$(PRESET),)
compare_preset = $(if $(PRESET),$(PRESET),default)

.DEFAULT_GOAL := help
.PHONY: help install test test-full foundations train eval compare demo sweep bench lint format clean

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: METHOD=$(METHOD) PRESET=<smoke|default|...> ARGS='<hydra overrides>' CKPT=<path> DATA=<dir>"
	@echo "             TORCH_SPEC='$(TORCH_SPEC)' TORCH_INDEX='$(TORCH_INDEX)'"
	@echo "             demo: CKPTS='<dir or ckpt files>' HOST=$(HOST) PORT=$(PORT)"

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev,demo]'
	@touch $@

install: $(STAMP) ## create .venv with pinned torch ($$TORCH_SPEC) and refedit (+dev tools, +demo)

test: $(STAMP) ## fast test suite (< 15 min on 2 cores; CI runs this)
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/pytest -q -n $(JOBS) -m "not slow"

test-full: $(STAMP) ## every test, including the slow ones
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/pytest -q -n $(JOBS)

foundations: $(STAMP) ## build (or show) the cached stage 1, the toy SD: make foundations [ARGS='foundations=quick']
	$(PY) -m refedit.foundations $(ARGS)

train: $(STAMP) ## train one method: make train METHOD=mimicbrush PRESET=smoke ARGS='trainer.max_steps=100'
	$(PY) -m refedit.train method=$(METHOD) $(preset_arg) $(ARGS)

eval: $(STAMP) ## evaluate a checkpoint: make eval CKPT=path [DATA=cocoee_dir] [ARGS=...]
	@test -n "$(CKPT)" || (echo "make eval needs CKPT=<checkpoint path>"; exit 2)
	$(PY) -m refedit.eval ckpt=$(CKPT) $(if $(DATA),data_dir=$(DATA),) $(ARGS)

compare: $(STAMP) ## train + benchmark every method on toyworld: make compare [PRESET=smoke|default]
	$(PY) -m refedit.compare preset=$(compare_preset) $(ARGS)

demo: $(STAMP) ## web editor on http://$(HOST):$(PORT): make demo [CKPTS="<dir or ckpts>"] (default: latest compare run)
	$(PY) -m refedit.demo $(if $(CKPTS),ckpts=$(subst $(space),$(comma),$(strip $(CKPTS))),) host=$(HOST) port=$(PORT) $(ARGS)

sweep: $(STAMP) ## Hydra multirun: make sweep METHOD=sd_inpaint ARGS='method.optimizer.lr=1e-4,3e-4' (or ARGS='hparams_search=optuna')
	$(PY) -m refedit.train -m method=$(METHOD) $(preset_arg) $(ARGS)

bench: $(STAMP) ## speed/FLOP benchmarks: prints `name: value` lines
	$(PY) -m refedit.bench $(ARGS)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check src tests experiments

format: $(STAMP) ## ruff format + fix
	$(VENV)/bin/ruff check --fix src tests experiments
	$(VENV)/bin/ruff format src tests experiments

clean: ## remove logs, caches and the venv
	rm -rf logs outputs multirun .pytest_cache .ruff_cache wandb $(VENV)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
