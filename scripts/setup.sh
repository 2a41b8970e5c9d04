#!/usr/bin/env bash
# Installs what building and testing Keel needs on Debian 12, idempotently:
# apt packages, the Rust components and targets. Run as root (or with sudo available).
set -euo pipefail

APT_PACKAGES=(
  build-essential pkg-config   # cc for crates with C parts
  cpio xz-utils zstd kmod      # guest initramfs build (guest/linux: modinfo, module decompression)
  python3                      # guest/linux/mkcpio.py, bench/
  qemu-system-x86              # reference VMM for benchmarks and test-guest checks
  qemu-system-arm              # emulated arm64 host, seL4 under QEMU
  shellcheck                   # lint of the project's shell scripts
  acpica-tools                 # iasl/acpiexec check Keel's ACPI tables in tests
  spin                         # model-checks the frame ring protocol (scripts/model-check.sh)
)

have_all_packages() {
  local p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! have_all_packages; then
  echo "setup: installing apt packages: ${APT_PACKAGES[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: error: no Rust toolchain; install rustup (https://rustup.rs) first" >&2
    exit 1
  fi
fi

if command -v rustup >/dev/null 2>&1; then
  installed_targets=$(rustup target list --installed)
  for t in x86_64-unknown-none aarch64-unknown-none aarch64-unknown-linux-musl; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t" >&2
  done
  installed_components=$(rustup component list --installed)
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$installed_components" || rustup component add "$c" >&2
  done
  # Miri (scripts/miri.sh) needs nightly; Keel itself builds on stable. A failure here is
  # not fatal: scripts/miri.sh then reports the Miri step as skipped.
  if ! cargo +nightly miri --version >/dev/null 2>&1; then
    echo "setup: installing the nightly toolchain with miri" >&2
    rustup toolchain install nightly --profile minimal --component miri,rust-src >&2 ||
      echo "setup: warning: could not install nightly with miri; the Miri tests will be skipped" >&2
  fi
  # cargo-fuzz (scripts/fuzz.sh: `make fuzz`, and the short fuzz runs of `make test`) builds
  # with nightly; its libFuzzer needs a C++ compiler (g++, above). Not fatal either: the
  # fuzz steps then report themselves skipped, and `cargo test` still replays the corpora.
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "setup: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2 ||
      echo "setup: warning: could not install cargo-fuzz; the fuzz runs will be skipped" >&2
  fi
fi
echo "setup: ok" >&2
