//! End-to-end tests of `keel daemon`: the real binary supervising test guests, driven over
//! its Unix socket with the REST API (docs/admin.md, docs/api.yaml) by a tiny HTTP client.
//!
//! Without /dev/kvm every test prints `SKIPPED: /dev/kvm not available` and records the
//! skip in `$KEEL_SKIP_LOG`. The test guest is built if missing.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/guest.rs"]
mod guest;
#[path = "common/admin.rs"]
mod helpers;
use helpers::{eventually, limits, vm};
#[path = "../../keel-kvm/tests/common/skip.rs"]
mod skip;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// Longest a test guest may take to print its first lines (two cores shared with builds).
const BOOT: Duration = Duration::from_secs(30);

/// One daemon test at a time: each runs several VMs on two shared cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn kvm_or_skip(test: &str) -> bool {
    skip::kvm_or_skip("daemon", test)
}

/// A response: status code and body.
#[derive(Debug)]
struct Response {
    status: u16,
    body: String,
}

impl Response {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A running `keel daemon` in its own state directory.
struct Daemon {
    dir: PathBuf,
    child: Child,
    token: String,
}

fn scratch() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "keel-daemon-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spawn_daemon(dir: &Path) -> Child {
    let state = dir.join("state");
    Command::new(KEEL)
        .args([
            "daemon",
            "system.toml",
            "--log-level",
            "warn",
            "--state-dir",
        ])
        .arg(&state)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .expect("keel daemon starts")
}

impl Daemon {
    /// `keel daemon` of the system `toml`, once its socket and admin token exist.
    fn start(toml: &str) -> Daemon {
        let dir = scratch();
        std::fs::write(dir.join("system.toml"), toml).unwrap();
        let child = spawn_daemon(&dir);
        Daemon::ready(dir, child)
    }

