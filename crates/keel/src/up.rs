//! `keel up`: run a whole system on Linux, one process per VM and one per network.
//!
//! Process layout (docs/net.md, "Processes on Linux"): the `keel up` process plans the
//! system, creates each port's two ring windows (memfds, zeroed, `ring_window_len` bytes)
//! and two eventfds, then re-executes itself (`/proc/self/exe`) with hidden subcommands:
//! first one `__switch` per network, then one `__vmm` per VM. Each child inherits exactly
//! the descriptors of its own ports (their numbers are on its command line; everything
//! else is close-on-exec), runs in its own process group (Ctrl-C reaches only `keel up`)
//! and dies with `keel up` (`PR_SET_PDEATHSIG`). VMM output (serial and consoles on stdio,
//! and keel's own messages) comes back through pipes and is printed line by line prefixed
//! with the VM's name. `keel up`'s own stdin goes to the VM that has the input focus (one
//! pipe to each VMM's stdin; `@N` then Enter moves the focus: docs/console.md).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_kvm::forward::LinkSet;
use keel_kvm::log::{self, Level};
use keel_kvm::net::{PortFds, SharedMemory, die_with_parent, drain_eventfd, inherit_across_exec};
use keel_kvm::placement::CgroupScope;
use keel_net::port::{PortWindows, Service, SwitchService};
use keel_net::ring::{FrameConsumer, FrameProducer, FrameWindow, MAX_FRAME, Recv, Sent};
use keel_net::switch::{PortId, Switch};
use keel_spec::plan::{NetworkPlan, PortOwner, SystemPlan};

use crate::{EXIT_FAILURE, Failure};

/// Frames a switch moves per service call before it looks at its doorbells and signals.
const SWITCH_BUDGET: usize = 256;

/// A switch that stays busy looks at its signals every this many service rounds.
const SIGNAL_CHECK_ROUNDS: u32 = 64;

/// The hidden subcommand of a VMM process.
pub const VMM_COMMAND: &str = "__vmm";
/// The hidden subcommand of a switch process.
pub const SWITCH_COMMAND: &str = "__switch";

/// Block the signals a supervisor waits for and return a signalfd delivering them.
pub(crate) fn signal_fd(signals: &[libc::c_int]) -> Result<RawFd, Failure> {
    // SAFETY: `set` is plain data initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a sigset_t; these calls only write it.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above, `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    // SAFETY: blocking signals in this thread (inherited by threads spawned later).
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(failure("cannot block signals"));
    }
    // SAFETY: a new signalfd for the set, close-on-exec.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(failure(format!(
            "signalfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

/// What waiting on a signalfd with a deadline gave.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    Signal(u32),
    TimedOut,
    Failed,
}

/// Wait for the next signal on `fd` until `deadline` (for ever without one).
fn wait_signal(fd: RawFd, deadline: Option<Instant>) -> Waited {
    let Some(deadline) = deadline else {
        return next_signal(fd).map_or(Waited::Failed, Waited::Signal);
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Waited::TimedOut;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return next_signal(fd).map_or(Waited::Failed, Waited::Signal);
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Waited::Failed;
        }
    }
}

/// Read one signal from a signalfd (blocking); `None` on a read error.
pub(crate) fn next_signal(fd: RawFd) -> Option<u32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: reading at most `size` bytes into `info`.
        let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if n == size as isize {
            return Some(info.ssi_signo);
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

fn failure(message: impl Into<String>) -> Failure {
    Failure {
        status: EXIT_FAILURE,
        message: message.into(),
    }
}

/// The plan of the system at `path`, or the description's one-line error (exit 2).
pub(crate) fn load_plan(path: &Path) -> Result<(keel_spec::System, SystemPlan), Failure> {
    let sys = crate::load(path)?;
    let plan = keel_spec::plan::plan(&sys)
        .map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
    Ok((sys, plan))
}

/// [`load_plan`] with the dynamic pool's ports (`keel daemon`).
pub(crate) fn load_plan_with_pool(path: &Path) -> Result<(keel_spec::System, SystemPlan), Failure> {
    let sys = crate::load(path)?;
    let plan = keel_spec::plan::plan_with_pool(&sys)
        .map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
    Ok((sys, plan))
}

/// One child process of `keel up`.
struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

/// Spawn `/proc/self/exe args...` keeping `fds` open across exec, in its own process
/// group, killed with SIGTERM if `keel up` dies; with `piped`, its stdin, stdout and
/// stderr are pipes to `keel up`.
fn spawn(args: &[String], fds: Vec<RawFd>, piped: bool) -> std::io::Result<Child> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("keel").args(args).stdin(Stdio::null());
    if piped {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    // SAFETY: the hook runs in the forked child before exec and only makes
    // async-signal-safe calls (fcntl, prctl, setpgid, sigprocmask) on data prepared before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            inherit_across_exec(&fds)?;
            die_with_parent(libc::SIGTERM)?;
            // Own process group: a terminal's Ctrl-C goes to `keel up`, which stops the
            // children in order.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            block_only_sigusr1();
            Ok(())
        });
    }
    cmd.spawn()
}

/// In a forked child before exec: block SIGUSR1 alone. It asks a child for its counters,
/// and a child that has not opened its signalfd yet must not die of it (it stays pending
/// until the signalfd reads it); the parent's other blocked signals (those it reads from
/// its own signalfd) are unblocked. Async-signal-safe (sigemptyset, sigaddset,
/// sigprocmask).
pub(crate) fn block_only_sigusr1() {
    // SAFETY: a zeroed sigset_t is a valid value to initialise; the calls only touch this
    // local set and the calling thread's mask.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
    }
}

