//! End-to-end tests: the built `keel` binary boots Keel's x86_64 test guest under /dev/kvm.
//!
//! Each test writes a system TOML into its own temporary directory, runs `keel run`, and
//! checks the guest's `keeltest:` lines, keel's stderr and the exit status. Without
//! /dev/kvm every KVM test prints `SKIPPED: /dev/kvm not available` and records the skip in
//! `$KEEL_SKIP_LOG` (scripts/test.sh counts those). The test guest is built if missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a guest run may take before the test fails (the runs take about a second).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[path = "common/guest.rs"]
mod guest;
#[path = "common/run.rs"]
mod run;
#[path = "../../keel-kvm/tests/common/skip.rs"]
mod skip;

use guest::{mem_testguest, testguest};
use run::{KEEL, Run, Scratch, run_keel};

/// Whether /dev/kvm can be used; if not, say so loudly and record the skip.
fn kvm_or_skip(test: &str) -> bool {
    skip::kvm_or_skip("e2e", test)
}

/// A temporary directory, removed on drop.
impl Scratch {
    fn disk(&self, name: &str, size: u64) -> PathBuf {
        let p = self.path(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }
}

/// A one-VM system running the test guest with `cmdline`, plus `extra` TOML.
fn system(kernel: &Path, vcpus: u32, cmdline: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"t\"\narch = \"x86_64\"\nkernel = \"{}\"\nmemory = \"64M\"\nvcpus = {vcpus}\ncmdline = \"{cmdline}\"\nserial = \"stdio\"\n{extra}",
        kernel.display()
    )
}

/// Run `keel` with `args`, killing it after [`RUN_TIMEOUT`].
fn keel(args: &[&str]) -> Run {
    run_keel("e2e", args, RUN_TIMEOUT, |_| {})
}

fn run_system(scratch: &Scratch, toml: &str, extra_args: &[&str]) -> Run {
    let sys = scratch.write("system.toml", toml);
    let mut args = vec!["run", sys.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    keel(&args)
}

/// The error lines keel printed (`keel: error: ...`).
fn error_lines(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| l.starts_with("keel: error:"))
        .collect()
}

#[test]
fn boot_prints_pass_and_exits_zero() {
    if !kvm_or_skip("boot_prints_pass_and_exits_zero") {
        return;
    }
    let s = Scratch::new("boot");
    let run = run_system(&s, &system(&testguest(), 1, "keeltest=all", ""), &[]);
    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.contains("keeltest: boot ok"), "{run:?}");
    assert!(run.stdout.contains("keeltest: PASS"), "{run:?}");
}

#[test]
fn blk_write_flush_and_read_back_is_verified() {
    if !kvm_or_skip("blk_write_flush_and_read_back_is_verified") {
        return;
    }
    let s = Scratch::new("blk");
    let disk = s.disk("disk.img", 1 << 20);
    let extra = format!(
        "[[vm.disk]]\npath = \"{}\"\nid = \"data\"\n",
        disk.display()
    );
    let run = run_system(&s, &system(&testguest(), 1, "keeltest=blk", &extra), &[]);
    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.contains("keeltest: blk id \"data\""), "{run:?}");
    assert!(
        run.stdout.contains("pattern written and read back"),
        "{run:?}"
    );
    // The pattern really reached the host file.
    let bytes = std::fs::read(&disk).unwrap();
    assert!(
        bytes.iter().any(|&b| b != 0),
        "the disk file is still all zeros"
    );
}

#[test]
fn read_only_disk_rejects_guest_writes() {
    if !kvm_or_skip("read_only_disk_rejects_guest_writes") {
        return;
    }
    let s = Scratch::new("ro");
    let disk = s.disk("disk.img", 1 << 20);
    let extra = format!(
        "[[vm.disk]]\npath = \"{}\"\nread_only = true\n",
        disk.display()
    );
    let run = run_system(&s, &system(&testguest(), 1, "keeltest=blk", &extra), &[]);
    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.contains("(read-only)"), "{run:?}");
    assert!(run.stdout.contains("write rejected"), "{run:?}");
    let bytes = std::fs::read(&disk).unwrap();
    assert!(
        bytes.iter().all(|&b| b == 0),
        "a read-only disk was written"
    );
}

