//! The host side of a VM's virtio-vsock device on Linux: Unix sockets with Firecracker's
//! conventions (docs/vsock.md).
//!
//! - The VM's socket (`[vm.vsock] socket`) is a listening Unix socket. A host program
//!   connects, writes `CONNECT <port>\n` and, once the guest accepted, reads
//!   `OK <host port>\n`; then the connection is the stream. A line that is not that (or
//!   longer than [`MAX_LINE`] bytes) closes the connection; so does the guest's RST.
//! - A guest connection to host port P connects (non-blocking) to the Unix socket
//!   `<socket>_<P>`; a refusal (nothing there, nobody listening, a full backlog) is the
//!   guest's RST.
//!
//! Every descriptor is non-blocking and registered edge-triggered in one epoll instance,
//! whose descriptor is the device's event source; [`VsockHost::accept`] empties it each time,
//! so it never stays readable (a connection it registers reports itself once more, so the
//! next look happens too).

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use keel_virtio::device::EventSource;
use keel_virtio::vsock::{ConnId, HostRead, VsockHost, VsockHostError};

/// The longest `CONNECT <port>\n` line accepted.
pub const MAX_LINE: usize = 32;
/// Most host connections that have not sent their `CONNECT` line yet; more are closed.
pub const MAX_HANDSHAKES: usize = 16;
/// Most connections the backend holds (the device keeps at most 64 open; this leaves room
/// for connections handed over but not yet seen by the device).
pub const MAX_CONNS: usize = 2 * keel_virtio::vsock::MAX_CONNECTIONS;

/// Why the host side of a vsock device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VsockSetupError {
    /// The socket path is there and is not a socket (it is not removed).
    #[error("vsock socket {path}: exists and is not a socket")]
    NotASocket {
        /// The path.
        path: String,
    },
    /// A system call failed.
    #[error("vsock socket {path}: {op}: {source}")]
    Io {
        /// The path.
        path: String,
        /// What failed.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

struct Conn {
    stream: UnixStream,
    /// Bytes the host sent after its `CONNECT` line, before the guest accepted.
    early: VecDeque<u8>,
}

/// The Unix-socket host side of one VM's vsock device.
pub struct UnixVsockHost {
    path: PathBuf,
    /// The socket's (device, inode): removed on drop only if the path is still ours.
    inode: (u64, u64),
    listener: UnixListener,
    epoll: OwnedFd,
    handshakes: Vec<Handshake>,
    ready: VecDeque<(ConnId, u32)>,
    conns: HashMap<ConnId, Conn>,
    next_id: ConnId,
}

impl std::fmt::Debug for UnixVsockHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixVsockHost")
            .field("path", &self.path)
            .field("conns", &self.conns.len())
            .finish()
    }
}

impl UnixVsockHost {
    /// Listen on `path` (a stale socket there is replaced; any other file is an error).
    pub fn bind(path: &Path) -> Result<UnixVsockHost, VsockSetupError> {
        let shown = path.display().to_string();
        let io = |op: &'static str| {
            let shown = shown.clone();
            move |source: std::io::Error| VsockSetupError::Io {
                path: shown,
                op,
                source,
            }
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(io("remove the stale socket"))?
            }
            Ok(_) => return Err(VsockSetupError::NotASocket { path: shown }),
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(io("bind"))?;
        let inode = std::fs::symlink_metadata(path)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            })
            .map_err(io("stat"))?;
        set_nonblocking(listener.as_raw_fd()).map_err(io("set non-blocking"))?;
        // SAFETY: epoll_create1 with a valid flag; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io("epoll_create1")(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor this function owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let host = UnixVsockHost {
            path: path.to_path_buf(),
            inode,
            listener,
            epoll,
            handshakes: Vec::new(),
            ready: VecDeque::new(),
            conns: HashMap::new(),
            next_id: 0,
        };
        host.watch(host.listener.as_raw_fd())
            .map_err(io("epoll_ctl"))?;
        Ok(host)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The epoll descriptor (the device's event source).
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Open connections (handed to the device or waiting to be).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn watch(&self, fd: RawFd) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        // SAFETY: both descriptors are open; `ev` is a valid epoll_event.
        let r =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Empty the epoll instance's ready list (the device looks at everything anyway).
    fn drain_epoll(&self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: `events` has room for 64 entries; timeout 0 never blocks.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, 0) };
            if n < 64 {
                return;
            }
        }
    }

    fn new_id(&mut self) -> ConnId {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    /// Accept what waits on the listener (bounded) and read the `CONNECT` lines that came.
    fn serve_listener(&mut self) {
        for _ in 0..MAX_HANDSHAKES {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES
                        || self.conns.len() + self.ready.len() >= MAX_CONNS
                        || set_nonblocking(stream.as_raw_fd()).is_err()
                        || self.watch(stream.as_raw_fd()).is_err()
                    {
                        continue; // dropped: closed
                    }
                    self.handshakes.push(Handshake {
                        stream,
                        line: Vec::new(),
                    });
                }
                Err(_) => break,
            }
        }
        let mut i = 0;
        while i < self.handshakes.len() {
            match read_line(&mut self.handshakes[i]) {
                Line::Waiting => i += 1,
                Line::Bad => {
                    self.handshakes.swap_remove(i);
                }
                Line::Port(port, early) => {
                    let h = self.handshakes.swap_remove(i);
                    let id = self.new_id();
                    self.conns.insert(
                        id,
                        Conn {
                            stream: h.stream,
                            early: early.into(),
                        },
                    );
                    self.ready.push_back((id, port));
                }
            }
        }
    }
}

