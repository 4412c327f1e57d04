# phoenix — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export CARGO_TERM_COLOR ?= never

VENV := .venv
STAMP := $(VENV)/.installed
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
PHOENIX := $(TARGET_DIR)/debug/phoenix

# The Lambda functions: cross-compiled for arm64 by cargo-lambda, one zip per function in
# $(TARGET_DIR)/lambda/<function>/bootstrap.zip.
FUNCTIONS := phoenix-image phoenix-health phoenix-scale phoenix-reconcile
LAMBDA_TARGET := aarch64-unknown-linux-gnu
BUILD_STAMP := $(VENV)/.installed-build
# Release builds of the SDK-heavy workspace take ~15 minutes of both cores on a 2-core machine:
# run them at the lowest priority so the machine stays usable meanwhile.
LOW_PRIORITY := nice -n 19
# Every cargo invocation selects the whole workspace (and narrows with --bin) so features unify
# the same way each time and the AWS SDK is compiled once per profile and target.
BIN_ARGS := --workspace $(addprefix --bin ,$(FUNCTIONS))

.PHONY: help bench bench-planner venv binaries lambda-toolchain build bench-lambda deploy demo test test-rust check-template lint fmt up down clean

help:
	@echo "make demo          set everything up and play the demo on the local AWS emulator"
	@echo "make test          run every test (unit, emulator end-to-end, Lambda runtime API, template checks)"
	@echo "make up            start the local stack (emulator, table, rules, dispatcher); make down stops it"
	@echo "make lint          cargo fmt --check and clippy -D warnings"
	@echo "make chaos         the reliability report: duplicates, concurrency, AWS faults, crashes, lost events"
	@echo "make bench         the benchmark report (BENCHMARKS.md): planner, AWS calls, storm, Lambda size and init"
	@echo "make bench-aws     AWS requests and DynamoDB capacity per operation, per-event work vs fleet size, an event storm, the idle cost"
	@echo "make bench-traffic requests failed while instances behind a target group are replaced, beside a control without one"
	@echo "make build         release zips of the four Lambda functions for arm64 (cargo-lambda; long cold build)"
	@echo "make bench-lambda  zip size and init time of each function (builds release binaries first)"
	@echo "make deploy        sam build + sam deploy --guided to your AWS account (see docs/deploy.md)"

# Python tools (the AWS emulator, cfn-lint, sam) in a venv inside the repo, pinned.
$(STAMP): requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(STAMP)

# Debug builds of every binary (CLI, functions, test tools): what the demo and the tests run.
binaries:
	cargo build --workspace

# Build-only tools, in the same venv but from their own list so `make test` does not install them.
$(BUILD_STAMP): $(STAMP) requirements-build.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-build.txt
	touch $@

# cargo-lambda, Zig and the arm64 standard library.
lambda-toolchain: $(BUILD_STAMP)
	@rustup target list --installed | grep -qx '$(LAMBDA_TARGET)' || rustup target add $(LAMBDA_TARGET)

# Deployable artifacts: `cargo lambda build --release --arm64` with the [profile.release] of
# Cargo.toml (cargo-lambda adds only `-C target-cpu=neoverse-n1`, Graviton 2's core). The venv's
# bin/ goes first on PATH so cargo finds the `cargo-lambda` subcommand and cargo-lambda finds Zig.
build: lambda-toolchain
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(LOW_PRIORITY) cargo lambda build --release --arm64 --output-format zip $(BIN_ARGS)
	@for f in $(FUNCTIONS); do \
	    zip="$(TARGET_DIR)/lambda/$$f/bootstrap.zip"; \
	    test -f "$$zip" || { echo "build: $$zip was not produced" >&2; exit 1; }; \
	    printf '%-20s %10d bytes  %s\n' "$$f" "$$(stat -c %s "$$zip")" "$$zip"; \
	done

# Zip size (arm64, from `make build`) and init time of each function: process start to its first
# `GET /runtime/invocation/next` on a local Lambda Runtime API, measured on x86_64 release builds
# (arm64 binaries cannot run here). Not a test: numbers vary with the machine and its load.
bench-lambda: build binaries
	$(LOW_PRIORITY) cargo build --release $(BIN_ARGS)
	scripts/lambda-bench.sh