#[test]
fn disk_contents_persist_across_two_boots() {
    if !kvm_or_skip("disk_contents_persist_across_two_boots") {
        return;
    }
    let s = Scratch::new("persist");
    let disk = s.disk("disk.img", 1 << 20);
    let extra = format!("[[vm.disk]]\npath = \"{}\"\n", disk.display());
    let guest = testguest();
    let first = run_system(
        &s,
        &system(
            &guest,
            1,
            "keeltest=blk keeltest.disk-pattern=write keeltest.disk-seed=77",
            &extra,
        ),
        &[],
    );
    assert_eq!(first.status, 0, "{first:?}");
    let second = run_system(
        &s,
        &system(
            &guest,
            1,
            "keeltest=blk keeltest.disk-pattern=check keeltest.disk-seed=77",
            &extra,
        ),
        &[],
    );
    assert_eq!(second.status, 0, "{second:?}");
    assert!(second.stdout.contains("keeltest: PASS"), "{second:?}");
    // The check really checks: another seed on the same disk fails.
    let other = run_system(
        &s,
        &system(
            &guest,
            1,
            "keeltest=blk keeltest.disk-pattern=check keeltest.disk-seed=78",
            &extra,
        ),
        &[],
    );
    // The guest's exit code 10: a test failed (the pattern does not match the seed).
    assert_eq!(other.status, 10, "{other:?}");
}

#[test]
fn console_output_arrives_in_its_file() {
    if !kvm_or_skip("console_output_arrives_in_its_file") {
        return;
    }
    let s = Scratch::new("console");
    let out = s.path("console.out");
    let extra = format!("[[vm.console]]\noutput = \"file:{}\"\n", out.display());
    let run = run_system(
        &s,
        &system(&testguest(), 1, "keeltest=console", &extra),
        &[],
    );
    assert_eq!(run.status, 0, "{run:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("keeltest: hello from virtio-console"),
        "console file: {text:?}"
    );
}

#[test]
fn rng_gives_the_guest_entropy() {
    if !kvm_or_skip("rng_gives_the_guest_entropy") {
        return;
    }
    let s = Scratch::new("rng");
    let run = run_system(
        &s,
        &system(&testguest(), 1, "keeltest=rng", "[vm.rng]\n"),
        &[],
    );
    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.contains("keeltest: rng ok"), "{run:?}");
}

#[test]
fn two_vcpus_both_come_up() {
    if !kvm_or_skip("two_vcpus_both_come_up") {
        return;
    }
    let s = Scratch::new("smp");
    let run = run_system(&s, &system(&testguest(), 2, "keeltest=smp", ""), &[]);
    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.contains("smp 2/2 cpus up"), "{run:?}");
}

#[test]
fn device_interrupt_reaches_the_guest_through_the_ioapic() {
    if !kvm_or_skip("device_interrupt_reaches_the_guest_through_the_ioapic") {
        return;
    }
    let s = Scratch::new("irq");
    let disk = s.disk("disk.img", 1 << 20);
    let extra = format!("[[vm.disk]]\npath = \"{}\"\n", disk.display());
    let run = run_system(&s, &system(&testguest(), 1, "keeltest=irq", &extra), &[]);
    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.contains("keeltest: irq ok"), "{run:?}");
}

#[test]
fn corrupt_descriptor_chain_is_reported_and_the_run_fails() {
    if !kvm_or_skip("corrupt_descriptor_chain_is_reported_and_the_run_fails") {
        return;
    }
    let s = Scratch::new("corrupt");
    let disk = s.disk("disk.img", 1 << 20);
    let extra = format!(
        "[[vm.disk]]\npath = \"{}\"\nid = \"data\"\n",
        disk.display()
    );
    let guest = testguest();
    for mode in ["oob", "loop", "nostatus"] {
        let run = run_system(
            &s,
            &system(&guest, 1, &format!("keeltest=corrupt:{mode}"), &extra),
            &["--log-level", "warn"],
        );
        // The guest's exit code 3: it saw DEVICE_NEEDS_RESET.
        assert_eq!(run.status, 3, "{mode}: {run:?}");
        let errors = error_lines(&run);
        assert_eq!(errors.len(), 1, "{mode}: {run:?}");
        assert!(
            errors[0].starts_with("keel: error: virtio-blk 0 (disk \"data\"): queue 0")
                && errors[0].ends_with("; device needs reset"),
            "{mode}: {run:?}"
        );
    }
}

