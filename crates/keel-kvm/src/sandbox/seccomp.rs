//! The seccomp filters of a VMM process, one allow list per thread role.
//!
//! The lists were taken from what the VMM's threads actually call (strace of `keel run`
//! and `keel up` over every test guest case: block, net, console, rng, smp, reboot), then
//! grouped by role. Anything else traps: [`install_sigsys_handler`]'s handler writes the
//! role and the system call number to stderr and the process dies of SIGSYS.

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SandboxError;

/// What a thread of a VMM process does, and so which system calls it may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The whole process (the filter every thread inherits): the union of the roles below
    /// plus what rebuilding the VM after a guest reset needs (new VM and vCPU fds, guest
    /// memory, eventfds, threads). The VM's supervisor thread runs with this one.
    Process,
    /// The main thread once the VM runs: waits, prints, restores the terminal, exits.
    Main,
    /// A vCPU thread: `KVM_RUN`, interrupt lines, serial output.
    Vcpu,
    /// A device's I/O thread (and the stdin reader): polls its doorbells, moves data to and
    /// from disks and rings, raises interrupt lines.
    Io,
    /// The console relay of a VMM the admin started (`keel daemon`): copies the guest's
    /// serial output to its log and to one client of its console socket, the client's bytes
    /// to the guest's input; accepts that client.
    Console,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Process => "process",
            Role::Main => "main",
            Role::Vcpu => "vcpu",
            Role::Io => "io",
            Role::Console => "console",
        })
    }
}

/// `_IOC(dir, 0xAE, nr, size)`: a KVM ioctl request number (asm-generic layout, the same
/// on x86_64 and aarch64).
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const KVMIO: u64 = 0xAE;
const IOC_WRITE: u64 = 1;
#[cfg(target_arch = "x86_64")]
const IOC_READ: u64 = 2;
/// `KVM_RUN`.
pub const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
/// `KVM_IRQ_LINE`.
pub const KVM_IRQ_LINE: u64 = kvm_ioc(
    IOC_WRITE,
    0x61,
    std::mem::size_of::<kvm_bindings::kvm_irq_level>(),
);
/// `KVM_SIGNAL_MSI`.
pub const KVM_SIGNAL_MSI: u64 = kvm_ioc(
    IOC_WRITE,
    0xa5,
    std::mem::size_of::<kvm_bindings::kvm_msi>(),
);
/// `KVM_GET_REGS` (x86: the crash report reads the registers).
#[cfg(target_arch = "x86_64")]
const KVM_GET_REGS: u64 = kvm_ioc(
    IOC_READ,
    0x81,
    std::mem::size_of::<kvm_bindings::kvm_regs>(),
);
/// `KVM_GET_SREGS`.
#[cfg(target_arch = "x86_64")]
const KVM_GET_SREGS: u64 = kvm_ioc(
    IOC_READ,
    0x83,
    std::mem::size_of::<kvm_bindings::kvm_sregs>(),
);
/// `KVM_TRANSLATE` (x86: the crash report reads the code at the guest's RIP).
#[cfg(target_arch = "x86_64")]
const KVM_TRANSLATE: u64 = kvm_ioc(
    IOC_READ | IOC_WRITE,
    0x85,
    std::mem::size_of::<kvm_bindings::kvm_translation>(),
);
/// `KVM_GET_ONE_REG` (aarch64: the crash report reads the PC).
#[cfg(target_arch = "aarch64")]
const KVM_GET_ONE_REG: u64 = kvm_ioc(
    IOC_WRITE,
    0xab,
    std::mem::size_of::<kvm_bindings::kvm_one_reg>(),
);

/// The terminal ioctls `keel run` restores a raw terminal with (`tcsetattr`/`tcgetattr`).
// `libc::Ioctl` is u64 with glibc, c_int elsewhere.
#[allow(clippy::unnecessary_cast)]
const TERMINAL_IOCTLS: [u64; 4] = [
    libc::TCGETS as u64,
    libc::TCSETS as u64,
    libc::TCSETSW as u64,
    libc::TCSETSF as u64,
];

