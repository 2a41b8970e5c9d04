//! End-to-end cache colouring on seL4: a Debian arm64 guest (guest/linux/build.sh arm64)
//! whose RAM is coloured (`[system] llc`, `cache_colours`) is built into a Microkit image,
//! booted under QEMU on the `smp-debug` kernel, and reads and writes its virtio disk: the
//! VMM reaches the guest's virtqueues and buffers through its window onto the coloured
//! runs, so a wrong view of guest RAM shows as a guest that cannot use its disk. The
//! generated system file is checked page by page against the colours.
//!
//! QEMU models no caches: these tests show that coloured RAM works, not that it isolates.
//!
//! Needs `MICROKIT_SDK` (board qemu_virt_aarch64, config smp-debug), the guest images in
//! `$KEEL_CACHE/guest/arm64` and `qemu-system-aarch64`; without them every test prints a
//! LOUD skip line (appended to `$KEEL_SKIP_LOG` when set) and passes vacuously.
//! Run: `MICROKIT_SDK=/path/to/sdk cargo test -p keel-sel4 --features host --test sel4_colour`.
#![cfg(feature = "host")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_sel4::host;

#[path = "common/skip.rs"]
mod skip_log;

#[path = "common/sel4.rs"]
mod sel4;

use sel4::{Suite, keel_cmd};

const SUITE: Suite = Suite {
    name: "sel4_colour",
    dir: "sel4-colour",
    untested: "cache colouring on seL4",
    no_smp: "",
    probe: false,
};

/// The SDK (with its smp-debug config), or a skip.
fn prerequisites(test: &str) -> Option<PathBuf> {
    let sdk = SUITE.prerequisites(test)?;
    SUITE.smp_config(&sdk, test)?;
    Some(sdk)
}

/// A 1 MiB disk image starting with `marker`, in `dir`.
fn disk(dir: &Path, name: &str, marker: &str) -> PathBuf {
    let p = dir.join(name);
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..marker.len()].copy_from_slice(marker.as_bytes());
    std::fs::write(&p, &bytes).unwrap();
    p
}

/// The guest command: print the disk's marker, write a line past it, drop the page cache
/// and read the line back, then power off.
fn disk_cmd(marker_len: usize) -> String {
    let cmd = format!(
        "echo MARKER=$(dd if=/dev/vda bs={marker_len} count=1 2>/dev/null); \
         echo keel-coloured-write | dd of=/dev/vda bs=512 seek=8 conv=sync 2>/dev/null; sync; \
         echo 3 > /proc/sys/vm/drop_caches; \
         echo READBACK=$(dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 19)"
    );
    keel_cmd(&cmd)
}

fn vm_toml(name: &str, memory: &str, colours: &str, disk: &Path, marker_len: usize) -> String {
    sel4::vm_toml(
        name,
        1,
        memory,
        &disk_cmd(marker_len),
        &format!(
            "cache_colours = {colours}\n\n[[vm.disk]]\npath = \"{}\"\n",
            disk.display()
        ),
    )
}

/// 1 MiB, 16 ways: 16 colours.
const LLC: &str = "llc = { size = \"1M\", ways = 16 }";
const COLOURS: u64 = 16;

