# Everything starts from a fresh clone: the first target run builds .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch build to install; override e.g. `make test TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint soak install clean gpu-pack gpu-check gpu-study

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,deploy,dense,hf,hfds]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/t2t-vit demo

test: install lint
	$(PY) -m pytest -q

# ruff's lint and format check (the settings are in pyproject.toml); `ruff format` and `ruff check --fix` repair most.
lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# Slow, not part of `test`: 2 gloo processes under torchrun, interrupted 20 times, end as the uninterrupted run;
# then two torchrun agents (two nodes on this machine), the second killed with its worker and started again, twice.
soak: install
	$(PY) -m tests.soak
	$(PY) -m tests.soak_nodes

# A lent GPU machine has its own python3 with torch and timm and no .venv; `make gpu-pack` (here) puts what its
# targets need into .gpu/ (ignored; carried): Fashion-MNIST and the commit. benchmarks/README.md has the device call.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_OUT ?= $(if $(OUT),$(OUT),benchmarks/results)
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist

gpu-pack:
	@test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || { echo "no Fashion-MNIST in $(FASHION_MNIST): apt-get install -y dataset-fashion-mnist, or FASHION_MNIST=DIR"; exit 2; }
	mkdir -p .gpu/fashion-mnist
	cp $(FASHION_MNIST)/*-ubyte.gz .gpu/fashion-mnist/
	git rev-parse --short HEAD > .gpu/COMMIT

# <= 7 minutes on one H200: the CUDA tests, throughput against the authors' code and DeiT-S, the real loop on CUDA.
gpu-check:
	PYTHONPATH=src $(GPU_PY) benchmarks/gpu_check.py --out $(GPU_OUT)

# <= 9 minutes on one H200: t2t-vit reproduce all on the full Fashion-MNIST, 5 seeds, several runs at once.
gpu-study:
	PYTHONPATH=src $(GPU_PY) benchmarks/gpu_study.py --out $(GPU_OUT)

clean:
	rm -rf $(VENV) runs build src/*.egg-info