/// `set_nonblocking` on a socket (the console relay's listener and client).
// `libc::Ioctl` is u64 with glibc, c_int elsewhere.
#[allow(clippy::unnecessary_cast)]
const FIONBIO: u64 = libc::FIONBIO as u64;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Every thread's own needs: memory, locks, signals (the vCPU kick, the SIGSYS report),
/// time, its own exit.
const BASE: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    // musl's pthread_kill (the vCPU kick of the static arm64 build) signals with tkill, with
    // every signal blocked: a SIGSYS there kills without the report. Landlock's signal
    // scope keeps it inside the process.
    libc::SYS_tkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    libc::SYS_fcntl,
];

/// A vCPU thread, on top of [`BASE`]: its own CPUs (placement).
const VCPU: &[libc::c_long] = &[libc::SYS_sched_setaffinity];

/// An I/O thread, on top of [`BASE`]: waiting and block I/O.
const IO: &[libc::c_long] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_readv,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
];

/// The console relay thread, on top of [`BASE`]: waiting, accepting its one client on the
/// socket it was given, a write timeout on that client, talking to it.
const CONSOLE: &[libc::c_long] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    // std's UnixStream reads and writes with recv and send (MSG_NOSIGNAL).
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
];

/// A VM with a vsock host socket: its I/O thread (and the process) also accept host
/// connections, connect to `<socket>_<port>` (only `AF_UNIX` sockets: see [`rules`]),
/// talk on them and wait on their epoll instance.
const VSOCK: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
];

/// The main thread, on top of [`BASE`]: waiting on the supervisor and on signals, and the
/// thread that reports counters in `keel up`.
const MAIN: &[libc::c_long] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_getrusage,
];

/// The process (and the VM's supervisor thread), on top of all of the above: building a
/// VM again after a reset and starting its threads.
const PROCESS: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_lseek,
    libc::SYS_eventfd2,
    libc::SYS_mincore,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_getparam,
    libc::SYS_setpriority,
    libc::SYS_getpriority,
    libc::SYS_seccomp,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_unlinkat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    libc::SYS_mkdirat,
];

fn condition(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?])
}

/// ioctl rules: exactly these request numbers.
fn ioctls(requests: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    requests
        .iter()
        .map(|&r| condition(1, SeccompCmpOp::Eq, r))
        .collect()
}

/// The KVM ioctls a vCPU thread makes.
fn vcpu_ioctls() -> Vec<u64> {
    let mut v = vec![KVM_RUN, KVM_IRQ_LINE, KVM_SIGNAL_MSI];
    #[cfg(target_arch = "x86_64")]
    v.extend([KVM_GET_REGS, KVM_GET_SREGS, KVM_TRANSLATE]);
    #[cfg(target_arch = "aarch64")]
    v.push(KVM_GET_ONE_REG);
    v
}

