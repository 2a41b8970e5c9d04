//! Block forwarding on Linux, the client VMM's side (docs/driver-vms.md): the built `keel`
//! runs a VM's VMM (`keel __vmm`, as `keel up` starts it) whose disk is served by a storage
//! VM; the storage side is played by this test with the same server code the storage
//! agent runs (`keel_virtio::forward::ForwardServer`) over the same memory file and
//! eventfds `keel up` would hand both. The guest is Keel's x86_64 test guest, which writes
//! and checks a pattern on its disk with its own virtio-blk driver.
//!
//! The whole topology with a real storage VM (Linux, running keel-agent) runs in the
//! emulated arm64 host (scripts/l2-tests.sh, `blk-forward`). Without /dev/kvm these tests
//! print `SKIPPED: …` and record the skip.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_kvm::net::{EventFd, SharedMemory, new_eventfd};
use keel_virtio::FileBackend;
use keel_virtio::forward::{ClientRange, ForwardGeometry, ForwardServer};

#[path = "common/guest.rs"]
mod guest;
// Only `KEEL` and `Scratch` are used here.
#[allow(dead_code)]
#[path = "common/run.rs"]
mod run;
#[path = "../../keel-kvm/tests/common/skip.rs"]
mod skip;

use run::{KEEL, Scratch};

/// The client's range on the storage disk.
const START: u64 = 1 << 20;
const SIZE: u64 = 1 << 20;

fn kvm_or_skip(test: &str) -> bool {
    skip::kvm_or_skip("forward", test)
}

/// A system of a storage VM `store` (4 MiB disk `store.img`; not run here) and a client
/// `a` running the test guest with `cmdline`, its disk served from `[START, START+SIZE)`.
fn system(s: &Scratch, cmdline: &str) -> std::path::PathBuf {
    let store = s.path("store.img");
    if !store.exists() {
        std::fs::File::create(&store)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
    }
    let kernel = guest::testguest();
    let text = format!(
        "[[vm]]\nname = \"store\"\narch = \"x86_64\"\nkernel = \"{k}\"\nmemory = \"64M\"\nserial = \"null\"\n[[vm.disk]]\npath = \"{d}\"\n\
         [[vm]]\nname = \"a\"\narch = \"x86_64\"\nkernel = \"{k}\"\nmemory = \"64M\"\ncmdline = \"{cmdline}\"\n[[vm.disk]]\nserved_by = \"store\"\nstart = \"{START}\"\nsize = \"{SIZE}\"\n",
        k = kernel.display(),
        d = store.display(),
    );
    let path = s.path("system.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The storage side of one link: the region's memory file and the two eventfds.
struct Link {
    region: SharedMemory,
    bell: EventFd,
    wake: EventFd,
}

impl Link {
    fn new() -> Link {
        Link {
            region: SharedMemory::create("keel-test-fwd", ForwardGeometry::DEFAULT.region_len())
                .unwrap(),
            bell: new_eventfd().unwrap(),
            wake: new_eventfd().unwrap(),
        }
    }

    fn fds(&self) -> [RawFd; 3] {
        [
            self.region.fd().as_raw_fd(),
            self.bell.as_raw_fd(),
            self.wake.as_raw_fd(),
        ]
    }
}

/// Serve the link from `disk` in a thread, as the agent does, until `stop`.
fn serve(link: &Link, disk: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let map = link.region.map().unwrap();
    let bell = link.bell.try_clone().unwrap();
    let wake = link.wake.try_clone().unwrap();
    let disk = FileBackend::open(disk, false).unwrap();
    std::thread::spawn(move || {
        let g = ForwardGeometry::DEFAULT;
        // SAFETY: `map` lives until the end of this thread, after the server; the client
        // VMM touches the region only through the ring protocol.
        let windows = unsafe { g.windows(map.as_ptr(), map.len()) }.unwrap();
        let range = ClientRange {
            start: START,
            size: SIZE,
            read_only: false,
        };
        let mut server = ForwardServer::new(windows, g, disk, range).unwrap();
        let mut served = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let s = server.serve(64).unwrap();
            served += s.requests as u64;
            if s.notify {
                wake.write(1).unwrap();
            }
            if s.requests == 0 && server.arm_wakeup().unwrap() {
                let mut pfd = libc::pollfd {
                    fd: bell.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 50) };
                let _ = bell.read();
                server.woken();
            }
        }
        drop(server);
        drop(map);
        served
    })
}

/// Run `keel __vmm <system> --vm a --blk <link>` to its end; (exit code, stdout, stderr).
fn run_client(system: &Path, link: &Link) -> (i32, String, String, Duration) {
    let fds = link.fds();
    let arg = fds.map(|f| f.to_string()).join(",");
    let mut cmd = Command::new(KEEL);
    cmd.args([
        "__vmm",
        system.to_str().unwrap(),
        "--vm",
        "a",
        "--log-level",
        "info",
        "--blk",
        &arg,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: only fcntl between fork and exec (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || keel_kvm::net::inherit_across_exec(&fds));
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn guest_pattern_lands_in_its_range_of_the_storage_disk_and_reads_back() {
    if !kvm_or_skip("guest_pattern_lands_in_its_range_of_the_storage_disk_and_reads_back") {
        return;
    }
    let s = Scratch::new("fwd-pattern");
    let link = Link::new();
    let write = system(
        &s,
        "keeltest=blk keeltest.disk-pattern=write keeltest.disk-seed=41",
    );
    let store = s.path("store.img");
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(&link, &store, stop.clone());

    let (status, out, err, _) = run_client(&write, &link);
    assert_eq!(status, 0, "--- stdout\n{out}--- stderr\n{err}");
    assert!(out.contains("keeltest: PASS"), "{out}");
    let check = system(
        &s,
        "keeltest=blk keeltest.disk-pattern=check keeltest.disk-seed=41",
    );
    let (status, out, err, _) = run_client(&check, &link);
    stop.store(true, Ordering::Relaxed);
    let served = server.join().unwrap();

    assert_eq!(status, 0, "--- stdout\n{out}--- stderr\n{err}");
    assert!(out.contains("blk pattern verified"), "{out}");
    assert!(
        out.contains(&format!("blk capacity {} sectors", SIZE / 512)),
        "{out}"
    );
    let bytes = std::fs::read(&store).unwrap();
    let (before, rest) = bytes.split_at(START as usize);
    let (inside, after) = rest.split_at(SIZE as usize);
    assert!(
        before.iter().all(|&b| b == 0),
        "bytes before the range were written"
    );
    assert!(
        after.iter().all(|&b| b == 0),
        "bytes after the range were written"
    );
    assert!(
        inside.iter().any(|&b| b != 0),
        "the pattern is not in the range"
    );
    assert!(served > 0);
}

#[test]
fn a_silent_storage_vm_fails_the_guests_io_within_the_timeout_without_hanging_the_vmm() {
    if !kvm_or_skip(
        "a_silent_storage_vm_fails_the_guests_io_within_the_timeout_without_hanging_the_vmm",
    ) {
        return;
    }
    let s = Scratch::new("fwd-silent");
    let link = Link::new();
    let sys = system(
        &s,
        "keeltest=blk keeltest.disk-pattern=check keeltest.disk-seed=41",
    );

    // Nobody serves the link.
    let (status, out, err, took) = run_client(&sys, &link);

    assert_ne!(status, 0, "--- stdout\n{out}--- stderr\n{err}");
    assert!(
        out.contains("returned status 1") || out.contains("not completed within"),
        "--- stdout\n{out}--- stderr\n{err}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
