# One-command setup, demo, tests and benchmarks. Every target is idempotent.
#   make demo   set up, fetch the sample corpus, run the whole pipeline on it
#   make test   set up, start the local Slurm cluster when possible, run the tests
# A GPU user overrides TORCH_SPEC (e.g. TORCH_SPEC='torch==2.13.0' from the CUDA index).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
DATA_RAW ?= data/raw
PYTEST_ARGS ?=
DEMO_RUN ?= runs/tiny-demo
# Tiny-model training on 2 CPU ranks for two and a half minutes of steps: the time budget fits the schedule to what
# the CPU does (precision=auto: fp32 without fast bf16, bf16 with AMX), so any 2-core machine beats the
# unigram baseline in the same time.
DEMO_TRAIN ?= model=tiny mixture=demo train.time_budget_s=150 eval.every=50 eval.sample_every=100 checkpoint.every=100
STAMP := $(VENV)/.installed
PREBUILT := $(VENV)/.prebuilt

export DS_ACCELERATOR ?= cpu
export WANDB_MODE ?= offline
# DeepSpeed JIT-builds a comm op on first use; one cache per venv, so two checkouts do not rebuild each other's.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch-extensions

.PHONY: setup prebuild lock data cluster demo curate-demo test bench gpu-check lint

setup: $(STAMP)

# Torch first, with pip, from TORCH_SPEC and pip's own configuration (where a site points at its CPU or CUDA
# build), so that a CPU box never resolves a multi-GB CUDA build; then uv installs the pinned rest
# (constraints.txt) in a fraction of pip's time (INSTALL='$(BIN)/python -m pip install' uses pip for it too).
INSTALL ?= $(BIN)/uv pip install --python $(BIN)/python
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt uv "$(TORCH_SPEC)"
	$(INSTALL) -q -c constraints.txt -e ".[dev,eval]"
	touch $(STAMP)

# DeepSpeed's CPU collective op and the compiled CPU kernels, built once per environment rather than in
# a first training step (train/prebuild.py): the kernels at the demo run's shapes and threads per rank
# (2 ranks); another run builds its own with `python -m train.prebuild --ranks-per-node N <its overrides>`.
prebuild: $(PREBUILT)
$(PREBUILT): $(STAMP)
	$(BIN)/python -m train.prebuild --ranks-per-node 2 $(DEMO_TRAIN)
	touch $(PREBUILT)

# Pin the environment a fresh `make setup` resolves today (torch stays with TORCH_SPEC); commit the result.
lock: setup
	{ echo "# Versions make setup installs (pip install -c constraints.txt); regenerate with make lock."; \
	  $(BIN)/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v -i '^torch=='; } > constraints.txt

data: setup
	$(BIN)/python -m curation.sample_data dest=$(DATA_RAW)
	$(BIN)/python -m curation.assets

cluster:
	slurm/local-cluster.sh up

# Curation (filter, dedup, quality, report, tokenizer, token files, mixture plan), then 2-rank
# ZeRO-3 training; a rerun skips finished curation tasks and resumes from the final checkpoint.
# The prebuild runs beside the download and curation, which leave a core idle much of the time. torchrun
# starts the ranks in a fraction of the deepspeed launcher's time; each rank sets its own threads
# (OMP_NUM_THREADS=1 only quiets torchrun's warning).
demo: setup
	@$(MAKE) --no-print-directory -j2 prebuild curate-demo
	OMP_NUM_THREADS=1 $(BIN)/torchrun --nproc-per-node 2 -m train run_dir=$(DEMO_RUN) $(DEMO_TRAIN)
	@echo "================ demo summary"
	@echo "curation report: data/report/curation.md (funnel: data/report/funnel.png)"
	@$(BIN)/python -m train.summary run_dir=$(DEMO_RUN)

curate-demo: data
	$(BIN)/python -m curation.run tokenizer=demo

# The cluster is started when this machine can (root, or Slurm already there); the `slurm` tests
# skip without it, and fail without it under CI=true.
test: setup data prebuild
	@if [ "$$(id -u)" = 0 ] || command -v sinfo >/dev/null; then \
		slurm/local-cluster.sh up || echo "make test: no local cluster; slurm tests will skip (fail under CI=true)"; \
	fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every bench/*.py module, each printing its ratios against a peer. bench/litgpt_race.py builds litgpt's own
# environment (bench/.venv-litgpt, from PyPI) on first use, and prints a skip where it cannot.
bench: setup data prebuild
	@mkdir -p bench/results
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python -m bench.$$(basename $$b .py) || exit 1; done

# On a CUDA machine, in about ten minutes: the `gpu` tests (flash attention, HF parity on the device, 20 bf16
# steps of GPT-2 124M; ZeRO-3 over NCCL with exact resume on 2+ GPUs), then the trainer against a plain
# PyTorch loop (bench/gpu.py). Without a GPU every test skips and the benchmark says so.
gpu-check: setup data
	DS_ACCELERATOR=cuda $(BIN)/python -m pytest -m gpu -v -p no:cacheprovider
	DS_ACCELERATOR=cuda $(BIN)/python -m bench.gpu

lint: setup
	$(BIN)/ruff check .
