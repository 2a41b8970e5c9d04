//! The sandbox of a VMM process on Linux (docs/security.md, "What a compromised VMM can
//! still reach").
//!
//! A VMM process runs one VM. Once the VM is built (and before any vCPU runs) the process
//! confines itself with [`apply`]:
//! 1. every file the VMM may open again later (`/dev/kvm`, kernel, initrd, disks,
//!    `/dev/urandom`) is opened now and kept ([`kept`]): a rebuild after a guest reset
//!    reuses these descriptors instead of opening paths;
//! 2. rlimits: `RLIMIT_CORE` 0, `RLIMIT_NOFILE` to what the VM needs, `RLIMIT_FSIZE` to the
//!    largest writable disk when no guest output, stdout or stderr goes to a file;
//! 3. fresh mount, IPC and network namespaces (`unshare`; in a new user namespace when not
//!    root); the network one always, since a VMM process never uses the host network (no
//!    PID namespace: see [`unshare_namespaces`]);
//! 4. `no_new_privs`;
//! 5. Landlock (best effort by ABI, up to [`LANDLOCK_ABI`]): read the kernel and initrd,
//!    read or read-write each disk as declared, `/dev/kvm`, `/dev/urandom`; nothing else, no
//!    execution, no TCP, no abstract Unix sockets, no signals outside the process. A kernel
//!    without Landlock gets a loud warning line, not a silent pass. Before the uid drop,
//!    because its rules name files by path, which the unprivileged user may not reach;
//! 6. when root, a switch to an unprivileged user (`KEEL_SANDBOX_USER`, else `keel` if that
//!    user exists, else `nobody`) with no supplementary groups;
//! 7. a seccomp filter ([`Role::Process`]) whose default action traps: a SIGSYS handler
//!    writes the thread's role and the system call number to stderr, then the process dies
//!    of SIGSYS (the whole process, not only the thread: a half-dead VMM helps nobody).
//!
//! Threads the VMM starts afterwards narrow their own filter at their start with [`enter`]
//! (seccomp filters stack, the strictest answer wins): [`Role::Vcpu`] and [`Role::Io`]. The
//! main thread takes [`Role::Main`] once the VM's supervisor thread runs.
//!
//! `KEEL_SANDBOX=off` turns all of it off (for debugging), with a warning line.

mod fs;
mod seccomp;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use keel_spec::{Output, VmSpec};
pub use seccomp::Role;

/// The newest Landlock ABI this sandbox asks for (tested on Linux 6.18, which has ABI 7).
pub const LANDLOCK_ABI: u8 = 7;

/// Descriptors a VM with a vsock host socket may open beyond its others: its backend's
/// connections and the ones waiting for their `CONNECT` line.
pub const VSOCK_FILES: u64 = (crate::vsock::MAX_CONNS + crate::vsock::MAX_HANDSHAKES) as u64 + 8;

/// The environment variable that turns the sandbox off (`off`) or on (`on`, the default).
pub const ENV_SWITCH: &str = "KEEL_SANDBOX";
/// The environment variable naming the user a root VMM process switches to.
pub const ENV_USER: &str = "KEEL_SANDBOX_USER";

/// What the sandbox of one VMM process allows: built from the VM's spec by
/// [`SandboxProfile::for_vm`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxProfile {
    /// The VM (for messages).
    pub vm: String,
    /// Files opened read-only: the kernel, the initrd, read-only disks.
    pub read_only: Vec<PathBuf>,
    /// Files opened read-write: the writable disks.
    pub read_write: Vec<PathBuf>,
    /// Device files opened read-write: `/dev/kvm`.
    pub devices: Vec<PathBuf>,
    /// Device files opened read-only: `/dev/urandom` when the VM has an rng.
    pub read_only_devices: Vec<PathBuf>,
    /// Put the process in a network namespace of its own (no host tap or host network).
    pub new_net_namespace: bool,
    /// Which user a root process switches to (`None`: keep the uid).
    pub user: UserChoice,
    /// `RLIMIT_FSIZE`, when guest output does not go to a file.
    pub file_size_limit: Option<u64>,
    /// `RLIMIT_RTPRIO`, set before the uid drop: a `SCHED_RR` placement's priority.
    pub rt_priority: Option<u64>,
    /// Files written when the VM ends: the `cgroup.procs` a budgeted VMM moves back to.
    pub cgroup_files: Vec<PathBuf>,
    /// The VM has a vsock host socket: its I/O threads may accept, connect (Unix sockets
    /// only) and wait on epoll, and it gets room for [`VSOCK_FILES`] more descriptors.
    pub vsock_socket: bool,
    /// Directories whose subdirectories are removed when the VM ends (its cgroup's).
    /// Non-empty: the process keeps its uid (an unprivileged one could not leave and
    /// remove the root-owned cgroup).
    pub cgroup_dirs: Vec<PathBuf>,
}