/// Copy `from` to `to` line by line, each line prefixed with `prefix`.
fn relay(
    from: impl Read + Send + 'static,
    to: Arc<Mutex<dyn Write + Send>>,
    prefix: String,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    let mut out = to.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = out.write_all(prefix.as_bytes());
                    let _ = out.write_all(&line);
                    let _ = out.flush();
                }
            }
        }
    })
}

/// Ctrl-A.
const CTRL_A: u8 = 0x01;

/// One VM's console input: the pipe to its VMM's stdin (non-blocking), until it breaks.
struct VmInput(Option<ChildStdin>);

impl VmInput {
    fn new(stdin: Option<ChildStdin>) -> VmInput {
        let stdin = stdin.filter(|s| {
            // SAFETY: F_GETFL/F_SETFL on a pipe we own; no memory is passed.
            unsafe {
                let fd = s.as_raw_fd();
                let flags = libc::fcntl(fd, libc::F_GETFL);
                flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
            }
        });
        VmInput(stdin)
    }

    /// Write `bytes` for the guest, each Ctrl-A doubled (the VMM's own Ctrl-A escape turns
    /// it back into one). What does not fit in the pipe is dropped, as a UART drops what
    /// overflows its FIFO; a broken pipe (the VMM ended) closes this input.
    fn send(&mut self, bytes: &[u8]) {
        let Some(pipe) = self.0.as_mut() else { return };
        let mut escaped = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if b == CTRL_A {
                escaped.push(CTRL_A);
            }
            escaped.push(b);
        }
        let mut rest = &escaped[..];
        while !rest.is_empty() {
            match pipe.write(rest) {
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.0 = None;
                    break;
                }
            }
        }
    }
}

/// Start the thread that reads `keel up`'s stdin and routes it to VMs `names` (their
/// `inputs`, in the same order) through a [`ConsoleSwitch`]: `@N` or `@name` then Enter
/// at the start of a line moves the focus, `@@` sends one `@` (docs/console.md). Ctrl-A x
/// stops the system (a SIGINT to `keel up`, as Ctrl-C without a terminal); Ctrl-A Ctrl-A
/// sends one Ctrl-A. At the end of stdin every VM's input is closed. The thread ends with
/// stdin or with the process.
///
/// [`ConsoleSwitch`]: keel_core::console_switch::ConsoleSwitch
fn forward_input(names: Vec<String>, mut inputs: Vec<VmInput>) -> Result<(), Failure> {
    use keel_core::console_switch::{ConsoleSwitch, Routed, message};
    std::thread::Builder::new()
        .name("keel-input".into())
        .spawn(move || {
            let mut switch = ConsoleSwitch::new(names.iter().map(String::as_str));
            let mut escape = keel_kvm::io::Escape::default();
            let mut buf = [0u8; 256];
            loop {
                // SAFETY: reading at most `buf.len()` bytes into `buf`.
                let n =
                    unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                let Ok(n @ 1..) = usize::try_from(n) else {
                    break;
                };
                let bytes = escape.filter(&buf[..n]);
                switch.feed(&bytes, &mut |r| match r {
                    Routed::Bytes { vm, bytes } => {
                        if let Some(input) = inputs.get_mut(vm) {
                            input.send(bytes);
                        }
                    }
                    other => {
                        if let Some(m) = message(&names, &other) {
                            emit("", &m);
                        }
                    }
                });
                if escape.quit {
                    emit("keel: ", "Ctrl-A x: stopping every VM");
                    // SAFETY: signalling our own process; SIGINT is blocked in every
                    // thread and read from the signalfd by `up`'s loop.
                    unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
                    return;
                }
            }
            inputs.clear();
        })
        .map(drop)
        .map_err(|e| failure(format!("cannot start the input thread: {e}")))
}

/// Whether stdin is our controlling terminal and another process group is in its
/// foreground (a terminal that is not our controlling one cannot stop us: not background).
fn stdin_is_background_terminal() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only inspect descriptors and process state.
    unsafe {
        if libc::isatty(libc::STDIN_FILENO) != 1 {
            return false;
        }
        let foreground = libc::tcgetpgrp(libc::STDIN_FILENO);
        foreground >= 0 && foreground != libc::getpgrp()
    }
}

