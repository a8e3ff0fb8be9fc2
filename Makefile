# lit3drft developer commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build installed into a fresh venv. 2.14.1 + torchvision 0.29.1 lie on the CI machines' disk
# (pip takes them offline in ~80 s); torchvision is needed by the real Qwen2.5-VL processor.
# A GPU user keeps their own: `make setup SYSTEM_TORCH=1` reuses the system site-packages' torch.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SYSTEM_TORCH ?= 0
VENV_FLAGS := $(if $(filter 1,$(SYSTEM_TORCH)),--system-site-packages,)
PYTEST_ARGS ?=
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: help setup test test-slow lint format demo bench clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv and install lit3drft with its dev tools (idempotent)

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV_FLAGS) $(VENV)
	@if $(PY) -c "import torch, torchvision" 2>/dev/null; then \
	  echo "keeping torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else $(PY) -m pip install -q $(TORCH_SPEC); fi
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

test: setup  ## run the default test suite (not slow, not gpu; 5-8 min on 2 cores, clean clone 2026-12-02 fifth session: 628 passed, 388 s; .ci/run 9.5 min)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup  ## run the slow tests too
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

lint: setup  ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## ruff autofix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: setup  ## the quickstart on the embedded default: SFT -> GRPO -> test table + boxes drawn (~15 min, 2 cores)
	$(PY) -m lit3drft.fit experiments/quickstart.yaml --resume  # an interrupted demo continues
	$(PY) -m lit3drft.visualize --root data/synth3d-tiny --file tasks/test/detection_4f.jsonl \
	  --predictions runs/quickstart/run/predictions.jsonl --rows 3 --out runs/quickstart/run/test_boxes.png
	@echo "metrics: runs/quickstart/run/metrics.json  predictions: runs/quickstart/run/predictions.jsonl"
	@echo "boxes (green = ground truth, red = predicted): runs/quickstart/run/test_boxes.png"
	@echo "curves: tensorboard --logdir runs/quickstart/run/tb"

bench: setup  ## run the benchmarks (prints ratios against in-run baselines)
	$(PY) benchmarks/bench_rewards.py

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .hypothesis
