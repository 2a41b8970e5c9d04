//! `vsock-listen` and `vsock-connect`: AF_VSOCK stream sockets, for Keel's virtio-vsock
//! end-to-end tests (busybox has no vsock tool). The socket calls are the C library's,
//! declared here (std links it anyway), so the probe keeps no dependencies.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use crate::{ProbeError, clock};

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const SOCK_CLOEXEC: i32 = 0o2000000;
/// `VMADDR_CID_ANY`: listen on every CID of this guest.
const CID_ANY: u32 = u32::MAX;
const SHUT_WR: i32 = 1;

/// `struct sockaddr_vm` (linux/vm_sockets.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

impl SockaddrVm {
    fn new(cid: u32, port: u32) -> SockaddrVm {
        SockaddrVm {
            family: AF_VSOCK as u16,
            reserved1: 0,
            port,
            cid,
            flags: 0,
            zero: [0; 3],
        }
    }
}

unsafe extern "C" {
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
    fn accept(fd: i32, addr: *mut SockaddrVm, len: *mut u32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn shutdown(fd: i32, how: i32) -> i32;
}

/// A failed socket call: its name and errno.
pub(crate) fn os_error(call: &'static str) -> ProbeError {
    ProbeError::Os {
        call,
        errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    }
}

/// The descriptor a call returned, owned.
fn owned(fd: i32, call: &'static str) -> Result<OwnedFd, ProbeError> {
    if fd < 0 {
        return Err(os_error(call));
    }
    // SAFETY: `fd` was just returned by the C library and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn new_socket() -> Result<OwnedFd, ProbeError> {
    // SAFETY: socket with constant arguments; the result is checked by `owned`.
    owned(
        unsafe { socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0) },
        "socket",
    )
}

fn shut_write(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutting down the sending side of a socket this process owns.
    unsafe { shutdown(f.as_raw_fd(), SHUT_WR) };
}

/// The byte at offset `i` of what `vsock-connect` sends.
pub(crate) fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(131) >> 3) as u8
}

/// Echo one connection: every byte back, until the peer's end, then an end of ours
/// (`shutdown(SHUT_WR)`, done by the caller's socket type through [`HalfClose`]). Returns the
/// bytes echoed.
pub(crate) fn echo_stream<S: Read + Write + HalfClose>(conn: &mut S) -> Result<u64, ProbeError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(os_error("read")),
        };
        conn.write_all(&buf[..n]).map_err(|_| os_error("write"))?;
        total += n as u64;
    }
    conn.half_close();
    Ok(total)
}

/// A stream socket whose sending side can be shut down.
pub(crate) trait HalfClose {
    fn half_close(&self);
}

impl HalfClose for File {
    fn half_close(&self) {
        shut_write(self);
    }
}

impl HalfClose for std::os::unix::net::UnixStream {
    fn half_close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl HalfClose for std::net::TcpStream {
    fn half_close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// The client side of the echo: a thread writes `bytes` of [`pattern`] in 64 KiB chunks to
/// `writer` and then ends its side (`end`), while this one reads the echo from `reader` and
/// compares it. Returns (bytes read, bytes that differ from the pattern).
pub(crate) fn send_and_check<R, W>(
    mut reader: R,
    mut writer: W,
    bytes: u64,
    end: impl FnOnce(&W) + Send + 'static,
) -> Result<(u64, u64), ProbeError>
where
    R: Read,
    W: Write + Send + 'static,
{
    let sender = std::thread::spawn(move || -> Result<(), ProbeError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            writer.write_all(&buf[..n]).map_err(|_| os_error("write"))?;
            sent += n as u64;
        }
        end(&writer);
        Ok(())
    });
    let mut buf = vec![0u8; 64 * 1024];
    let (mut got, mut bad) = (0u64, 0u64);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(os_error("read")),
        };
        for (i, &b) in buf[..n].iter().enumerate() {
            if b != pattern(got + i as u64) {
                bad += 1;
            }
        }
        got += n as u64;
    }
    sender
        .join()
        .map_err(|_| ProbeError::Usage("sender thread panicked".into()))??;
    Ok((got, bad))
}