/// Send `signal` to each process still running.
fn signal_all(procs: &[Proc], signal: libc::c_int) {
    for p in procs.iter().filter(|p| p.status.is_none()) {
        if let Ok(pid) = libc::pid_t::try_from(p.child.id()) {
            // SAFETY: signalling our own unreaped child (its pid cannot have been reused).
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// Reap whichever of `procs` have ended.
fn reap(procs: &mut [Proc]) {
    for p in procs.iter_mut().filter(|p| p.status.is_none()) {
        if let Ok(Some(s)) = p.child.try_wait() {
            p.status = Some(s);
        }
    }
}

/// Wait (on the signalfd's SIGCHLD) until every one of `procs` has ended.
fn wait_all(procs: &mut [Proc], sigfd: RawFd) {
    loop {
        reap(procs);
        if procs.iter().all(|p| p.status.is_some()) {
            return;
        }
        if next_signal(sigfd).is_none() {
            // No signalfd: block on each in turn.
            for p in procs.iter_mut().filter(|p| p.status.is_none()) {
                p.status = p.child.wait().ok();
            }
            return;
        }
    }
}

/// The status a VM's process ended with, as an exit status of `keel up`.
fn status_code(s: Option<ExitStatus>) -> u8 {
    match s {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => u8::try_from(c).unwrap_or(EXIT_FAILURE),
            (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(EXIT_FAILURE),
            _ => EXIT_FAILURE,
        },
        None => EXIT_FAILURE,
    }
}

fn describe(s: Option<ExitStatus>) -> String {
    match s {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(libc::SIGTERM)) => "stopped by keel up (SIGTERM)".into(),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended".into(),
        },
        None => "not reaped".into(),
    }
}

/// Ask every running switch and VMM process for its counters (SIGUSR1): each prints its
/// `keel: counters:` lines on stderr (docs/net.md, "Counters at run time").
fn request_counters(switches: &[Proc], vmms: &[Proc], started: Instant) {
    emit(
        "keel: ",
        &format!(
            "counters at {:.3} s: asking {} switch and {} VMM processes",
            started.elapsed().as_secs_f64(),
            switches.iter().filter(|p| p.status.is_none()).count(),
            vmms.iter().filter(|p| p.status.is_none()).count()
        ),
    );
    signal_all(switches, libc::SIGUSR1);
    signal_all(vmms, libc::SIGUSR1);
}

/// `keel up <system.toml>`: with `stats`, the switches' counters at the end; with
/// `interval`, every process's counters that often while the system runs (as on SIGUSR1).
pub fn up(
    system: &Path,
    level: Level,
    stats: bool,
    interval: Option<Duration>,
) -> Result<u8, Failure> {
    let (sys, plan) = load_plan(system)?;
    for vm in sys.vms() {
        if keel_spec::Arch::host() != Some(vm.arch) {
            return Err(Failure::input(format!(
                "vm {:?}: arch \"{}\" cannot run on this {} host",
                vm.name,
                vm.arch,
                std::env::consts::ARCH
            )));
        }
    }
    for vm in sys.vms() {
        if let Some(why) = keel_kvm::vmm::kvm_refusal(vm) {
            return Err(Failure::input(format!("vm {:?}: {why}", vm.name)));
        }
    }
    crate::warn_colours_not_applied(sys.vms());
    let system_arg = system.display().to_string();
    let level_arg = level.name().to_string();

    let ports = create_ports(&plan)?;
    let shared_files = create_shared(&plan)?;
    let links = create_links(&plan)?;
    let vsock_links = create_vsock_links(&plan)?;

    let sigfd = signal_fd(&[
        libc::SIGCHLD,
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGUSR1,
    ])?;
    keel_kvm::host::note_software_kvm();

    // Switches first: the VMMs' rings have a consumer from the start.
    let mut switches: Vec<Proc> = Vec::new();
    let mut start_error = None;
    for (n, net) in plan.networks.iter().enumerate() {
        let (args, fds) = switch_command(&system_arg, &net.name, &ports[n], stats, false);
        match spawn(&args, fds, false) {
            Ok(child) => switches.push(Proc {
                name: net.name.clone(),
                child,
                status: None,
            }),
            Err(e) => {
                start_error = Some(failure(format!(
                    "network {:?}: cannot start its switch: {e}",
                    net.name
                )));
                break;
            }
        }
    }

    let stdout: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stdout()));
    let stderr: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stderr()));
    let mut vmms: Vec<Proc> = Vec::new();
    let mut inputs: Vec<VmInput> = Vec::new();
    let mut relays = Vec::new();
    if start_error.is_none() {
        for vm in &plan.vms {
            let mut args = vec![
                VMM_COMMAND.to_string(),
                system_arg.clone(),
                "--vm".into(),
                vm.name.clone(),
                "--log-level".into(),
                level_arg.clone(),
            ];
            let mut fds = vmm_fd_args(&plan, vm, &ports, &shared_files, Some(&links), &mut args);
            fds.extend(vsock_fd_args(vm, &vsock_links, &mut args));
            match spawn(&args, fds, true) {
                Ok(mut child) => {
                    inputs.push(VmInput::new(child.stdin.take()));
                    let prefix = format!("[{}] ", vm.name);
                    if let Some(o) = child.stdout.take() {
                        relays.push(relay(o, stdout.clone(), prefix.clone()));
                    }
                    if let Some(e) = child.stderr.take() {
                        relays.push(relay(e, stderr.clone(), prefix));
                    }
                    vmms.push(Proc {
                        name: vm.name.clone(),
                        child,
                        status: None,
                    });
                }
                Err(e) => {
                    start_error = Some(failure(format!("vm {:?}: cannot start: {e}", vm.name)));
                    break;
                }
            }
        }
    }
    // The children hold their own copies now.
    drop(ports);
    drop(shared_files);
    drop(vsock_links);
    drop(links);

    // A terminal on stdin is raw while the system runs (restored on every return from
    // here: signals arrive through the signalfd, a panic's hook restores it too). A
    // terminal this process does not own (`keel up … &`): reading it or changing its mode
    // would stop `keel up` (SIGTTIN, SIGTTOU), so its input is left alone.
    let background = stdin_is_background_terminal();
    if background && start_error.is_none() {
        emit(
            "keel: ",
            "stdin is a terminal keel up runs in the background of: input is not forwarded",
        );
    }
    let raw = if start_error.is_none() && !background {
        keel_kvm::host::RawTerminal::enable()
    } else {
        None
    };
    if start_error.is_none() && !background {
        let names: Vec<String> = plan.vms.iter().map(|v| v.name.clone()).collect();
        if raw.is_some() && names.len() > 1 {
            emit(
                "keel: ",
                &format!(
                    "input -> vm {:?} (@N or @name then Enter switches VMs, @@ sends @; Ctrl-A x stops)",
                    names[0]
                ),
            );
        }
        if let Err(f) = forward_input(names, std::mem::take(&mut inputs)) {
            start_error = Some(f);
        }
    }
    drop(inputs);

    let started = Instant::now();
    // Set when keel up stopped the system itself: 128+N for signal N, 1 when a switch died.
    let mut stop_status: Option<u8> = None;
    let mut next_report = interval.map(|i| started + i);
    if start_error.is_none() {
        loop {
            reap(&mut vmms);
            if vmms.iter().all(|p| p.status.is_some()) {
                break;
            }
            reap(&mut switches);
            if let Some(sw) = switches.iter().find(|p| p.status.is_some()) {
                log::error(format_args!(
                    "the switch of network {:?} ended ({}); stopping the system",
                    sw.name,
                    describe(sw.status)
                ));
                stop_status = Some(EXIT_FAILURE);
                break;
            }
            match wait_signal(sigfd, next_report) {
                Waited::Signal(s) if s == libc::SIGCHLD as u32 => {}
                Waited::Signal(s) if s == libc::SIGUSR1 as u32 => {
                    request_counters(&switches, &vmms, started);
                }
                Waited::TimedOut => {
                    request_counters(&switches, &vmms, started);
                    next_report = interval.map(|i| Instant::now() + i);
                }
                Waited::Signal(s) => {
                    log::info(format_args!("signal {s}: stopping every VM"));
                    stop_status = Some(u8::try_from(128 + s).unwrap_or(EXIT_FAILURE));
                    break;
                }
                Waited::Failed => break,
            }
        }
    }
    drop(raw);
    // Stop order: VMMs, then switches; reap everything.
    signal_all(&vmms, libc::SIGTERM);
    wait_all(&mut vmms, sigfd);
    // A VMM process ended by SIGTERM could not remove its budget's cgroup.
    keel_kvm::placement::remove_system_cgroups(&CgroupScope::this_process(sys.name()));
    for r in relays {
        let _ = r.join();
    }
    if start_error.is_none() {
        for v in &vmms {
            eprintln!("keel: vm {:?}: {}", v.name, describe(v.status));
        }
    }
    signal_all(&switches, libc::SIGTERM);
    wait_all(&mut switches, sigfd);
    // SAFETY: closing the signalfd we created.
    unsafe { libc::close(sigfd) };
    if let Some(f) = start_error {
        return Err(f);
    }
    if stats {
        eprintln!("keel: system ran {} ms", started.elapsed().as_millis());
    }
    if let Some(status) = stop_status {
        return Ok(status);
    }
    Ok(vmms
        .iter()
        .map(|v| status_code(v.status))
        .find(|&c| c != 0)
        .unwrap_or(0))
}

