//! The bodies of Keel's fuzz targets: one function per input a guest or a peer component
//! controls, each taking the fuzzer's raw bytes. Every body checks invariants, not only
//! "no panic": it panics (a crash for libFuzzer, a failure for `cargo test`) when one
//! breaks. `fuzz/fuzz_targets/<name>.rs` wraps each in `libfuzzer_sys::fuzz_target!`;
//! `tests/corpus.rs` replays the committed corpus (`fuzz/corpus/<name>/`) and every input
//! that once crashed (`fuzz/regressions/<name>/`) on stable Rust.
//!
//! Adding a target: a module here with `pub fn run(data: &[u8])`, an entry in [`TARGETS`],
//! `fuzz/fuzz_targets/<name>.rs`, a `[[bin]]` in `fuzz/Cargo.toml`, and a row in the table
//! of guest-controlled inputs in `docs/security.md`.

pub mod arm64;
pub mod control;
pub mod forward_blk;
pub mod shared_rings;
pub mod system_description;
mod virtio_common;
pub mod virtio_devices;
pub mod virtio_mmio;
pub mod virtqueue;
pub mod vsock;
pub mod x86_pio;

/// One fuzz target: its name (the file stem under `fuzz/fuzz_targets/`) and its body.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The target's name.
    pub name: &'static str,
    /// What the target feeds with fuzzer bytes, in a few words.
    pub covers: &'static str,
    /// The body: panics when an invariant breaks.
    pub run: fn(&[u8]),
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "arm64",
        covers: "arm64 fault syndromes, PSCI, the software vGIC, the UART and the VMM's MMIO dispatch",
        run: arm64::run,
    },
    Target {
        name: "control",
        covers: "the VM control page (seL4 admin) against a hostile control VM, with the admin's decisions",
        run: control::run,
    },
    Target {
        name: "forward_blk",
        covers: "the client VMM's forwarding virtio-blk device against a hostile storage VM (answers, ring indices, time)",
        run: forward_blk::run,
    },
    Target {
        name: "shared_rings",
        covers: "frame ring, console byte ring, switch and switch service against a hostile peer",
        run: shared_rings::run,
    },
    Target {
        name: "system_description",
        covers: "system description TOML through parse, validate, plan and the Microkit system file",
        run: system_description::run,
    },
    Target {
        name: "virtio_devices",
        covers: "virtio block/console/rng/net request parsing over an active transport",
        run: virtio_devices::run,
    },
    Target {
        name: "virtio_mmio",
        covers: "virtio-mmio register accesses, status/feature/queue set-up, config space, notifications",
        run: virtio_mmio::run,
    },
    Target {
        name: "virtqueue",
        covers: "split virtqueue rings, descriptor and indirect tables, device queue operations",
        run: virtqueue::run,
    },
    Target {
        name: "vsock",
        covers: "virtio-vsock packets from a hostile guest, a host backend and a peer link, with the device's bounds and credit",
        run: vsock::run,
    },
    Target {
        name: "x86_pio",
        covers: "x86 port I/O through the VMM: COM1, i8042, ACPI power, debug exit, unowned ports",
        run: x86_pio::run,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
