//! The VMM-process side of supervision (`__vmm ... --state DIR`, started by `keel daemon`):
//! the guest's serial port goes to `DIR/serial.log` and to one client at a time of the
//! console socket `DIR/console.sock`, whose input goes to the serial port; SIGPWR types the
//! graceful-shutdown request (the line `poweroff`) into the serial port; the VMM's exit
//! status is written to `DIR/exit`. See docs/admin.md, "Supervision".

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::Failure;

/// The per-VM files in the VM's state directory.
pub(crate) const SERIAL_LOG: &str = "serial.log";
/// The console socket the VMM serves.
pub(crate) const CONSOLE_SOCK: &str = "console.sock";
/// The VMM's exit status (`exit N`, then the error message if any).
pub(crate) const EXIT_FILE: &str = "exit";

/// What the VMM types into the serial port when the admin asks for a graceful shutdown.
pub(crate) const POWEROFF_LINE: &[u8] = b"\npoweroff\n";

/// The signal with which the admin asks for a graceful shutdown.
pub(crate) const SHUTDOWN_SIGNAL: libc::c_int = libc::SIGPWR;

fn failure(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure {
        status: crate::EXIT_FAILURE,
        message: format!("__vmm --state: {what}: {e}"),
    }
}

/// Run `f` on the path of `name` in `dir` as `/proc/self/fd/<dir>/<name>`: a socket path
/// stays short (at most 108 bytes) however deep the state directory is.
pub(crate) fn in_dir<T>(
    dir: &Path,
    name: &str,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let d = std::fs::File::open(dir)?;
    f(&Path::new("/proc/self/fd")
        .join(d.as_raw_fd().to_string())
        .join(name))
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Make this process's stdin and stdout the serial console of `dir` (before the VM starts,
/// with `serial = "stdio"`): a thread copies stdout to `serial.log` and the console client,
/// and the client's input (and the shutdown request on SIGPWR) to stdin.
pub(crate) fn attach_console(dir: &Path) -> Result<(), Failure> {
    // Opened (empty) now, written at exit: a sandbox applied later need not allow the
    // directory. Empty means "still running or killed" to the daemon.
    let exit = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.join(EXIT_FILE))
        .map_err(|e| failure(EXIT_FILE, e))?;
    *EXIT.lock().unwrap_or_else(|p| p.into_inner()) = Some(exit);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SERIAL_LOG))
        .map_err(|e| failure(SERIAL_LOG, e))?;
    let sock = dir.join(CONSOLE_SOCK);
    let _ = std::fs::remove_file(&sock);
    let listener = in_dir(dir, CONSOLE_SOCK, |p| UnixListener::bind(p))
        .map_err(|e| failure(CONSOLE_SOCK, e))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| failure(CONSOLE_SOCK, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| failure(CONSOLE_SOCK, e))?;
    let (out_r, out_w) = pipe().map_err(|e| failure("pipe", e))?;
    let (in_r, in_w) = pipe().map_err(|e| failure("pipe", e))?;
    // SIGPWR is blocked here, before the VM's threads start (they inherit the mask), and
    // read by the console thread's signalfd.
    // SAFETY: plain data initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SHUTDOWN_SIGNAL);
    }
    // SAFETY: changes this thread's signal mask only.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(failure("sigmask", std::io::Error::last_os_error()));
    }
    // SAFETY: a new signalfd for the set.
    let sigfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if sigfd < 0 {
        return Err(failure("signalfd", std::io::Error::last_os_error()));
    }
    // SAFETY: `sigfd` is new and owned by nobody else.
    let sigfd = unsafe { OwnedFd::from_raw_fd(sigfd) };
    // SAFETY: dup2 onto the standard descriptors; the sources stay valid (owned above).
    let ok = unsafe {
        libc::dup2(out_w.as_raw_fd(), libc::STDOUT_FILENO) >= 0
            && libc::dup2(in_r.as_raw_fd(), libc::STDIN_FILENO) >= 0
    };
    if !ok {
        return Err(failure("dup2", std::io::Error::last_os_error()));
    }
    drop((out_w, in_r));
    // The relay thread starts once the VM is built and the process sandboxed (the sandbox
    // needs a single-threaded process), under its own seccomp role.
    keel_kvm::sandbox::after_apply(move || {
        let relay = std::thread::Builder::new()
            .name("keel-console".into())
            .spawn(move || {
                if let Err(e) = keel_kvm::sandbox::enter(keel_kvm::sandbox::Role::Console) {
                    keel_kvm::log::error(format_args!("console relay: sandbox: {e}"));
                    return;
                }
                Relay {
                    log,
                    listener,
                    client: None,
                    guest_in: std::fs::File::from(in_w),
                    sigfd,
                }
                .run(std::fs::File::from(out_r))
            });
        match relay {
            Ok(t) => *RELAY.lock().unwrap_or_else(|p| p.into_inner()) = Some(t),
            Err(e) => keel_kvm::log::error(format_args!("cannot start the console relay: {e}")),
        }
    });
    Ok(())
}