/// Milliseconds since `start` (at least one tick) and the MiB/s of `bytes` in that time.
pub(crate) fn timing(start: u64, freq: u64, bytes: u64) -> (f64, f64) {
    let ticks = (clock::now() - start).max(1);
    let ms = ticks as f64 * 1000.0 / freq as f64;
    (ms, bytes as f64 / (1024.0 * 1024.0) / (ms / 1000.0))
}

/// Listen on `port` and echo `count` connections, one after the other: every byte back,
/// until the peer's end, then an end of ours.
pub(crate) fn listen_echo(port: u32, count: u64) -> Result<String, ProbeError> {
    use std::os::fd::AsRawFd;
    let sock = new_socket()?;
    let addr = SockaddrVm::new(CID_ANY, port);
    let len = std::mem::size_of::<SockaddrVm>() as u32;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    if unsafe { bind(sock.as_raw_fd(), &addr, len) } != 0 {
        return Err(os_error("bind"));
    }
    // SAFETY: listen on a bound socket this process owns.
    if unsafe { listen(sock.as_raw_fd(), 16) } != 0 {
        return Err(os_error("listen"));
    }
    println!("KEEL-PROBE vsock-listen port={port} ready=1");
    let _ = std::io::stdout().flush();
    let mut total = 0u64;
    for _ in 0..count {
        let mut peer = SockaddrVm::new(0, 0);
        let mut plen = len;
        // SAFETY: `peer` has room for `plen` bytes, which accept updates.
        let fd = unsafe { accept(sock.as_raw_fd(), &mut peer, &mut plen) };
        let mut conn = File::from(owned(fd, "accept")?);
        let n_conn = echo_stream(&mut conn)?;
        println!(
            "KEEL-PROBE vsock-echo port={port} from_cid={} bytes={n_conn}",
            peer.cid
        );
        let _ = std::io::stdout().flush();
        total += n_conn;
    }
    Ok(format!(
        "KEEL-PROBE vsock-listen port={port} connections={count} bytes={total}"
    ))
}

