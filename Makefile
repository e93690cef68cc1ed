# Two commands for a newcomer: `make run` serves recommendations, `make test` passes the tests.
# Every target installs what it needs (Python packages from uv.lock, Debian packages, Go tools)
# and skips what is already in place.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.9.30
UV := .tools/uv/bin/uv
VENV := .venv/bin
CONFIG ?= infra/config/local.yaml
DATA_DIR ?= ../shared/data/uci_online_retail
BUILD_DIR ?= build
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/.venv/bin:$(PATH)

# Pinned Go tools, built with `go install` into .tools/bin.
HELM_VERSION := v3.16.4
HELM := helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
# Without these, a source-built helm calls itself "v3.16" and assumes Kubernetes 1.20.
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=31 \
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=31
GRPCURL := github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
COMPOSE_SPEC := compose-spec=github.com/compose-spec/compose-go/v2/cmd@v2.16.2
GHZ := github.com/bojand/ghz/cmd/ghz@v0.120.0
# Lints the .proto files and checks them for breaking changes (protos/buf.yaml). The npm
# package ships buf's release binary: building it with `go install` takes minutes.
BUF := buf=@bufbuild/buf@1.75.0
# Debian packages the test suite starts for real.
APT_TEST := nginx redis-server postgresql prometheus prometheus-alertmanager

.PHONY: help setup system tools models run stack test lint format protos bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/pip install --quiet uv==$(UV_VERSION)

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras
	@touch $@

setup: .venv/.synced ## create .venv from uv.lock (Python 3.11)

system: ## install the Debian packages the tests need (when missing)
	infra/scripts/bootstrap.sh apt $(APT_TEST)

tools: ## build the pinned Go tools (helm, grpcurl, ghz, buf, compose-spec) into .tools/bin (when missing)
	GO_LDFLAGS="$(HELM_LDFLAGS)" infra/scripts/bootstrap.sh go $(HELM)
	infra/scripts/bootstrap.sh go $(GRPCURL) $(GHZ) $(COMPOSE_SPEC)
	infra/scripts/bootstrap.sh npm $(BUF)

models: setup ## build canonical tables, indexes and models from ../shared/data into build/
	$(VENV)/recsys-models --data-dir $(DATA_DIR) --out $(BUILD_DIR) $(if $(CI),--no-progress,)

run: models ## serve recommendations on 127.0.0.1:50051 until Ctrl-C
	$(VENV)/python -m infra.local.runner --config $(CONFIG)

stack: models system ## nginx on :50051 over several gateways, Redis, Postgres, Triton, Prometheus
	$(VENV)/python -m infra.local.runner --profile stack --config infra/config/stack.yaml

protos: setup ## regenerate the Python stubs from protos/recsys/v1/*.proto
	$(VENV)/python protos/generate.py

lint: setup ## ruff (lint + format check) and mypy --strict
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy .

format: setup ## apply ruff's fixes and formatting
	$(VENV)/ruff check --fix .
	$(VENV)/ruff format .

test: setup system tools models lint ## lint, then every test (unit and integration)
	$(VENV)/pytest

bench: models system ## load, model and feature benchmarks; reports in benchmarks/results/ (ARGS=--quick)
	infra/scripts/bootstrap.sh go $(GHZ)
	$(VENV)/python -m benchmarks.run_all $(ARGS)

clean: ## remove everything the targets built
	rm -rf .venv .tools $(BUILD_DIR) .run .pytest_cache .mypy_cache .ruff_cache