#[test]
fn stats_report_exits_and_memory() {
    if !kvm_or_skip("stats_report_exits_and_memory") {
        return;
    }
    let s = Scratch::new("stats");
    let run = run_system(
        &s,
        &system(&testguest(), 1, "keeltest=mmio-bench:2000", "[vm.rng]\n"),
        &["--stats"],
    );
    assert_eq!(run.status, 0, "{run:?}");
    let value = |key: &str| -> u64 {
        let line = run
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix(&format!("keel: stats: {key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {run:?}"));
        line.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(value("mmio_reads") >= 2000, "{run:?}");
    assert!(value("peak_rss_kib") > 0, "{run:?}");
    assert!(value("guest_touched_kib") > 0, "{run:?}");
}

#[test]
fn software_kvm_note_is_printed_once() {
    if !kvm_or_skip("software_kvm_note_is_printed_once") {
        return;
    }
    let s = Scratch::new("note");
    let run = run_system(&s, &system(&testguest(), 1, "keeltest=smp", ""), &[]);
    assert_eq!(run.status, 0, "{run:?}");
    let notes = run.stderr.matches("is a software KVM").count();
    let software = keel_kvm::host::is_software_kvm();
    assert_eq!(notes, usize::from(software), "{run:?}");
    let quiet = run_system(
        &s,
        &system(&testguest(), 1, "keeltest=smp", ""),
        &["--log-level", "warn"],
    );
    assert_eq!(
        quiet.stderr.matches("is a software KVM").count(),
        0,
        "{quiet:?}"
    );
}

// ---- bad input: exit 2 with one line, no KVM needed before the error ----

fn assert_bad_input(run: &Run, needle: &str) {
    assert_eq!(run.status, 2, "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{run:?}");
    assert!(lines[0].starts_with("keel: error: "), "{run:?}");
    assert!(lines[0].contains(needle), "expected {needle:?} in {run:?}");
}

#[test]
fn zero_vcpus_is_bad_input() {
    let s = Scratch::new("zero");
    let kernel = s.write("kernel", "x");
    let run = run_system(&s, &system(&kernel, 0, "", ""), &[]);
    assert_bad_input(&run, "vcpus");
}

#[test]
fn missing_kernel_is_bad_input() {
    let s = Scratch::new("nokernel");
    let run = run_system(&s, &system(&s.path("no-such-kernel"), 1, "", ""), &[]);
    assert_bad_input(&run, "no-such-kernel");
}

#[test]
fn file_that_is_not_a_kernel_is_bad_input() {
    let s = Scratch::new("notkernel");
    let kernel = s.write("notes.txt", "these are not the bytes of a kernel\n");
    let run = run_system(&s, &system(&kernel, 1, "", ""), &[]);
    assert_bad_input(&run, "notes.txt");
}

#[test]
fn unopenable_disk_is_bad_input() {
    let s = Scratch::new("nodisk");
    let extra = format!(
        "[[vm.disk]]\npath = \"{}\"\n",
        s.path("missing.img").display()
    );
    let run = run_system(&s, &system(&testguest(), 1, "keeltest=blk", &extra), &[]);
    assert_bad_input(&run, "missing.img");
}

#[test]
fn several_vms_without_vm_option_lists_their_names() {
    let s = Scratch::new("multi");
    let guest = testguest();
    let one = system(&guest, 1, "", "");
    let two = one.replace("name = \"t\"", "name = \"u\"");
    let run = run_system(&s, &format!("{one}\n{two}"), &[]);
    assert_bad_input(&run, "\"t\", \"u\"");
}

#[test]
fn unknown_option_is_bad_input() {
    let run = keel(&["run", "x.toml", "--bogus"]);
    assert_bad_input(&run, "--bogus");
}

#[test]
fn check_prints_one_line_per_vm() {
    let s = Scratch::new("check");
    let sys = s.write(
        "system.toml",
        &system(&testguest(), 2, "keeltest=all", "[vm.rng]\n"),
    );
    let run = keel(&["check", sys.to_str().unwrap()]);
    assert_eq!(run.status, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{run:?}");
    assert!(
        lines[0].starts_with("vm \"t\": x86_64, 2 vCPUs, 64 MiB"),
        "{run:?}"
    );
    assert!(lines[0].ends_with(", rng"), "{run:?}");
}

/// Three VMs on network "lan" (t and u allowed to talk, v not), with an uplink tap.
fn networked_system(kernel: &Path) -> String {
    let mut toml = String::from(
        "[[network]]\nname = \"lan\"\nuplink = \"tap:kc0\"\nallow = [[\"t\", \"u\"]]\n",
    );
    for (name, mac) in [("t", "0a"), ("u", "0b"), ("v", "0c")] {
        toml.push_str(
            &system(kernel, 1, "keeltest=net", "")
                .replace("name = \"t\"", &format!("name = \"{name}\"")),
        );
        toml.push_str(&format!(
            "[[vm.net]]\nnetwork = \"lan\"\nmac = \"02:00:00:00:00:{mac}\"\n"
        ));
    }
    toml
}

#[test]
fn check_lists_each_vms_network_interfaces_under_it() {
    let s = Scratch::new("check-nics");
    let sys = s.write("system.toml", &networked_system(&testguest()));

    let run = keel(&["check", sys.to_str().unwrap()]);

    assert_eq!(run.status, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let v = lines
        .iter()
        .position(|l| l.starts_with("vm \"v\": "))
        .expect("a line for vm v");
    assert_eq!(
        lines.get(v + 1).copied(),
        Some("  net 0: network \"lan\", mac 02:00:00:00:00:0c, port 2"),
        "{run:?}"
    );
}

#[test]
fn check_lists_each_vms_vsock_cid_socket_and_peers() {
    let s = Scratch::new("check-vsock");
    let g = testguest();
    let vm = |name: &str, vsock: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\narch = \"x86_64\"\nkernel = \"{}\"\nmemory = \"64M\"\n{vsock}\n",
            g.display()
        )
    };
    let toml = format!(
        "[vsock]\nallow = [[\"a\", \"b\"]]\n{}{}{}",
        vm("a", "[vm.vsock]\ncid = 3\nsocket = \"/run/a.vsock\""),
        vm("b", "[vm.vsock]\ncid = 4"),
        vm("c", "[vm.vsock]\ncid = 5")
    );
    let sys = s.write("system.toml", &toml);

    let run = keel(&["check", sys.to_str().unwrap()]);

    assert_eq!(run.status, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    for want in [
        "  vsock: cid 3, socket /run/a.vsock, peers vm \"b\" (cid 4)",
        "  vsock: cid 4, no host socket, peers vm \"a\" (cid 3)",
        "  vsock: cid 5, no host socket, peers none",
    ] {
        assert!(lines.contains(&want), "no {want:?} in {run:?}");
    }
}

#[test]
fn check_lists_each_networks_ports_and_allowed_pairs() {
    let s = Scratch::new("check-net");
    let sys = s.write("system.toml", &networked_system(&testguest()));

    let run = keel(&["check", sys.to_str().unwrap()]);

    assert_eq!(run.status, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let net = lines
        .iter()
        .position(|l| l.starts_with("network \"lan\": 4 ports, "))
        .expect("a line for network lan");
    assert_eq!(
        &lines[net + 1..],
        [
            "  port 0: vm \"t\" net 0, mac 02:00:00:00:00:0a",
            "  port 1: vm \"u\" net 0, mac 02:00:00:00:00:0b",
            "  port 2: vm \"v\" net 0, mac 02:00:00:00:00:0c",
            "  port 3: uplink tap:kc0, any source MAC no VM port declares",
            "  allow: port 0 (vm \"t\" net 0) <-> port 1 (vm \"u\" net 0)",
        ],
        "{run:?}"
    );
}

#[test]
fn version_names_the_package_version() {
    let run = keel(&["--version"]);
    assert_eq!(run.status, 0);
    assert_eq!(
        run.stdout.trim(),
        format!("keel {}", env!("CARGO_PKG_VERSION"))
    );
}

// ---- guest stops other than PASS: tiny hand-assembled PVH ELF guests ----

/// A minimal x86_64 ELF whose one PT_LOAD puts `code` at 1 MiB, with a PVH note entering
/// there in 32-bit protected mode.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let entry: u32 = 0x10_0000;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&entry.to_le_bytes());
    let code_off = (EHDR + 2 * PHDR) as u64;
    let note_off = code_off + code.len() as u64;
    let mut f = vec![0u8; EHDR];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little endian
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&u64::from(entry).to_le_bytes());
    f[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes());
    f[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    f[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    f[56..58].copy_from_slice(&2u16.to_le_bytes());
    let mut phdr = |kind: u32, off: u64, addr: u64, size: u64| {
        let mut p = [0u8; PHDR];
        p[0..4].copy_from_slice(&kind.to_le_bytes());
        p[4..8].copy_from_slice(&7u32.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&addr.to_le_bytes());
        p[24..32].copy_from_slice(&addr.to_le_bytes());
        p[32..40].copy_from_slice(&size.to_le_bytes());
        p[40..48].copy_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&p);
    };
    phdr(1, code_off, entry.into(), code.len() as u64); // PT_LOAD
    phdr(4, note_off, 0, note.len() as u64); // PT_NOTE
    f.extend_from_slice(code);
    f.extend_from_slice(&note);
    f
}

/// Run a hand-assembled guest, with `extra` TOML.
fn run_code(test: &str, code: &[u8], extra: &str, args: &[&str]) -> Run {
    let s = Scratch::new(test);
    let kernel = s.path("guest.elf");
    std::fs::write(&kernel, pvh_elf(code)).unwrap();
    run_system(&s, &system(&kernel, 1, "", extra), args)
}

/// `mov al, 0xfe; out 0x64, al`, then spin.
const REBOOT: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];

#[test]
fn debug_exit_code_becomes_the_exit_status() {
    if !kvm_or_skip("debug_exit_code_becomes_the_exit_status") {
        return;
    }
    // mov al, 7; out 0xf4, al
    let run = run_code("exit7", &[0xb0, 0x07, 0xe6, 0xf4, 0xeb, 0xfe], "", &[]);
    assert_eq!(run.status, 7, "{run:?}");
    assert!(error_lines(&run).is_empty(), "{run:?}");
}

/// The VM's reboot policy: stop at the first reset.
const ON_REBOOT_STOP: &str = "on_reboot = \"stop\"\n";

#[test]
fn guest_reboot_is_reported_and_exits_zero() {
    if !kvm_or_skip("guest_reboot_is_reported_and_exits_zero") {
        return;
    }
    let run = run_code("reboot", REBOOT, ON_REBOOT_STOP, &[]);
    assert_eq!(run.status, 0, "{run:?}");
    assert!(
        run.stderr
            .lines()
            .any(|l| l == "keel: guest requested reboot"),
        "{run:?}"
    );
}

#[test]
fn guest_reboot_fails_the_run_with_on_reboot_fail() {
    if !kvm_or_skip("guest_reboot_fails_the_run_with_on_reboot_fail") {
        return;
    }
    let run = run_code("rebootfail", REBOOT, ON_REBOOT_STOP, &["--on-reboot=fail"]);
    assert_eq!(run.status, 1, "{run:?}");
}

#[test]
fn guest_triple_fault_is_a_crash_with_one_error_line() {
    if !kvm_or_skip("guest_triple_fault_is_a_crash_with_one_error_line") {
        return;
    }
    let run = run_code("crash", &[0x0f, 0x0b], "", &["--log-level", "warn"]); // ud2, no IDT
    assert_eq!(run.status, 1, "{run:?}");
    let errors = error_lines(&run);
    assert_eq!(errors.len(), 1, "{run:?}");
    assert!(errors[0].contains("crashed"), "{run:?}");
}

#[test]
fn emulation_failure_stops_the_vm_with_a_clear_message() {
    if !kvm_or_skip("emulation_failure_stops_the_vm_with_a_clear_message") {
        return;
    }
    // int3 with no IDT: the software KVM cannot emulate it (hardware KVM triple-faults).
    let run = run_code("emul", &[0xcc], "", &["--log-level", "warn"]);
    assert_eq!(run.status, 1, "{run:?}");
    let errors = error_lines(&run);
    assert_eq!(errors.len(), 1, "{run:?}");
    assert!(
        errors[0].contains("emulation failure") || errors[0].contains("crashed"),
        "{run:?}"
    );
}

// ---- reboot: the VM restarts in place (on_reboot = "restart", the default) ----

/// A one-VM system running the test guest with one 1 MiB disk, plus `extra` TOML.
fn system_with_disk(s: &Scratch, cmdline: &str, extra: &str) -> (String, PathBuf) {
    let disk = s.disk("disk.img", 1 << 20);
    let toml = system(
        &testguest(),
        1,
        cmdline,
        &format!("{extra}[[vm.disk]]\npath = \"{}\"\n", disk.display()),
    );
    (toml, disk)
}

#[test]
fn guest_reboot_restarts_the_vm_which_finds_its_disk_data() {
    if !kvm_or_skip("guest_reboot_restarts_the_vm_which_finds_its_disk_data") {
        return;
    }
    let s = Scratch::new("restart");
    let (toml, _disk) = system_with_disk(&s, "keeltest=reboot", "");
    let run = run_system(&s, &toml, &[]);
    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(
        run.stdout.matches("keeltest: boot ok").count(),
        2,
        "{run:?}"
    );
    let written = run
        .stdout
        .find("reboot: marker written")
        .expect("first boot");
    let found = run
        .stdout
        .find("reboot: marker found after the reset")
        .expect("second boot");
    assert!(written < found, "{run:?}");
    assert!(run.stdout.contains("keeltest: PASS"), "{run:?}");
    let restarts: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("guest rebooted"))
        .collect();
    assert_eq!(
        restarts,
        ["keel: vm \"t\": guest rebooted; restarting (1 of at most 5 per minute)"],
        "{run:?}"
    );
}

