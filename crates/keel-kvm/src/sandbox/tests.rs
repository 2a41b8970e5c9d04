//! Each test forks a child that applies a profile and then tries one thing; the child
//! reports through its exit status (or dies of SIGSYS), the parent asserts.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use super::*;

/// Exit statuses a child uses.
const OK: i32 = 0;
const WRONG: i32 = 3;
const APPLY_FAILED: i32 = 4;

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Killed(i32),
}

/// Print a loud skip and append it to `$KEEL_SKIP_LOG`.
fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED: {test}: {why}");
    if let Ok(path) = std::env::var("KEEL_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "keel-kvm sandbox::{test}: {why}");
        }
    }
}

fn landlock_or_skip(test: &str) -> bool {
    if fs::kernel_abi() == 0 {
        skip(test, "this kernel has no Landlock");
        return false;
    }
    true
}

/// A scratch file holding `text`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, text: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("keel-sandbox-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file");
        std::fs::write(&path, text).unwrap();
        Scratch(path)
    }

    fn dir(&self) -> PathBuf {
        self.0.parent().unwrap().to_path_buf()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

fn profile(read_only: Vec<PathBuf>) -> SandboxProfile {
    SandboxProfile {
        vsock_socket: false,
        vm: "test".into(),
        read_only,
        read_write: Vec::new(),
        devices: Vec::new(),
        read_only_devices: Vec::new(),
        new_net_namespace: true,
        user: UserChoice::Default,
        file_size_limit: None,
        rt_priority: None,
        cgroup_files: Vec::new(),
        cgroup_dirs: Vec::new(),
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Fork; the child applies `profile` (its stderr to `stderr` if given), runs `then` and
/// exits with its status.
fn fork_child(
    profile: &SandboxProfile,
    stderr: Option<&OwnedFd>,
    then: impl FnOnce() -> i32,
) -> libc::pid_t {
    // SAFETY: the child only applies the sandbox, runs `then` and _exits (glibc's fork
    // keeps malloc usable in the child).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        if let Some(fd) = stderr {
            // SAFETY: replacing the child's stderr with the pipe.
            unsafe { libc::dup2(fd.as_raw_fd(), libc::STDERR_FILENO) };
        }
        let code = match apply(profile) {
            Ok(_) => then(),
            Err(e) => {
                eprintln!("apply: {e}");
                APPLY_FAILED
            }
        };
        // SAFETY: leaving the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    pid
}

fn wait(pid: libc::pid_t) -> End {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        End::Killed(libc::WTERMSIG(status))
    } else {
        End::Exited(libc::WEXITSTATUS(status))
    }
}

fn run_child(profile: &SandboxProfile, then: impl FnOnce() -> i32) -> End {
    wait(fork_child(profile, None, then))
}

#[test]
fn file_outside_the_profile_cannot_be_opened() {
    if !landlock_or_skip("file_outside_the_profile_cannot_be_opened") {
        return;
    }
    let allowed = Scratch::new("outside-allowed", "kernel");
    let other = Scratch::new("outside-other", "another VM's disk");
    let other_path = other.0.clone();

    let end = run_child(
        &profile(vec![allowed.0.clone()]),
        || match std::fs::File::open(&other_path) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => OK,
            _ => WRONG,
        },
    );

    assert_eq!(end, End::Exited(OK));
}

#[test]
fn file_in_the_profile_is_read_through_its_kept_descriptor() {
    if !landlock_or_skip("file_in_the_profile_is_read_through_its_kept_descriptor") {
        return;
    }
    let allowed = Scratch::new("kept", "kernel bytes");
    let path = allowed.0.clone();

    let end = run_child(&profile(vec![path.clone()]), || match read_kept(&path) {
        Some(Ok(bytes)) if bytes == b"kernel bytes" => OK,
        _ => WRONG,
    });

    assert_eq!(end, End::Exited(OK));
}

#[test]
fn exec_is_refused() {
    let end = run_child(&profile(Vec::new()), || {
        let prog = c"/bin/true";
        let argv = [prog.as_ptr(), std::ptr::null()];
        // SAFETY: a NUL-terminated path and argument list; returns only on failure.
        unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
        WRONG
    });

    assert_eq!(end, End::Killed(libc::SIGSYS));
}

#[test]
fn new_process_is_refused() {
    let end = run_child(&profile(Vec::new()), || {
        match std::process::Command::new("/bin/true").status() {
            Ok(_) => WRONG,
            Err(_) => WRONG + 10,
        }
    });

    assert_eq!(end, End::Killed(libc::SIGSYS));
}

