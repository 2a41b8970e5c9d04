//! The supervisor in-process with real VMM processes (the `keel` binary built next to this
//! test, running the x86 test guest): lifecycle, restart policies, limits, adoption. The
//! end-to-end tests through `keel daemon` and its socket are in tests/daemon.rs.
//!
//! Without /dev/kvm each test prints `SKIPPED` and records it in `$KEEL_SKIP_LOG`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Config, ProcessSupervisor};
use crate::admin::model::{AdminError, CreateVm, Event, RestartPolicy, Supervisor, VmState};

#[path = "../../../tests/common/guest.rs"]
mod guest;
#[path = "../../../tests/common/admin.rs"]
mod helpers;
use helpers::{eventually, limits, vm};
#[path = "../../../../keel-kvm/tests/common/skip.rs"]
mod skip;

/// Longest a test guest may take to print its first lines (two cores shared with builds).
const BOOT: Duration = Duration::from_secs(30);

/// One supervisor test at a time: each starts several VMs on two shared cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// The `keel` binary cargo builds next to this test (`target/<profile>/keel`).
fn keel_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("keel"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "no keel binary at {} (run these tests with `cargo test -p keel`, which builds it)",
        bin.display()
    );
    bin
}

struct Harness {
    dir: PathBuf,
    sup: Arc<ProcessSupervisor>,
    _serial: MutexGuard<'static, ()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.sup.shutdown_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-sup-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A supervisor of the system `toml` in a fresh state directory; `None` (skipped) without
/// /dev/kvm.
fn harness(test: &str, toml: &str) -> Option<Harness> {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !skip::kvm_or_skip("supervisor", test) {
        return None;
    }
    let dir = scratch(test);
    let system = dir.join("system.toml");
    std::fs::write(&system, toml).unwrap();
    let sup = start(&dir);
    Some(Harness {
        dir,
        sup,
        _serial: serial,
    })
}

fn start(dir: &Path) -> Arc<ProcessSupervisor> {
    ProcessSupervisor::start(Config {
        system_file: dir.join("system.toml"),
        state_dir: dir.join("state"),
        exe: keel_binary(),
        log_level: keel_kvm::log::Level::Warn,
    })
    .map_err(|f| f.message)
    .unwrap()
}

fn serial(h: &Harness, vm: &str) -> String {
    std::fs::read_to_string(h.dir.join("state/vms").join(vm).join("serial.log")).unwrap_or_default()
}

fn pid(h: &Harness, vm: &str) -> i32 {
    h.sup.get(vm).unwrap().pid.map(|p| p as i32).unwrap()
}

fn kill9(pid: i32) {
    // SAFETY: signalling a VMM process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn alive(pid: i32) -> bool {
    super::process::stat(pid).is_some_and(|(s, _)| s != 'Z')
}

fn create(name: &str, memory_mib: u64, cmdline: &str) -> CreateVm {
    CreateVm {
        name: name.into(),
        kernel: guest::testguest().display().to_string(),
        initrd: None,
        cmdline: cmdline.into(),
        memory_mib,
        vcpus: 1,
        disks: vec![],
        networks: vec![],
        restart: RestartPolicy::Never,
    }
}

#[test]
fn static_vms_start_with_the_daemon_and_stop_on_request() {
    let Some(h) = harness(
        "static_vms_start_with_the_daemon_and_stop_on_request",
        &vm("a", "keeltest=pause:60000", "never"),
    ) else {
        return;
    };
    assert!(eventually(BOOT, || serial(&h, "a").contains("pause 60000 ms")));
    let p = pid(&h, "a");

    let info = h.sup.stop("a").unwrap();

    assert_eq!(info.state, VmState::Stopped);
    assert_eq!(info.pid, None);
    assert!(!alive(p));
}

#[test]
fn pause_stops_the_vmm_and_resume_continues_it() {
    let Some(h) = harness(
        "pause_stops_the_vmm_and_resume_continues_it",
        &vm("a", "keeltest=pause:60000", "never"),
    ) else {
        return;
    };
    let p = pid(&h, "a");

    assert_eq!(h.sup.pause("a").unwrap().state, VmState::Paused);
    assert!(eventually(Duration::from_secs(2), || {
        super::process::stat(p).is_some_and(|(s, _)| s == 'T')
    }));
    assert_eq!(h.sup.resume("a").unwrap().state, VmState::Running);
    assert!(eventually(Duration::from_secs(2), || {
        super::process::stat(p).is_some_and(|(s, _)| s != 'T')
    }));
}

#[test]
fn a_killed_vmm_is_restarted_within_a_second_and_the_other_vm_keeps_running() {
    let toml = format!(
        "{}{}",
        vm("a", "keeltest=pause:60000", "on-failure"),
        vm("b", "keeltest=pause:60000", "never")
    );
    let Some(h) = harness(
        "a_killed_vmm_is_restarted_within_a_second_and_the_other_vm_keeps_running",
        &toml,
    ) else {
        return;
    };
    assert!(eventually(BOOT, || serial(&h, "a")
        .contains("pause 60000 ms")
        && serial(&h, "b").contains("pause 60000 ms")));
    let events = h.sup.subscribe();
    let (a, b) = (pid(&h, "a"), pid(&h, "b"));

    let killed = Instant::now();
    kill9(a);

    assert!(eventually(Duration::from_secs(1), || {
        h.sup.get("a").unwrap().pid.is_some_and(|p| p as i32 != a)
    }));
    let elapsed = killed.elapsed();
    let info = h.sup.get("a").unwrap();
    assert_eq!((info.state, info.restarts), (VmState::Running, 1));
    assert_eq!(info.last_exit.as_deref(), Some("killed by signal 9"));
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    let got: Vec<Event> = events.try_iter().collect();
    assert!(got.contains(&Event::Crashed {
        vm: "a".into(),
        exit: "killed by signal 9".into()
    }));
    assert!(got.contains(&Event::Restarted {
        vm: "a".into(),
        restarts: 1
    }));
    assert_eq!(pid(&h, "b"), b);
    assert_eq!(h.sup.get("b").unwrap().state, VmState::Running);
    let restarted = eventually(BOOT, || {
        serial(&h, "a").matches("pause 60000 ms").count() == 2
    });
    assert!(
        restarted,
        "{:?} (wchan {:?})\n{}\n{}",
        h.sup.get("a"),
        std::fs::read_to_string(format!("/proc/{}/wchan", pid(&h, "a"))),
        serial(&h, "a"),
        std::fs::read_to_string(h.dir.join("state/vms/a/vmm.log")).unwrap_or_default()
    );
    assert!(alive(b));
}

#[test]
fn a_vm_with_restart_never_stays_crashed_when_killed() {
    let Some(h) = harness(
        "a_vm_with_restart_never_stays_crashed_when_killed",
        &vm("a", "keeltest=pause:60000", "never"),
    ) else {
        return;
    };
    let a = pid(&h, "a");

    kill9(a);

    assert!(eventually(Duration::from_secs(1), || h
        .sup
        .get("a")
        .unwrap()
        .state
        == VmState::Crashed));
    std::thread::sleep(Duration::from_millis(500));
    let info = h.sup.get("a").unwrap();
    assert_eq!(
        (info.state, info.pid, info.restarts),
        (VmState::Crashed, None, 0)
    );
}

#[test]
fn a_guest_that_powers_off_on_request_is_stopped_before_the_deadline() {
    let Some(h) = harness(
        "a_guest_that_powers_off_on_request_is_stopped_before_the_deadline",
        &vm("a", "keeltest=await-poweroff:60000", "always"),
    ) else {
        return;
    };
    assert!(eventually(BOOT, || serial(&h, "a").contains("awaiting poweroff")));

    let asked = Instant::now();
    assert_eq!(
        h.sup.shutdown("a", Duration::from_secs(30)).unwrap().state,
        VmState::ShuttingDown
    );

    assert!(eventually(Duration::from_secs(10), || h
        .sup
        .get("a")
        .unwrap()
        .state
        == VmState::Stopped));
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert_eq!(h.sup.get("a").unwrap().last_exit.as_deref(), Some("exit 0"));
    assert!(serial(&h, "a").contains("poweroff requested"));
}

#[test]
fn a_guest_that_ignores_the_shutdown_is_stopped_hard_at_the_deadline() {
    let Some(h) = harness(
        "a_guest_that_ignores_the_shutdown_is_stopped_hard_at_the_deadline",
        &vm("a", "keeltest=pause:60000", "always"),
    ) else {
        return;
    };
    assert!(eventually(BOOT, || serial(&h, "a").contains("pause 60000 ms")));

    let asked = Instant::now();
    h.sup.shutdown("a", Duration::from_millis(300)).unwrap();

    assert!(eventually(Duration::from_secs(3), || h
        .sup
        .get("a")
        .unwrap()
        .state
        == VmState::Stopped));
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        h.sup.get("a").unwrap().last_exit.as_deref(),
        Some("killed by signal 9")
    );
}

