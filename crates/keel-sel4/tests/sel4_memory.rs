//! End-to-end: guest address spaces on seL4. Two Debian arm64 guests share region `x`: VM a
//! maps it read-write at 0x5000_0000 and writes a word with busybox `devmem`; VM b maps it
//! read-only at 0x6000_0000, waits for the word, tries to overwrite it (its VMM reports the
//! write; memory is unchanged) and reads 0x7000_0000, which is neither its RAM
//! (0x4000_0000 + 128 MiB) nor a device nor a shared region (its VMM reports the address).
//!
//! One boot serves every test here (each checks one behaviour of it). Needs what
//! `sel4_e2e.rs` needs (`MICROKIT_SDK` with the smp-debug config, the guest images in
//! `$KEEL_CACHE/guest/arm64`, `qemu-system-aarch64`); without them every test prints a LOUD
//! skip line (appended to `$KEEL_SKIP_LOG` when set) and passes vacuously.
//! Run: `MICROKIT_SDK=/path/to/sdk cargo test -p keel-sel4 --features host --test sel4_memory`.
//!
//! `devmem` maps `/dev/mem`: Debian's arm64 kernel has `CONFIG_STRICT_DEVMEM` and
//! `CONFIG_IO_STRICT_DEVMEM`, which refuse RAM and driver-claimed ranges but allow these
//! addresses (not RAM in the device tree, claimed by no driver).
#![cfg(feature = "host")]

use std::sync::OnceLock;
use std::time::Duration;

#[path = "common/skip.rs"]
mod skip_log;

#[path = "common/sel4.rs"]
mod sel4;

use sel4::{Booted, Suite, keel_cmd, vm_toml};

const SUITE: Suite = Suite {
    name: "sel4_memory",
    dir: "sel4-memory",
    untested: "the seL4 backend",
    no_smp: "; NOT tested",
    probe: false,
};

/// a: write the word into the region (read-write at 0x5000_0000).
const A_CMD: &str = "devmem 0x50000000 32 0x4B45454C; echo A-WROTE=$(devmem 0x50000000 32)";

/// b: wait (up to 120 s) for a's word at its read-only base, write over it, read it
/// again, then read an address outside its RAM, devices and regions.
const B_CMD: &str = "i=0; while [ \"$(devmem 0x60000000 32)\" != 0x4B45454C ] && [ $i -lt 1200 ]; \
    do sleep 0.1; i=$((i+1)); done; \
    echo B-READ=$(devmem 0x60000000 32); \
    devmem 0x60000000 32 0x12345678; \
    echo B-AFTER=$(devmem 0x60000000 32); \
    echo B-OUTSIDE=$(devmem 0x70000000 32)";

/// The one boot of the shared-region system, or `None` (skipped) without the SDK. A failed
/// boot fails every test with its message (and is not retried).
fn booted(test: &str) -> Option<&'static Booted> {
    static BOOTED: OnceLock<Result<Booted, String>> = OnceLock::new();
    let sdk = SUITE.prerequisites(test)?;
    let config = SUITE.smp_config(&sdk, test)?;
    BOOTED
        .get_or_init(|| {
            let map = |base: &str, access: &str| {
                format!(
                    "placement = {{ pcpus = [{}] }}\n[[vm.shared]]\nregion = \"x\"\nbase = \"{base}\"\naccess = \"{access}\"\n",
                    if access == "rw" { 0 } else { 1 }
                )
            };
            let toml = format!(
                "[system]\nname = \"e2e-memory\"\n[[shared]]\nname = \"x\"\nsize = \"64K\"\n{}{}",
                vm_toml(
                    "a",
                    1,
                    "128M",
                    &keel_cmd(A_CMD),
                    &map("0x5000_0000", "rw")
                ),
                vm_toml(
                    "b",
                    1,
                    "128M",
                    &keel_cmd(B_CMD),
                    &map("0x6000_0000", "ro")
                ),
            );
            std::panic::catch_unwind(|| {
                SUITE.build_and_run(&sdk, "shared", &toml, config, Duration::from_secs(240))
            })
            .map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the boot panicked".into())
            })
        })
        .as_ref()
        .map_or_else(|e| panic!("{e}"), Some)
}

#[test]
fn word_written_by_the_read_write_vm_is_read_by_the_read_only_vm_at_its_own_base() {
    let Some(b) =
        booted("word_written_by_the_read_write_vm_is_read_by_the_read_only_vm_at_its_own_base")
    else {
        return;
    };

    assert!(b.console.contains("A-WROTE=0x4B45454C"), "{}", b.console);
    assert!(b.console.contains("B-READ=0x4B45454C"), "{}", b.console);
}

#[test]
fn write_to_the_read_only_mapping_is_reported_by_its_vmm_and_changes_nothing() {
    let Some(b) =
        booted("write_to_the_read_only_mapping_is_reported_by_its_vmm_and_changes_nothing")
    else {
        return;
    };

    assert!(
        b.console.contains(
            "keel-sel4: vm b: warning: vcpu 0: write of 4 bytes to read-only shared region 'x' at 0x60000000: ignored"
        ),
        "{}",
        b.console
    );
    assert!(b.console.contains("B-AFTER=0x4B45454C"), "{}", b.console);
}

#[test]
fn access_outside_ram_devices_and_regions_reads_all_ones_and_is_reported_with_its_address() {
    let Some(b) = booted(
        "access_outside_ram_devices_and_regions_reads_all_ones_and_is_reported_with_its_address",
    ) else {
        return;
    };

    assert!(b.console.contains("B-OUTSIDE=0xFFFFFFFF"), "{}", b.console);
    assert!(
        b.console.contains(
            "keel-sel4: vm b: warning: vcpu 0: MMIO read of 4 bytes at 0x70000000 (reads all ones): unmapped guest-physical address"
        ),
        "{}",
        b.console
    );
}

#[test]
fn both_vms_run_to_power_off() {
    let Some(b) = booted("both_vms_run_to_power_off") else {
        return;
    };

    assert_eq!(
        (b.outcome.vms_up, b.outcome.vms_stopped),
        (2, 2),
        "{}",
        b.console
    );
}
