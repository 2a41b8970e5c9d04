# Keel: the two commands of the README, and their parts.
#   make run   boots the demo system
#   make test  runs every check and test, ending with `N passed, N failed, N skipped`
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
TESTGUEST := guest/testguest/target/x86_64-unknown-none/release/keel-testguest

.PHONY: run test setup build testguest linux-guests bench l2-tests bench-l2 bench-l2-net bench-l2-blk bench-l2-vsock bench-noisy fuzz clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p keel

testguest: setup
	cd guest/testguest && $(CARGO) build --release --target x86_64-unknown-none

linux-guests: setup
	bash guest/linux/build.sh all

# The demo takes the best route this machine has (hardware KVM, or Keel's arm64 KVM backend
# inside an emulated arm64 host) and says which; run-demo.sh builds what that route needs.
run: setup
	bash scripts/run-demo.sh

# The Linux end-to-end tests inside the emulated arm64 host (also part of `make test`).
l2-tests: setup
	bash scripts/l2-tests.sh

# Keel against QEMU inside the emulated arm64 host (L2 boot time, peak RSS); LKVM=/path adds kvmtool.
bench-l2: setup
	bash scripts/l2-bench.sh

# VM-to-VM TCP (4 MiB, busybox nc) inside the emulated arm64 host: keel up against two QEMUs.
bench-l2-net: setup
	bash scripts/l2-net-bench.sh

# Block I/O of a VM through a storage VM against a disk attached directly, inside the emulated
# arm64 host (docs/driver-vms.md): MiB/s and 4 KiB IOPS, and their ratios.
bench-l2-blk: setup
	bash scripts/l2-blk-bench.sh

# vsock throughput (guest <-> guest, host <-> guest) against the same 4 MiB echo over a Keel
# network (TCP), inside the emulated arm64 host (docs/vsock.md, bench/VSOCK.md).
bench-l2-vsock: setup
	bash scripts/l2-vsock-bench.sh

# Noisy neighbour (bench/noisy.sh): a fixed workload in one VM alone and with a memory
# thrasher in a VM on another core, on seL4 (MICROKIT_SDK) and on KVM in the emulated arm64 host.
bench-noisy: setup
	bash bench/noisy.sh all

test: setup
	bash scripts/test.sh

# A fuzz campaign (scripts/fuzz.sh): every target (or TARGETS="a b") for FUZZ_CPU_SECONDS of
# CPU each (default 1200 = 20 CPU-minutes); minimises the corpora back into fuzz/corpus/ and
# appends one line per target to target/fuzz/campaign.md.
fuzz: setup
	bash scripts/fuzz.sh $(TARGETS)

# Keel against QEMU (and Firecracker / Cloud Hypervisor when FIRECRACKER= / CLOUD_HYPERVISOR=
# name their binaries) on the same guest; writes bench/RESULTS.md, and the admin API figures
# (bench/api.py: bench/API.md). BENCH_QUICK=1: smoke run.
# Then the cost of seL4 cache colouring (bench/sel4-colour.sh; skips without MICROKIT_SDK).
bench: build testguest
	bash bench/run.sh
	bash bench/sel4-colour.sh
	bash scripts/l2-blk-bench.sh
	bash scripts/l2-vsock-bench.sh

clean:
	$(CARGO) clean
	cd guest/testguest && $(CARGO) clean
