//! `keel daemon <system.toml> [--state-dir DIR] [--socket PATH] [--log-level L]`: the admin
//! on Linux. Creates the state directory (0700) and the API socket (0600), starts the
//! [`ProcessSupervisor`] (static VMs, switches, adoption) and serves the REST API on the
//! socket until SIGTERM or SIGINT, which stop every VM first. See docs/admin.md.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_kvm::log::{self, Level};

use super::supervisor::{Config, ProcessSupervisor};
use crate::Failure;

/// `keel daemon`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DaemonArgs {
    pub system: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub level: Level,
}

/// `sun_path`'s size: a socket path has at most one byte less.
const SUN_PATH_MAX: usize = 108;

/// The socket's name in the state directory when `--socket` is not given.
pub(crate) const SOCKET: &str = "keel.sock";

/// The default state directory of system `name`: `/run/keel/<name>` as root, else
/// `$XDG_RUNTIME_DIR/keel/<name>`.
pub(crate) fn default_state_dir(
    name: &str,
    root: bool,
    runtime_dir: Option<&str>,
) -> Result<PathBuf, Failure> {
    if root {
        return Ok(Path::new("/run/keel").join(name));
    }
    match runtime_dir {
        Some(d) if !d.is_empty() => Ok(Path::new(d).join("keel").join(name)),
        _ => Err(Failure::input(
            "XDG_RUNTIME_DIR is not set: give the state directory with --state-dir DIR",
        )),
    }
}

fn io_failure(what: &Path, e: std::io::Error) -> Failure {
    Failure {
        status: crate::EXIT_FAILURE,
        message: format!("{}: {e}", what.display()),
    }
}

/// Run the daemon until SIGTERM or SIGINT; 0 after an orderly stop.
pub(crate) fn run(args: DaemonArgs) -> Result<u8, Failure> {
    log::set_level(args.level);
    let system_file = std::path::absolute(&args.system).unwrap_or(args.system.clone());
    let sys = crate::load(&system_file)?;
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => {
            // SAFETY: geteuid has no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            default_state_dir(
                sys.name(),
                root,
                std::env::var("XDG_RUNTIME_DIR").ok().as_deref(),
            )?
        }
    };
    let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
    std::fs::create_dir_all(&state_dir).map_err(|e| io_failure(&state_dir, e))?;
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_failure(&state_dir, e))?;
    // Blocked before any thread starts (they inherit the mask): only the signalfd sees them.
    let sigfd = crate::up::signal_fd(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])?;
    keel_kvm::host::note_software_kvm();
    let supervisor = ProcessSupervisor::start(Config {
        system_file,
        state_dir: state_dir.clone(),
        exe: PathBuf::from("/proc/self/exe"),
        log_level: args.level,
    })?;
    let socket = args.socket.unwrap_or_else(|| state_dir.join(SOCKET));
    let _ = std::fs::remove_file(&socket);
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(&socket);
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| {
        if socket.as_os_str().len() >= SUN_PATH_MAX {
            Failure::input(format!(
                "socket path {} is {} bytes long (a Unix socket path has at most {}): give a shorter --socket or --state-dir",
                socket.display(),
                socket.as_os_str().len(),
                SUN_PATH_MAX - 1
            ))
        } else {
            io_failure(&socket, e)
        }
    })?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_failure(&socket, e))?;
    log::info(format_args!(
        "keel daemon: system {:?}, state {}, socket {}",
        sys.name(),
        state_dir.display(),
        socket.display()
    ));
    let api_supervisor: Arc<dyn super::model::Supervisor> = supervisor.clone();
    let api_state = state_dir.clone();
    std::thread::Builder::new()
        .name("keel-api".into())
        .spawn(move || {
            if let Err(e) = super::api::serve(listener, &api_state, api_supervisor) {
                log::error(format_args!(
                    "the REST API stopped: {e}; the VMs stay supervised"
                ));
            }
        })
        .map_err(|e| io_failure(&socket, e))?;
    let signal = crate::up::next_signal(sigfd);
    log::info(format_args!(
        "keel daemon: signal {}: stopping every VM",
        signal.unwrap_or(0)
    ));
    supervisor.shutdown_all();
    let _ = std::fs::remove_file(&socket);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keeps_its_state_under_run_keel() {
        let d = default_state_dir("demo", true, Some("/run/user/1000"))
            .ok()
            .unwrap();

        assert_eq!(d, PathBuf::from("/run/keel/demo"));
    }

    #[test]
    fn a_user_keeps_its_state_under_the_runtime_dir() {
        let d = default_state_dir("demo", false, Some("/run/user/1000"))
            .ok()
            .unwrap();

        assert_eq!(d, PathBuf::from("/run/user/1000/keel/demo"));
    }

    #[test]
    fn a_user_without_runtime_dir_must_give_the_state_dir() {
        let e = default_state_dir("demo", false, None).err().unwrap();

        assert!(e.message.contains("--state-dir"), "{}", e.message);
    }
}