# Deploys to the AWS account of your current credentials; see docs/deploy.md first. Checks the
# credentials before installing the build tools, so it fails at once where there are none.
deploy: venv
	scripts/deploy.sh --preflight
	@$(MAKE) --no-print-directory lambda-toolchain
	scripts/deploy.sh

demo: venv binaries
	scripts/demo.sh

# Binaries first: the end-to-end tests run the CLI and the Lambda binaries as processes. Built
# with the tests in one invocation, so that the workspace's crates compile once (a build of the
# binaries alone unifies fewer features, and the tests would build them again). Each end-to-end
# test waits mostly on its own emulator process, so four run at once, and two test binaries at
# once (scripts/test-lanes.py), on two cores. The template checks (Python, their own emulator) run
# beside the tests, their output shown after them.
test: venv
	cargo build --workspace --all-targets
	@scripts/check-template.sh >$(TARGET_DIR)/check-template.log 2>&1 & templates=$$!; \
	status=0; \
	python3 scripts/test-lanes.py -- --test-threads=4 || status=$$?; \
	if [ $$status -eq 0 ]; then $(TARGET_DIR)/debug/phoenix-sim --steps 100000 --quiet || status=$$?; fi; \
	wait $$templates || status=$$?; \
	echo "scripts/check-template.sh:"; cat $(TARGET_DIR)/check-template.log; \
	exit $$status

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

up: venv binaries
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

# Deterministic simulation (shared/sim): the controller the functions run, over in-memory ports with
# the services' semantics and simulated time, with faults, lost, duplicated and late events and
# crashing handlers; a million steps over many seeds (debug build, ~20 s). A failing seed prints
# the command that replays it exactly: `phoenix-sim --seed N`.
.PHONY: sim
sim: binaries
	$(TARGET_DIR)/debug/phoenix-sim --steps 1000000

# The reliability report on the emulator (tests/src/chaos.rs): duplicated, concurrent, lost events,
# AWS faults through a fault proxy and crashes after every AWS call of a replacement; one table,
# exit 1 if any guarantee broke (~4 min). `make test` runs the same scenarios at small sizes
# (tests/tests/chaos.rs). `CHAOS_ARGS="--seed N --only crash"` narrows it.
.PHONY: chaos
chaos: venv binaries
	$(TARGET_DIR)/debug/chaos $(CHAOS_ARGS)

# The AWS side of the benchmark report on the emulator (tests/src/bench.rs): requests and DynamoDB
# capacity per operation (an SDK interceptor on the controller's clients), one health event's work
# in a fleet of 10 and of 10 000, a storm of 10 000 events at concurrency 50 with the chaos
# checks, and what converged fleets cost a month while nothing happens (fleets of 10, 1 000,
# 10 000 and 100 of 100); markdown tables, exit 1 if a guarantee broke. Not part of `make test`.
# `BENCH_ARGS="--small"` or `"--only storm --events 2000"` narrows it.
.PHONY: bench-aws
bench-aws: venv binaries
	$(TARGET_DIR)/debug/bench $(BENCH_ARGS)

# Requests sent and failed while phoenix replaces instances behind a target group (a rollout of 6,
# a repair, a scale-in, a Spot interruption), each beside its control without one.
.PHONY: bench-traffic
bench-traffic: venv binaries
	$(TARGET_DIR)/debug/traffic

# The whole benchmark report (BENCHMARKS.md), each figure next to its limit: planner CPU time per
# event and a 1000-instance rollout's waves (release build of phoenix-core's example; the core has
# no AWS SDK, so this is quick), the AWS side on the emulator (bench-aws), and each function's zip
# size and init time (bench-lambda: release builds, long when cold). Not part of `make test`.
bench: bench-planner bench-aws bench-traffic bench-lambda

bench-planner:
	$(LOW_PRIORITY) cargo build --release --workspace --example bench_planner
	$(TARGET_DIR)/release/examples/bench_planner