/// The user a sandboxed root process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserChoice {
    /// `keel` if that user exists, else `nobody`.
    Default,
    /// This user name (or a number: `65534`, `1000:1000` as uid:gid).
    Named(String),
    /// Stay as the current user.
    Keep,
}

/// Why the sandbox could not be applied. Every variant names what failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// `KEEL_SANDBOX` holds something else than `on` or `off`.
    #[error("{ENV_SWITCH}={0:?}: expected \"on\" or \"off\"")]
    BadSwitch(String),
    /// The process already runs other threads (namespaces and filters would miss them).
    #[error("the process has {0} threads; the sandbox must be applied while it has one")]
    Threaded(u64),
    /// A file of the profile could not be opened before confinement.
    #[error("cannot open {path} ({what}) before the sandbox: {reason}")]
    Open {
        /// Which file (`disk`, `/dev/kvm`, …).
        what: &'static str,
        /// Its path.
        path: String,
        /// The OS's reason.
        reason: String,
    },
    /// The user to switch to does not exist or cannot be switched to.
    #[error("user {user:?}: {reason}")]
    User {
        /// The user asked for.
        user: String,
        /// Why not.
        reason: String,
    },
    /// A system call of the sandbox setup failed.
    #[error("{op}: {reason}")]
    Setup {
        /// The call (`unshare(CLONE_NEWNET|…)`, `setrlimit(RLIMIT_NOFILE, 64)`, …).
        op: String,
        /// The OS's reason.
        reason: String,
    },
    /// Landlock refused the ruleset.
    #[error("landlock: {0}")]
    Landlock(String),
    /// A seccomp filter could not be built or installed.
    #[error("seccomp filter for the {role} role: {reason}")]
    Seccomp {
        /// The thread role.
        role: Role,
        /// What seccompiler said.
        reason: String,
    },
}

fn setup_error(op: impl Into<String>) -> SandboxError {
    SandboxError::Setup {
        op: op.into(),
        reason: std::io::Error::last_os_error().to_string(),
    }
}

/// Whether the sandbox is on for this process (`KEEL_SANDBOX`, on unless `off`).
pub fn enabled_by_env() -> Result<bool, SandboxError> {
    match std::env::var(ENV_SWITCH) {
        Err(_) => Ok(true),
        Ok(v) if v == "on" || v.is_empty() => Ok(true),
        Ok(v) if v == "off" => Ok(false),
        Ok(v) => Err(SandboxError::BadSwitch(v)),
    }
}

impl SandboxProfile {
    /// The profile of the VMM process running `spec`'s VM.
    pub fn for_vm(spec: &VmSpec) -> SandboxProfile {
        let mut read_only = vec![spec.kernel.as_path().to_path_buf()];
        read_only.extend(spec.initrd.iter().map(|p| p.as_path().to_path_buf()));
        let mut read_write = Vec::new();
        // A served disk has no host file: its bytes come through an inherited memory file.
        for d in spec.disks.iter().filter(|d| d.served.is_none()) {
            let p = d.path.as_path().to_path_buf();
            if d.read_only {
                read_only.push(p);
            } else {
                read_write.push(p);
            }
        }
        let to_file = std::iter::once(&spec.serial)
            .chain(spec.consoles.iter().map(|c| &c.output))
            .any(|o| matches!(o, Output::File(_)));
        let file_size_limit = if to_file {
            None
        } else {
            read_write
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .max()
                .or(Some(0))
        };
        let user = match std::env::var(ENV_USER) {
            Ok(u) if u == "keep" => UserChoice::Keep,
            Ok(u) if !u.is_empty() => UserChoice::Named(u),
            _ => UserChoice::Default,
        };
        SandboxProfile {
            vm: spec.name.clone(),
            read_only,
            read_write,
            devices: vec![PathBuf::from("/dev/kvm")],
            read_only_devices: if spec.rng {
                vec![PathBuf::from("/dev/urandom")]
            } else {
                Vec::new()
            },
            new_net_namespace: true,
            user,
            file_size_limit,
            rt_priority: None,
            cgroup_files: Vec::new(),
            cgroup_dirs: Vec::new(),
            vsock_socket: spec.vsock.as_ref().is_some_and(|v| v.socket.is_some()),
        }
    }
}