/// O_NONBLOCK with `fcntl` (std's `set_nonblocking` is an ioctl, which the sandbox of an
/// I/O thread does not allow).
fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor this backend owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

enum Line {
    Waiting,
    Bad,
    /// The port asked for, and bytes that followed the line.
    Port(u32, Vec<u8>),
}

/// Read what there is of a handshake's `CONNECT <port>\n` line.
fn read_line(h: &mut Handshake) -> Line {
    let mut buf = [0u8; MAX_LINE];
    loop {
        match h.stream.read(&mut buf) {
            Ok(0) => return Line::Bad,
            Ok(n) => h.line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Line::Bad,
        }
        if h.line.contains(&b'\n') || h.line.len() > MAX_LINE {
            break;
        }
    }
    let Some(end) = h.line.iter().position(|&b| b == b'\n') else {
        return if h.line.len() > MAX_LINE {
            Line::Bad
        } else {
            Line::Waiting
        };
    };
    if end > MAX_LINE {
        return Line::Bad;
    }
    match parse_connect(&h.line[..end]) {
        Some(port) => Line::Port(port, h.line[end + 1..].to_vec()),
        None => Line::Bad,
    }
}

/// The port of a `CONNECT <port>` line (without its newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// A non-blocking connect to the Unix socket at `path`; `None` if refused for any reason
/// (nothing there, nobody listening, its backlog full).
fn connect_nonblocking(path: &Path) -> Option<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return None;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    // SAFETY: socket with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor this function owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        return None;
    }
    Some(UnixStream::from(owned))
}

/// A VM's vsock host side, bound once and kept across the VM's restarts (the listener
/// outlives a guest reset; a sandboxed VMM could not bind it again). Each run's device gets
/// [`SharedVsockHost::attach`].
#[derive(Clone, Debug)]
pub struct SharedVsockHost(std::sync::Arc<std::sync::Mutex<UnixVsockHost>>);