#[test]
fn a_vm_with_a_vsock_socket_accepts_host_connections_from_its_io_thread() {
    use keel_virtio::vsock::VsockHost;
    use std::io::Write;
    let dir = Scratch::new("vsock-accept", "");
    let host_path = dir.dir().join("vm.vsock");
    let mut host = crate::vsock::UnixVsockHost::bind(&host_path).unwrap();
    let mut client = std::os::unix::net::UnixStream::connect(&host_path).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    let mut p = profile(Vec::new());
    p.vsock_socket = true;
    p.user = UserChoice::Keep;
    let (read_end, write_end) = pipe();

    let pid = fork_child(&p, Some(&write_end), move || {
        if enter(Role::Io).is_err() {
            return WRONG;
        }
        let mut code = WRONG;
        for _ in 0..500 {
            if let Some((id, 52)) = host.accept() {
                code = match host.accepted(id, 7) {
                    Ok(()) => OK + 10,
                    Err(_) => WRONG,
                };
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::mem::forget(host);
        code
    });
    drop(write_end);
    let end = wait(pid);
    let mut report = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut report)
        .unwrap();

    assert_eq!(end, End::Exited(OK + 10), "{report}");
    let mut line = [0u8; 5];
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 7\n");
}

#[test]
fn a_vm_with_a_vsock_socket_connects_to_host_ports_from_its_io_thread() {
    use keel_virtio::vsock::VsockHost;
    let dir = Scratch::new("vsock", "");
    let host_path = dir.dir().join("vm.vsock");
    let mut host = crate::vsock::UnixVsockHost::bind(&host_path).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(dir.dir().join("vm.vsock_7")).unwrap();
    let mut p = profile(Vec::new());
    p.vsock_socket = true;
    // The socket files belong to this (maybe root) user: the child keeps the uid.
    p.user = UserChoice::Keep;

    let (read_end, write_end) = pipe();
    let pid = fork_child(&p, Some(&write_end), move || {
        if enter(Role::Io).is_err() {
            return WRONG;
        }
        let code = match host.connect(7) {
            Ok(id) if host.write(id, b"hi") == Ok(2) => OK + 10,
            _ => WRONG,
        };
        // Its drop (removing the socket file) belongs to the VMM's supervisor thread.
        std::mem::forget(host);
        code
    });
    drop(write_end);
    let end = wait(pid);
    let mut report = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut report)
        .unwrap();

    assert_eq!(end, End::Exited(OK + 10), "{report}");
    let (mut server, _) = listener.accept().unwrap();
    let mut got = [0u8; 2];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hi");
}

#[test]
fn another_vms_socket_cannot_be_reached() {
    let dir = Scratch::new("socket", "");
    let path = dir.dir().join("other-vm.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = path.clone();

    let end = run_child(
        &profile(Vec::new()),
        || match std::os::unix::net::UnixStream::connect(&target) {
            Ok(_) => WRONG,
            Err(_) => OK + 10,
        },
    );

    assert_eq!(end, End::Killed(libc::SIGSYS));
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{accepted:?}"
    );
}

#[test]
fn forbidden_system_call_kills_with_a_report_naming_it() {
    let (read_end, write_end) = pipe();

    let pid = fork_child(&profile(Vec::new()), Some(&write_end), || {
        // SAFETY: a harmless call, forbidden to every role.
        unsafe { libc::syscall(libc::SYS_getppid) };
        WRONG
    });
    drop(write_end);
    let end = wait(pid);
    let mut report = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut report)
        .unwrap();

    assert_eq!(end, End::Killed(libc::SIGSYS), "{report}");
    assert!(
        report.contains(&format!(
            "a process thread made system call {}",
            libc::SYS_getppid
        )),
        "{report}"
    );
}

#[test]
fn allowed_calls_and_role_threads_still_work() {
    // Made before the sandbox (a VMM makes no pipes either).
    let (r, w) = pipe();

    let end = run_child(&profile(Vec::new()), move || {
        let t = std::thread::spawn(move || {
            if enter(Role::Io).is_err() {
                return WRONG;
            }
            let mut f = std::fs::File::from(w);
            match std::io::Write::write_all(&mut f, b"x") {
                Ok(()) => OK,
                Err(_) => WRONG,
            }
        });
        let from_thread = t.join().unwrap_or(WRONG);
        let mut byte = [0u8; 1];
        let read = std::fs::File::from(r).read_exact(&mut byte);
        if from_thread == OK && read.is_ok() && byte == *b"x" {
            OK
        } else {
            WRONG
        }
    });

    assert_eq!(end, End::Exited(OK));
}

#[test]
fn vcpu_thread_cannot_open_files() {
    let end = run_child(&profile(Vec::new()), || {
        let t = std::thread::spawn(|| {
            if enter(Role::Vcpu).is_err() {
                return WRONG;
            }
            let _ = std::fs::File::open("/dev/null");
            WRONG
        });
        t.join().unwrap_or(WRONG)
    });

    assert_eq!(end, End::Killed(libc::SIGSYS));
}