/// What [`apply`] did, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The Landlock ABI enforced (0: none).
    pub landlock_abi: u8,
    /// Whether Landlock enforced every right asked for.
    pub landlock_full: bool,
    /// The namespaces unshared (`mnt ipc net`, with `user` when not root).
    pub namespaces: Vec<&'static str>,
    /// The uid and gid the process runs as now.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// `RLIMIT_NOFILE` set.
    pub max_files: u64,
}

/// Files kept open for the process's life by [`apply`], by path.
static KEPT: Mutex<Option<HashMap<PathBuf, File>>> = Mutex::new(None);

/// The per-role filters, compiled by [`apply`]; set means the process is sandboxed.
static FILTERS: OnceLock<seccomp::Filters> = OnceLock::new();

/// A sandbox asked for by [`request`], applied by the VMM once its VM is built.
static REQUESTED: Mutex<Option<SandboxProfile>> = Mutex::new(None);

/// A new descriptor for `path` if [`apply`] kept it open (read-write for disks and devices,
/// as the profile said): the VMM uses it instead of opening the path again. The descriptor
/// shares its file offset with the kept one: read it with positional reads.
pub fn kept(path: &Path) -> Option<std::io::Result<File>> {
    let kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    kept.as_ref()?.get(path).map(File::try_clone)
}

/// Whether this process is sandboxed.
pub fn active() -> bool {
    FILTERS.get().is_some()
}

/// Ask for `profile` to be applied by the next VM this process starts (`start_vm_in`),
/// after the VM is built and before its vCPUs run.
pub fn request(profile: SandboxProfile) {
    *REQUESTED.lock().unwrap_or_else(|p| p.into_inner()) = Some(profile);
}

/// Take the requested profile (see [`request`]).
pub(crate) fn take_request() -> Option<SandboxProfile> {
    REQUESTED.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// What `keel run` and the `__vmm` process call before starting their VM: request the
/// sandbox of `spec`'s VM, or with `KEEL_SANDBOX=off` print a warning and request nothing.
pub fn request_for(spec: &VmSpec) -> Result<(), SandboxError> {
    if enabled_by_env()? {
        request(SandboxProfile::for_vm(spec));
    } else {
        eprintln!(
            "keel: warning: {ENV_SWITCH}=off: vm {:?}'s VMM process runs WITHOUT its sandbox (no seccomp, Landlock, namespaces or uid drop); for debugging only",
            spec.name
        );
    }
    Ok(())
}

/// Work to start once the VM is built and the process sandboxed (or right away there if
/// no sandbox was asked for): threads the VMM process needs besides the VM's own, which
/// must not exist while the sandbox is applied (it needs a single-threaded process) and
/// must start under it. Each starts its thread and that thread calls [`enter`] first.
type Deferred = Box<dyn FnOnce() + Send>;

static DEFERRED: Mutex<Vec<Deferred>> = Mutex::new(Vec::new());

/// Run `start` once the VM of this process is built and sandboxed (see [`Deferred`]).
pub fn after_apply(start: impl FnOnce() + Send + 'static) {
    DEFERRED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(start));
}

/// Run what [`after_apply`] deferred (by the VMM once its sandbox is in place).
pub(crate) fn run_deferred() {
    let starts = std::mem::take(&mut *DEFERRED.lock().unwrap_or_else(|p| p.into_inner()));
    for start in starts {
        start();
    }
}

/// Narrow the calling thread to `role` (a thread the VMM starts, at its start). Does
/// nothing in a process that is not sandboxed.
pub fn enter(role: Role) -> Result<(), SandboxError> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    seccomp::set_thread_role(role);
    filters.install(role)
}

/// The number of threads of this process.
fn thread_count() -> Result<u64, SandboxError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| SandboxError::Setup {
        op: "read /proc/self/status".into(),
        reason: e.to_string(),
    })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| SandboxError::Setup {
            op: "read /proc/self/status".into(),
            reason: "no Threads: line".into(),
        })
}

