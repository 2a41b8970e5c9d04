//! End-to-end: build Microkit images with Keel's seL4 backend and boot the Debian arm64
//! guest (guest/linux/build.sh arm64) under QEMU.
//!
//! Needs `MICROKIT_SDK` (board qemu_virt_aarch64, configs debug and smp-debug), the guest images in
//! `$KEEL_CACHE/guest/arm64` and `qemu-system-aarch64`; without them every test prints a
//! LOUD skip line (appended to `$KEEL_SKIP_LOG` when set) and passes vacuously.
//! Run: `MICROKIT_SDK=/path/to/sdk cargo test -p keel-sel4 --features host --test sel4_e2e`.
#![cfg(feature = "host")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_sel4::host;

#[path = "common/skip.rs"]
mod skip_log;

#[path = "common/sel4.rs"]
mod sel4;

use sel4::{Booted, Built, Suite, collect_console, keel_cmd, one_qemu, spawn, vm_toml};

const SUITE: Suite = Suite {
    name: "sel4_e2e",
    dir: "sel4-e2e",
    untested: "the seL4 backend",
    no_smp: "; multicore NOT tested",
    probe: false,
};

/// How long a boot that runs every VM to its end may take.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Seconds until the same kernel and initrd print KEEL-GUEST-READY on QEMU directly.
fn qemu_direct_ready_secs(smp: u32) -> Option<f64> {
    let _one = one_qemu();
    let g = sel4::cache().join("guest/arm64");
    let start = Instant::now();
    let mut child = Command::new("qemu-system-aarch64")
        .args([
            "-M",
            "virt",
            "-cpu",
            "cortex-a53",
            "-smp",
            &smp.to_string(),
            "-m",
            "2G",
            "-nographic",
            "-kernel",
        ])
        .arg(g.join("vmlinuz"))
        .arg("-initrd")
        .arg(g.join("initrd.cpio.gz"))
        .args(["-append", "console=ttyAMA0 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut r = BufReader::new(child.stdout.take()?);
    let mut line = String::new();
    let mut found = None;
    while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        if line.contains("KEEL-GUEST-READY") {
            found = Some(start.elapsed().as_secs_f64());
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    found
}

#[test]
fn debian_guest_boots_to_ready_and_powers_off_cleanly_on_the_single_core_kernel() {
    let test = "debian_guest_boots_to_ready_and_powers_off_cleanly_on_the_single_core_kernel";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let toml = format!(
        "[system]\nname = \"e2e-boot\"\n{}",
        vm_toml("linux", 1, "256M", "quiet", "")
    );

    let Booted {
        console,
        outcome: o,
        ..
    } = SUITE.build_and_run(
        &sdk,
        "boot",
        &toml,
        keel_sel4::abi::board::CONFIG,
        BOOT_TIMEOUT,
    );
    let direct = qemu_direct_ready_secs(1);

    assert!(
        console.contains("keel-sel4: vmm up (linux_vmm)"),
        "{console}"
    );
    assert!(console.contains("\nKEEL-GUEST-READY"), "{console}");
    assert!(console.contains("KEEL-GUEST-POWEROFF"), "{console}");
    assert!(
        console.contains("keel-sel4: vm linux: stopped: guest powered off (PSCI SYSTEM_OFF)"),
        "{console}"
    );
    assert_eq!((o.vms_up, o.vms_stopped), (1, 1));
    eprintln!(
        "BOOT-TIME to KEEL-GUEST-READY (debug, -smp 1): seL4+Keel {:.2} s, QEMU direct (no seL4) {}",
        o.first_ready.unwrap_or(f64::NAN),
        direct.map_or("n/a".into(), |d| format!("{d:.2} s"))
    );
}

/// Centiseconds of `/proc/uptime`, and a shell busy loop: `SPIN-ONE` is one loop alone,
/// `SPIN-TWO` two loops at once (about equal when the vCPUs really run in parallel, about
/// double when they share a core). Three rounds: the machine is shared, the best of each
/// is the estimate.
const SPIN_CMD: &str = "cs() { sed 's/ .*//; s/[.]//' /proc/uptime; }; \
    spin() { i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; }; \
    for r in 1 2 3; do t0=$(cs); spin; t1=$(cs); spin & spin & wait; t2=$(cs); \
    echo SPIN-ONE=$((t1-t0)) SPIN-TWO=$((t2-t1)); done; \
    grep -E 'CPU0|arch_timer|IPI0' /proc/interrupts";

/// The per-CPU counts of the `arch_timer` line of `/proc/interrupts`
/// (`11:  1234  5678  GICv2  27 Level  arch_timer`).
fn arch_timer_counts(console: &str) -> Option<Vec<u64>> {
    let line = console.lines().find(|l| {
        l.contains("arch_timer")
            && l.split_whitespace()
                .next()
                .is_some_and(|w| w.ends_with(':'))
    })?;
    Some(
        line.split_whitespace()
            .skip(1)
            .map_while(|w| w.parse().ok())
            .collect(),
    )
}

/// The 32 hex digits of the guest's `RNG=` line (16 bytes of `/dev/hwrng`).
fn rng_hex(console: &str) -> Option<&str> {
    console
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("RNG="))
}

/// The best (smallest) `SPIN-ONE` and `SPIN-TWO` of the rounds.
fn spin_times(console: &str) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64)> = None;
    for l in console.lines().filter(|l| l.starts_with("SPIN-ONE=")) {
        let mut it = l.split_whitespace();
        let one: u64 = it.next()?.strip_prefix("SPIN-ONE=")?.parse().ok()?;
        let two: u64 = it.next()?.strip_prefix("SPIN-TWO=")?.parse().ok()?;
        best = Some(best.map_or((one, two), |(o, t)| (o.min(one), t.min(two))));
    }
    best
}

