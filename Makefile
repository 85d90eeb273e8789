# The two commands of the README, and the steps behind them. Both need root: setup installs
# packages and mounts tracefs, and ksense loads eBPF programs.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: setup build run test bench

# Idempotent: installs only what is missing.
setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p ksense

# Run ksense on this host with the shipped (default) configuration, events pretty-printed.
run: build
	./target/release/ksense run --config config/ksense.toml --output pretty

# Every test: unit tests, then end-to-end tests against this kernel (they start the real binary).
test: setup
	bash scripts/test.sh

# What ksense costs the processes it watches, beside bpftrace and auditd (docs/BENCHMARKS.md);
# about 20 minutes. `bash scripts/bench.sh --quick` is the 2-minute version.
bench: setup
	bash scripts/bench.sh --out target/bench.md