/// Open and keep every file of `profile`.
fn keep_files(profile: &SandboxProfile) -> Result<HashMap<PathBuf, File>, SandboxError> {
    let mut files = HashMap::new();
    let mut open = |path: &Path, write: bool, what: &'static str| {
        let f = OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| SandboxError::Open {
                what,
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        files.insert(path.to_path_buf(), f);
        Ok::<(), SandboxError>(())
    };
    for p in &profile.devices {
        open(p, true, "device")?;
    }
    for p in &profile.read_only_devices {
        open(p, false, "device")?;
    }
    for p in &profile.read_only {
        open(p, false, "read-only file")?;
    }
    for p in &profile.read_write {
        open(p, true, "disk")?;
    }
    Ok(files)
}

/// The type of `setrlimit`'s resource argument (glibc has its own).
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

fn set_limit(resource: Resource, name: &str, value: u64) -> Result<(), SandboxError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit for a valid resource.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(setup_error(format!("setrlimit({name}, {value})")));
    }
    Ok(())
}

/// Whether stdout or stderr is a regular file.
fn stdio_is_a_file() -> bool {
    [libc::STDOUT_FILENO, libc::STDERR_FILENO]
        .iter()
        .any(|&fd| {
            // SAFETY: a zeroed stat is valid; fstat fills it or fails.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat of a descriptor number with a valid pointer.
            unsafe { libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG }
        })
}

/// The highest open descriptor of this process.
fn highest_fd() -> Result<u64, SandboxError> {
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| SandboxError::Setup {
        op: "read /proc/self/fd".into(),
        reason: e.to_string(),
    })?;
    Ok(dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(2))
}

/// The uid and gid of `choice` (None: keep).
fn target_user(choice: &UserChoice) -> Result<Option<(u32, u32)>, SandboxError> {
    let lookup = |name: &str| -> Option<(u32, u32)> {
        if let Some((u, g)) = name.split_once(':') {
            return Some((u.parse().ok()?, g.parse().ok()?));
        }
        if let Ok(u) = name.parse::<u32>() {
            return Some((u, u));
        }
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|l| {
            let mut f = l.split(':');
            if f.next()? != name {
                return None;
            }
            let (_, uid, gid) = (f.next()?, f.next()?, f.next()?);
            Some((uid.parse().ok()?, gid.parse().ok()?))
        })
    };
    match choice {
        UserChoice::Keep => Ok(None),
        UserChoice::Named(n) => lookup(n).map(Some).ok_or_else(|| SandboxError::User {
            user: n.clone(),
            reason: "no such user (a name in /etc/passwd, a uid, or uid:gid)".into(),
        }),
        UserChoice::Default => lookup("keel")
            .or_else(|| lookup("nobody"))
            .or(Some((65534, 65534)))
            .map(Some)
            .ok_or_else(|| SandboxError::User {
                user: "nobody".into(),
                reason: "not found".into(),
            }),
    }
}

/// Unshare the namespaces; the names of those unshared.
fn unshare_namespaces(
    profile: &SandboxProfile,
    root: bool,
) -> Result<Vec<&'static str>, SandboxError> {
    // No PID namespace: after unshare(CLONE_NEWPID) the kernel refuses to create threads
    // (clone(CLONE_THREAD) fails with EINVAL while the children's PID namespace differs
    // from the caller's), and a VMM starts threads on every (re)start. It starts no
    // processes (its seccomp filter refuses them), so a PID namespace would hold nobody.
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
    let mut names = vec!["mnt", "ipc"];
    if profile.new_net_namespace {
        flags |= libc::CLONE_NEWNET;
        names.push("net");
    }
    if root {
        // SAFETY: unshare with namespace flags only affects this (single-threaded) process.
        if unsafe { libc::unshare(flags) } != 0 {
            return Err(setup_error(format!("unshare({})", names.join("|"))));
        }
        return Ok(names);
    }
    // Unprivileged: the namespaces come with a user namespace of their own, where this
    // process keeps its uid and gid (mapped to themselves) and no capability outside.
    // SAFETY: as above; getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: as above.
    if unsafe { libc::unshare(flags | libc::CLONE_NEWUSER) } != 0 {
        let e = std::io::Error::last_os_error();
        eprintln!(
            "keel: warning: sandbox of vm {:?}: no user namespace for an unprivileged VMM ({e}): it keeps the host's mount, IPC and network namespaces",
            profile.vm
        );
        return Ok(Vec::new());
    }
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| SandboxError::Setup {
            op: format!("write {file}"),
            reason: e.to_string(),
        })
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    names.push("user");
    Ok(names)
}