/// Connect to `cid`:`port` (trying again for up to `retry_s` seconds while refused or
/// reset: the listener may not be up yet), send `bytes` of [`pattern`] and read them back.
/// A connection refused or reset for good is a result line (`refused=1 errno=N`), not an
/// error: the test of a forbidden pair expects it.
pub(crate) fn connect_echo(
    cid: u32,
    port: u32,
    bytes: u64,
    retry_s: u64,
) -> Result<String, ProbeError> {
    use std::os::fd::AsRawFd;
    let freq = clock::freq();
    if freq == 0 {
        return Err(ProbeError::NoClock);
    }
    let first = clock::now();
    let sock = loop {
        let sock = new_socket()?;
        let addr = SockaddrVm::new(cid, port);
        let len = std::mem::size_of::<SockaddrVm>() as u32;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
        if unsafe { connect(sock.as_raw_fd(), &addr, len) } == 0 {
            break sock;
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let waited_s = (clock::now() - first) / freq;
        if waited_s >= retry_s {
            return Ok(format!(
                "KEEL-PROBE vsock-connect cid={cid} port={port} refused=1 errno={errno}"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let start = clock::now();
    let conn = File::from(sock);
    let writer = conn.try_clone().map_err(|_| os_error("dup"))?;
    let (got, bad) = send_and_check(conn, writer, bytes, |w: &File| shut_write(w))?;
    let (ms, mib_per_s) = timing(start, freq, got);
    Ok(format!(
        "KEEL-PROBE vsock-connect cid={cid} port={port} bytes={bytes} echoed={got} mismatched={bad} ms={ms:.1} mib_per_s={mib_per_s:.2}"
    ))
}

/// The host side of Keel's vsock conventions, for the L1 host of the L2 test (the probe
/// runs there too): listen on the Unix socket `path` (a guest connection to host port P
/// reaches `<vm socket>_<P>`) and echo `count` connections.
pub(crate) fn unix_echo(path: &str, count: u64) -> Result<String, ProbeError> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|_| os_error("bind"))?;
    // A VMM started as root drops to an unprivileged uid before it connects here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|_| os_error("chmod"))?;
    println!("KEEL-PROBE unix-echo path={path} ready=1");
    let _ = std::io::stdout().flush();
    let mut total = 0u64;
    for _ in 0..count {
        let (mut conn, _) = listener.accept().map_err(|_| os_error("accept"))?;
        total += echo_stream(&mut conn)?;
        let _ = conn.shutdown(std::net::Shutdown::Write);
    }
    Ok(format!(
        "KEEL-PROBE unix-echo path={path} connections={count} bytes={total}"
    ))
}

/// Connect to a VM's vsock socket `path`, ask for guest port `port` (`CONNECT <port>`),
/// and once the guest accepted (`OK <host port>`), send `bytes` of [`pattern`] and read the
/// echo back. Tried again for up to `retry_s` seconds while the socket is missing or the
/// guest refuses (the VMM closes the connection without `OK`).
pub(crate) fn unix_connect(
    path: &str,
    port: u32,
    bytes: u64,
    retry_s: u64,
) -> Result<String, ProbeError> {
    let freq = clock::freq();
    if freq == 0 {
        return Err(ProbeError::NoClock);
    }
    let first = clock::now();
    let (conn, ok) = loop {
        if let Some(c) = unix_handshake(path, port) {
            break c;
        }
        if (clock::now() - first) / freq >= retry_s {
            return Ok(format!(
                "KEEL-PROBE unix-connect path={path} port={port} refused=1"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let start = clock::now();
    let writer = conn.try_clone().map_err(|_| os_error("dup"))?;
    let (got, bad) = send_and_check(conn, writer, bytes, |w: &std::os::unix::net::UnixStream| {
        let _ = w.shutdown(std::net::Shutdown::Write);
    })?;
    let (ms, _) = timing(start, freq, got);
    Ok(format!(
        "KEEL-PROBE unix-connect path={path} port={port} host_port={ok} bytes={bytes} echoed={got} mismatched={bad} ms={ms:.1}"
    ))
}

/// One try of the `CONNECT`/`OK` exchange: the connection and the host port the VMM
/// named, or `None` if the socket is not there or the connection ended without `OK`.
fn unix_handshake(path: &str, port: u32) -> Option<(std::os::unix::net::UnixStream, u32)> {
    let mut conn = std::os::unix::net::UnixStream::connect(path).ok()?;
    conn.write_all(format!("CONNECT {port}\n").as_bytes())
        .ok()?;
    // Read the answer a byte at a time: what follows the line is the stream.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 32 {
        match conn.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            _ => return None,
        }
    }
    parse_ok(&line).map(|p| (conn, p))
}

/// The host port of an `OK <port>` line (without its newline).
pub(crate) fn parse_ok(line: &[u8]) -> Option<u32> {
    std::str::from_utf8(line)
        .ok()?
        .strip_prefix("OK ")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_vm_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<SockaddrVm>(), 16);
        let a = SockaddrVm::new(3, 0x0102_0304);
        // SAFETY: reading the bytes of a plain repr(C) value.
        let bytes: [u8; 16] = unsafe { std::mem::transmute(a) };
        assert_eq!(&bytes[..2], &40u16.to_ne_bytes());
        assert_eq!(&bytes[4..8], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(&bytes[8..12], &3u32.to_ne_bytes());
    }

    #[test]
    fn ok_lines_name_the_host_port() {
        assert_eq!(parse_ok(b"OK 1073741824"), Some(1 << 30));
        assert_eq!(parse_ok(b"OK"), None);
        assert_eq!(parse_ok(b"NO 5"), None);
    }

    #[test]
    fn a_unix_connect_without_a_socket_reports_a_refusal() {
        let line = unix_connect("/nonexistent/keel-probe.sock", 5, 1, 0).unwrap();
        assert!(line.ends_with("refused=1"), "{line}");
    }

    #[test]
    fn the_pattern_is_not_constant() {
        let first: Vec<u8> = (0..64).map(pattern).collect();
        assert!(first.windows(2).any(|w| w[0] != w[1]));
    }
}