#[test]
fn two_vcpu_guest_runs_its_vcpus_in_parallel_on_two_cores_and_uses_its_virtio_disk() {
    let test = "two_vcpu_guest_runs_its_vcpus_in_parallel_on_two_cores_and_uses_its_virtio_disk";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let Some(config) = SUITE.smp_config(&sdk, test) else {
        return;
    };
    let dir = SUITE.dir("disk");
    let disk = dir.join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..21].copy_from_slice(b"KEEL-DISK-MARKER-4711");
    std::fs::write(&disk, &bytes).unwrap();
    let cmd = format!(
        "dd if=/dev/vda bs=21 count=1 2>/dev/null; echo; \
         echo keel-written-by-guest | dd of=/dev/vda bs=512 seek=8 conv=sync 2>/dev/null; sync; \
         echo 3 > /proc/sys/vm/drop_caches; \
         echo READBACK=$(dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 21); \
         echo NPROC=$(nproc); echo RNG=$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n'); \
         {SPIN_CMD}"
    );
    let extra = format!(
        "[[vm.disk]]\npath = \"{}\"\nid = \"e2e\"\n\n[vm.rng]\n",
        disk.display()
    );
    let toml = format!(
        "[system]\nname = \"e2e-disk\"\n{}",
        vm_toml("linux", 2, "256M", &keel_cmd(&cmd), &extra)
    );

    let Booted {
        console,
        system_file,
        ..
    } = SUITE.build_and_run(&sdk, "disk", &toml, config, BOOT_TIMEOUT);

    // Default placement: vCPU i on core i, the VMM with vCPU 0.
    assert!(
        system_file
            .contains("<protection_domain name=\"linux_vmm\" priority=\"101\" cpu=\"0\" id=\"0\" stack_size=\"0x10000\">"),
        "{system_file}"
    );
    assert!(
        system_file.contains("<vcpu id=\"0\" cpu=\"0\" />"),
        "{system_file}"
    );
    assert!(
        system_file.contains("<vcpu id=\"1\" cpu=\"1\" />"),
        "{system_file}"
    );
    assert!(console.contains("KEEL-NPROC 2"), "{console}");
    assert!(console.contains("KEEL-BLOCK vda 1024"), "{console}");
    assert!(console.contains("\nKEEL-DISK-MARKER-4711"), "{console}");
    assert!(
        console.contains("READBACK=keel-written-by-guest"),
        "{console}"
    );
    assert!(console.contains("NPROC=2"), "{console}");
    let rng = rng_hex(&console).unwrap_or_else(|| panic!("no RNG= line\n{console}"));
    assert!(
        rng.len() == 32 && rng.chars().all(|c| c.is_ascii_hexdigit()),
        "virtio-rng gave {rng:?}, not 16 bytes in hex\n{console}"
    );
    assert!(
        rng.chars().any(|c| c != '0'),
        "virtio-rng gave only zeros\n{console}"
    );
    let timer = arch_timer_counts(&console)
        .unwrap_or_else(|| panic!("no arch_timer line in /proc/interrupts\n{console}"));
    assert!(
        timer.len() == 2 && timer.iter().all(|&n| n > 0),
        "arch_timer interrupts per CPU {timer:?}: each of the 2 vCPUs should have taken some\n{console}"
    );
    let (one, two) = spin_times(&console).unwrap_or_else(|| panic!("no SPIN line\n{console}"));
    eprintln!("PARALLEL ({config}): one busy loop {one} cs, two at once {two} cs (best of 3)");
    assert!(
        two * 10 < one * 16,
        "two busy loops took {two} cs, one alone {one} cs: the vCPUs did not run in parallel\n{console}"
    );
    assert!(console.contains("KEEL-CMD-EXIT 0"), "{console}");
    assert!(
        console.contains("guest powered off (PSCI SYSTEM_OFF)"),
        "{console}"
    );
}