/// Port fds, VMM view, by network then port (`None`: the uplink, the switch's own).
pub(crate) fn create_ports(plan: &SystemPlan) -> Result<Vec<Vec<Option<PortFds>>>, Failure> {
    let mut ports: Vec<Vec<Option<PortFds>>> = Vec::with_capacity(plan.networks.len());
    for net in &plan.networks {
        let len = usize::try_from(net.ring_bytes())
            .map_err(|_| failure(format!("network {:?}: ring too large", net.name)))?;
        let mut v = Vec::with_capacity(net.ports.len());
        for (i, p) in net.ports.iter().enumerate() {
            if matches!(p.owner, PortOwner::Uplink { .. }) {
                v.push(None);
                continue;
            }
            v.push(Some(
                PortFds::create(&format!("{}-{i}", net.name), len)
                    .map_err(|e| failure(format!("network {:?}: port {i}: {e}", net.name)))?,
            ));
        }
        ports.push(v);
    }
    Ok(ports)
}

/// One memory file per shared guest region, inherited by the VMM of every VM naming it.
pub(crate) fn create_shared(plan: &SystemPlan) -> Result<Vec<SharedMemory>, Failure> {
    let mut shared_files: Vec<SharedMemory> = Vec::with_capacity(plan.shared.len());
    for region in &plan.shared {
        let len = usize::try_from(region.size)
            .map_err(|_| failure(format!("shared region {:?}: too large", region.name)))?;
        shared_files.push(
            SharedMemory::create(&format!("keel-shared-{}", region.name), len)
                .map_err(|e| failure(format!("shared region {:?}: {e}", region.name)))?,
        );
    }
    Ok(shared_files)
}

/// The `__switch` arguments of network `name` and the descriptors it inherits (`ports`:
/// the network's ports as [`create_ports`] made them; `pool`: the plan has the dynamic
/// pool's ports, `keel_spec::plan::plan_with_pool`, as `keel daemon` runs it).
pub(crate) fn switch_command(
    system_arg: &str,
    name: &str,
    ports: &[Option<PortFds>],
    stats: bool,
    pool: bool,
) -> (Vec<String>, Vec<RawFd>) {
    let mut args = vec![
        SWITCH_COMMAND.to_string(),
        system_arg.to_string(),
        "--network".into(),
        name.to_string(),
    ];
    if stats {
        args.push("--stats".into());
    }
    if pool {
        args.push("--pool".into());
    }
    let mut fds = Vec::new();
    for p in ports.iter().flatten() {
        let [a, b, vmm_bell, switch_bell] = p.raw();
        // The switch's view: it rings the VMM's eventfd and waits on its own.
        args.push("--port".into());
        args.push(format!("{a},{b},{switch_bell},{vmm_bell}"));
        fds.extend([a, b, vmm_bell, switch_bell]);
    }
    (args, fds)
}

/// The rings of each `[vsock] allow` pair (by pair index): two frame rings and two eventfds,
/// shared by the pair's two VMMs only (docs/vsock.md). Seen from the pair's first VM.
pub(crate) fn create_vsock_links(
    plan: &SystemPlan,
) -> Result<std::collections::BTreeMap<usize, PortFds>, Failure> {
    let len = usize::try_from(keel_spec::plan::ring_window_len(
        keel_spec::plan::VSOCK_RING_SLOTS,
    ))
    .map_err(|_| failure("vsock rings: too large"))?;
    let mut links = std::collections::BTreeMap::new();
    for vm in &plan.vms {
        for peer in vm.vsock.iter().flat_map(|v| &v.peers).filter(|p| p.first) {
            let link = PortFds::create(&format!("vsock-{}-{}", vm.name, peer.vm), len)
                .map_err(|e| failure(format!("vsock {:?} <-> {:?}: {e}", vm.name, peer.vm)))?;
            links.insert(peer.pair, link);
        }
    }
    Ok(links)
}

