# Everything starts from a fresh clone: the first target run builds .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch build to install; override e.g. `make test TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint soak install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,deploy]'
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

# Slow, not part of `test`: 2 gloo processes under torchrun, interrupted 20 times, end as the uninterrupted run.
soak: install
	$(PY) -m tests.soak

clean:
	rm -rf $(VENV) runs build src/*.egg-info
