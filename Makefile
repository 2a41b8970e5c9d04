# Keel: the two commands of the README, and their parts.
#   make run   boots the demo system
#   make test  runs every check and test, ending with `N passed, N failed, N skipped`
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
TESTGUEST := guest/testguest/target/x86_64-unknown-none/release/keel-testguest

.PHONY: run test setup build testguest linux-guests bench clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p keel

testguest: setup
	cd guest/testguest && $(CARGO) build --release --target x86_64-unknown-none

linux-guests: setup
	bash guest/linux/build.sh all

run: build testguest
	bash scripts/run-demo.sh

test: setup
	bash scripts/test.sh

# Keel against QEMU (and Firecracker / Cloud Hypervisor when FIRECRACKER= / CLOUD_HYPERVISOR=
# name their binaries) on the same guest; writes bench/RESULTS.md. BENCH_QUICK=1: smoke run.
bench: build testguest
	bash bench/run.sh

clean:
	$(CARGO) clean
	cd guest/testguest && $(CARGO) clean