/// Append VM `vm`'s `--vsock-peer` arguments to `args` (one per vsock peer, in plan
/// order); the descriptors its VMM inherits. The pair's second VM gets the rings and
/// eventfds the other way round.
pub(crate) fn vsock_fd_args(
    vm: &keel_spec::plan::VmPlan,
    links: &std::collections::BTreeMap<usize, PortFds>,
    args: &mut Vec<String>,
) -> Vec<RawFd> {
    let mut fds = Vec::new();
    for peer in vm.vsock.iter().flat_map(|v| &v.peers) {
        let Some(link) = links.get(&peer.pair) else {
            continue;
        };
        let [a, b, c, d] = link.raw();
        args.push("--vsock-peer".into());
        args.push(if peer.first {
            format!("{a},{b},{c},{d}")
        } else {
            format!("{b},{a},{d},{c}")
        });
        fds.extend([a, b, c, d]);
    }
    fds
}

/// The eventfds of the system's block-forwarding links (docs/driver-vms.md); the regions
/// are among the shared memory files.
pub(crate) fn create_links(plan: &SystemPlan) -> Result<LinkSet, Failure> {
    LinkSet::create(&plan.links).map_err(|e| failure(format!("block forwarding: eventfd: {e}")))
}

/// Append VM `vm`'s `--nic`, `--shared`, `--blk`, `--bell` and `--serve` arguments to
/// `args`; the descriptors its VMM inherits. Without `links` a VM that has forwarding
/// links gets none (its VMM then refuses to start, saying so).
pub(crate) fn vmm_fd_args(
    plan: &SystemPlan,
    vm: &keel_spec::plan::VmPlan,
    ports: &[Vec<Option<PortFds>>],
    shared_files: &[SharedMemory],
    links: Option<&LinkSet>,
    args: &mut Vec<String>,
) -> Vec<RawFd> {
    let mut fds = Vec::new();
    if let Some(links) = links {
        forward_fd_args(plan, vm, shared_files, links, args, &mut fds);
    }
    for nic in &vm.nics {
        let Some(p) = ports
            .get(nic.network)
            .and_then(|n| n.get(usize::from(nic.port)))
            .and_then(Option::as_ref)
        else {
            continue;
        };
        args.push("--nic".into());
        args.push(p.arg());
        fds.extend(p.raw());
    }
    for m in &vm.shared {
        let Some(file) = plan
            .shared
            .iter()
            .position(|r| r.name == m.region)
            .and_then(|i| shared_files.get(i))
        else {
            continue;
        };
        let fd = file.fd().as_raw_fd();
        args.push("--shared".into());
        args.push(fd.to_string());
        fds.push(fd);
    }
    fds
}

/// The block-forwarding part of [`vmm_fd_args`].
fn forward_fd_args(
    plan: &SystemPlan,
    vm: &keel_spec::plan::VmPlan,
    shared_files: &[SharedMemory],
    links: &LinkSet,
    args: &mut Vec<String>,
    fds: &mut Vec<RawFd>,
) {
    let region = |link: usize| {
        let name = keel_spec::plan::forward_region_name(link);
        plan.shared
            .iter()
            .position(|r| r.name == name)
            .and_then(|i| shared_files.get(i))
    };
    for d in vm.disks.iter().filter_map(|d| d.served.as_ref()) {
        let (Some(r), Some(bell), Some(wake)) = (
            region(d.link),
            links.bell(&d.server),
            links.wakes.get(d.link),
        ) else {
            continue;
        };
        let raw = keel_kvm::forward::ClientLinkFds::raw(r, bell, wake);
        args.push("--blk".into());
        args.push(raw.map(|f| f.to_string()).join(","));
        fds.extend(raw);
    }
    if vm.serves.is_empty() {
        return;
    }
    if let Some(bell) = links.bell(&vm.name) {
        args.push("--bell".into());
        args.push(bell.as_raw_fd().to_string());
        fds.push(bell.as_raw_fd());
    }
    for s in &vm.serves {
        if let Some(wake) = links.wakes.get(s.link) {
            args.push("--serve".into());
            args.push(wake.as_raw_fd().to_string());
            fds.push(wake.as_raw_fd());
        }
    }
}