#[test]
fn serial_file_output_continues_across_a_restart() {
    if !kvm_or_skip("serial_file_output_continues_across_a_restart") {
        return;
    }
    let s = Scratch::new("restart-serial");
    let out = s.path("serial.out");
    let (toml, _disk) = system_with_disk(&s, "keeltest=reboot", "");
    let toml = toml.replace(
        "serial = \"stdio\"",
        &format!("serial = \"file:{}\"", out.display()),
    );
    let run = run_system(&s, &toml, &[]);
    assert_eq!(run.status, 0, "{run:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.matches("keeltest: boot ok").count(), 2, "{text}");
    assert!(text.contains("reboot: marker written"), "{text}");
    assert!(text.trim_end().ends_with("keeltest: PASS"), "{text}");
}

#[test]
fn reset_loop_is_stopped_by_the_restart_limit_with_status_4() {
    if !kvm_or_skip("reset_loop_is_stopped_by_the_restart_limit_with_status_4") {
        return;
    }
    let s = Scratch::new("reset-loop");
    let toml = system(
        &testguest(),
        1,
        "keeltest=reset-loop",
        "max_restarts_per_minute = 2\n",
    );
    let run = run_system(&s, &toml, &["--log-level", "warn"]);
    assert_eq!(run.status, 4, "{run:?}");
    // The first boot and two restarts; the third reset stops the VM.
    assert_eq!(
        run.stdout.matches("keeltest: boot ok").count(),
        3,
        "{run:?}"
    );
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        [
            "keel: vm \"t\": rebooted 3 times within a minute (max_restarts_per_minute = 2); stopping"
        ],
        "{run:?}"
    );
}

