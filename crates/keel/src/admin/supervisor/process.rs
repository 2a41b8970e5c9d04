//! VMM and switch processes as the supervisor sees them: spawning them so they outlive the
//! daemon, pidfds (which also watch adopted processes that are not our children), the
//! `vmm.json` record and the checks that make adoption safe against pid reuse.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// What `vmm.json` (and `switches/<net>.json`) records of a process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    /// Its pid.
    pub pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since boot): a reused pid
    /// has another.
    pub start_time: u64,
    /// Its command line.
    pub argv: Vec<String>,
    /// A switch's ports: the descriptor numbers in the switch process of each port's
    /// `to_switch` and `from_switch` memfds and of the eventfds it waits on and rings, in
    /// port order (its `--port` arguments), so a later daemon can take copies of them
    /// ([`pidfd_getfd`]). Empty for a VMM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<[RawFd; 4]>,
}

/// The `--port A,B,C,D` descriptor numbers of a `__switch` command line, in order.
pub(crate) fn switch_ports(argv: &[String]) -> Option<Vec<[RawFd; 4]>> {
    let mut out = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--port" {
            let nums: Vec<RawFd> = it
                .next()?
                .split(',')
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            out.push(<[RawFd; 4]>::try_from(nums).ok()?);
        }
    }
    Some(out)
}

/// `pidfd_getfd(2)` (Linux 5.6): a copy, close-on-exec, of descriptor `target` of the
/// process behind `pidfd`. Needs ptrace access to it (same user and Yama's
/// `ptrace_scope` 0, or `CAP_SYS_PTRACE`).
pub(crate) fn pidfd_getfd(pidfd: &OwnedFd, target: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes two descriptor numbers and flags, touches no memory of
    // ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_open(pid)`: a descriptor that becomes readable when the process ends.
pub(crate) fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Send `signal` through a pidfd (never to a process that reused the pid).
pub(crate) fn pidfd_signal(pidfd: &OwnedFd, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process behind `pidfd` has ended (its pidfd is readable).
pub(crate) fn ended(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// Reap our child `pid` if it ended; how it ended (`None`: not our child, or not yet).
pub(crate) fn reap(pid: i32) -> Option<String> {
    let mut status = 0;
    // SAFETY: waitpid writes `status`.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r != pid {
        return None;
    }
    Some(if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        "ended".into()
    })
}

/// `/proc/<pid>/stat`: (state letter, start time).
pub(crate) fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, field 22 (starttime) is index 19.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// `/proc/<pid>/cmdline` as arguments.
pub(crate) fn cmdline(pid: i32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The pidfd of the process `record` describes if it still runs as that same process: pid
/// alive, same start time, same command line (`argv`, which names the VM and its state
/// directory). `None` otherwise (ended, or the pid now belongs to another process).
pub(crate) fn adopt(record: &Record) -> Option<OwnedFd> {
    let pidfd = pidfd_open(record.pid).ok()?;
    let (state, start) = stat(record.pid)?;
    if start != record.start_time || state == 'Z' || state == 'X' {
        return None;
    }
    if cmdline(record.pid)? != record.argv {
        return None;
    }
    // Still the same process after the checks (the pidfd pins the pid).
    (!ended(&pidfd)).then_some(pidfd)
}

/// Spawn `exe args...` (argv[0] `keel`) in its own session so it outlives the daemon (no
/// parent-death signal), keeping `fds` open across exec, with stdin and stdout on
/// /dev/null and stderr appended to `log`; its record.
pub(crate) fn spawn(
    exe: &Path,
    args: &[String],
    fds: Vec<RawFd>,
    log: &Path,
) -> std::io::Result<Record> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new(exe);
    cmd.arg0("keel")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: the hook runs in the forked child before exec and only makes
    // async-signal-safe calls (fcntl, setsid, sigprocmask) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            keel_kvm::net::inherit_across_exec(&fds)?;
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon blocks the signals it reads from a signalfd; the child starts
            // with only SIGUSR1 blocked, as `keel up`'s children do.
            crate::up::block_only_sigusr1();
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).map_err(|_| std::io::Error::other("pid out of range"))?;
    // Dropping `child` neither waits nor kills: the supervisor reaps it by pid.
    drop(child);
    let start_time = stat(pid).map_or(0, |(_, s)| s);
    let mut argv = vec!["keel".to_string()];
    argv.extend(args.iter().cloned());
    Ok(Record {
        pid,
        start_time,
        argv,
        ports: Vec::new(),
    })
}

/// Write `record` to `path` (atomically: a temporary file renamed over it).
pub(crate) fn save(path: &Path, record: &Record) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(record).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// The record at `path`, if there is a readable one.
pub(crate) fn load(path: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