/// Hidden `__switch <system.toml> --network NAME [--stats] [--pool] --port FDS...`: one
/// network's switch, until SIGTERM. `--pool`: with the dynamic pool's ports (`keel daemon`).
pub fn switch_main(args: &[String]) -> Result<u8, Failure> {
    let mut it = args.iter();
    let system = it
        .next()
        .ok_or_else(|| Failure::input("__switch: no system file"))?;
    let (mut name, mut stats, mut pool, mut port_args) = (None, false, false, Vec::new());
    while let Some(a) = it.next() {
        match a.as_str() {
            "--network" => name = it.next().cloned(),
            "--stats" => stats = true,
            "--pool" => pool = true,
            "--port" => port_args.extend(it.next().cloned()),
            other => return Err(Failure::input(format!("__switch: unexpected {other:?}"))),
        }
    }
    let name = name.ok_or_else(|| Failure::input("__switch: no --network"))?;
    let (_, plan) = if pool {
        load_plan_with_pool(Path::new(system))?
    } else {
        load_plan(Path::new(system))?
    };
    let net = plan
        .networks
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| Failure::input(format!("__switch: no network {name:?}")))?;
    let mut taken = Vec::new();
    let fds: Vec<PortFds> = port_args
        .iter()
        .map(|a| PortFds::take_inherited(a, &mut taken))
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::input(format!("__switch: {e}")))?;
    let vm_ports = net
        .ports
        .iter()
        .filter(|p| !matches!(p.owner, PortOwner::Uplink { .. }))
        .count();
    if fds.len() != vm_ports {
        return Err(Failure::input(format!(
            "__switch: {} ports given, network {name:?} has {vm_ports} ports besides its uplink",
            fds.len()
        )));
    }
    let sigfd = signal_fd(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1])?;
    let switch = build_switch(net)?;
    // The uplink (the plan puts it last, after the VM ports): a tap, pumped from here.
    let mut uplink = match net.ports.iter().find_map(|p| match &p.owner {
        PortOwner::Uplink { tap } => Some(tap.clone()),
        PortOwner::Vm { .. } | PortOwner::Pool { .. } => None,
    }) {
        Some(tap) => Some(Uplink::open(&tap, u64::from(net.slots)).map_err(|e| {
            // A missing driver says so itself; anything else is most likely permissions.
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                ""
            } else {
                " (opening a tap needs CAP_NET_ADMIN, or a persistent tap owned by this user)"
            };
            Failure::input(format!("network {name:?}: uplink tap:{tap}: {e}{hint}"))
        })?),
        None => None,
    };
    // The mappings live as long as the process (the service points into them).
    let mut mappings = Vec::new();
    let mut service_ports = Vec::new();
    for (i, p) in fds.iter().enumerate() {
        let map = |m: &keel_kvm::net::SharedMemory| {
            m.map()
                .map_err(|e| failure(format!("network {name:?}: port {i}: map: {e}")))
        };
        let (to, from) = (map(&p.to_switch)?, map(&p.from_switch)?);
        let window = |m: &keel_kvm::net::Mapping| {
            // SAFETY: the mappings are kept in `mappings` until this function returns,
            // after the service (declared later, dropped first) is gone.
            unsafe { m.frame_window(u64::from(net.slots)) }
                .map_err(|e| failure(format!("network {name:?}: port {i}: {e}")))
        };
        let windows = PortWindows {
            to_switch: window(&to)?,
            from_switch: window(&from)?,
        };
        let bell = p
            .ring_peer
            .try_clone()
            .map_err(|e| failure(format!("eventfd: {e}")))?;
        service_ports.push((
            windows,
            Box::new(keel_kvm::net::EventFdBell(bell)) as Box<dyn keel_net::port::Doorbell>,
        ));
        mappings.push((to, from));
    }
    if let Some(u) = uplink.as_mut() {
        service_ports.push(
            u.switch_side
                .take()
                .ok_or_else(|| failure("uplink reused"))?,
        );
    }
    let mut service = SwitchService::new(switch, service_ports)
        .map_err(|e| failure(format!("network {name:?}: {e}")))?;
    let origin = Instant::now();
    let mut pollfds: Vec<libc::pollfd> = std::iter::once(sigfd)
        .chain(fds.iter().map(|p| p.wait_on.as_raw_fd()))
        .chain(uplink.as_ref().map(|u| u.tap.raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Busy rounds in a row: a switch that never goes idle still looks at its signals.
    let mut busy_rounds = 0u32;
    loop {
        // Monotonic milliseconds (Instant) for the switch's MAC ageing.
        let now_ms = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let busy = service.service(now_ms, SWITCH_BUDGET) == Service::Busy;
        let pumped = uplink.as_mut().is_some_and(|u| u.pump(SWITCH_BUDGET));
        if busy || pumped {
            busy_rounds = busy_rounds.wrapping_add(1);
            if busy_rounds % SIGNAL_CHECK_ROUNDS != 0 || !signal_pending(sigfd) {
                continue;
            }
        }
        busy_rounds = 0;
        for p in &mut pollfds {
            p.revents = 0;
        }
        // SAFETY: `pollfds` is a valid array of pollfd structures.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(failure(format!(
                "network {name:?}: poll: {}",
                std::io::Error::last_os_error()
            )));
        }
        if pollfds[0].revents != 0 {
            match next_signal(sigfd) {
                Some(s) if s == libc::SIGUSR1 as u32 => {
                    let prefix = format!("keel: counters: switch {name:?} ");
                    for line in counter_lines(net, &service, uplink.as_ref()) {
                        emit(&prefix, &line);
                    }
                }
                _ => break,
            }
        }
        // (The tap's entry, last, needs no action: the next pump reads it.)
        for (p, pfd) in fds.iter().zip(&pollfds[1..]) {
            if pfd.revents != 0 {
                drain_eventfd(&p.wait_on);
            }
        }
    }
    if stats {
        let prefix = format!("keel: switch {name:?} ");
        for line in counter_lines(net, &service, uplink.as_ref()) {
            emit(&prefix, &line);
        }
    }
    drop(service);
    drop(mappings);
    Ok(0)
}

/// The switch a network's plan describes (`keel_net::plan::build_switch`: its ports with
/// their MACs, the uplink, its allow list, sizes and storm control).
fn build_switch(net: &NetworkPlan) -> Result<Switch, Failure> {
    keel_net::plan::build_switch(net).map_err(|e| failure(format!("network {:?}: {e}", net.name)))
}