#[test]
fn dynamic_vms_beyond_the_limits_are_refused_naming_the_limit() {
    let toml = format!(
        "{}{}",
        vm("a", "keeltest=pause:60000", "never"),
        limits(1, "64M", 4)
    );
    let Some(h) = harness(
        "dynamic_vms_beyond_the_limits_are_refused_naming_the_limit",
        &toml,
    ) else {
        return;
    };

    let too_big = h.sup.create(create("d1", 128, "keeltest=pause:1000"));
    h.sup
        .create(create("d1", 32, "keeltest=pause:1000"))
        .unwrap();
    let too_many = h.sup.create(create("d2", 32, "keeltest=pause:1000"));

    assert_eq!(
        too_big,
        Err(AdminError::Limit {
            limit: "limits.memory",
            detail: "needs 128 MiB, 64 MiB left".into()
        })
    );
    assert_eq!(
        too_many,
        Err(AdminError::Limit {
            limit: "limits.max_vms",
            detail: "needs 1 more VM, 1 of 1 exist".into()
        })
    );
}

#[test]
fn the_console_carries_serial_output_out_and_input_in() {
    let Some(h) = harness(
        "the_console_carries_serial_output_out_and_input_in",
        &vm("a", "keeltest=await-poweroff:60000", "never"),
    ) else {
        return;
    };
    let mut console = h.sup.console("a").unwrap();
    console
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(eventually(BOOT, || serial(&h, "a").contains("awaiting poweroff")));

    std::io::Write::write_all(&mut console, b"poweroff\n").unwrap();

    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("poweroff requested") {
        match std::io::Read::read(&mut console, &mut buf) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    assert!(seen.contains("poweroff requested"), "{seen}");
    assert!(eventually(Duration::from_secs(5), || h
        .sup
        .get("a")
        .unwrap()
        .state
        == VmState::Stopped));
}

#[test]
fn a_static_vm_cannot_be_deleted() {
    let Some(h) = harness(
        "a_static_vm_cannot_be_deleted",
        &vm("a", "keeltest=pause:60000", "never"),
    ) else {
        return;
    };

    let r = h.sup.delete("a");

    assert!(matches!(r, Err(AdminError::Invalid(_))), "{r:?}");
}

#[test]
fn a_new_supervisor_adopts_the_running_vmms_and_can_stop_them() {
    let toml = format!(
        "{}{}",
        vm("a", "keeltest=pause:60000", "never"),
        limits(2, "64M", 4)
    );
    let Some(h) = harness(
        "a_new_supervisor_adopts_the_running_vmms_and_can_stop_them",
        &toml,
    ) else {
        return;
    };
    h.sup
        .create(create("d", 32, "keeltest=pause:60000"))
        .unwrap();
    h.sup.start("d").unwrap();
    let (a, d) = (pid(&h, "a"), pid(&h, "d"));
    // The first supervisor goes away without stopping anything (as a killed daemon).
    {
        let mut first = h.sup.lock();
        first.closing = true;
        first.vms.iter_mut().for_each(|v| v.proc = None);
    }

    let second = start(&h.dir);

    let (ia, id) = (second.get("a").unwrap(), second.get("d").unwrap());
    assert_eq!((ia.state, ia.pid), (VmState::Running, Some(a as u32)));
    assert_eq!(
        (id.state, id.pid, id.r#static),
        (VmState::Running, Some(d as u32), false)
    );
    assert_eq!(second.stop("a").unwrap().state, VmState::Stopped);
    assert!(!alive(a));
    second.shutdown_all();
    assert!(!alive(d));
}

/// This process's resident set, KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// How much the resident set may grow over the 50 cycles (allocator noise, not a leak of
/// one VM's worth per cycle).
const RSS_GROWTH_KIB: u64 = 4096;

#[test]
fn creating_starting_and_stopping_50_vms_grows_no_descriptors_nor_memory() {
    let toml = format!(
        "{}{}",
        vm("a", "keeltest=pause:60000", "never"),
        limits(4, "128M", 4)
    );
    let Some(h) = harness(
        "creating_starting_and_stopping_50_vms_grows_no_descriptors_nor_memory",
        &toml,
    ) else {
        return;
    };
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let cycle = |n: usize| {
        let name = format!("d{n}");
        h.sup
            .create(create(&name, 32, "keeltest=pause:60000"))
            .unwrap();
        h.sup.start(&name).unwrap();
        h.sup.stop(&name).unwrap();
        h.sup.delete(&name).unwrap();
    };
    // Warm up (threads, caches), then measure.
    cycle(0);
    let (before, rss_before) = (fds(), rss_kib());

    for n in 1..=50 {
        cycle(n);
    }

    let (after, rss_after) = (fds(), rss_kib());
    assert!(
        after <= before,
        "{before} descriptors before, {after} after"
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_KIB,
        "RSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert_eq!(h.sup.list().len(), 1);
}

#[test]
fn a_hostile_exit_record_is_read_bounded_and_without_control_characters() {
    let dir = std::env::temp_dir().join(format!("keel-exit-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(crate::admin::vmmproc::EXIT_FILE);

    // One endless line (what a compromised VMM could write): only the first 4 KiB count.
    std::fs::write(&path, "x".repeat(1 << 20)).unwrap();
    assert_eq!(
        super::read_exit(&dir).unwrap().len(),
        super::EXIT_RECORD_MAX as usize
    );

    // A forged log line: control characters do not reach the API or the log.
    std::fs::write(&path, "exit 0\u{1b}[2J\rkeel: VM \"other\" crashed\nsecond").unwrap();
    assert_eq!(
        super::read_exit(&dir).unwrap(),
        "exit 0?[2J?keel: VM \"other\" crashed"
    );

    // The honest record.
    std::fs::write(&path, "exit 3\nguest crashed\n").unwrap();
    assert_eq!(super::read_exit(&dir).unwrap(), "exit 3");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pool_port_given_to_a_new_vm_drops_the_frames_queued_for_the_previous_one() {
    use keel_net::ring::{FrameConsumer, FrameProducer, MAX_FRAME, Recv};
    let slots = 16u32;
    let len = keel_spec::plan::ring_window_len(slots) as usize;
    let fds = keel_kvm::net::PortFds::create("reuse-test", len).unwrap();
    // The switch's side, queueing frames for a holder that has gone.
    let switch_map = fds.from_switch.map().unwrap();
    // SAFETY: `switch_map` outlives the producer (both live to the end of the test).
    let mut switch = FrameProducer::attach(unsafe { switch_map.frame_window(16) }.unwrap());
    for f in [b"for the old vm 1", b"for the old vm 2"] {
        switch.send(f).unwrap();
    }

    let dropped = super::drop_queued_frames(&fds, u64::from(slots)).unwrap();
    switch.send(b"for the new vm").unwrap();

    assert_eq!(dropped, 2);
    // The next VMM attaches as `VmmPort` does and sees only what came after.
    let vmm_map = fds.from_switch.map().unwrap();
    // SAFETY: `vmm_map` outlives the consumer.
    let mut vmm = FrameConsumer::attach(unsafe { vmm_map.frame_window(16) }.unwrap());
    let mut buf = [0u8; MAX_FRAME];
    assert_eq!(vmm.recv(&mut buf).unwrap(), Recv::Frame(14));
    assert_eq!(&buf[..14], b"for the new vm");
    assert_eq!(vmm.recv(&mut buf).unwrap(), Recv::Empty);
}

#[test]
fn a_pool_port_whose_ring_indices_were_left_inconsistent_is_not_reset() {
    let slots = 16u32;
    let len = keel_spec::plan::ring_window_len(slots) as usize;
    let fds = keel_kvm::net::PortFds::create("wild-test", len).unwrap();
    // A hostile previous holder wrote a `tail` far from `head` (the header's `tail` is at
    // byte 128, `head` at 0) through its mapping.
    let map = fds.from_switch.map().unwrap();
    // SAFETY: byte 128 is inside the mapping's header and 8-aligned (the mapping is
    // page-aligned); nothing else accesses the ring during this test.
    unsafe { map.as_ptr().add(128).cast::<u64>().write_volatile(1000) };

    let r = super::drop_queued_frames(&fds, u64::from(slots));

    assert!(matches!(r, Err(super::PortReuseError::Wild(_))), "{r:?}");
}

#[test]
fn a_switchs_port_descriptors_are_read_from_its_command_line_in_order() {
    let argv = |ports: &[&str]| {
        let mut a: Vec<String> = ["keel", "__switch", "s.toml", "--network", "lan", "--pool"]
            .map(String::from)
            .to_vec();
        for p in ports {
            a.push("--port".into());
            a.push((*p).into());
        }
        a
    };

    assert_eq!(
        super::process::switch_ports(&argv(&["3,4,6,5", "7,8,10,9"])),
        Some(vec![[3, 4, 6, 5], [7, 8, 10, 9]])
    );
    assert_eq!(super::process::switch_ports(&argv(&["3,4,6"])), None);
    assert_eq!(super::process::switch_ports(&argv(&["3,4,x,5"])), None);
}