#[test]
fn typed_input_reaches_the_guest_console() {
    let Some(sdk) = SUITE.prerequisites("typed_input_reaches_the_guest_console") else {
        return;
    };
    let cmd = "echo WAITING-INPUT; read -r l < /dev/ttyS0; echo GOT=$l";
    let toml = format!(
        "[system]\nname = \"e2e-input\"\n{}",
        vm_toml("linux", 1, "256M", &keel_cmd(cmd), "")
    );
    let _one = one_qemu();
    let config = host::Sdk::default_config(&sdk, keel_sel4::abi::board::NAME);
    let Built {
        image, dir, cores, ..
    } = SUITE.build(&sdk, "input", &toml, config);
    let mut child = spawn(&mut host::qemu_command(&image, cores), Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let console = collect_console(child, BOOT_TIMEOUT, |line| {
        if line.contains("WAITING-INPUT") {
            use std::io::Write;
            stdin.write_all(b"keel-typed\r").unwrap();
            stdin.flush().unwrap();
        }
        line.contains(": stopped: ")
    });
    std::fs::write(dir.join("console.log"), &console).unwrap();

    assert!(console.contains("GOT=keel-typed"), "{console}");
    assert!(
        console.contains("guest powered off (PSCI SYSTEM_OFF)"),
        "{console}"
    );
}

#[test]
fn console_pd_routes_typed_input_to_the_focused_vm_and_at_1_switches_to_the_second() {
    let test = "console_pd_routes_typed_input_to_the_focused_vm_and_at_1_switches_to_the_second";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let Some(config) = SUITE.smp_config(&sdk, test) else {
        return;
    };
    let cmd = "echo WAITING-INPUT; read -r l < /dev/ttyS0; echo GOT=$l";
    let toml = format!(
        "[system]\nname = \"e2e-input2\"\n{}{}",
        vm_toml(
            "a",
            1,
            "128M",
            &keel_cmd(cmd),
            "placement = { pcpus = [0] }"
        ),
        vm_toml(
            "b",
            1,
            "128M",
            &keel_cmd(cmd),
            "placement = { pcpus = [1] }"
        )
    );
    let _one = one_qemu();
    let Built {
        image, dir, cores, ..
    } = SUITE.build(&sdk, "input2", &toml, config);
    let mut child = spawn(&mut host::qemu_command(&image, cores), Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let (mut waiting, mut stopped, mut typed) = (0, 0, false);
    let console = collect_console(child, BOOT_TIMEOUT, |line| {
        if line.contains("| WAITING-INPUT") {
            waiting += 1;
        }
        if waiting == 2 && !typed {
            use std::io::Write;
            typed = true;
            // For VM 0 (the focus at start), then switch to VM 1 and type for it; a
            // mid-line @ and a @@ pass through as typed.
            stdin.write_all(b"for-a@1\r@1\r@@for-b\r").unwrap();
            stdin.flush().unwrap();
        }
        if line.contains(": stopped: ") {
            stopped += 1;
        }
        stopped == 2
    });
    std::fs::write(dir.join("console.log"), &console).unwrap();

    assert!(console.contains("a| GOT=for-a@1"), "{console}");
    assert!(console.contains("keel: input -> vm \"b\""), "{console}");
    assert!(console.contains("b| GOT=@for-b"), "{console}");
    assert_eq!(console.matches("GOT=").count(), 2, "{console}");
}

#[test]
fn two_vms_boot_on_their_own_cores_in_their_own_vmms_and_power_off() {
    let test = "two_vms_boot_on_their_own_cores_in_their_own_vmms_and_power_off";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let Some(config) = SUITE.smp_config(&sdk, test) else {
        return;
    };
    let toml = format!(
        "[system]\nname = \"e2e-two\"\n{}{}",
        vm_toml("a", 1, "128M", "quiet", "placement = { pcpus = [0] }"),
        vm_toml("b", 1, "128M", "quiet", "placement = { pcpus = [1] }")
    );

    let Booted {
        console,
        outcome: o,
        system_file,
    } = SUITE.build_and_run(&sdk, "two", &toml, config, BOOT_TIMEOUT);

    assert!(
        system_file
            .contains("<protection_domain name=\"b_vmm\" priority=\"101\" cpu=\"1\" id=\"1\" stack_size=\"0x10000\">"),
        "{system_file}"
    );
    assert!(
        system_file.contains("<vcpu id=\"0\" cpu=\"1\" />"),
        "{system_file}"
    );

    assert_eq!((o.vms_up, o.vms_stopped), (2, 2), "{console}");
    assert!(console.contains("a| KEEL-GUEST-READY"), "{console}");
    assert!(console.contains("b| KEEL-GUEST-READY"), "{console}");
    assert!(
        console.contains("keel-sel4: vm a: stopped: guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("keel-sel4: vm b: stopped: guest powered off"),
        "{console}"
    );
}

#[test]
fn vm_boots_and_prints_whole_lines_while_another_vms_vmm_is_stalled_mid_line() {
    let test = "vm_boots_and_prints_whole_lines_while_another_vms_vmm_is_stalled_mid_line";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let Some(config) = SUITE.smp_config(&sdk, test) else {
        return;
    };
    let mark = format!("B-MARK-{}", "0123456789".repeat(8));
    let cmd = format!("echo {mark}; echo {mark}");
    let toml = format!(
        "[system]\nname = \"e2e-stall\"\n{}{}",
        vm_toml("a", 1, "128M", "quiet", "placement = { pcpus = [0] }"),
        vm_toml(
            "b",
            1,
            "128M",
            &keel_cmd(&cmd),
            "placement = { pcpus = [1] }"
        )
    );
    let _one = one_qemu();
    let Built {
        image, dir, cores, ..
    } = SUITE.build_with_stall(&sdk, "stall", &toml, config, Some("a"));

    let console = collect_console(
        spawn(&mut host::qemu_command(&image, cores), Stdio::null()),
        BOOT_TIMEOUT,
        |line| line.contains("keel-sel4: vm b: stopped: "),
    );
    std::fs::write(dir.join("console.log"), &console).unwrap();

    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines.contains(&"a| keel-sel4: vmm up (a_vmm)"), "{console}");
    assert!(lines.contains(&"b| KEEL-GUEST-READY"), "{console}");
    assert!(lines.contains(&"b| KEEL-CMD-EXIT 0"), "{console}");
    assert_eq!(
        lines.iter().filter(|l| **l == format!("b| {mark}")).count(),
        2,
        "b's lines are not whole\n{console}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("KEEL-STALL-PARTIAL")),
        "a's partial line was printed\n{console}"
    );
    assert!(
        lines.iter().all(|l| l.rfind("b| ").is_none_or(|i| i == 0)),
        "a b line is mixed into another line\n{console}"
    );
    assert!(!console.contains("a| KEEL-GUEST-READY"), "{console}");
    assert!(
        console.contains("b| keel-sel4: vm b: stopped: guest powered off"),
        "{console}"
    );
}

/// The guest's disk step for the reboot test: on the first boot the disk is blank, so the
/// guest writes the marker, syncs and reboots (PSCI SYSTEM_RESET); on the boot after the
/// restart it finds the marker and goes on to power off.
const REBOOT_CMD: &str = "if dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1 | grep -q '^KEEL-SEL4-REBOOT-MARKER'; then \
    echo KEEL-FOUND $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1); \
    else echo KEEL-SEL4-REBOOT-MARKER | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; \
    sync; echo KEEL-REBOOTING; reboot -f; sleep 30; fi";

#[test]
fn debian_guest_reboots_in_place_and_finds_its_disk_marker() {
    let test = "debian_guest_reboots_in_place_and_finds_its_disk_marker";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let dir = SUITE.dir("reboot");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let extra = format!("[[vm.disk]]\npath = \"{}\"\nid = \"e2e\"\n", disk.display());
    let toml = format!(
        "[system]\nname = \"e2e-reboot\"\n{}",
        vm_toml("linux", 1, "256M", &keel_cmd(REBOOT_CMD), &extra)
    );
    let _one = one_qemu();
    let config = host::Sdk::default_config(&sdk, keel_sel4::abi::board::NAME);
    let Built {
        image, dir, cores, ..
    } = SUITE.build(&sdk, "reboot", &toml, config);
    let child = spawn(&mut host::qemu_command(&image, cores), Stdio::null());
    let start = Instant::now();
    // Seconds since QEMU started: the guest's reset, the VMM's restart line, the guest's
    // first console line after it, and the second KEEL-GUEST-READY.
    let (mut reset, mut restart, mut first, mut ready) = (None, None, None, None);
    let console = collect_console(child, Duration::from_secs(360), |line| {
        let now = start.elapsed().as_secs_f64();
        if line.contains("KEEL-REBOOTING") {
            reset.get_or_insert(now);
        } else if line.contains("guest rebooted; restarting") {
            restart.get_or_insert(now);
        } else if restart.is_some() && !line.starts_with("keel-sel4:") {
            first.get_or_insert(now);
        }
        if restart.is_some() && line.contains("KEEL-GUEST-READY") {
            ready.get_or_insert(now);
        }
        line.contains(": stopped: ")
    });
    std::fs::write(dir.join("console.log"), &console).unwrap();

    assert!(console.contains("KEEL-REBOOTING"), "{console}");
    assert!(
        console.contains(
            "keel-sel4: vm linux: guest rebooted; restarting (1 of at most 5 per minute)"
        ),
        "{console}"
    );
    assert_eq!(
        console.matches("\nKEEL-GUEST-READY").count(),
        2,
        "{console}"
    );
    assert!(
        console.contains("KEEL-FOUND KEEL-SEL4-REBOOT-MARKER"),
        "{console}"
    );
    assert!(
        console.contains("keel-sel4: vm linux: stopped: guest powered off (PSCI SYSTEM_OFF)"),
        "{console}"
    );
    let s = |t: Option<f64>| t.map_or("n/a".into(), |t| format!("{t:.2} s"));
    eprintln!(
        "REBOOT-TIME (debug, -smp {cores}): guest reset at {}, VMM restart line {}, first guest line {}, KEEL-GUEST-READY again {} (from QEMU start)",
        s(reset),
        s(restart),
        s(first),
        s(ready)
    );
}

/// VM a of the admin test: on the first boot (blank disk) write a marker to the disk, then
/// write to 0x7000_0000, which makes its VMM fault (the test knob); on the boot after the
/// admin PD restarted the VMM, find the marker and raise the flag in the shared region.
const FAULTING_A_CMD: &str = "if dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1 | grep -q '^KEEL-ADMIN-MARKER'; then \
    echo KEEL-FOUND-AFTER-RESTART; devmem 0x50000000 32 0x4B45454C; \
    else echo KEEL-ADMIN-MARKER | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; sync; \
    echo KEEL-POKING-THE-VMM; devmem 0x70000000 32 1; sleep 60; fi";

/// VM b of the admin test: wait (at most 300 s) for a's flag, which a raises only after its
/// VMM was restarted.
const WAITING_B_CMD: &str = "echo B-WAITING; i=0; while [ \"$(devmem 0x60000000 32)\" != 0x4B45454C ] && [ $i -lt 3000 ]; \
    do sleep 0.1; i=$((i+1)); done; echo B-SAW=$(devmem 0x60000000 32)";

#[test]
fn faulted_vmm_is_restarted_by_the_admin_pd_and_its_guest_boots_again_while_another_vm_runs_on() {
    let test = "faulted_vmm_is_restarted_by_the_admin_pd_and_its_guest_boots_again_while_another_vm_runs_on";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let Some(config) = SUITE.smp_config(&sdk, test) else {
        return;
    };
    let dir = SUITE.dir("admin");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let map = |base: &str, access: &str, cpu: u32| {
        format!(
            "placement = {{ pcpus = [{cpu}] }}\n[[vm.shared]]\nregion = \"x\"\nbase = \"{base}\"\naccess = \"{access}\"\n"
        )
    };
    let a_extra = format!(
        "{}[[vm.disk]]\npath = \"{}\"\nid = \"e2e\"\n",
        map("0x5000_0000", "rw", 0),
        disk.display()
    );
    let toml = format!(
        "[system]\nname = \"e2e-admin\"\n[[shared]]\nname = \"x\"\nsize = \"64K\"\n{}{}",
        vm_toml("a", 1, "128M", &keel_cmd(FAULTING_A_CMD), &a_extra),
        vm_toml(
            "b",
            1,
            "128M",
            &keel_cmd(WAITING_B_CMD),
            &map("0x6000_0000", "ro", 1)
        )
    );
    let _one = one_qemu();
    let Built {
        image,
        dir,
        cores,
        system_file,
        ..
    } = SUITE.build_with(&sdk, "admin", &toml, config, |o| {
        o.test_fault_vm = Some("a".into());
        o.restart = host::restart_plans([("a", "on-failure"), ("b", "never")]).unwrap();
    });
    let (mut a_stopped, mut b_stopped) = (false, false);
    let console = collect_console(
        spawn(&mut host::qemu_command(&image, cores), Stdio::null()),
        Duration::from_secs(420),
        |line| {
            a_stopped |= line.contains("keel-sel4: vm a: stopped: ");
            b_stopped |= line.contains("keel-sel4: vm b: stopped: ");
            a_stopped && b_stopped
        },
    );
    std::fs::write(dir.join("console.log"), &console).unwrap();
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    let at = |want: &str| lines.iter().position(|l| l.contains(want));

    assert!(
        system_file
            .contains("<protection_domain name=\"a_vmm\" priority=\"101\" cpu=\"0\" id=\"0\" stack_size=\"0x10000\">"),
        "{system_file}"
    );
    assert!(lines.contains(&"a| KEEL-POKING-THE-VMM"), "{console}");
    assert!(
        lines.contains(&"a| keel-sel4: test knob: guest wrote 0x70000000; faulting on purpose"),
        "{console}"
    );
    let restart = at("admin| keel-admin: vm a: VMM a_vmm faulted (memory fault: data access at address 0x10, pc 0x")
        .unwrap_or_else(|| panic!("no restart line\n{console}"));
    assert!(
        lines[restart]
            .ends_with("; restarting it (1 of at most 5 per minute, restart = \"on-failure\")"),
        "{console}"
    );
    assert!(
        lines
            .contains(&"a| keel-sel4: vmm restarted by the admin PD (a_vmm); booting its VM again"),
        "{console}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| **l == "a| KEEL-GUEST-READY")
            .count(),
        2,
        "{console}"
    );
    assert!(lines.contains(&"a| KEEL-FOUND-AFTER-RESTART"), "{console}");
    assert!(
        console.contains("a| keel-sel4: vm a: stopped: guest powered off"),
        "{console}"
    );
    // b: booted once, never restarted, and saw a's flag, which a raised after its restart.
    assert_eq!(
        lines
            .iter()
            .filter(|l| **l == "b| KEEL-GUEST-READY")
            .count(),
        1,
        "{console}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("(b_vmm)")).count(),
        1,
        "{console}"
    );
    let saw =
        at("b| B-SAW=0x4B45454C").unwrap_or_else(|| panic!("b never saw a's flag\n{console}"));
    assert!(saw > restart, "{console}");
    assert!(
        console.contains("b| keel-sel4: vm b: stopped: guest powered off"),
        "{console}"
    );
}

/// The control VM's side of the control protocol (`keel_core::control`) in busybox sh:
/// `req OP TARGET SEQ` writes a request into the next slot of the control page at
/// 0x7100_0000 (32-bit halves of the 64-bit words), bumps the request head, rings the
/// doorbell at 0x7100_1000 and prints the response.
const CTL_LIB: &str = "P=$((0x71000000)); s=0; \
    req() { o=$((P + 8*(8 + 2*(s % 32)))); devmem $o 32 $1; devmem $((o+4)) 32 $2; devmem $((o+8)) 32 $3; devmem $((o+12)) 32 0; \
    s=$((s+1)); devmem $((P+8)) 32 $s; devmem 0x71001000 32 1; \
    i=0; while [ $(($(devmem $((P+24)) 32))) -lt $s ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
    r=$((P + 8*(72 + 2*((s-1) % 32)))); \
    echo CTL-RESP op=$1 target=$2 seq=$(($(devmem $r 32))) status=$(($(devmem $((r+8)) 32))) state=$(($(devmem $((r+12)) 32))); }; \
    flag() { i=0; while [ \"$(devmem 0x50000000 32)\" != 0x57454231 ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done; devmem 0x50000000 32 0; echo CTL-SAW-WEB; }; ";

/// The control VM `ctl` (index 0; rights on `web`, index 1: start, stop, status, not
/// restart): read web's state (a pool slot: stopped), ask for a restart (refused), start
/// it, wait for its flag, stop it, read its state, send an unknown op and a target out of
/// range, start it again and wait for its flag again.
fn ctl_cmd() -> String {
    format!(
        "{CTL_LIB} n=0; while [ \"$(devmem $P 32)\" != 0x43544C01 ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done; \
         echo CTL-MAGIC $(devmem $P 32); \
         req 4 1 101; req 3 1 102; req 1 1 103; flag; req 2 1 104; req 4 1 105; req 9 1 106; req 4 5 107; \
         req 1 1 108; flag; echo CTL-DONE"
    )
}

/// The pool slot `web`: raise the flag in the shared region once booted, then idle.
const WEB_CMD: &str =
    "devmem 0x50000000 32 0x57454231; echo WEB-FLAGGED; while true; do sleep 1; done";

#[test]
fn control_vm_starts_stops_and_starts_a_pool_slot_and_is_refused_what_it_has_no_right_to() {
    let test =
        "control_vm_starts_stops_and_starts_a_pool_slot_and_is_refused_what_it_has_no_right_to";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let Some(config) = SUITE.smp_config(&sdk, test) else {
        return;
    };
    let shared = |cpu: u32| {
        format!(
            "placement = {{ pcpus = [{cpu}] }}\n[[vm.shared]]\nregion = \"x\"\nbase = \"0x5000_0000\"\n"
        )
    };
    let ctl_extra = format!(
        "{}[[vm.control]]\nvm = \"web\"\nrights = [\"start\", \"stop\", \"status\"]\n",
        shared(0)
    );
    let toml = format!(
        "[system]\nname = \"e2e-control\"\n[[shared]]\nname = \"x\"\nsize = \"64K\"\n{}{}",
        vm_toml("ctl", 1, "128M", &keel_cmd(&ctl_cmd()), &ctl_extra),
        vm_toml(
            "web",
            1,
            "128M",
            &keel_cmd(WEB_CMD),
            &format!("start = false\n{}", shared(1))
        )
    );
    let _one = one_qemu();
    let Built {
        image,
        dir,
        cores,
        system_file,
        ..
    } = SUITE.build(&sdk, "control", &toml, config);
    let console = collect_console(
        spawn(&mut host::qemu_command(&image, cores), Stdio::null()),
        Duration::from_secs(420),
        |line| line.contains("keel-sel4: vm ctl: stopped: "),
    );
    std::fs::write(dir.join("console.log"), &console).unwrap();
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    let has = |want: &str| lines.contains(&want);

    assert!(
        system_file.contains("<map mr=\"ctl_control\" vaddr=\"0x71000000\" perms=\"rw\" />"),
        "{system_file}"
    );
    assert!(has("ctl| CTL-MAGIC 0x43544C01"), "{console}");
    assert!(
        has(
            "web| keel-sel4: vmm waiting (web_vmm): a pool slot (start = false); the admin PD starts it on request"
        ),
        "{console}"
    );
    assert!(
        has("ctl| CTL-RESP op=4 target=1 seq=101 status=0 state=2"),
        "{console}"
    );
    assert!(
        has("ctl| CTL-RESP op=3 target=1 seq=102 status=3 state=0"),
        "{console}"
    );
    assert!(
        has("ctl| CTL-RESP op=1 target=1 seq=103 status=0 state=1"),
        "{console}"
    );
    assert!(
        has("web| keel-sel4: vmm started by the admin PD (web_vmm): pool slot; booting its VM"),
        "{console}"
    );
    assert!(
        has("ctl| CTL-RESP op=2 target=1 seq=104 status=0 state=2"),
        "{console}"
    );
    assert!(
        has("admin| keel-admin: vm ctl asks to stop vm web: done"),
        "{console}"
    );
    assert!(
        has("ctl| CTL-RESP op=4 target=1 seq=105 status=0 state=2"),
        "{console}"
    );
    assert!(
        has("ctl| CTL-RESP op=9 target=1 seq=106 status=1 state=0"),
        "{console}"
    );
    assert!(
        has("ctl| CTL-RESP op=4 target=5 seq=107 status=2 state=0"),
        "{console}"
    );
    assert!(
        has("ctl| CTL-RESP op=1 target=1 seq=108 status=0 state=1"),
        "{console}"
    );
    assert!(
        has("web| keel-sel4: vmm restarted by the admin PD (web_vmm); booting its VM again"),
        "{console}"
    );
    assert_eq!(
        lines.iter().filter(|l| **l == "web| WEB-FLAGGED").count(),
        2,
        "{console}"
    );
    assert_eq!(
        lines.iter().filter(|l| **l == "ctl| CTL-SAW-WEB").count(),
        2,
        "{console}"
    );
    assert!(has("ctl| CTL-DONE"), "{console}");
}

/// Bytes the networking test sends from a to b (4 MiB).
const NET_BYTES: u64 = 4 << 20;

/// VM a of the networking test: eth0 up as 10.0.0.1, a file of random bytes, its sha256;
/// wait until b answers, `ping -c 3` it (the summary lines), send the file with `nc` and
/// time it: busybox `nc` half-closes at the end of the file and returns when the receiver
/// closes; to be sure every byte left before it powers off, the sender also waits until
/// its connection to port 5000 (0x1388) is neither ESTABLISHED nor FIN_WAIT1 in
/// /proc/net/tcp.
fn net_sender_cmd() -> String {
    format!(
        "ip link set eth0 up; ip addr add 10.0.0.1/24 dev eth0; \
dd if=/dev/urandom of=/tmp/f bs=4096 count={count} 2>/dev/null; \
echo KEEL-NET-SENT $(sha256sum /tmp/f | cut -d' ' -f1); \
n=0; until ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1 || [ $n -ge 120 ]; do n=$((n+1)); done; \
ping -c 3 10.0.0.2 | grep -E 'transmitted|round-trip' | while read -r l; do echo \"KEEL-NET-PING $l\"; done; \
t0=$(cut -d' ' -f1 /proc/uptime); timeout 300 nc 10.0.0.2 5000 </tmp/f; \
n=0; while [ $n -lt 6000 ] && awk '$3 ~ /:1388$/ && ($4 == \"01\" || $4 == \"04\") {{f = 1}} END {{exit !f}}' /proc/net/tcp; do usleep 50000; n=$((n+1)); done; \
echo KEEL-NET-SEND-TIME $t0 $(cut -d' ' -f1 /proc/uptime)",
        count = NET_BYTES / 4096
    )
}

/// VM b of the networking test: eth0 up as 10.0.0.2, listen with `nc`, wait until every
/// byte arrived (or 300 s), print the received bytes' sha256 and count, close. `nc`'s
/// stdin is a pipe that stays open: busybox `nc` half-closes the connection when its stdin
/// ends (and the script's stdin is /dev/null), which would end the sender's `nc` at once.
/// `/tmp/r` is created before `nc` starts: the background job's redirection may not have
/// run yet when the loop first reads it (seen under load: an empty `wc` operand ended the
/// loop at once and b powered off before a's ping).
fn net_receiver_cmd() -> String {
    format!(
        "ip link set eth0 up; ip addr add 10.0.0.2/24 dev eth0; \
: >/tmp/r; sleep 900 | nc -l -p 5000 >/tmp/r & p=$!; \
n=0; while [ $(wc -c </tmp/r) -lt {bytes} ] && [ $n -lt 3000 ]; do usleep 100000; n=$((n+1)); done; \
echo KEEL-NET-RECV $(sha256sum /tmp/r | cut -d' ' -f1) $(wc -c </tmp/r); kill $p 2>/dev/null; true",
        bytes = NET_BYTES
    )
}

/// The value after `marker ` on the console line of VM `vm` (`<vm>| <marker> ...`).
fn net_line<'a>(console: &'a str, vm: &str, marker: &str) -> Option<&'a str> {
    let prefix = format!("{vm}| {marker} ");
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
}

#[test]
fn two_linux_vms_ping_and_transfer_a_file_through_the_sel4_switch() {
    let test = "two_linux_vms_ping_and_transfer_a_file_through_the_sel4_switch";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let Some(config) = SUITE.smp_config(&sdk, test) else {
        return;
    };
    let net = "[[vm.net]]\nnetwork = \"lan\"";
    let toml = format!(
        "[system]\nname = \"e2e-net\"\n\n[[network]]\nname = \"lan\"\n{}{}",
        vm_toml(
            "a",
            1,
            "128M",
            &keel_cmd(&net_sender_cmd()),
            &format!("placement = {{ pcpus = [0] }}\n{net}")
        ),
        vm_toml(
            "b",
            1,
            "128M",
            &keel_cmd(&net_receiver_cmd()),
            &format!("placement = {{ pcpus = [1] }}\n{net}")
        )
    );

    let Booted {
        console,
        outcome: o,
        system_file,
    } = SUITE.build_and_run(&sdk, "net", &toml, config, Duration::from_secs(600));

    assert!(
        system_file.contains("<protection_domain name=\"keel_switch_lan\""),
        "{system_file}"
    );
    assert_eq!((o.vms_up, o.vms_stopped), (2, 2), "{console}");
    let ping = net_line(&console, "a", "KEEL-NET-PING").unwrap_or("");
    assert!(
        ping.contains("3 packets transmitted, 3 packets received"),
        "ping: {ping:?}\n{console}"
    );
    let sent = net_line(&console, "a", "KEEL-NET-SENT").expect("a's sha256");
    let recv = net_line(&console, "b", "KEEL-NET-RECV").expect("b's sha256");
    assert_eq!(recv, format!("{sent} {NET_BYTES}"), "{console}");
    let rtt = console
        .lines()
        .find_map(|l| l.split("a| KEEL-NET-PING round-trip ").nth(1))
        .unwrap_or("?");
    let times: Vec<f64> = net_line(&console, "a", "KEEL-NET-SEND-TIME")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let secs = match times[..] {
        [t0, t1] => t1 - t0,
        _ => f64::NAN,
    };
    eprintln!(
        "sel4 net: first guest ready after {:.1} s, ping round-trip {rtt}, {NET_BYTES} bytes in {secs:.2} s ({:.2} MiB/s), run {:.1} s",
        o.first_ready.unwrap_or(f64::NAN),
        NET_BYTES as f64 / (1 << 20) as f64 / secs,
        o.elapsed
    );
}

/// The pattern the driver VM writes to the passed-through disk, at sector 16.
const PASSTHROUGH_PATTERN: &[u8] = b"KEEL-PASSTHROUGH-PATTERN-20261205";

#[test]
fn driver_vm_owns_a_passed_through_virtio_blk_and_its_writes_reach_the_host_file() {
    let test = "driver_vm_owns_a_passed_through_virtio_blk_and_its_writes_reach_the_host_file";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let dir = SUITE.dir("passthrough");
    let disk = dir.join("host-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let pattern = std::str::from_utf8(PASSTHROUGH_PATTERN).unwrap();
    // QEMU gives the one `-device virtio-blk-device` the highest virtio-mmio transport:
    // slot 31, 0x0a003e00 (in the page 0x0a003000), SPI 47 = INTID 79.
    let cmd = format!(
        "ls /sys/bus/virtio/devices/; cat /sys/block/vda/size; \
         printf {pattern} | dd of=/dev/vda bs=512 seek=16 conv=sync 2>/dev/null; sync; \
         echo 3 > /proc/sys/vm/drop_caches; \
         echo READBACK=$(dd if=/dev/vda bs=512 skip=16 count=1 2>/dev/null | head -c {}); \
         grep -i virtio /proc/interrupts",
        PASSTHROUGH_PATTERN.len()
    );
    let extra = "ram_phys_addr = \"0x40000000\"\n\n[[vm.passthrough]]\nname = \"disk0\"\n\
        mmio = [{ base = \"0x0a003000\", size = \"4K\" }]\nirqs = [79]\n\
        dt = \"virtio,mmio\"\ndt_reg = [{ base = \"0x0a003e00\", size = \"0x200\" }]\n\
        dma = \"identity\"\n";
    let toml = format!(
        "[system]\nname = \"e2e-passthrough\"\n{}",
        vm_toml("driver", 1, "256M", &keel_cmd(&cmd), extra)
    );
    let _one = one_qemu();
    let config = host::Sdk::default_config(&sdk, keel_sel4::abi::board::NAME);
    let Built {
        image,
        dir,
        cores,
        system_file,
        ..
    } = SUITE.build(&sdk, "passthrough", &toml, config);
    assert!(
        system_file.contains(
            "<memory_region name=\"driver_ram\" size=\"0x10000000\" page_size=\"0x200000\" phys_addr=\"0x40000000\" />"
        ),
        "{system_file}"
    );
    assert!(
        system_file.contains(
            "<memory_region name=\"driver_pt_disk0_0\" size=\"0x1000\" phys_addr=\"0xa003000\" />"
        ),
        "{system_file}"
    );
    assert!(
        system_file.contains(
            "<map mr=\"driver_pt_disk0_0\" vaddr=\"0xa003000\" perms=\"rw\" cached=\"false\" />"
        ),
        "{system_file}"
    );
    assert!(
        system_file.contains("<irq irq=\"79\" id=\"61\" />"),
        "{system_file}"
    );
    let mut qemu = host::qemu_command(&image, cores);
    qemu.arg("-drive")
        .arg(format!("file={},if=none,format=raw,id=d0", disk.display()))
        .args(["-device", "virtio-blk-device,drive=d0"]);
    let start = Instant::now();
    let child = spawn(&mut qemu, Stdio::null());
    let console = collect_console(child, BOOT_TIMEOUT, |line| line.contains(": stopped: "));
    std::fs::write(dir.join("console.log"), &console).unwrap();
    eprintln!(
        "PASSTHROUGH ({config}): run to the VM's stop {:.1} s",
        start.elapsed().as_secs_f64()
    );

    assert!(
        console.contains(&format!("READBACK={pattern}")),
        "{console}"
    );
    // The completions came as the passed-through interrupt (`14:  4  GIC-0  79 Level
    // virtio0`): injected on seL4's notification, acknowledged at the guest's EOI.
    let irq_line = console
        .lines()
        .find(|l| l.contains(" 79 Level") && l.contains("virtio0"))
        .unwrap_or_else(|| panic!("no /proc/interrupts line for INTID 79\n{console}"));
    let count: u64 = irq_line
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    assert!(count > 0, "no interrupt on INTID 79: {irq_line}\n{console}");
    assert!(console.contains("KEEL-CMD-EXIT 0"), "{console}");
    assert!(
        console.contains("keel-sel4: vm driver: stopped: guest powered off (PSCI SYSTEM_OFF)"),
        "{console}"
    );
    let written = std::fs::read(&disk).unwrap();
    assert_eq!(
        &written[16 * 512..16 * 512 + PASSTHROUGH_PATTERN.len()],
        PASSTHROUGH_PATTERN,
        "the pattern did not reach the host file {}\n{console}",
        disk.display()
    );
}

/// A storage VM's passthrough of QEMU's virtio-blk (`serial=blk0`, [`qemu_with_blk0`]):
/// identity-mapped RAM at 0x4000_0000 for its DMA, the device's page and INTID 79.
const STORE_PASSTHROUGH: &str = "ram_phys_addr = \"0x40000000\"\n\n[[vm.passthrough]]\nname = \"blk0\"\n\
    mmio = [{ base = \"0x0a003000\", size = \"4K\" }]\nirqs = [79]\n\
    dt = \"virtio,mmio\"\ndt_reg = [{ base = \"0x0a003e00\", size = \"0x200\" }]\n\
    dma = \"identity\"\n";

/// QEMU for `image` with a virtio-blk device on the host file `disk`, its serial `blk0`
/// (the passed-through device's name: the agent finds its disk by it).
fn qemu_with_blk0(image: &std::path::Path, cores: u32, disk: &std::path::Path) -> Command {
    let mut qemu = host::qemu_command(image, cores);
    qemu.arg("-drive")
        .arg(format!("file={},if=none,format=raw,id=d0", disk.display()))
        .args(["-device", "virtio-blk-device,drive=d0,serial=blk0"]);
    qemu
}

/// The clients of the storage VM and where their served disks are on its device: 256 KiB
/// each, from 1 MiB.
const SERVED_CLIENTS: [(&str, u64); 2] = [("a", 1 << 20), ("b", (1 << 20) + (256 << 10))];

/// What client `vm` writes to its served disk.
fn served_pattern(vm: &str) -> String {
    format!("KEEL-SERVED-{vm}-BY-A-STORAGE-VM-ON-SEL4")
}

#[test]
fn client_disks_served_by_a_storage_vm_over_a_passed_through_virtio_blk_persist_in_the_host_file() {
    let test = "client_disks_served_by_a_storage_vm_over_a_passed_through_virtio_blk_persist_in_the_host_file";
    let Some(sdk) = SUITE.prerequisites(test) else {
        return;
    };
    let dir = SUITE.dir("served");
    let disk = dir.join("host-disk.img");
    std::fs::write(&disk, vec![0u8; 2 << 20]).unwrap();
    // The storage VM: QEMU's virtio-blk passed through (as in the passthrough test), its
    // agent started by /init (the plan puts keel.blk= on its command line); it stays up,
    // printing its disk's stat (diagnostics).
    let mut toml = format!(
        "[system]\nname = \"e2e-served\"\n{}",
        vm_toml(
            "store",
            1,
            "256M",
            &keel_cmd("while sleep 2; do echo STORE-STAT $(cat /sys/block/vda/stat); done"),
            STORE_PASSTHROUGH
        )
    );
    // Each client: its disk is 256 KiB of the passed-through device; it writes its pattern
    // at its sector 8 with dd and fsync (a flush: a bare `sync` flushes no raw block
    // device), reads it back past its page cache and powers off.
    for (vm, start) in SERVED_CLIENTS {
        let pattern = served_pattern(vm);
        let cmd = format!(
            "cat /sys/block/vda/size; \
             printf {pattern} | dd of=/dev/vda bs=512 seek=8 conv=sync,fsync 2>/dev/null; \
             echo SYNCED; echo 3 > /proc/sys/vm/drop_caches; \
             echo READBACK=$(dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c {}); \
             echo CLIENT-STAT $(cat /sys/block/vda/stat)",
            pattern.len()
        );
        let extra = format!(
            "[[vm.disk]]\nserved_by = \"store\"\nserver_passthrough = \"blk0\"\n\
             start = \"{start}\"\nsize = \"256K\"\n"
        );
        toml.push_str(&vm_toml(vm, 1, "128M", &keel_cmd(&cmd), &extra));
    }
    let _one = one_qemu();
    let config = host::Sdk::default_config(&sdk, keel_sel4::abi::board::NAME);
    let Built {
        image,
        dir,
        cores,
        system_file,
        ..
    } = SUITE.build(&sdk, "served", &toml, config);
    // Link k: in the storage VM at 512 GiB + k × the region's 2 MiB-aligned size, in its
    // client's VMM at 24 GiB.
    for (k, gpa) in [(0, 0x80_0000_0000u64), (1, 0x80_0040_0000)] {
        assert!(
            system_file.contains(&format!(
                "<map mr=\"keel_fwd_{k}\" vaddr=\"{gpa:#x}\" perms=\"rw\" />"
            )),
            "{system_file}"
        );
        assert!(
            system_file.contains(&format!(
                "<map mr=\"keel_fwd_{k}\" vaddr=\"0x600000000\" perms=\"rw\" />"
            )),
            "{system_file}"
        );
    }
    let mut qemu = qemu_with_blk0(&image, cores, &disk);
    let start = Instant::now();
    let child = spawn(&mut qemu, Stdio::null());
    let mut stopped = 0;
    let console = collect_console(child, BOOT_TIMEOUT, |line| {
        if SERVED_CLIENTS
            .iter()
            .any(|(vm, _)| line.contains(&format!("keel-sel4: vm {vm}: stopped: ")))
        {
            stopped += 1;
        }
        stopped == SERVED_CLIENTS.len()
    });
    std::fs::write(dir.join("console.log"), &console).unwrap();
    eprintln!(
        "SERVED ({config}): run to both clients' stop {:.1} s",
        start.elapsed().as_secs_f64()
    );

    assert!(console.contains("KEEL-AGENT-STARTED"), "{console}");
    let written = std::fs::read(&disk).unwrap();
    for (vm, start) in SERVED_CLIENTS {
        let pattern = served_pattern(vm);
        let line = |marker: &str| {
            console
                .lines()
                .find_map(|l| l.trim_end().strip_prefix(&format!("{vm}| {marker}")))
                .unwrap_or_else(|| panic!("no {marker} line of {vm}\n{console}"))
        };
        line("SYNCED");
        assert_eq!(line("READBACK="), pattern, "{console}");
        // dd's fsync sent a flush (the 16th field of the stat: flush requests), which the
        // agent turns into fdatasync.
        let stat = line("CLIENT-STAT ");
        let flushes: u64 = stat
            .split_whitespace()
            .nth(15)
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        assert!(flushes > 0, "{vm}: no flush: {stat}\n{console}");
        assert!(
            console.contains(&format!(
                "keel-sel4: vm {vm}: stopped: guest powered off (PSCI SYSTEM_OFF)"
            )),
            "{console}"
        );
        // The client's sector 8 is byte start + 4 KiB of the device: the storage VM wrote
        // it through its own virtio-blk driver to QEMU's file, and the flush (dd's fsync,
        // the agent's fdatasync) made it reach the file before the client stopped (QEMU
        // is stopped right after the last client).
        let at = start as usize + 8 * 512;
        assert_eq!(
            &written[at..at + pattern.len()],
            pattern.as_bytes(),
            "{vm}'s pattern did not reach the host file {} at {at:#x}\n{console}",
            disk.display()
        );
    }
}

/// What the client of a storage outage runs ([`storage_outage`]): direct 4 KiB reads of its
/// served disk, one a second, until one fails (`IO-FAILED <uptime before> <uptime after>`),
/// then until one succeeds again (`IO-RECOVERED`).
fn outage_client_cmd() -> String {
    let read = "dd if=/dev/vda of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null";
    format!(
        "up() {{ cut -d' ' -f1 /proc/uptime; }}; i=0; \
         while [ $i -lt 120 ]; do t0=$(up); \
           if {read}; then i=$((i+1)); sleep 1; else echo IO-FAILED $t0 $(up); break; fi; \
         done; \
         i=0; while [ $i -lt 180 ]; do if {read}; then echo IO-RECOVERED; break; fi; i=$((i+1)); sleep 1; done"
    )
}

/// A storage VM that owns QEMU's virtio-blk (as in the served test) and runs `store_cmd`
/// (which makes it stop answering, then answer again), and one client running
/// [`outage_client_cmd`]: the client's read that meets the outage fails after the
/// forwarding timeout (5 s of the generic timer's count, noticed at the VMM's next event:
/// not at once, not never), and its reads work again after it. Returns the console.
fn storage_outage(test: &str, name: &str, store_cmd: &str) -> Option<String> {
    let sdk = SUITE.prerequisites(test)?;
    let dir = SUITE.dir(name);
    let disk = dir.join("host-disk.img");
    std::fs::write(&disk, vec![0u8; 2 << 20]).unwrap();
    let mut toml = format!(
        "[system]\nname = \"e2e-{name}\"\n{}",
        vm_toml("store", 1, "256M", &keel_cmd(store_cmd), STORE_PASSTHROUGH)
    );
    toml.push_str(&vm_toml(
        "a",
        1,
        "128M",
        &keel_cmd(&outage_client_cmd()),
        "[[vm.disk]]\nserved_by = \"store\"\nserver_passthrough = \"blk0\"\n\
         start = \"1M\"\nsize = \"256K\"\n",
    ));
    let _one = one_qemu();
    let config = host::Sdk::default_config(&sdk, keel_sel4::abi::board::NAME);
    let Built {
        image, dir, cores, ..
    } = SUITE.build(&sdk, name, &toml, config);
    let mut qemu = qemu_with_blk0(&image, cores, &disk);
    let start = Instant::now();
    let child = spawn(&mut qemu, Stdio::null());
    let console = collect_console(child, Duration::from_secs(420), |line| {
        line.contains("keel-sel4: vm a: stopped: ")
    });
    std::fs::write(dir.join("console.log"), &console).unwrap();
    eprintln!(
        "{name} ({config}): run to the client's stop {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let line = |marker: &str| {
        console
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(&format!("a| {marker}")))
            .unwrap_or_else(|| panic!("no {marker} line of a\n{console}"))
    };
    let times: Vec<f64> = line("IO-FAILED ")
        .split_whitespace()
        .map(|w| w.parse().expect("uptime"))
        .collect();
    let waited = times[1] - times[0];
    eprintln!("{name}: the failed read took {waited:.2} s of the client's time");
    assert!(
        (4.5..=12.0).contains(&waited),
        "the failed read took {waited:.2} s, not the 5 s timeout (plus at most a few s to the next event)\n{console}"
    );
    line("IO-RECOVERED");
    assert!(
        console.contains("keel-sel4: vm a: stopped: guest powered off (PSCI SYSTEM_OFF)"),
        "{console}"
    );
    Some(console)
}

#[test]
fn a_storage_vm_that_stops_answering_fails_its_clients_io_in_bounded_time_and_serves_again_when_it_resumes()
 {
    // 20 s after boot the agent is stopped (SIGSTOP: it answers nothing, the requests stay
    // in the ring); 40 s later it goes on (SIGCONT) and answers the stale request (dropped
    // by id), then new ones.
    let store_cmd = "sleep 20; kill -STOP $(pidof keel-agent) && echo AGENT-STOPPED; \
        sleep 40; kill -CONT $(pidof keel-agent) && echo AGENT-RESUMED; \
        while sleep 5; do :; done";
    let Some(console) = storage_outage(
        "a_storage_vm_that_stops_answering_fails_its_clients_io_in_bounded_time_and_serves_again_when_it_resumes",
        "stalled",
        store_cmd,
    ) else {
        return;
    };
    assert!(console.contains("store| AGENT-STOPPED"), "{console}");
    assert!(console.contains("store| AGENT-RESUMED"), "{console}");
}

#[test]
fn a_storage_vm_that_crashes_fails_its_clients_io_in_bounded_time_and_serves_again_once_its_vmm_restarts_it()
 {
    // First boot: mark sector 0 of the owned disk (outside the client's range), wait 20 s,
    // then crash the kernel's way (sysrq b: an immediate reset, PSCI SYSTEM_RESET); the VMM
    // restarts the VM in place (on_reboot = "restart"). Second boot: the marker is there,
    // so it only serves.
    let store_cmd = "if dd if=/dev/vda bs=512 count=1 2>/dev/null | grep -q KEEL-CRASHED-ONCE; \
        then echo STORE-SECOND-BOOT; else \
        echo KEEL-CRASHED-ONCE | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null; \
        sleep 20; echo STORE-CRASHING; echo b > /proc/sysrq-trigger; fi; \
        while sleep 5; do :; done";
    let Some(console) = storage_outage(
        "a_storage_vm_that_crashes_fails_its_clients_io_in_bounded_time_and_serves_again_once_its_vmm_restarts_it",
        "crashed",
        store_cmd,
    ) else {
        return;
    };
    assert!(console.contains("store| STORE-CRASHING"), "{console}");
    assert!(
        console.contains("keel-sel4: vm store: guest rebooted; restarting (1 of at most"),
        "{console}"
    );
    assert!(console.contains("store| STORE-SECOND-BOOT"), "{console}");
}

/// The harness itself (no SDK needed): a console that falls silent does not hang a test.
#[test]
fn collect_console_returns_at_its_timeout_when_the_console_falls_silent() {
    let child = spawn(
        Command::new("sh").args(["-c", "echo first; sleep 60; echo never"]),
        Stdio::null(),
    );
    let start = Instant::now();

    let console = collect_console(child, Duration::from_secs(2), |_| false);

    assert_eq!(console, "first\n");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}

/// The suite for tests that need `keel-probe` in the guest.
const PROBE_SUITE: Suite = Suite {
    probe: true,
    ..SUITE
};

/// Bytes VM a sends to b over their vsock pair (and reads back).
const VSOCK_BYTES: u64 = 256 << 10;

/// Every `KEEL-PROBE <mode>` line VM `vm` printed, as `key=value` pairs.
fn probe_lines(console: &str, vm: &str, mode: &str) -> Vec<Vec<(String, String)>> {
    let prefix = format!("{vm}| KEEL-PROBE {mode} ");
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .map(sel4::pairs)
        .collect()
}

/// The value of `key` in a probe line.
fn probe_word<'a>(line: &'a [(String, String)], key: &str) -> Option<&'a str> {
    line.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// ECONNRESET on Linux arm64: what `connect` returns when the device answers with a reset.