/// One line per port, what follows `switch "lan" ` in a report: `port 0 (vm a net 0):
/// rx_frames 3 ...` (the switch's counters, then its rings'), then the uplink's pump, if any:
/// `uplink tap:x: host_rx ...`.
fn counter_lines(
    net: &NetworkPlan,
    service: &SwitchService,
    uplink: Option<&Uplink>,
) -> Vec<String> {
    let mut lines = Vec::with_capacity(net.ports.len() + 1);
    for (i, p) in net.ports.iter().enumerate() {
        let who = match &p.owner {
            PortOwner::Vm { vm, nic } => format!("vm {vm} net {nic}"),
            PortOwner::Uplink { tap } => format!("uplink tap:{tap}"),
            PortOwner::Pool { slot } => format!("pool port {slot}"),
        };
        let Ok(c) = service.counters(PortId(i as u16)) else {
            continue;
        };
        let (sw, to, from) = (c.switch, c.to_switch, c.from_switch);
        lines.push(format!(
            "port {i} ({who}): rx_frames {} rx_bytes {} tx_frames {} tx_bytes {} drop_spoofed {} drop_not_allowed {} drop_too_short {} drop_too_long {} drop_queue_full {} drop_no_route {} drop_storm {} ring_in_bad_length {} ring_in_broken {} ring_out_dropped_full {} ring_out_dropped_wild {}",
            sw.rx_frames,
            sw.rx_bytes,
            sw.tx_frames,
            sw.tx_bytes,
            sw.drop_spoofed,
            sw.drop_not_allowed,
            sw.drop_too_short,
            sw.drop_too_long,
            sw.drop_queue_full,
            sw.drop_no_route,
            sw.drop_storm,
            to.bad_length,
            u8::from(c.to_switch_broken),
            from.dropped_full,
            from.dropped_wild
        ));
    }
    if let Some(u) = uplink {
        lines.push(format!(
            "uplink tap:{}: host_rx {} host_tx {} drop_to_switch {} drop_to_host {}",
            u.tap.name(),
            u.from_host,
            u.to_host,
            u.drop_to_switch,
            u.drop_to_host
        ));
    }
    lines
}

/// `prefix` and `line` on stderr in one write (stderr is unbuffered: `eprintln!` may split
/// a line into several writes, which other processes' lines could land between).
fn emit(prefix: &str, line: &str) {
    let text = format!("{prefix}{line}\n");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Whether a signal waits on signalfd `fd` (without blocking).
fn signal_pending(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
}

/// A signalfd for SIGUSR1 (blocked in this thread and the threads it starts later): how a
/// VMM process of `keel up` learns it is asked for its counters.
pub(crate) fn counters_signal_fd() -> Result<RawFd, Failure> {
    signal_fd(&[libc::SIGUSR1])
}

/// Start a thread that prints the network devices' counters of VM `vm` (`probe`) on
/// stderr each time signalfd `fd` delivers a signal: one line per device, `keel: counters:
/// vm "a" virtio-net 0 (net 02:00:00:00:00:01 on "lan"): tx_frames … port_rx_frames …`
/// (the device's `NetCounters`, then its port's ring counters). The thread ends with the
/// process.
pub(crate) fn report_counters_on_signal(
    fd: RawFd,
    vm: &str,
    probe: keel_kvm::VmProbe,
) -> Result<(), Failure> {
    let prefix = format!("keel: counters: vm {vm:?} ");
    std::thread::Builder::new()
        .name("keel-counters".into())
        .spawn(move || {
            while next_signal(fd).is_some() {
                for d in probe.device_counters() {
                    let mut line = format!("{} {}:", d.kind, d.label);
                    for (name, value) in &d.counters {
                        line.push_str(&format!(" {name} {value}"));
                    }
                    emit(&prefix, &line);
                }
            }
        })
        .map(drop)
        .map_err(|e| failure(format!("cannot start the counters thread: {e}")))
}

/// Hidden `__vmm <system.toml> --vm NAME --log-level L --nic FDS... --shared FD...
/// --vsock-peer FDS... [--state DIR]`: one VM with its network ports and shared regions' memory files, as
/// `keel run` runs it. With `--state` (`keel daemon`), the serial port is the console of
/// `DIR` and the exit status goes to `DIR/exit` (admin/vmmproc.rs).
pub fn vmm_main(args: &[String]) -> Result<u8, Failure> {
    let mut it = args.iter();
    let system = it
        .next()
        .ok_or_else(|| Failure::input("__vmm: no system file"))?;
    let (mut vm, mut nics, mut shared, mut state) = (None, Vec::new(), Vec::new(), None);
    let (mut blks, mut bell, mut serves) = (Vec::new(), None, Vec::new());
    let mut vsock_peers = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--vm" => vm = it.next().cloned(),
            "--log-level" => {
                if let Some(l) = it.next().and_then(|l| Level::parse(l)) {
                    log::set_level(l);
                }
            }
            "--nic" => nics.extend(it.next().cloned()),
            "--shared" => shared.extend(it.next().cloned()),
            "--blk" => blks.extend(it.next().cloned()),
            "--bell" => bell = it.next().cloned(),
            "--serve" => serves.extend(it.next().cloned()),
            "--vsock-peer" => vsock_peers.extend(it.next().cloned()),
            "--state" => state = it.next().map(std::path::PathBuf::from),
            other => return Err(Failure::input(format!("__vmm: unexpected {other:?}"))),
        }
    }
    let vm = vm.ok_or_else(|| Failure::input("__vmm: no --vm"))?;
    let sys = crate::load(Path::new(system))?;
    let spec = sys
        .vm(&vm)
        .ok_or_else(|| Failure::input(format!("__vmm: no vm {vm:?}")))?;
    let mut taken = Vec::new();
    let ports: Vec<PortFds> = nics
        .iter()
        .map(|a| PortFds::take_inherited(a, &mut taken))
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::input(format!("__vmm: {e}")))?;
    let plan = keel_spec::plan::plan_vm_of(&sys, spec)
        .map_err(|e| Failure::input(format!("{system}: {e}")))?;
    let files = shared
        .iter()
        .map(|a| keel_kvm::net::take_inherited_memory(a, &mut taken))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::input(format!("__vmm: {e}")))?;
    let links: Vec<PortFds> = vsock_peers
        .iter()
        .map(|a| PortFds::take_inherited(a, &mut taken))
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::input(format!("__vmm: {e}")))?;
    let clients = blks
        .iter()
        .map(|a| keel_kvm::forward::ClientLinkFds::take_inherited(a, &mut taken))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::input(format!("__vmm: --blk: {e}")))?;
    let server = bell
        .map(|b| keel_kvm::forward::ServerFds::take_inherited(&b, &serves, &mut taken))
        .transpose()
        .map_err(|e| Failure::input(format!("__vmm: --bell/--serve: {e}")))?;
    let network = keel_kvm::VmNetwork::new(plan, ports)
        .and_then(|n| n.with_shared(files))
        .and_then(|n| n.with_forwarding(clients, server))
        .and_then(|n| n.with_vsock_peers(links))
        .map_err(crate::vmm_failure)?;
    // Its budget's cgroup is named after the system and `keel up`'s pid (docs/config.md).
    let scope = CgroupScope {
        system: sys.name().to_string(),
        owner_pid: std::os::unix::process::parent_id(),
    };
    let mut spec = spec.clone();
    if let Some(dir) = &state {
        spec.serial = keel_spec::Output::Stdio;
        crate::admin::vmmproc::attach_console(dir)?;
    }
    // Sandboxed once its VM is built, before the vCPUs run (docs/security.md).
    keel_kvm::sandbox::request_for(&spec).map_err(|e| Failure::input(format!("__vmm: {e}")))?;
    let result = crate::run_vm_to_exit(
        &spec,
        Some(network),
        true,
        &scope,
        false,
        crate::OnReboot::Exit0,
    );
    if state.is_some() {
        crate::admin::vmmproc::record_exit(&result);
    }
    result
}

