//! Linux plumbing of Keel's network ports: shared ring windows in memory files (memfd)
//! mapped `MAP_SHARED`, notifications by eventfd, and the file descriptors a VMM process
//! inherits from `keel up` (docs/net.md, "Processes on Linux").
//!
//! A port is two rings (keel-net's frame rings), each in its own memfd: `to_switch` (the
//! VMM produces, the switch consumes) and `from_switch`. Each side of a port has one
//! eventfd it waits on: the switch waits on the port's `to_switch` eventfd, the VMM on its
//! `from_switch` eventfd; each side rings the other's ([`EventFdBell`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use keel_net::ring::{FrameError, FrameWindow};
pub use vmm_sys_util::eventfd::EventFd;

/// A memory file (memfd) holding one ring window: created zeroed by `keel up`, inherited
/// by the two processes that share it.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    len: usize,
}

impl SharedMemory {
    /// A new zero-filled memory file of `len` bytes (close-on-exec; `name` shows in
    /// `/proc/<pid>/fd`).
    pub fn create(name: &str, len: usize) -> io::Result<SharedMemory> {
        let cname = std::ffi::CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in memfd name"))?;
        // SAFETY: `cname` is a valid NUL-terminated string; the call creates a new fd.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "window too large"))?;
        // SAFETY: plain syscall on an fd we own; a new memfd grows zero-filled.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMemory { fd, len })
    }

    /// The memory file `fd` (its size is the window's length).
    pub fn from_fd(fd: OwnedFd) -> io::Result<SharedMemory> {
        // SAFETY: `st` is plain data written by fstat on a valid fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open and `st` is a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {} is not a memory file", fd.as_raw_fd()),
            ));
        }
        let len = usize::try_from(st.st_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad memory file size"))?;
        Ok(SharedMemory { fd, len })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file descriptor (to hand to a child).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Map the whole file readable and writable, shared with every other mapping of it.
    pub fn map(&self) -> io::Result<Mapping> {
        if self.len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty memory file",
            ));
        }
        // SAFETY: a new mapping chosen by the kernel over an fd we hold; nothing else
        // in this process refers to that range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { ptr, len: self.len })
    }
}