#[test]
fn on_reboot_stop_ends_the_run_at_the_first_reset() {
    if !kvm_or_skip("on_reboot_stop_ends_the_run_at_the_first_reset") {
        return;
    }
    let s = Scratch::new("reboot-stop");
    let (toml, disk) = system_with_disk(&s, "keeltest=reboot", ON_REBOOT_STOP);
    let run = run_system(&s, &toml, &[]);
    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(
        run.stdout.matches("keeltest: boot ok").count(),
        1,
        "{run:?}"
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l == "keel: guest requested reboot"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("restarting"), "{run:?}");
    // The first boot's marker is still on the disk: no second boot cleared it.
    let bytes = std::fs::read(&disk).unwrap();
    assert!(
        bytes.starts_with(b"keeltest reboot marker"),
        "{:?}",
        &bytes[..32]
    );
}

/// The VM `toml` describes, loaded as a spec (for the library-level handle tests).
fn spec_of(scratch: &Scratch, toml: &str) -> keel_spec::VmSpec {
    let path = scratch.write("system.toml", toml);
    let sys = keel_spec::load(&path).expect("a valid system");
    sys.vms()[0].clone()
}

#[test]
fn handle_stop_ends_a_running_vm_and_reports_host_stop() {
    if !kvm_or_skip("handle_stop_ends_a_running_vm_and_reports_host_stop") {
        return;
    }
    let scratch = Scratch::new("handle-stop");
    let out = scratch.path("serial.txt");
    let toml = system(
        &testguest(),
        1,
        "keeltest=mmio-bench:100000000",
        "[vm.rng]\n",
    )
    .replace(
        "serial = \"stdio\"",
        &format!("serial = \"file:{}\"", out.display()),
    );
    let mut handle = keel_kvm::start_vm(&spec_of(&scratch, &toml)).unwrap();
    let events = handle.take_events().unwrap();
    assert_eq!(
        events.recv_timeout(Duration::from_secs(30)).unwrap(),
        keel_kvm::LifecycleEvent::Started { run: 0 }
    );
    // The guest reads MMIO in a loop: the current run's exit counter moves.
    let t0 = Instant::now();
    while handle.exits() < 1000 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(handle.exits() >= 1000, "exits: {}", handle.exits());

    let t = Instant::now();
    handle.stop();
    let report = handle.wait().unwrap();

    assert_eq!(report.status, keel_kvm::VmExitStatus::HostStop);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(
        events.recv_timeout(Duration::from_secs(1)).unwrap(),
        keel_kvm::LifecycleEvent::Stopped(keel_kvm::VmExitStatus::HostStop)
    );
}