/// The uplink port of a switch process: a host tap, joined to the switch by a ring pair in
/// this process's own memory (the switch serves it like any port) and pumped between the
/// tap and the rings by the switch loop.
struct Uplink {
    tap: keel_kvm::net::Tap,
    /// The switch's side of the rings, until given to the service.
    switch_side: Option<(PortWindows, Box<dyn keel_net::port::Doorbell>)>,
    to_switch: FrameProducer,
    from_switch: FrameConsumer,
    from_host: u64,
    to_host: u64,
    drop_to_switch: u64,
    drop_to_host: u64,
}

/// The pump looks at the rings after every service call: no notification is needed.
struct NoBell;

impl keel_net::port::Doorbell for NoBell {
    fn ring(&self) {}
}

impl Uplink {
    fn open(tap: &str, slots: u64) -> std::io::Result<Uplink> {
        let tap = keel_kvm::net::Tap::open(tap)?;
        let len = keel_net::ring::window_len(slots)
            .ok_or_else(|| std::io::Error::other("ring too large"))?;
        // Two zeroed, 8-aligned windows that live as long as the process (leaked): the
        // service and the pump both point into them.
        let window = || -> std::io::Result<(FrameWindow, FrameWindow)> {
            let mem: &'static mut [u64] = Box::leak(vec![0u64; len.div_ceil(8)].into_boxed_slice());
            let base = mem.as_mut_ptr().cast::<u8>();
            // SAFETY: `mem` is leaked (mapped forever), 8-aligned, `len` bytes long, and
            // only accessed through these two windows' ring code from now on.
            let pair = unsafe {
                (
                    FrameWindow::new(base, len, slots),
                    FrameWindow::new(base, len, slots),
                )
            };
            match pair {
                (Ok(a), Ok(b)) => Ok((a, b)),
                (Err(e), _) | (_, Err(e)) => Err(std::io::Error::other(e.to_string())),
            }
        };
        let (to_a, to_b) = window()?;
        let (from_a, from_b) = window()?;
        Ok(Uplink {
            tap,
            switch_side: Some((
                PortWindows {
                    to_switch: to_a,
                    from_switch: from_a,
                },
                Box::new(NoBell),
            )),
            to_switch: FrameProducer::attach(to_b),
            from_switch: FrameConsumer::attach(from_b),
            from_host: 0,
            to_host: 0,
            drop_to_switch: 0,
            drop_to_host: 0,
        })
    }

    /// Move up to `budget` frames each way; whether anything moved.
    fn pump(&mut self, budget: usize) -> bool {
        let mut moved = false;
        let mut buf = vec![0u8; 65536];
        for _ in 0..budget {
            match self.tap.recv(&mut buf) {
                Ok(Some(n)) => {
                    moved = true;
                    self.from_host += 1;
                    // Oversized (a host MTU above 1500) or empty: dropped and counted.
                    match buf.get(..n).map(|f| self.to_switch.send(f)) {
                        Some(Ok(Sent::Queued { .. })) => {}
                        _ => self.drop_to_switch += 1,
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut frame = [0u8; MAX_FRAME];
        for _ in 0..budget {
            match self.from_switch.recv(&mut frame) {
                Ok(Recv::Frame(n)) => {
                    moved = true;
                    match self.tap.send(&frame[..n]) {
                        Ok(true) => self.to_host += 1,
                        _ => self.drop_to_host += 1,
                    }
                }
                Ok(Recv::BadLength { .. }) => moved = true,
                Ok(Recv::Empty) | Err(_) => break,
            }
        }
        moved
    }
}
