# phoenix — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export CARGO_TERM_COLOR ?= never

VENV := .venv
STAMP := $(VENV)/.installed
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
PHOENIX := $(TARGET_DIR)/debug/phoenix

.PHONY: help venv build demo test test-rust check-template lint fmt up down clean

help:
	@echo "make demo    set everything up and play the demo on the local AWS emulator"
	@echo "make test    run every test (unit, emulator end-to-end, Lambda runtime API, template checks)"
	@echo "make up      start the local stack (emulator, table, rules, dispatcher); make down stops it"
	@echo "make lint    cargo fmt --check and clippy -D warnings"

# Python tools (the AWS emulator, cfn-lint, sam) in a venv inside the repo, pinned.
$(STAMP): requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(STAMP)

build:
	cargo build --workspace

demo: venv build
	scripts/demo.sh

# Binaries first: the end-to-end tests run the CLI and the Lambda binaries as processes.
test: venv build
	cargo test --workspace
	scripts/check-template.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

up: venv build
	@scripts/emulator.sh start >/dev/null
	@set -e; export AWS_ENDPOINT_URL="$$(cat .local/endpoint)" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test; \
	$(PHOENIX) local provision; \
	nohup $(PHOENIX) local dispatch --tick 5 >.local/dispatch.log 2>&1 & echo $$! >.local/dispatch.pid; \
	echo "local stack up. In your shell:"; \
	echo "  export AWS_ENDPOINT_URL=$$AWS_ENDPOINT_URL AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test"; \
	echo "  alias phoenix=$(PHOENIX)"

down:
	@if [ -f .local/dispatch.pid ]; then kill "$$(cat .local/dispatch.pid)" 2>/dev/null || true; rm -f .local/dispatch.pid; fi
	@scripts/emulator.sh stop
	@echo "local stack down"

clean: down
	rm -rf .local