    fn ready(dir: PathBuf, child: Child) -> Daemon {
        let state = dir.join("state");
        let up = eventually(Duration::from_secs(10), || {
            state.join("admin.token").exists()
                && UnixStream::connect(state.join("keel.sock")).is_ok()
        });
        assert!(
            up,
            "keel daemon did not serve its socket:\n{}",
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        let token = std::fs::read_to_string(state.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Daemon { dir, child, token }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut s = UnixStream::connect(self.dir.join("state/keel.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: keel\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.token,
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        parse_response(&raw)
    }

    fn get_vm(&self, vm: &str) -> serde_json::Value {
        let r = self.request("GET", &format!("/v1/vms/{vm}"), None);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    }

    fn state_of(&self, vm: &str) -> String {
        self.get_vm(vm)["state"].as_str().unwrap_or("").to_string()
    }

    fn pid_of(&self, vm: &str) -> Option<i64> {
        self.get_vm(vm)["pid"].as_i64()
    }

    fn put(&self, vm: &str, action: &str) -> Response {
        self.request("PUT", &format!("/v1/vms/{vm}/{action}"), None)
    }

    fn serial(&self, vm: &str) -> String {
        std::fs::read_to_string(self.dir.join("state/vms").join(vm).join("serial.log"))
            .unwrap_or_default()
    }

    /// The daemon's open descriptors and resident set (KiB).
    fn footprint(&self) -> (usize, u64) {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count();
        let rss = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        (fds, rss)
    }

    /// Every VMM pid the state directory records.
    fn recorded_pids(&self) -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("state/vms")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("vmm.json")).ok())
            .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .filter_map(|v| v["pid"].as_i64())
            .filter_map(|p| i32::try_from(p).ok())
            .collect()
    }

    /// SIGTERM and wait: the daemon stops its VMs first.
    fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid() as i32, libc::SIGTERM);
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.pid() as i32, libc::SIGTERM);
            let _ = self.child.wait();
        }
        // Whatever a killed daemon left behind.
        for p in self.recorded_pids() {
            if is_vmm(p) {
                signal(p, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: signalling a process this test started (or one it started).
    unsafe { libc::kill(pid, sig) };
}

/// Whether `pid` runs a keel VMM (not ended, not reused).
fn is_vmm(pid: i32) -> bool {
    runs(pid, b"__vmm")
}

/// Whether `pid` runs (not a zombie) a keel process with `word` on its command line.
fn runs(pid: i32, word: &[u8]) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|r| r.trim_start().starts_with('Z'));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !stat.is_empty() && !zombie && cmdline.windows(word.len()).any(|w| w == word)
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Response { status, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn create_body(name: &str, memory_mib: u64, cmdline: &str) -> String {
    serde_json::json!({
        "name": name,
        "kernel": guest::testguest().display().to_string(),
        "cmdline": cmdline,
        "memory_mib": memory_mib,
    })
    .to_string()
}

#[test]
fn the_daemon_starts_the_static_vms_and_stops_one_on_request() {
    if !kvm_or_skip("the_daemon_starts_the_static_vms_and_stops_one_on_request") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = Daemon::start(&vm("a", "keeltest=pause:60000", "never"));
    assert!(eventually(BOOT, || d
        .serial("a")
        .contains("pause 60000 ms")));
    let pid = d.pid_of("a").unwrap() as i32;

    let r = d.put("a", "stop");

    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["state"], "stopped");
    assert!(!is_vmm(pid));
}

#[test]
fn the_daemon_starts_a_vsock_pair_with_its_rings() {
    if !kvm_or_skip("the_daemon_starts_a_vsock_pair_with_its_rings") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let system = format!(
        "[vsock]\nallow = [[\"a\", \"b\"]]\n{}[vm.vsock]\ncid = 3\n{}[vm.vsock]\ncid = 4\n",
        vm("a", "keeltest=pause:60000", "never"),
        vm("b", "keeltest=pause:60000", "never")
    );

    let d = Daemon::start(&system);

    for name in ["a", "b"] {
        assert!(
            eventually(BOOT, || d.serial(name).contains("pause 60000 ms")),
            "vm {name}: {}",
            d.serial(name)
        );
        assert!(
            d.serial(name).contains(": device 19 ("),
            "{}",
            d.serial(name)
        );
    }
}

#[test]
fn a_vmm_killed_with_sigkill_is_restarted_within_a_second_and_the_other_vm_keeps_running() {
    if !kvm_or_skip(
        "a_vmm_killed_with_sigkill_is_restarted_within_a_second_and_the_other_vm_keeps_running",
    ) {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = Daemon::start(&format!(
        "{}{}",
        vm("a", "keeltest=pause:60000", "on-failure"),
        vm("b", "keeltest=pause:60000", "never")
    ));
    assert!(eventually(BOOT, || d
        .serial("a")
        .contains("pause 60000 ms")
        && d.serial("b").contains("pause 60000 ms")));
    let (a, b) = (d.pid_of("a").unwrap(), d.pid_of("b").unwrap());

    let killed = Instant::now();
    signal(a as i32, libc::SIGKILL);

    assert!(eventually(Duration::from_secs(1), || d
        .pid_of("a")
        .is_some_and(|p| p != a)));
    assert!(killed.elapsed() < Duration::from_secs(1));
    let info = d.get_vm("a");
    assert_eq!(info["restarts"], 1);
    assert_eq!(info["last_exit"], "killed by signal 9");
    assert_eq!(d.pid_of("b"), Some(b));
    assert_eq!(d.state_of("b"), "running");
    assert!(is_vmm(b as i32));
}

#[test]
fn a_pool_slot_waits_for_a_start_request() {
    if !kvm_or_skip("a_pool_slot_waits_for_a_start_request") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // `slot` is a pool slot (`start = false`); `a` holds the start right on it (the
    // description requires a starter; on Linux the API starts it too).
    let d = Daemon::start(&format!(
        "{}[[vm.control]]\nvm = \"slot\"\nrights = [\"start\"]\n\n{}start = false\n",
        vm("a", "keeltest=pause:60000", "never"),
        vm("slot", "keeltest=pause:60000", "never")
    ));
    assert!(eventually(BOOT, || d
        .serial("a")
        .contains("pause 60000 ms")));
    assert_eq!(d.state_of("slot"), "created");
    assert_eq!(d.pid_of("slot"), None);

    let r = d.put("slot", "start");

    assert_eq!(r.status, 200, "{r:?}");
    assert!(eventually(BOOT, || d
        .serial("slot")
        .contains("pause 60000 ms")));
    assert_eq!(d.state_of("slot"), "running");
}

#[test]
fn a_vm_with_restart_never_is_not_restarted() {
    if !kvm_or_skip("a_vm_with_restart_never_is_not_restarted") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = Daemon::start(&vm("a", "keeltest=pause:60000", "never"));
    let a = d.pid_of("a").unwrap();

    signal(a as i32, libc::SIGKILL);

    assert!(eventually(Duration::from_secs(1), || d.state_of("a") == "crashed"));
    std::thread::sleep(Duration::from_millis(500));
    let info = d.get_vm("a");
    assert_eq!(info["state"], "crashed");
    assert_eq!(info["restarts"], 0);
}

#[test]
fn a_create_beyond_the_limits_is_refused_naming_the_limit() {
    if !kvm_or_skip("a_create_beyond_the_limits_is_refused_naming_the_limit") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = Daemon::start(&format!(
        "{}{}",
        vm("a", "keeltest=pause:60000", "never"),
        limits(1, "64M", 8)
    ));
    let first = d.request(
        "POST",
        "/v1/vms",
        Some(&create_body("d1", 32, "keeltest=pause:1000")),
    );
    assert_eq!(first.status, 201, "{first:?}");

    let second = d.request(
        "POST",
        "/v1/vms",
        Some(&create_body("d2", 32, "keeltest=pause:1000")),
    );

    assert_eq!(second.status, 403, "{second:?}");
    assert_eq!(
        second.json()["error"],
        "refused by limits.max_vms: needs 1 more VM, 1 of 1 exist"
    );
}

#[test]
fn after_the_daemon_is_killed_a_new_one_adopts_the_running_vmms_and_can_stop_them() {
    if !kvm_or_skip(
        "after_the_daemon_is_killed_a_new_one_adopts_the_running_vmms_and_can_stop_them",
    ) {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut first = Daemon::start(&format!(
        "{}{}",
        vm("a", "keeltest=pause:60000", "never"),
        limits(2, "64M", 8)
    ));
    let created = first.request(
        "POST",
        "/v1/vms",
        Some(&create_body("d", 32, "keeltest=pause:60000")),
    );
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(first.put("d", "start").status, 200);
    let (a, dynamic) = (first.pid_of("a").unwrap(), first.pid_of("d").unwrap());

    signal(first.pid() as i32, libc::SIGKILL);
    first.child.wait().unwrap();
    assert!(is_vmm(a as i32) && is_vmm(dynamic as i32));
    let dir = std::mem::take(&mut first.dir);
    std::mem::forget(first);
    let second = Daemon::ready(dir.clone(), spawn_daemon(&dir));

    assert_eq!(second.pid_of("a"), Some(a));
    assert_eq!(second.pid_of("d"), Some(dynamic));
    assert_eq!(second.state_of("d"), "running");
    let stopped = second.put("a", "stop");
    assert_eq!(stopped.status, 200, "{stopped:?}");
    assert!(!is_vmm(a as i32));
}

#[test]
fn sigterm_stops_every_vm_before_the_daemon_exits() {
    if !kvm_or_skip("sigterm_stops_every_vm_before_the_daemon_exits") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut d = Daemon::start(&format!(
        "{}{}",
        vm("a", "keeltest=pause:60000", "always"),
        vm("b", "keeltest=pause:60000", "never")
    ));
    let pids = [d.pid_of("a").unwrap(), d.pid_of("b").unwrap()];

    let status = d.terminate();

    assert_eq!(status.code(), Some(0));
    for p in pids {
        assert!(!is_vmm(p as i32), "VMM {p} outlived the daemon");
    }
}

/// How much the daemon's resident set may grow over the 50 cycles (allocator noise, not one
/// VM's worth of leaked state per cycle).
const RSS_GROWTH_KIB: u64 = 2048;

#[test]
fn creating_starting_and_stopping_50_vms_grows_neither_descriptors_nor_memory() {
    if !kvm_or_skip("creating_starting_and_stopping_50_vms_grows_neither_descriptors_nor_memory") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = Daemon::start(&format!(
        "{}{}",
        vm("a", "keeltest=pause:60000", "never"),
        limits(4, "128M", 8)
    ));
    let cycle = |n: usize| {
        let name = format!("d{n}");
        let created = d.request(
            "POST",
            "/v1/vms",
            Some(&create_body(&name, 32, "keeltest=pause:60000")),
        );
        assert_eq!(created.status, 201, "{created:?}");
        assert_eq!(d.put(&name, "start").status, 200);
        assert_eq!(d.put(&name, "stop").status, 200);
        let deleted = d.request("DELETE", &format!("/v1/vms/{name}"), None);
        assert_eq!(deleted.status, 204, "{deleted:?}");
    };
    cycle(0);
    let (fds_before, rss_before) = d.footprint();

    let started = Instant::now();
    for n in 1..=50 {
        cycle(n);
    }

    let (fds_after, rss_after) = d.footprint();
    eprintln!(
        "50 create/start/stop/delete cycles in {:?}: daemon fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB",
        started.elapsed()
    );
    assert!(fds_after <= fds_before, "{fds_before} -> {fds_after}");
    assert!(
        rss_after <= rss_before + RSS_GROWTH_KIB,
        "RSS {rss_before} -> {rss_after} KiB"
    );
}

#[test]
fn vms_of_a_network_exchange_frames_through_the_daemons_switch() {
    if !kvm_or_skip("vms_of_a_network_exchange_frames_through_the_daemons_switch") {
        return;
    }
    let Some(g) = guest::testguest_with(b"keeltest.net-peer") else {
        skip::skip(
            "daemon",
            "vms_of_a_network_exchange_frames_through_the_daemons_switch",
            "the test guest has no `net` test (keeltest.net=<role>)",
        );
        return;
    };
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let net_vm = |name: &str, mac: &str, role: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\narch = \"x86_64\"\nkernel = \"{}\"\nmemory = \"32M\"\ncmdline = \"keeltest=net {role}\"\n[[vm.net]]\nnetwork = \"lan\"\nmac = \"{mac}\"\n",
            g.display()
        )
    };
    let (mac_a, mac_b) = ("02:00:00:00:00:0a", "02:00:00:00:00:0b");
    let mut d = Daemon::start(&format!(
        "[[network]]\nname = \"lan\"\n{}{}",
        net_vm(
            "a",
            mac_a,
            &format!("keeltest.net=ping keeltest.net-peer={mac_b} keeltest.net-count=5")
        ),
        net_vm("b", mac_b, "keeltest.net=echo keeltest.net-time=20000"),
    ));

    // The whole line (the log is written as the guest prints it).
    let ping_line = || {
        d.serial("a")
            .split_inclusive('\n')
            .find(|l| l.starts_with("keeltest: net: ping ") && l.ends_with('\n'))
            .map(str::to_string)
    };

    let pinged = eventually(BOOT, || ping_line().is_some());

    assert!(pinged, "{}", d.serial("a"));
    let line = ping_line().unwrap();
    assert!(line.contains("replies=5"), "{line}");
    let switch = std::fs::read_to_string(d.dir.join("state/switches/lan.json")).unwrap();
    let switch_pid = serde_json::from_str::<serde_json::Value>(&switch).unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    assert!(runs(switch_pid, b"__switch"));
    assert_eq!(d.terminate().code(), Some(0));
    assert!(
        !runs(switch_pid, b"__switch"),
        "the switch outlived the daemon"
    );
}

#[test]
fn a_killed_switch_is_reported_and_its_vms_keep_running() {
    if !kvm_or_skip("a_killed_switch_is_reported_and_its_vms_keep_running") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let on_lan = |name: &str, mac: &str| {
        format!(
            "{}[[vm.net]]\nnetwork = \"lan\"\nmac = \"{mac}\"\n",
            vm(name, "keeltest=pause:60000", "never")
        )
    };
    let d = Daemon::start(&format!(
        "[[network]]\nname = \"lan\"\n{}{}",
        on_lan("a", "02:00:00:00:00:0a"),
        on_lan("b", "02:00:00:00:00:0b")
    ));
    let switch = std::fs::read_to_string(d.dir.join("state/switches/lan.json")).unwrap();
    let switch_pid = serde_json::from_str::<serde_json::Value>(&switch).unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    let (a, b) = (d.pid_of("a").unwrap(), d.pid_of("b").unwrap());

    signal(switch_pid, libc::SIGKILL);

    let log = || std::fs::read_to_string(d.dir.join("daemon.log")).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(1), || log().contains(
            "the switch of network \"lan\" ended (killed by signal 9)"
        )),
        "{}",
        log()
    );
    assert_eq!((d.pid_of("a"), d.pid_of("b")), (Some(a), Some(b)));
    assert!(is_vmm(a as i32) && is_vmm(b as i32));
}