/// Switch to `uid`/`gid` with no supplementary groups, keeping the parent-death signal.
fn drop_user(uid: u32, gid: u32) -> Result<(), SandboxError> {
    let mut deathsig: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes an int through the pointer.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut deathsig as *mut libc::c_int) };
    // SAFETY: plain credential calls.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(setup_error("setgroups([])"));
    }
    // SAFETY: as above.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(setup_error(format!("setresgid({gid})")));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(setup_error(format!("setresuid({uid})")));
    }
    // A credential change clears the parent-death signal: set it again.
    if deathsig != 0 {
        // SAFETY: setting this process's own parent-death signal.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, deathsig as libc::c_ulong) };
    }
    Ok(())
}

/// Confine this process as `profile` says (the module's documentation lists the steps).
/// Must be called while the process has a single thread.
pub fn apply(profile: &SandboxProfile) -> Result<Applied, SandboxError> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(SandboxError::Threaded(threads));
    }
    // What the process reads later but may not open any more: answered now.
    crate::host::is_software_kvm();
    let files = keep_files(profile)?;
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    // A real-time placement after the uid drop needs RLIMIT_RTPRIO (raising it needs
    // CAP_SYS_RESOURCE, which a container's root may lack).
    let rt_limit = profile
        .rt_priority
        .map(|p| set_limit(libc::RLIMIT_RTPRIO, "RLIMIT_RTPRIO", p));
    let stays_root = if !profile.cgroup_dirs.is_empty() || !profile.cgroup_files.is_empty() {
        Some("its budget's cgroup must be left and removed when the VM ends".to_string())
    } else if let Some(Err(e)) = rt_limit {
        Some(format!("its SCHED_RR placement needs CAP_SYS_NICE ({e})"))
    } else {
        None
    };
    let target = match &stays_root {
        None if root => target_user(&profile.user)?,
        _ => None,
    };
    if let Some(why) = stays_root.filter(|_| root && profile.user != UserChoice::Keep) {
        eprintln!(
            "keel: warning: sandbox of vm {:?}: the VMM process stays root: {why}; seccomp, Landlock and namespaces still apply",
            profile.vm
        );
    }
    seccomp::install_sigsys_handler()?;

    // Room for the VM's descriptors twice over (a rebuild after a reset opens its new
    // ones while the kept ones stay), plus some for the runtime.
    let vsock_files = if profile.vsock_socket { VSOCK_FILES } else { 0 };
    let max_files = (highest_fd()? + 1) * 2 + 32 + vsock_files;
    set_limit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", max_files)?;
    set_limit(libc::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    // Not when stdout or stderr is a file (`keel run … > log`, a daemon's log): its writes
    // would meet the limit (SIGXFSZ).
    if let Some(size) = profile.file_size_limit.filter(|_| !stdio_is_a_file()) {
        set_limit(libc::RLIMIT_FSIZE, "RLIMIT_FSIZE", size)?;
    }
    let namespaces = unshare_namespaces(profile, root)?;
    // SAFETY: PR_SET_NO_NEW_PRIVS with its documented arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(setup_error("prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    // Landlock before the uid drop: its rules name the VM's files by path, and the
    // unprivileged uid may not be able to reach them (a disk under /root, a 0700 directory).
    // Changing uid afterwards is not something Landlock restricts.
    let (landlock_abi, landlock_full) = fs::restrict(profile)?;
    if let Some((uid, gid)) = target {
        drop_user(uid, gid)?;
    }
    if landlock_abi == 0 {
        eprintln!(
            "keel: WARNING: sandbox of vm {:?}: this kernel has no Landlock: the VMM process is NOT confined to its files (only its uid, namespaces and seccomp filter limit what it opens)",
            profile.vm
        );
    }
    *KEPT.lock().unwrap_or_else(|p| p.into_inner()) = Some(files);
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let filters = seccomp::Filters::compile(profile.vsock_socket)?;
    seccomp::set_thread_role(Role::Process);
    filters.install(Role::Process)?;
    let _ = FILTERS.set(filters);
    Ok(Applied {
        landlock_abi,
        landlock_full,
        namespaces,
        uid,
        gid,
        max_files,
    })
}

/// The whole content of a kept file (positional reads: the offset is shared).
pub(crate) fn read_kept(path: &Path) -> Option<std::io::Result<Vec<u8>>> {
    use std::os::unix::fs::FileExt;
    let file = match kept(path)? {
        Ok(f) => f,
        Err(e) => return Some(Err(e)),
    };
    Some((|| {
        let len = usize::try_from(file.metadata()?.size())
            .map_err(|_| std::io::Error::other("file too large"))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    })())
}

#[cfg(test)]
mod tests;