/// The rules of `role`: syscall number → conditions (empty: any arguments).
fn rules(
    role: Role,
    vsock: bool,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut allow = |list: &[libc::c_long]| {
        for &s in list {
            map.insert(s, Vec::new());
        }
    };
    allow(BASE);
    let ioctl = match role {
        Role::Vcpu => {
            allow(VCPU);
            ioctls(&vcpu_ioctls())?
        }
        Role::Io => {
            allow(IO);
            ioctls(&[KVM_IRQ_LINE, KVM_SIGNAL_MSI])?
        }
        Role::Main => {
            allow(MAIN);
            ioctls(&TERMINAL_IOCTLS)?
        }
        // Only FIONBIO (std's `set_nonblocking` on its sockets).
        Role::Console => {
            allow(CONSOLE);
            ioctls(&[FIONBIO])?
        }
        Role::Process => {
            allow(IO);
            allow(CONSOLE);
            allow(MAIN);
            allow(PROCESS);
            // Any KVM ioctl (type 0xAE: on /dev/kvm, the VM and the vCPUs; which ones a
            // rebuild makes depends on the architecture and the host), and the terminal.
            let mut r = ioctls(&TERMINAL_IOCTLS)?;
            r.extend(ioctls(&[FIONBIO])?);
            r.push(condition(1, SeccompCmpOp::MaskedEq(0xff00), KVMIO << 8)?);
            r
        }
    };
    map.insert(libc::SYS_ioctl, ioctl);
    if vsock && matches!(role, Role::Io | Role::Process) {
        for &s in VSOCK {
            map.insert(s, Vec::new());
        }
        // Only Unix stream sockets (the vsock backend's connections to `<socket>_<port>`).
        map.insert(
            libc::SYS_socket,
            vec![condition(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?],
        );
    }
    if matches!(role, Role::Main | Role::Process) {
        // Threads only: no new processes (fork, vfork and clone without CLONE_THREAD).
        map.insert(
            libc::SYS_clone,
            vec![condition(
                0,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )?],
        );
        // Thread names (set by each new thread) and the seccomp setup of new threads.
        map.insert(
            libc::SYS_prctl,
            vec![
                condition(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?,
                condition(0, SeccompCmpOp::Eq, libc::PR_SET_NO_NEW_PRIVS as u64)?,
            ],
        );
    }
    Ok(map)
}

fn compile(role: Role, vsock: bool) -> Result<BpfProgram, SandboxError> {
    let fail = |e: &dyn std::fmt::Display| SandboxError::Seccomp {
        role,
        reason: e.to_string(),
    };
    let filter = SeccompFilter::new(
        rules(role, vsock).map_err(|e| fail(&e))?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        ARCH,
    )
    .map_err(|e| fail(&e))?;
    BpfProgram::try_from(filter).map_err(|e| fail(&e))
}

/// `clone3` fails with ENOSYS (its flags are in memory, out of a filter's reach): the C
/// library then falls back to `clone`, whose flags the filters check.
fn compile_clone3_fallback() -> Result<BpfProgram, SandboxError> {
    let fail = |e: &dyn std::fmt::Display| SandboxError::Seccomp {
        role: Role::Process,
        reason: e.to_string(),
    };
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .map_err(|e| fail(&e))?;
    BpfProgram::try_from(filter).map_err(|e| fail(&e))
}

/// The compiled filters of every role.
#[derive(Debug)]
pub(super) struct Filters {
    process: BpfProgram,
    clone3: BpfProgram,
    main: BpfProgram,
    vcpu: BpfProgram,
    io: BpfProgram,
    console: BpfProgram,
}

impl Filters {
    /// The filters; `vsock`: the VM has a vsock host socket ([`VSOCK`] for I/O threads).
    pub(super) fn compile(vsock: bool) -> Result<Filters, SandboxError> {
        Ok(Filters {
            process: compile(Role::Process, vsock)?,
            clone3: compile_clone3_fallback()?,
            main: compile(Role::Main, false)?,
            vcpu: compile(Role::Vcpu, false)?,
            io: compile(Role::Io, vsock)?,
            console: compile(Role::Console, false)?,
        })
    }

    /// Add `role`'s filter to the calling thread's (and so to the threads it starts).
    pub(super) fn install(&self, role: Role) -> Result<(), SandboxError> {
        let fail = |e: seccompiler::Error| SandboxError::Seccomp {
            role,
            reason: e.to_string(),
        };
        match role {
            Role::Process => {
                seccompiler::apply_filter(&self.process).map_err(fail)?;
                seccompiler::apply_filter(&self.clone3).map_err(fail)
            }
            Role::Main => seccompiler::apply_filter(&self.main).map_err(fail),
            Role::Vcpu => seccompiler::apply_filter(&self.vcpu).map_err(fail),
            Role::Io => seccompiler::apply_filter(&self.io).map_err(fail),
            Role::Console => seccompiler::apply_filter(&self.console).map_err(fail),
        }
    }
}

thread_local! {
    /// The calling thread's role, for the SIGSYS report (0: none yet).
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

pub(super) fn set_thread_role(role: Role) {
    ROLE.with(|r| {
        r.set(match role {
            Role::Process => 1,
            Role::Main => 2,
            Role::Vcpu => 3,
            Role::Io => 4,
            Role::Console => 5,
        })
    });
}

/// Append `n` in decimal to `buf` at `*len`.
fn put_number(buf: &mut [u8], len: &mut usize, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(buf, len, &digits[i..]);
}

fn put(buf: &mut [u8], len: &mut usize, bytes: &[u8]) {
    for &b in bytes {
        if let Some(slot) = buf.get_mut(*len) {
            *slot = b;
            *len += 1;
        }
    }
}

/// The SIGSYS handler: one line on stderr, then death by SIGSYS (async-signal-safe: no
/// allocation, no lock; only write, getpid, gettid and tgkill, which every role allows).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // The kernel's `_sigsys` member: `{ void *_call_addr; int _syscall; unsigned _arch; }`
    // after the three ints (and padding) of siginfo_t's head, at offset 16 + 8.
    let number = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passed a valid siginfo_t for a SIGSYS it raised, whose
        // `_sigsys._syscall` int sits at byte offset 24 (64-bit layout).
        unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() }
    };
    let role: &[u8] = match ROLE.try_with(Cell::get).unwrap_or(0) {
        1 => b"process",
        2 => b"main",
        3 => b"vcpu",
        4 => b"io",
        5 => b"console",
        _ => b"unknown",
    };
    let mut buf = [0u8; 256];
    let mut len = 0;
    put(&mut buf, &mut len, b"keel: error: sandbox: a ");
    put(&mut buf, &mut len, role);
    put(&mut buf, &mut len, b" thread made system call ");
    put_number(&mut buf, &mut len, u64::from(number.unsigned_abs()));
    put(&mut buf, &mut len, b" (");
    put(&mut buf, &mut len, std::env::consts::ARCH.as_bytes());
    put(
        &mut buf,
        &mut len,
        b"), which its seccomp filter forbids; the VMM process is killed (KEEL_SANDBOX=off runs without the sandbox)\n",
    );
    // SAFETY: writing our own stack buffer to stderr, then sending SIGSYS (now at its
    // default action, SA_RESETHAND) to this thread; all async-signal-safe.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGSYS,
        );
    }
}