/// The coloured regions of `vm` in a system file: (phys_addr, size), in file order.
fn coloured_regions(system_file: &str, vm: &str) -> Vec<(u64, u64)> {
    let attr = |line: &str, key: &str| -> u64 {
        let v = line
            .split(&format!("{key}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
    };
    system_file
        .lines()
        .filter(|l| l.contains(&format!("<memory_region name=\"{vm}_ram_")))
        .map(|l| (attr(l, "phys_addr"), attr(l, "size")))
        .collect()
}

/// Every 4 KiB page of `regions` has a colour of `set`; returns the pages.
fn assert_pages_coloured(regions: &[(u64, u64)], set: &[u64]) -> Vec<u64> {
    let pages: Vec<u64> = regions
        .iter()
        .flat_map(|&(p, size)| (0..size / 0x1000).map(move |i| p + i * 0x1000))
        .collect();
    for &p in &pages {
        assert!(
            set.contains(&((p / 0x1000) % COLOURS)),
            "page {p:#x} has colour {}, not one of {set:?}",
            (p / 0x1000) % COLOURS
        );
    }
    pages
}

#[test]
fn coloured_guest_boots_and_reads_and_writes_its_virtio_disk() {
    let test = "coloured_guest_boots_and_reads_and_writes_its_virtio_disk";
    let Some(sdk) = prerequisites(test) else {
        return;
    };
    let dir = SUITE.dir("one-disk");
    let marker = "KEEL-COLOUR-MARKER-1";
    let d = disk(&dir, "disk.img", marker);
    let toml = format!(
        "[system]\nname = \"colour-one\"\n{LLC}\n{}",
        vm_toml("linux", "80M", "[0, 1, 2, 3, 4, 5, 6, 7]", &d, marker.len())
    );

    let run = SUITE.build_and_run(
        &sdk,
        "one",
        &toml,
        keel_sel4::abi::board::SMP_CONFIG,
        Duration::from_secs(300),
    );

    let pages = assert_pages_coloured(
        &coloured_regions(&run.system_file, "linux"),
        &[0, 1, 2, 3, 4, 5, 6, 7],
    );
    assert_eq!(pages.len() as u64, (80 << 20) / 0x1000);
    let c = &run.console;
    assert!(c.contains("\nKEEL-GUEST-READY"), "{c}");
    assert!(c.contains(&format!("MARKER={marker}")), "{c}");
    assert!(c.contains("READBACK=keel-coloured-write"), "{c}");
    assert!(c.contains("KEEL-CMD-EXIT 0"), "{c}");
    assert!(c.contains("guest powered off (PSCI SYSTEM_OFF)"), "{c}");
    eprintln!(
        "COLOUR: 80 MiB in 8 of 16 colours: {} regions, KEEL-GUEST-READY after {:.1} s",
        coloured_regions(&run.system_file, "linux").len(),
        run.outcome.first_ready.unwrap_or(f64::NAN)
    );
}

/// Two Debian VMs with disjoint colours do not fit this SDK: each VMM image (the 33 MB
/// kernel, initrd, disk) takes ~18 000 of the initialiser's 2^17 capability slots, and each
/// 4 KiB of coloured RAM three; two 48 MiB coloured VMs need about 180 000 by the build's
/// estimate (which errs high by ~18 000 here). `keel sel4 build` refuses the image instead
/// of letting it stop at boot with OutOfSlots.
#[test]
fn two_debian_guests_with_disjoint_colours_are_refused_for_the_initialisers_slots() {
    let test = "two_debian_guests_with_disjoint_colours_are_refused_for_the_initialisers_slots";
    let Some(sdk) = prerequisites(test) else {
        return;
    };
    let dir = SUITE.dir("two");
    let (ma, mb) = ("KEEL-COLOUR-MARKER-A", "KEEL-COLOUR-MARKER-B");
    let da = disk(&dir, "a.img", ma);
    let db = disk(&dir, "b.img", mb);
    let toml = format!(
        "[system]\nname = \"colour-two\"\n{LLC}\n{}{}",
        vm_toml("a", "48M", "[0, 1, 2, 3, 4, 5, 6, 7]", &da, ma.len()),
        vm_toml("b", "48M", "[8, 9, 10, 11, 12, 13, 14, 15]", &db, mb.len())
    );
    let system = keel_spec::parse_str(&toml, &dir).unwrap();
    let opts = sel4::build_options(&sdk, keel_sel4::abi::board::SMP_CONFIG, dir.join("out"));

    let e = host::build(&system, &opts).unwrap_err();

    let host::BuildError::InitialiserSlots { need, have, .. } = e else {
        panic!("expected InitialiserSlots, got {e}");
    };
    assert_eq!(have, 1 << 17);
    assert!(need > have, "{need}");
    assert!(!dir.join("out/loader.img").exists());
    eprintln!("COLOUR: two 48 MiB coloured Debian VMs need about {need} of {have} slots");
}