impl SharedVsockHost {
    /// Share `host`.
    pub fn new(host: UnixVsockHost) -> SharedVsockHost {
        SharedVsockHost(std::sync::Arc::new(std::sync::Mutex::new(host)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UnixVsockHost> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backend of a new run's device: connections of an earlier run are closed (their
    /// guest is gone), the listener and its waiting connections stay.
    pub fn attach(&self) -> Box<dyn VsockHost> {
        let mut host = self.lock();
        host.conns.clear();
        host.ready.clear();
        Box::new(self.clone())
    }

    /// The epoll descriptor (the device's event source).
    pub fn epoll_fd(&self) -> RawFd {
        self.lock().epoll_fd()
    }
}

impl VsockHost for SharedVsockHost {
    fn event_source(&self) -> Option<EventSource> {
        self.lock().event_source()
    }
    fn accept(&mut self) -> Option<(ConnId, u32)> {
        self.lock().accept()
    }
    fn accepted(&mut self, conn: ConnId, host_port: u32) -> Result<(), VsockHostError> {
        self.lock().accepted(conn, host_port)
    }
    fn connect(&mut self, port: u32) -> Result<ConnId, VsockHostError> {
        self.lock().connect(port)
    }
    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<HostRead, VsockHostError> {
        self.lock().read(conn, buf)
    }
    fn write(&mut self, conn: ConnId, buf: &[u8]) -> Result<usize, VsockHostError> {
        self.lock().write(conn, buf)
    }
    fn shutdown_write(&mut self, conn: ConnId) {
        self.lock().shutdown_write(conn)
    }
    fn close(&mut self, conn: ConnId) {
        self.lock().close(conn)
    }
    fn drain_event(&mut self) {
        self.lock().drain_event()
    }
}

impl VsockHost for UnixVsockHost {
    fn event_source(&self) -> Option<EventSource> {
        Some(EventSource(self.epoll.as_raw_fd() as u64))
    }

    fn accept(&mut self) -> Option<(ConnId, u32)> {
        if self.ready.is_empty() {
            self.drain_epoll();
            self.serve_listener();
        }
        self.ready.pop_front()
    }

    fn accepted(&mut self, conn: ConnId, host_port: u32) -> Result<(), VsockHostError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(VsockHostError::Gone { conn })?;
        let line = format!("OK {host_port}\n");
        match c.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            _ => Err(VsockHostError::Gone { conn }),
        }
    }

    fn connect(&mut self, port: u32) -> Result<ConnId, VsockHostError> {
        if self.conns.len() >= MAX_CONNS {
            return Err(VsockHostError::NoRoom);
        }
        let mut target = self.path.clone().into_os_string();
        target.push(format!("_{port}"));
        let stream =
            connect_nonblocking(Path::new(&target)).ok_or(VsockHostError::Refused { port })?;
        if self.watch(stream.as_raw_fd()).is_err() {
            return Err(VsockHostError::NoRoom);
        }
        let id = self.new_id();
        self.conns.insert(
            id,
            Conn {
                stream,
                early: VecDeque::new(),
            },
        );
        Ok(id)
    }

    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<HostRead, VsockHostError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(VsockHostError::Gone { conn })?;
        if buf.is_empty() {
            return Ok(HostRead::WouldBlock);
        }
        if !c.early.is_empty() {
            let n = buf.len().min(c.early.len());
            for (d, s) in buf.iter_mut().zip(c.early.drain(..n)) {
                *d = s;
            }
            return Ok(HostRead::Data(n));
        }
        loop {
            return match c.stream.read(buf) {
                Ok(0) => Ok(HostRead::Eof),
                Ok(n) => Ok(HostRead::Data(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(HostRead::WouldBlock),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => Err(VsockHostError::Gone { conn }),
            };
        }
    }

    fn write(&mut self, conn: ConnId, buf: &[u8]) -> Result<usize, VsockHostError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(VsockHostError::Gone { conn })?;
        loop {
            // std's UnixStream sends with MSG_NOSIGNAL: a closed peer is EPIPE, no signal.
            return match c.stream.write(buf) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => Err(VsockHostError::Gone { conn }),
            };
        }
    }

    fn shutdown_write(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    fn close(&mut self, conn: ConnId) {
        // Dropping the stream closes it (and removes it from the epoll set).
        self.conns.remove(&conn);
    }

    fn drain_event(&mut self) {
        self.drain_epoll();
    }
}

impl Drop for UnixVsockHost {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Not if a newer device (a VM rebuilt after a reset) has bound the path since.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("keel-vsock-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Call `f` until it returns Some, for at most 5 s.
    fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT 5 2"), None);
    }