/// Install the SIGSYS handler (one report, then the default action: death).
pub(super) fn install_sigsys_handler() -> Result<(), SandboxError> {
    // SAFETY: a zeroed sigaction is valid; the fields set are the handler and its flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
    // SAFETY: installing a handler that only makes async-signal-safe calls.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(super::setup_error("sigaction(SIGSYS)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        // x86_64 and aarch64 share these (from linux/kvm.h as built by kvm-ioctls).
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_IRQ_LINE, 0x4008_ae61);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
    }

    #[test]
    fn every_role_compiles() {
        for role in [Role::Process, Role::Main, Role::Vcpu, Role::Io] {
            assert!(compile(role, false).is_ok(), "{role}");
            assert!(compile(role, true).is_ok(), "{role} with vsock");
        }
    }

    #[test]
    fn only_a_vm_with_a_vsock_socket_lets_its_io_threads_connect_and_only_unix_sockets() {
        let io = rules(Role::Io, false).unwrap();
        assert!(!io.contains_key(&libc::SYS_connect));
        assert!(!io.contains_key(&libc::SYS_socket));

        let io = rules(Role::Io, true).unwrap();

        assert!(io.contains_key(&libc::SYS_connect));
        assert!(io.contains_key(&libc::SYS_accept4));
        assert_eq!(io[&libc::SYS_socket].len(), 1, "one rule: AF_UNIX");
        let vcpu = rules(Role::Vcpu, true).unwrap();
        assert!(!vcpu.contains_key(&libc::SYS_connect));
    }
}