const ECONNRESET: &str = "104";

#[test]
fn vsock_pair_echoes_between_two_guests_and_others_are_reset_on_sel4() {
    let test = "vsock_pair_echoes_between_two_guests_and_others_are_reset_on_sel4";
    let Some(sdk) = PROBE_SUITE.prerequisites(test) else {
        return;
    };
    let Some(config) = PROBE_SUITE.smp_config(&sdk, test) else {
        return;
    };
    // a (CID 3) and b (CID 4) are the allowed pair: b echoes one connection on port 5000;
    // a sends it VSOCK_BYTES (retrying for up to 300 s while b's listener is not up: on a
    // loaded machine b's boot took 103 s) and checks the echo, then connects to the host
    // (CID 2: there is none on seL4). c (CID 5) is in no pair: its connection to b is
    // reset by its own device. b has core 1 to itself; a and c share core 0.
    let toml = format!(
        "[system]\nname = \"e2e-vsock\"\n\n[vsock]\nallow = [[\"a\", \"b\"]]\n{}{}{}",
        vm_toml(
            "a",
            1,
            "128M",
            &keel_cmd(&format!(
                "keel-probe vsock-connect 4 5000 {VSOCK_BYTES} 300; keel-probe vsock-connect 2 5000 4096 0"
            )),
            "placement = { pcpus = [0] }\n\n[vm.vsock]\ncid = 3"
        ),
        vm_toml(
            "b",
            1,
            "128M",
            &keel_cmd("keel-probe vsock-listen 5000 1"),
            "placement = { pcpus = [1] }\n\n[vm.vsock]\ncid = 4"
        ),
        vm_toml(
            "c",
            1,
            "128M",
            &keel_cmd("keel-probe vsock-connect 4 5000 4096 0"),
            "placement = { pcpus = [0] }\n\n[vm.vsock]\ncid = 5"
        ),
    );

    let Booted {
        console,
        outcome: o,
        system_file,
    } = PROBE_SUITE.build_and_run(&sdk, "vsock", &toml, config, Duration::from_secs(600));

    // The pair's two rings are mapped into a's and b's VMMs only, one channel joins them.
    for r in ["keel_vsock_0_0", "keel_vsock_0_1"] {
        assert_eq!(
            system_file.matches(&format!("<map mr=\"{r}\"")).count(),
            2,
            "{system_file}"
        );
    }
    let c_pd = &system_file[system_file
        .find("<protection_domain name=\"c_vmm\"")
        .expect("c's VMM PD")..];
    let c_pd = &c_pd[..c_pd.find("</protection_domain>").unwrap()];
    assert!(!c_pd.contains("keel_vsock"), "{c_pd}");
    assert_eq!((o.vms_up, o.vms_stopped), (3, 3), "{console}");

    let a = probe_lines(&console, "a", "vsock-connect");
    let to_b = a
        .iter()
        .find(|l| probe_word(l, "cid") == Some("4"))
        .unwrap_or_else(|| panic!("no line of a's connection to b\n{console}"));
    let bytes = VSOCK_BYTES.to_string();
    assert_eq!(probe_word(to_b, "bytes"), Some(bytes.as_str()), "{console}");
    assert_eq!(
        probe_word(to_b, "echoed"),
        Some(bytes.as_str()),
        "{console}"
    );
    assert_eq!(probe_word(to_b, "mismatched"), Some("0"), "{console}");
    // b's VMM stamped the source CID: b saw a's.
    let echo = probe_lines(&console, "b", "vsock-echo");
    assert_eq!(echo.len(), 1, "{console}");
    assert_eq!(probe_word(&echo[0], "from_cid"), Some("3"), "{console}");
    assert_eq!(
        probe_word(&echo[0], "bytes"),
        Some(bytes.as_str()),
        "{console}"
    );
    // No host on seL4: a's connection to CID 2 is reset by its device.
    let to_host = a
        .iter()
        .find(|l| probe_word(l, "cid") == Some("2"))
        .unwrap_or_else(|| panic!("no line of a's connection to the host\n{console}"));
    assert_eq!(probe_word(to_host, "refused"), Some("1"), "{console}");
    assert_eq!(probe_word(to_host, "errno"), Some(ECONNRESET), "{console}");
    // c is in no allowed pair: its connection to b is reset.
    let c = probe_lines(&console, "c", "vsock-connect");
    assert_eq!(c.len(), 1, "{console}");
    assert_eq!(probe_word(&c[0], "refused"), Some("1"), "{console}");
    assert_eq!(probe_word(&c[0], "errno"), Some(ECONNRESET), "{console}");

    eprintln!(
        "sel4 vsock: first guest ready after {:.1} s, {VSOCK_BYTES} bytes a -> b -> a in {} ms ({} MiB/s), run {:.1} s",
        o.first_ready.unwrap_or(f64::NAN),
        probe_word(to_b, "ms").unwrap_or("?"),
        probe_word(to_b, "mib_per_s").unwrap_or("?"),
        o.elapsed
    );
}