#[test]
fn sandboxed_process_shows_its_filter_namespaces_and_user_in_proc() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let (ready_r, ready_w) = pipe();
    let (go_r, go_w) = pipe();

    let (ready_fd, go_fd) = (ready_w.as_raw_fd(), go_r.as_raw_fd());

    let pid = fork_child(&profile(Vec::new()), None, move || {
        let mut byte = [b'r'];
        // SAFETY: the child's copies of the two pipe ends, open across the fork.
        unsafe {
            libc::write(ready_fd, byte.as_ptr().cast(), 1);
            libc::read(go_fd, byte.as_mut_ptr().cast(), 1);
        }
        OK
    });
    drop(ready_w);
    drop(go_r);
    let mut byte = [0u8; 1];
    std::fs::File::from(ready_r).read_exact(&mut byte).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ns = |p: u32, n: &str| std::fs::read_link(format!("/proc/{p}/ns/{n}")).unwrap();
    let me = std::process::id();
    let namespaces: Vec<_> = ["mnt", "ipc", "net"]
        .iter()
        .map(|n| (*n, ns(me, n), ns(pid as u32, n)))
        .collect();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    // A byte, not EOF: children forked by tests running alongside hold copies of go_w.
    std::io::Write::write_all(&mut std::fs::File::from(go_w), b"g").unwrap();
    let end = wait(pid);

    assert_eq!(end, End::Exited(OK));
    assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    assert!(status.contains("\nNoNewPrivs:\t1\n"), "{status}");
    for (n, parent, child) in namespaces {
        assert_ne!(parent, child, "{n} namespace");
    }
    if root {
        assert_ne!(uid, 0, "{status}");
    } else {
        skip(
            "sandboxed_process_shows_its_filter_namespaces_and_user_in_proc",
            "not root: the uid drop is not checked",
        );
    }
}

fn vm_spec() -> VmSpec {
    let mut v = VmSpec::new(
        "web",
        keel_spec::Arch::X86_64,
        keel_spec::HostPath::new("/k"),
        keel_spec::Memory::Size(64 << 20),
    );
    v.initrd = Some(keel_spec::HostPath::new("/i"));
    v.disks = vec![
        keel_spec::DiskSpec {
            path: keel_spec::HostPath::new("/rw.img"),
            read_only: false,
            id: None,
            served: None,
        },
        keel_spec::DiskSpec {
            path: keel_spec::HostPath::new("/ro.img"),
            read_only: true,
            id: None,
            served: None,
        },
    ];
    v
}

#[test]
fn profile_of_a_vm_reads_kernel_initrd_and_read_only_disks_and_writes_the_others() {
    let spec = vm_spec();

    let p = SandboxProfile::for_vm(&spec);

    let paths = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&p.read_only), ["/k", "/i", "/ro.img"]);
    assert_eq!(paths(&p.read_write), ["/rw.img"]);
    assert_eq!(paths(&p.devices), ["/dev/kvm"]);
    assert!(p.read_only_devices.is_empty());
    assert!(p.new_net_namespace);
}

#[test]
fn profile_of_a_vm_with_an_rng_reads_urandom_and_file_output_lifts_the_size_limit() {
    let mut spec = vm_spec();
    spec.rng = true;
    spec.serial = Output::File(keel_spec::HostPath::new("/serial.log"));

    let p = SandboxProfile::for_vm(&spec);

    assert_eq!(p.read_only_devices, [PathBuf::from("/dev/urandom")]);
    assert_eq!(p.file_size_limit, None);
}

#[test]
fn files_in_a_directory_only_root_may_enter_are_confined_before_the_uid_drop() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip(
            "files_in_a_directory_only_root_may_enter_are_confined_before_the_uid_drop",
            "not root: there is no uid drop",
        );
        return;
    }
    if !landlock_or_skip(
        "files_in_a_directory_only_root_may_enter_are_confined_before_the_uid_drop",
    ) {
        return;
    }
    // A disk where the unprivileged user cannot look (like /root, or a 0700 temp dir).
    let disk = Scratch::new("root-only", "disk bytes");
    std::fs::set_permissions(
        disk.dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let path = disk.0.clone();

    // (The uid drop itself is checked by
    // sandboxed_process_shows_its_filter_namespaces_and_user_in_proc; getuid is not in the
    // filter.)
    let end = run_child(&profile(vec![path.clone()]), || match read_kept(&path) {
        Some(Ok(bytes)) if bytes == b"disk bytes" => OK,
        _ => WRONG,
    });

    assert_eq!(
        end,
        End::Exited(OK),
        "{end:?} (APPLY_FAILED = {APPLY_FAILED})"
    );
}

#[test]
fn a_thread_kick_by_tkill_is_allowed_with_every_signal_blocked() {
    // musl's pthread_kill (the static arm64 keel's vCPU kick) blocks every signal and
    // calls tkill: forbidden, it would kill the VMM with no report (found in the emulated
    // arm64 host: every guest power-off ended in SIGSYS).
    let end = run_child(&profile(Vec::new()), || {
        // SAFETY: blocking every signal of this thread, then tkill with signal 0 (a
        // permission check that sends nothing) to itself.
        let r = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            libc::syscall(libc::SYS_tkill, libc::syscall(libc::SYS_gettid), 0)
        };
        if r == 0 { OK } else { WRONG }
    });

    assert_eq!(end, End::Exited(OK));
}