#[test]
fn a_dynamic_vm_joins_a_network_of_the_pool_and_a_later_one_reuses_its_port() {
    if !kvm_or_skip("a_dynamic_vm_joins_a_network_of_the_pool_and_a_later_one_reuses_its_port") {
        return;
    }
    let Some(g) = guest::testguest_with(b"keeltest.net-peer") else {
        skip::skip(
            "daemon",
            "a_dynamic_vm_joins_a_network_of_the_pool_and_a_later_one_reuses_its_port",
            "the test guest has no `net` test (keeltest.net=<role>)",
        );
        return;
    };
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mac_b = "02:00:00:00:00:0b";
    let mut d = Daemon::start(&format!(
        "[[network]]\nname = \"lan\"\n[[vm]]\nname = \"b\"\narch = \"x86_64\"\nkernel = \"{g}\"\nmemory = \"32M\"\ncmdline = \"keeltest=net keeltest.net=echo keeltest.net-time=120000\"\n[[vm.net]]\nnetwork = \"lan\"\nmac = \"{mac_b}\"\n[limits]\nmax_vms = 1\nmemory = \"64M\"\nvcpus = 2\nkernels = [\"{g}\"]\nnetworks = [\"lan\"]\n",
        g = g.display()
    ));
    let pinger = |name: &str, networks: &[&str]| {
        serde_json::json!({
            "name": name,
            "kernel": g.display().to_string(),
            "cmdline": format!("keeltest=net keeltest.net=ping keeltest.net-peer={mac_b} keeltest.net-count=5"),
            "memory_mib": 32,
            "networks": networks,
        })
        .to_string()
    };
    let pings = |d: &Daemon, vm: &str| {
        d.serial(vm)
            .split_inclusive('\n')
            .filter(|l| {
                l.starts_with("keeltest: net: ping ") && l.contains(" sent=") && l.ends_with('\n')
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };

    // A network the limits do not list is refused naming the limit.
    let other = d.request("POST", "/v1/vms", Some(&pinger("d0", &["dmz"])));
    assert_eq!(other.status, 403, "{other:?}");
    assert_eq!(
        other.json()["error"],
        "refused by limits.networks: network \"dmz\" is not listed (allowed: lan)"
    );

    // The first dynamic VM gets a pool port and exchanges frames with the static VM.
    let created = d.request("POST", "/v1/vms", Some(&pinger("d1", &["lan"])));
    assert_eq!(created.status, 201, "{created:?}");
    let nics = created.json()["nics"].clone();
    assert_eq!(nics[0]["network"], "lan", "{nics}");
    let mac_1 = nics[0]["mac"].as_str().unwrap().to_string();
    assert!(mac_1.starts_with("06:4b:50:"), "{mac_1}");
    assert_eq!(d.put("d1", "start").status, 200);
    assert!(
        eventually(BOOT, || !pings(&d, "d1").is_empty()),
        "{}",
        d.serial("d1")
    );
    assert!(
        pings(&d, "d1")[0].contains("replies=5"),
        "{:?}",
        pings(&d, "d1")
    );

    // Stopped (the test guest may have powered off by itself) and started again, it
    // keeps its port.
    let stop = d.put("d1", "stop").status;
    assert!(stop == 200 || stop == 409, "stop: {stop}");
    assert!(eventually(BOOT, || d.state_of("d1") == "stopped"));
    assert_eq!(d.put("d1", "start").status, 200);
    assert!(
        eventually(BOOT, || pings(&d, "d1").len() >= 2),
        "{}",
        d.serial("d1")
    );
    assert!(
        pings(&d, "d1")[1].contains("replies=5"),
        "{:?}",
        pings(&d, "d1")
    );
    assert_eq!(d.get_vm("d1")["nics"][0]["mac"], mac_1.as_str());

    // The pool is full (max_vms = 1 port on "lan").
    let full = d.request("POST", "/v1/vms", Some(&pinger("d2", &["lan"])));
    assert_eq!(full.status, 403, "{full:?}");
    assert_eq!(
        full.json()["error"],
        "refused by limits.max_vms: needs 1 more VM, 1 of 1 exist"
    );

    // Deleted, its port goes back to the pool: the next VM gets it and works.
    assert_eq!(d.request("DELETE", "/v1/vms/d1", None).status, 204);
    let again = d.request("POST", "/v1/vms", Some(&pinger("d2", &["lan"])));
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.json()["nics"][0]["mac"], mac_1.as_str());
    assert_eq!(d.put("d2", "start").status, 200);
    assert!(
        eventually(BOOT, || !pings(&d, "d2").is_empty()),
        "{}",
        d.serial("d2")
    );
    assert!(
        pings(&d, "d2")[0].contains("replies=5"),
        "{:?}",
        pings(&d, "d2")
    );

    // A daemon restarted cleanly gives it the same port again (create.json's pool_slots).
    assert_eq!(d.terminate().code(), Some(0));
    let dir = std::mem::take(&mut d.dir);
    std::mem::forget(d);
    let mut d = Daemon::ready(dir.clone(), spawn_daemon(&dir));
    assert_eq!(d.get_vm("d2")["nics"][0]["mac"], mac_1.as_str());
    assert_eq!(d.put("d2", "start").status, 200);
    assert!(
        eventually(BOOT, || pings(&d, "d2").len() >= 2),
        "{}",
        d.serial("d2")
    );
    assert!(
        pings(&d, "d2")[1].contains("replies=5"),
        "{:?}",
        pings(&d, "d2")
    );
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn after_an_adoption_a_networked_vm_killed_is_restarted_and_exchanges_frames_again() {
    if !kvm_or_skip(
        "after_an_adoption_a_networked_vm_killed_is_restarted_and_exchanges_frames_again",
    ) {
        return;
    }
    let Some(g) = guest::testguest_with(b"keeltest.net-peer") else {
        skip::skip(
            "daemon",
            "after_an_adoption_a_networked_vm_killed_is_restarted_and_exchanges_frames_again",
            "the test guest has no `net` test (keeltest.net=<role>)",
        );
        return;
    };
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let net_vm = |name: &str, mac: &str, role: &str, restart: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\narch = \"x86_64\"\nkernel = \"{}\"\nmemory = \"32M\"\ncmdline = \"keeltest=net {role}\"\nrestart = \"{restart}\"\n[[vm.net]]\nnetwork = \"lan\"\nmac = \"{mac}\"\n",
            g.display()
        )
    };
    let (mac_a, mac_b) = ("02:00:00:00:00:0a", "02:00:00:00:00:0b");
    let mut first = Daemon::start(&format!(
        "[[network]]\nname = \"lan\"\n{}{}",
        net_vm(
            "a",
            mac_a,
            "keeltest.net=echo keeltest.net-time=120000",
            "on-failure"
        ),
        net_vm(
            "b",
            mac_b,
            &format!("keeltest.net=ping keeltest.net-peer={mac_a} keeltest.net-count=5"),
            "never"
        ),
    ));
    let pings = |d: &Daemon| {
        d.serial("b")
            .split_inclusive('\n')
            .filter(|l| {
                l.starts_with("keeltest: net: ping ") && l.contains(" sent=") && l.ends_with('\n')
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(BOOT, || !pings(&first).is_empty()),
        "{}",
        first.serial("b")
    );
    assert!(eventually(BOOT, || first.state_of("b") == "stopped"));

    // The daemon is killed; a new one adopts the switch and "a", and starts "b" again:
    // through the ports it copied from the adopted switch.
    signal(first.pid() as i32, libc::SIGKILL);
    first.child.wait().unwrap();
    let dir = std::mem::take(&mut first.dir);
    std::mem::forget(first);
    let mut second = Daemon::ready(dir.clone(), spawn_daemon(&dir));
    let log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    assert!(
        eventually(BOOT, || pings(&second).len() >= 2),
        "{}\n{}",
        second.serial("b"),
        log()
    );
    assert!(
        pings(&second)[1].contains("replies=5"),
        "{:?}",
        pings(&second)
    );

    // "a" (adopted) is killed: restarted by its policy, on the same port, it answers again.
    let a = second.pid_of("a").unwrap();
    signal(a as i32, libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(5), || second
            .pid_of("a")
            .is_some_and(|p| p != a)
            && second.state_of("a") == "running"),
        "{}",
        log()
    );
    assert!(eventually(BOOT, || second.state_of("b") == "stopped"));
    let started = second.put("b", "start");
    assert_eq!(started.status, 200, "{started:?}");
    assert!(
        eventually(BOOT, || pings(&second).len() >= 3),
        "{}\n{}",
        second.serial("b"),
        log()
    );
    assert!(
        pings(&second)[2].contains("replies=5"),
        "{:?}",
        pings(&second)
    );
    assert_eq!(second.terminate().code(), Some(0));
}

#[test]
fn after_an_adoption_a_vm_with_a_shared_region_is_not_started_on_a_new_copy_of_it() {
    if !kvm_or_skip(
        "after_an_adoption_a_vm_with_a_shared_region_is_not_started_on_a_new_copy_of_it",
    ) {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mapping = |access: &str| {
        format!("[[vm.shared]]\nregion = \"x\"\nbase = \"0x8000_0000\"\naccess = \"{access}\"\n")
    };
    let mut first = Daemon::start(&format!(
        "[[shared]]\nname = \"x\"\nsize = \"64K\"\n{}{}{}{}",
        vm("a", "keeltest=pause:60000", "never"),
        mapping("rw"),
        vm("c", "keeltest=pause:60000", "never"),
        mapping("ro"),
    ));
    assert_eq!(first.state_of("a"), "running");
    signal(first.pid() as i32, libc::SIGKILL);
    first.child.wait().unwrap();
    let dir = std::mem::take(&mut first.dir);
    std::mem::forget(first);
    let second = Daemon::ready(dir.clone(), spawn_daemon(&dir));
    assert_eq!(second.put("a", "stop").status, 200);

    let started = second.put("a", "start");

    assert_eq!(started.status, 500, "{started:?}");
    let e = started.json()["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("shared regions' memory files belong to processes of a previous daemon"),
        "{e}"
    );
    assert_eq!(second.state_of("c"), "running");
}