/// A `MAP_SHARED` mapping of a [`SharedMemory`], unmapped on drop. Only accessed through
/// keel-net's ring code (raw pointers, atomics): no Rust reference into it exists.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through the ring code's
// atomics and volatile accesses, never through references, so it may move and be shared
// between threads.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: [`SharedMemory::map`] refuses empty files).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte of the mapping (for a KVM memory slot over it).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A frame ring window of `slots` slots over the mapping.
    ///
    /// # Safety
    ///
    /// The mapping outlives the window and every producer or consumer made from it (keep
    /// it, e.g. in an `Arc`, next to them).
    pub unsafe fn frame_window(&self, slots: u64) -> Result<FrameWindow, FrameError> {
        // SAFETY: the range is mapped read-write (page-aligned, so 8-aligned) for the
        // mapping's life, which the caller guarantees covers the window's; nothing makes
        // references into it; the peer process only writes bytes.
        unsafe { FrameWindow::new(self.ptr.as_ptr(), self.len, slots) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range `map` created; no window outlives it (the
        // contract of `frame_window`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A new eventfd for a port notification: non-blocking, close-on-exec.
pub fn new_eventfd() -> io::Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
}

/// Empty an eventfd's counter (after a wake-up); whether it had been signalled.
pub fn drain_eventfd(fd: &EventFd) -> bool {
    fd.read().is_ok()
}

/// Rings a peer by writing its eventfd: the Linux side of a port's notification.
#[derive(Debug)]
pub struct EventFdBell(pub EventFd);

impl keel_net::port::Doorbell for EventFdBell {
    fn ring(&self) {
        // Fails only if the counter would overflow (the peer has not read it for 2^64
        // rings): it is signalled either way.
        let _ = self.0.write(1);
    }
}

/// The four file descriptors of one port as a VMM process inherits them, in the order of
/// the `--nic` argument: `to_switch` memfd, `from_switch` memfd, the switch's eventfd
/// (rung after sending), the VMM's eventfd (waited on).
#[derive(Debug)]
pub struct PortFds {
    /// The ring the VMM produces into.
    pub to_switch: SharedMemory,
    /// The ring the VMM consumes from.
    pub from_switch: SharedMemory,
    /// The peer's eventfd: written to wake it.
    pub ring_peer: EventFd,
    /// This side's eventfd: polled.
    pub wait_on: EventFd,
}

/// Why an inherited descriptor list was refused.
#[derive(Debug, thiserror::Error)]
pub enum FdArgError {
    /// Not four comma-separated numbers.
    #[error("{arg:?}: expected four file descriptor numbers separated by commas")]
    Syntax {
        /// The argument.
        arg: String,
    },
    /// A number is not an open descriptor, or is named twice.
    #[error("fd {fd}: {reason}")]
    Fd {
        /// The number.
        fd: RawFd,
        /// What is wrong with it.
        reason: String,
    },
}

impl PortFds {
    /// Create a port's fds (zeroed windows of `window_len` bytes, new eventfds), all
    /// close-on-exec. Returns the VMM side's view; the switch side uses the same objects
    /// with the roles swapped ([`PortFds::peer_view`]).
    pub fn create(name: &str, window_len: usize) -> io::Result<PortFds> {
        Ok(PortFds {
            to_switch: SharedMemory::create(&format!("keel-{name}-to-switch"), window_len)?,
            from_switch: SharedMemory::create(&format!("keel-{name}-from-switch"), window_len)?,
            ring_peer: new_eventfd()?,
            wait_on: new_eventfd()?,
        })
    }

    /// The raw numbers, in `--nic` order.
    pub fn raw(&self) -> [RawFd; 4] {
        [
            self.to_switch.fd().as_raw_fd(),
            self.from_switch.fd().as_raw_fd(),
            self.ring_peer.as_raw_fd(),
            self.wait_on.as_raw_fd(),
        ]
    }

    /// The `--nic`/`--port` argument naming these fds.
    pub fn arg(&self) -> String {
        let [a, b, c, d] = self.raw();
        format!("{a},{b},{c},{d}")
    }

    /// Take ownership of the four descriptors an argument names (inherited from the
    /// parent) and mark them close-on-exec again. `taken` collects the numbers already
    /// taken, so no descriptor is owned twice.
    pub fn take_inherited(arg: &str, taken: &mut Vec<RawFd>) -> Result<PortFds, FdArgError> {
        let syntax = || FdArgError::Syntax { arg: arg.into() };
        let nums: Vec<RawFd> = arg
            .split(',')
            .map(|s| s.trim().parse::<RawFd>().map_err(|_| syntax()))
            .collect::<Result<_, _>>()?;
        let [a, b, c, d] = <[RawFd; 4]>::try_from(nums).map_err(|_| syntax())?;
        let mut take = |fd: RawFd| take_inherited_fd(fd, taken);
        let (a, b, c, d) = (take(a)?, take(b)?, take(c)?, take(d)?);
        let mem = |fd: OwnedFd| {
            let n = fd.as_raw_fd();
            SharedMemory::from_fd(fd).map_err(|e| FdArgError::Fd {
                fd: n,
                reason: e.to_string(),
            })
        };
        Ok(PortFds {
            to_switch: mem(a)?,
            from_switch: mem(b)?,
            // SAFETY: `c` and `d` are owned, open descriptors (eventfds by the parent's
            // contract; a wrong kind only makes reads and writes fail).
            ring_peer: unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(c)) },
            // SAFETY: as above.
            wait_on: unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(d)) },
        })
    }
}

/// Take ownership of an inherited memory file named by `arg` (one descriptor number, as
/// `keel up` passes a shared guest memory region with `--shared`), marking it close-on-exec
/// again. `taken` collects the numbers already taken, so no descriptor is owned twice.
pub fn take_inherited_memory(
    arg: &str,
    taken: &mut Vec<RawFd>,
) -> Result<SharedMemory, FdArgError> {
    let fd: RawFd = arg
        .trim()
        .parse()
        .map_err(|_| FdArgError::Syntax { arg: arg.into() })?;
    let owned = take_inherited_fd(fd, taken)?;
    SharedMemory::from_fd(owned).map_err(|e| FdArgError::Fd {
        fd,
        reason: e.to_string(),
    })
}

/// Take ownership of the inherited descriptor `fd` (named on a hidden subcommand's command
/// line), marking it close-on-exec again; refused if it is a standard stream, not open, or
/// already in `taken` (so no descriptor is owned twice), which it joins.
pub fn take_inherited_fd(fd: RawFd, taken: &mut Vec<RawFd>) -> Result<OwnedFd, FdArgError> {
    let bad = |reason: &str| FdArgError::Fd {
        fd,
        reason: reason.into(),
    };
    if fd <= 2 || taken.contains(&fd) {
        return Err(bad("named twice or a standard stream"));
    }
    // SAFETY: changing descriptor flags has no effect on memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(bad("not an open file descriptor"));
    }
    taken.push(fd);
    // SAFETY: `fd` is open (fcntl succeeded), was inherited for this purpose and is owned
    // by nothing else in this process (checked against `taken`).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Let the descriptors `fds` survive the next `exec` (clear close-on-exec). For a child's