/// `exit`, opened before the VM starts.
static EXIT: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// The console thread, joined at exit so the guest's last output reaches the log.
static RELAY: std::sync::Mutex<Option<std::thread::JoinHandle<()>>> = std::sync::Mutex::new(None);

/// Close stdout (the console thread sees the end of the guest's output) and wait for the
/// console thread to copy what is left.
fn drain_console() {
    let _ = std::io::stdout().flush();
    // Closed, not replaced: a sandboxed VMM may not open /dev/null any more, and Rust's
    // stdout treats a closed descriptor as a sink.
    // SAFETY: closes this process's stdout, which nothing uses after this point.
    unsafe { libc::close(libc::STDOUT_FILENO) };
    if let Some(t) = RELAY.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = t.join();
    }
}

struct Relay {
    log: std::fs::File,
    listener: UnixListener,
    client: Option<UnixStream>,
    guest_in: std::fs::File,
    sigfd: OwnedFd,
}

impl Relay {
    /// Until the VMM's stdout closes (the process ends).
    fn run(mut self, mut out: std::fs::File) {
        let mut buf = [0u8; 4096];
        loop {
            let mut fds = [
                pollfd(out.as_raw_fd()),
                pollfd(self.listener.as_raw_fd()),
                pollfd(self.sigfd.as_raw_fd()),
                pollfd(self.client.as_ref().map_or(-1, |c| c.as_raw_fd())),
            ];
            // SAFETY: a valid array of pollfds (-1 entries are ignored).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds[0].revents != 0 {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.output(&buf[..n]),
                }
            }
            if fds[1].revents != 0 {
                self.accept();
            }
            if fds[2].revents != 0 {
                self.signals();
            }
            if fds[3].revents != 0 {
                self.input(&mut buf);
            }
        }
    }

    /// Guest output: to the log, and to the client (dropped if it does not keep up).
    fn output(&mut self, bytes: &[u8]) {
        let _ = self.log.write_all(bytes);
        if let Some(c) = self.client.as_mut()
            && c.write_all(bytes).is_err()
        {
            self.client = None;
        }
    }

    /// One client at a time: a second one is told so and closed.
    fn accept(&mut self) {
        while let Ok((mut s, _)) = self.listener.accept() {
            if self.client.is_some() {
                let _ = s.write_all(b"keel: the console has a client already\n");
                continue;
            }
            // A client that stops reading for a second loses its connection, not the
            // guest's output to the log.
            if s.set_nonblocking(false).is_err()
                || s.set_write_timeout(Some(std::time::Duration::from_secs(1)))
                    .is_err()
            {
                continue;
            }
            self.client = Some(s);
        }
    }

    fn input(&mut self, buf: &mut [u8]) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        match c.read(buf) {
            Ok(0) | Err(_) => self.client = None,
            Ok(n) => {
                let _ = self.guest_in.write_all(&buf[..n]);
            }
        }
    }

    /// SIGPWR: type the shutdown request.
    fn signals(&mut self) {
        // SAFETY: plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info` (non-blocking signalfd).
        while unsafe {
            libc::read(
                self.sigfd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        } == size as isize
        {
            let _ = self.guest_in.write_all(POWEROFF_LINE);
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Write the guest's last output to the log, then the VMM's exit status to the `exit` file
/// [`attach_console`] opened (`exit N`, then the message of a failure).
pub(crate) fn record_exit(result: &Result<u8, Failure>) {
    drain_console();
    let text = match result {
        Ok(code) => format!("exit {code}\n"),
        Err(f) => format!("exit {}\n{}\n", f.status, f.message),
    };
    if let Some(mut f) = EXIT.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = f.write_all(text.as_bytes());
    }
}