#[test]
fn two_vm_handles_run_side_by_side_in_one_process() {
    if !kvm_or_skip("two_vm_handles_run_side_by_side_in_one_process") {
        return;
    }
    let scratch = Scratch::new("two-handles");
    let specs: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            let out = scratch.path(&format!("{n}.txt"));
            let toml = system(&testguest(), 1, "keeltest=rng", "[vm.rng]\n")
                .replace("name = \"t\"", &format!("name = \"{n}\""))
                .replace(
                    "serial = \"stdio\"",
                    &format!("serial = \"file:{}\"", out.display()),
                );
            (
                out,
                spec_of(&Scratch::new(&format!("two-handles-{n}")), &toml),
            )
        })
        .collect();
    let handles: Vec<_> = specs
        .iter()
        .map(|(_, s)| keel_kvm::start_vm(s).unwrap())
        .collect();

    let reports: Vec<_> = handles.into_iter().map(|h| h.wait().unwrap()).collect();

    for ((out, _), r) in specs.iter().zip(&reports) {
        // The test guest reports its verdict through the debug-exit port: 0 is PASS.
        assert_eq!(r.status, keel_kvm::VmExitStatus::ExitCode(0));
        let text = std::fs::read_to_string(out).unwrap();
        assert!(text.contains("keeltest: PASS"), "{text}");
    }
}