    #[test]
    fn host_connect_line_becomes_a_connection_and_ok_is_answered_with_the_host_port() {
        let dir = Dir::new("accept");
        let path = dir.0.join("vm.vsock");
        let mut host = UnixVsockHost::bind(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 52\nearly").unwrap();

        let (id, port) = eventually(|| host.accept());
        host.accepted(id, 1 << 30).unwrap();

        assert_eq!(port, 52);
        let mut line = String::new();
        std::io::BufReader::new(client.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("OK {}\n", 1u32 << 30));
        let mut buf = [0u8; 16];
        assert_eq!(host.read(id, &mut buf).unwrap(), HostRead::Data(5));
        assert_eq!(&buf[..5], b"early");
        assert_eq!(host.write(id, b"to host").unwrap(), 7);
        let mut got = [0u8; 7];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to host");
        client.write_all(b"more").unwrap();
        let n = eventually(|| match host.read(id, &mut buf).unwrap() {
            HostRead::Data(n) => Some(n),
            _ => None,
        });
        assert_eq!(&buf[..n], b"more");
        drop(client);
        eventually(|| (host.read(id, &mut buf).unwrap() == HostRead::Eof).then_some(()));
    }

    #[test]
    fn a_bad_or_overlong_connect_line_closes_the_connection() {
        let dir = Dir::new("bad");
        let path = dir.0.join("vm.vsock");
        let mut host = UnixVsockHost::bind(&path).unwrap();
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.write_all(b"HELLO 52\n").unwrap();
        let mut long = UnixStream::connect(&path).unwrap();
        long.write_all(&[b'1'; 100]).unwrap();

        for _ in 0..20 {
            assert_eq!(host.accept(), None);
            std::thread::sleep(Duration::from_millis(5));
        }

        let mut buf = [0u8; 1];
        // Closed by the VMM: an end, or a reset since it left bytes unread.
        let closed = |r: std::io::Result<usize>| {
            matches!(r, Ok(0)) || matches!(r, Err(e) if e.kind() == ErrorKind::ConnectionReset)
        };
        assert!(closed(bad.read(&mut buf)));
        assert!(closed(long.read(&mut buf)));
        assert_eq!(host.connections(), 0);
    }

    #[test]
    fn guest_connection_reaches_the_socket_named_after_the_port_and_is_refused_without_one() {
        let dir = Dir::new("connect");
        let path = dir.0.join("vm.vsock");
        let mut host = UnixVsockHost::bind(&path).unwrap();
        let listener = UnixListener::bind(dir.0.join("vm.vsock_1234")).unwrap();

        let id = host.connect(1234).unwrap();
        let (mut server, _) = listener.accept().unwrap();

        assert_eq!(host.write(id, b"ping").unwrap(), 4);
        let mut got = [0u8; 4];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        host.shutdown_write(id);
        assert_eq!(
            server.read(&mut got).unwrap(),
            0,
            "end of stream after shutdown"
        );
        assert_eq!(
            host.connect(4321),
            Err(VsockHostError::Refused { port: 4321 })
        );
    }

    #[test]
    fn the_event_source_fires_on_a_new_connection_and_is_quiet_once_drained() {
        let dir = Dir::new("epoll");
        let path = dir.0.join("vm.vsock");
        let mut host = UnixVsockHost::bind(&path).unwrap();
        let readable = |host: &UnixVsockHost| {
            let mut p = libc::pollfd {
                fd: host.epoll_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 0) };
            p.revents & libc::POLLIN != 0
        };
        assert!(!readable(&host));

        let _client = UnixStream::connect(&path).unwrap();

        eventually(|| readable(&host).then_some(()));
        assert_eq!(host.accept(), None, "no CONNECT line yet");
        // Registering the accepted stream reports it once more; the next look quiets it.
        assert_eq!(host.accept(), None);
        assert!(!readable(&host));
    }

    #[test]
    fn a_new_run_of_the_vm_keeps_the_listener_and_closes_the_old_runs_connections() {
        let dir = Dir::new("restart");
        let path = dir.0.join("vm.vsock");
        let shared = SharedVsockHost::new(UnixVsockHost::bind(&path).unwrap());
        let mut first = shared.attach();
        let mut old = UnixStream::connect(&path).unwrap();
        old.write_all(b"CONNECT 1\n").unwrap();
        let (id, _) = eventually(|| first.accept());

        let mut second = shared.attach();

        let mut buf = [0u8; 1];
        assert_eq!(
            old.read(&mut buf).unwrap(),
            0,
            "the old run's connection is closed"
        );
        assert_eq!(
            second.write(id, b"x"),
            Err(VsockHostError::Gone { conn: id })
        );
        let mut new = UnixStream::connect(&path).unwrap();
        new.write_all(b"CONNECT 2\n").unwrap();
        assert_eq!(eventually(|| second.accept()).1, 2);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_another_file_is_refused() {
        let dir = Dir::new("stale");
        let path = dir.0.join("vm.vsock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(UnixVsockHost::bind(&path).is_ok());
        let file = dir.0.join("file");
        std::fs::write(&file, b"x").unwrap();

        let e = UnixVsockHost::bind(&file).unwrap_err();

        assert!(matches!(e, VsockSetupError::NotASocket { .. }), "{e}");
        assert!(file.exists());
    }
}