/// `pre_exec` hook: only calls `fcntl`, which is async-signal-safe.
pub fn inherit_across_exec(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: changing descriptor flags has no effect on memory.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Ask the kernel to send `signal` to this process when its parent dies (for a child's
/// `pre_exec` hook: `prctl` is async-signal-safe).
pub fn die_with_parent(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A host tap interface (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`, non-blocking): the uplink
/// port of a network. Each read or write is one Ethernet frame without FCS. Opening needs
/// CAP_NET_ADMIN, or a persistent tap the user may open (`ip tuntap add ... user ...`).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the union's first
/// member), padded to the kernel's 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Open (creating it if it does not exist, for as long as it is open) tap `name`.
    pub fn open(name: &str) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not an interface name (1 to 15 bytes)"),
            ));
        }
        // SAFETY: opening a device node by a valid NUL-terminated path.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "/dev/net/tun does not exist (no tun driver: load it with `modprobe tun`)",
                ));
            }
            return Err(e);
        }
        // SAFETY: `raw` is a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may write back the name into) a 40-byte ifreq,
        // which `req` is.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tap {
            fd,
            name: name.to_string(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor (to poll for input).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next frame from the host into `buf`: `Ok(None)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: reading at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// Give `frame` to the host: `Ok(false)` when the tap's queue is full (the frame is
    /// not sent; the caller drops it).
    pub fn send(&self, frame: &[u8]) -> io::Result<bool> {
        // SAFETY: writing `frame.len()` bytes from `frame`.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n >= 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_net::port::Doorbell;
    use keel_net::ring::{FrameConsumer, FrameProducer, MAX_FRAME, Recv, window_len};

    #[test]
    fn new_memory_file_is_zeroed_and_sized() {
        let m = SharedMemory::create("t", 8192).unwrap();

        let map = m.map().unwrap();

        assert_eq!(map.len(), 8192);
        // SAFETY: the mapping is live and 8192 bytes long; nothing else writes it.
        let bytes = unsafe { std::slice::from_raw_parts(map.ptr.as_ptr(), 8192) };
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn frames_cross_two_separate_mappings_of_one_memory_file() {
        let slots = 4;
        let m = SharedMemory::create("t", window_len(slots).unwrap()).unwrap();
        let (map_a, map_b) = (m.map().unwrap(), m.map().unwrap());
        // SAFETY: both mappings live until the end of the test, after the rings.
        let (wa, wb) = unsafe {
            (
                map_a.frame_window(slots).unwrap(),
                map_b.frame_window(slots).unwrap(),
            )
        };
        let mut p = FrameProducer::attach(wa);
        let mut c = FrameConsumer::attach(wb);

        p.send(b"0123456789abcdef").unwrap();
        let mut buf = [0u8; MAX_FRAME];
        let got = c.recv(&mut buf).unwrap();

        assert_eq!(got, Recv::Frame(16));
        assert_eq!(&buf[..16], b"0123456789abcdef");
    }

    #[test]
    fn memory_file_taken_from_its_fd_has_the_created_length() {
        let m = SharedMemory::create("t", 12288).unwrap();
        let dup = m.fd().try_clone().unwrap();

        let again = SharedMemory::from_fd(dup).unwrap();

        assert_eq!(again.len(), 12288);
    }

    #[test]
    fn an_eventfd_is_refused_as_a_memory_file() {
        let e = new_eventfd().unwrap();
        // SAFETY: a duplicate we own.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(e.as_raw_fd())) };

        let r = SharedMemory::from_fd(fd);

        assert!(r.is_err());
    }

    #[test]
    fn ringing_the_bell_wakes_the_peer_eventfd_once() {
        let peer = new_eventfd().unwrap();
        let bell = EventFdBell(peer.try_clone().unwrap());

        bell.ring();
        bell.ring();

        assert!(drain_eventfd(&peer));
        assert!(!drain_eventfd(&peer), "two rings coalesce into one wake-up");
    }

    #[test]
    fn inherited_port_fds_are_taken_once_each() {
        let p = PortFds::create("t", 4096).unwrap();
        let arg = p.arg();
        let raw = p.raw();
        // Hand the numbers over as a child would find them: leak our ownership.
        std::mem::forget(p);
        let mut taken = Vec::new();

        let first = PortFds::take_inherited(&arg, &mut taken).unwrap();
        let second = PortFds::take_inherited(&arg, &mut taken);

        assert_eq!(first.raw(), raw);
        assert_eq!(first.to_switch.len(), 4096);
        assert!(matches!(second, Err(FdArgError::Fd { .. })));
    }

    #[test]
    fn overlong_tap_name_is_refused_before_any_system_call() {
        let r = Tap::open("a-name-of-16-byt");

        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn malformed_fd_argument_is_refused_naming_it() {
        let mut taken = Vec::new();

        let r = PortFds::take_inherited("3,4,x", &mut taken);

        assert!(matches!(r, Err(FdArgError::Syntax { arg }) if arg == "3,4,x"));
    }
}