#[test]
fn host_stdin_reaches_a_virtio_console_on_stdio() {
    if !kvm_or_skip("host_stdin_reaches_a_virtio_console_on_stdio") {
        return;
    }
    let s = Scratch::new("console-input");
    let serial = s.path("serial.txt");
    let toml = system(&testguest(), 1, "keeltest=console-input", "").replace(
        "serial = \"stdio\"",
        &format!("serial = \"file:{}\"", serial.display()),
    ) + "[[vm.console]]\noutput = \"stdio\"\n";
    let path = s.write("system.toml", &toml);
    let mut child = Command::new(KEEL)
        .args(["run", path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello keel\n").unwrap();
        // Closing stdin ends the input: the device stops waiting on it.
    }
    let out = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&serial).unwrap();

    assert!(
        text.contains("keeltest: console received \"hello keel\""),
        "serial: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "serial: {text}");
}

#[test]
fn run_maps_a_shared_region_its_one_vm_writes_and_reads_back() {
    if !kvm_or_skip("run_maps_a_shared_region_its_one_vm_writes_and_reads_back") {
        return;
    }
    let s = Scratch::new("shared-run");
    let extra = "[[vm.shared]]\nregion = \"x\"\nbase = \"0x8000_0000\"\n";
    let toml = format!(
        "[[shared]]\nname = \"x\"\nsize = \"8K\"\n{}",
        system(
            &mem_testguest(),
            1,
            "keeltest=mem-write:0x80001ffc:0x12345678,mem-read:0x80001ffc:0x12345678",
            extra
        )
    );

    let run = run_system(&s, &toml, &[]);

    assert_eq!(run.status, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("keeltest: mem-read 0x80001ffc = 0x12345678"),
        "{run:?}"
    );
}

#[test]
fn access_beyond_ram_reads_all_ones_and_is_reported_with_its_address() {
    if !kvm_or_skip("access_beyond_ram_reads_all_ones_and_is_reported_with_its_address") {
        return;
    }
    let s = Scratch::new("beyond-ram");
    // RAM is 64 MiB: 0x1000_0000 is past it and below the device window.
    let toml = system(
        &mem_testguest(),
        1,
        "keeltest=mem-write:0x10000000:0x1,mem-read:0x10000000:0xffffffff",
        "",
    );

    let run = run_system(&s, &toml, &[]);

    assert_eq!(run.status, 0, "{run:?}");
    assert!(
        run.stderr.contains(
            "keel: warning: vcpu 0: MMIO write of 4 bytes (0x1) at 0x10000000 (ignored): unmapped guest-physical address"
        ),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(
            "keel: warning: vcpu 0: MMIO read of 4 bytes at 0x10000000 (reads all ones): unmapped guest-physical address"
        ),
        "{run:?}"
    );
}

#[test]
fn check_lists_each_vms_shared_regions_and_each_regions_users() {
    let s = Scratch::new("check-shared");
    let mut toml = String::from("[[shared]]\nname = \"x\"\nsize = \"64K\"\n");
    for (name, base, access) in [("t", "0x8000_0000", "rw"), ("u", "0x9000_0000", "ro")] {
        toml.push_str(
            &system(&testguest(), 1, "", "").replace("name = \"t\"", &format!("name = \"{name}\"")),
        );
        toml.push_str(&format!(
            "[[vm.shared]]\nregion = \"x\"\nbase = \"{base}\"\naccess = \"{access}\"\n"
        ));
    }
    let sys = s.write("system.toml", &toml);

    let run = keel(&["check", sys.to_str().unwrap()]);

    assert_eq!(run.status, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines.contains(&"  shared 0: region \"x\" at 0x90000000..0x90010000 (ro)"),
        "{run:?}"
    );
    assert!(
        lines.contains(
            &"shared \"x\": 64K, mapped by vm \"t\" rw at 0x80000000, vm \"u\" ro at 0x90000000"
        ),
        "{run:?}"
    );
}

#[test]
fn cache_colours_are_warned_about_once_and_the_vm_still_runs() {
    if !kvm_or_skip("cache_colours_are_warned_about_once_and_the_vm_still_runs") {
        return;
    }
    let s = Scratch::new("colours");
    let toml = format!(
        "[system]\nllc = {{ size = \"1M\", ways = 16 }}\n{}cache_colours = [0, 1, 2, 3]\n",
        system(&testguest(), 1, "keeltest=all", "")
    );

    let run = run_system(&s, &toml, &[]);

    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.contains("keeltest: PASS"), "{run:?}");
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("keel: warning:"))
        .collect();
    assert_eq!(
        warnings,
        [
            "keel: warning: cache_colours of vm \"t\" are not applied on Linux/KVM: a user-space VMM cannot choose the physical pages behind guest RAM (colours apply on seL4, `keel sel4 build`)"
        ],
        "{run:?}"
    );
}
