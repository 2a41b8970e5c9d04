//! The doorbell: a virtio-console port (`/dev/hvcN`) between the agent and its own VMM.
//! Bytes read mean "some client published requests" (values ignored); the agent writes
//! the byte `i` to tell client `i` its responses are ready. The tty is put in raw mode
//! (`cfmakeraw`: no echo, no CR/LF translation, no signals, no flow control) so every byte
//! passes unchanged; it is the agent's own, nothing is restored.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the doorbell cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BellError {
    /// It cannot be opened or put in raw mode.
    #[error("doorbell {path}: {what}: {source}")]
    Io {
        /// The tty.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// What [`Bell::wait`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Bytes may be read.
    pub readable: bool,
    /// A byte may be written.
    pub writable: bool,
    /// The other side is gone (a hung-up tty, a closed pty master).
    pub hangup: bool,
}

/// The open doorbell (non-blocking).
#[derive(Debug)]
pub struct Bell {
    file: File,
    path: PathBuf,
}

impl Bell {
    /// Open the tty at `path` read-write, non-blocking, not as a controlling terminal, and
    /// make it raw. (A path that is not a tty is used as it is.)
    pub fn open(path: &Path) -> Result<Bell, BellError> {
        let err = |what| {
            move |source| BellError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(err("open"))?;
        let fd = file.as_raw_fd();
        // SAFETY: isatty only inspects the open descriptor.
        if unsafe { libc::isatty(fd) } == 1 {
            // SAFETY: termios is plain old data; all-zero is a valid value, overwritten
            // by tcgetattr before use.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: tcgetattr writes one termios through the pointer, which points to `t`.
            if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
                return Err(err("tcgetattr")(io::Error::last_os_error()));
            }
            // SAFETY: cfmakeraw edits the termios `t` points to.
            unsafe { libc::cfmakeraw(&mut t) };
            // A read returns what is there (the descriptor is non-blocking anyway).
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            // SAFETY: tcsetattr reads the termios `t` points to; the descriptor is open.
            if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
                return Err(err("tcsetattr")(io::Error::last_os_error()));
            }
        }
        Ok(Bell {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read and forget every byte there is. `Err` if the tty is gone (end of file, EIO).
    pub fn drain(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; 256];
        let mut total = 0usize;
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "hung up")),
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Write the byte `index`: `Ok(false)` if the tty takes no more now (try again when
    /// [`Bell::wait`] says it is writable).
    pub fn notify(&mut self, index: u8) -> io::Result<bool> {
        loop {
            match self.file.write(&[index]) {
                Ok(1) => return Ok(true),
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait until bytes arrive (or, if `want_write`, a byte can be written) or
    /// `timeout_ms` passes.
    pub fn wait(&self, timeout_ms: i32, want_write: bool) -> io::Result<Ready> {
        let mut events = libc::POLLIN;
        if want_write {
            events |= libc::POLLOUT;
        }
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one pollfd, `p`, alive for the call.
        let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Ready::default());
            }
            return Err(e);
        }
        Ok(Ready {
            readable: p.revents & libc::POLLIN != 0,
            writable: p.revents & libc::POLLOUT != 0,
            hangup: p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
        })
    }
}

/// A pseudo-terminal pair for tests: the master, and the path of the slave.
#[doc(hidden)]
pub fn open_pty() -> io::Result<(File, PathBuf)> {
    // SAFETY: posix_openpt only takes flags; the result is checked.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    let master = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: grantpt and unlockpt only take the master's descriptor.
    if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name of at most `name.len()` bytes into it.
    let rc = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r succeeded: `name` holds a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    let path = PathBuf::from(path.to_string_lossy().into_owned());
    Ok((master, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_pass_both_ways_unchanged_through_a_raw_pty() {
        let (mut master, slave) = open_pty().unwrap();
        let mut bell = Bell::open(&slave).unwrap();

        // Bytes a cooked tty would eat or translate: ^C, ^S, ^Q, CR, LF, ^D, DEL.
        let special = [3u8, 0x13, 0x11, b'\r', b'\n', 4, 0x7f, 0];
        master.write_all(&special).unwrap();
        let r = bell.wait(2000, false).unwrap();
        assert!(r.readable, "{r:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(bell.drain().unwrap(), special.len());
        assert_eq!(bell.drain().unwrap(), 0);
        for b in special {
            assert!(bell.notify(b).unwrap());
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < special.len() {
            let n = master.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }

        assert_eq!(got, special);
    }

    #[test]
    fn a_closed_master_is_a_hangup() {
        let (master, slave) = open_pty().unwrap();
        let mut bell = Bell::open(&slave).unwrap();
        drop(master);

        let r = bell.wait(1000, false).unwrap();

        assert!(r.hangup, "{r:?}");
        assert!(bell.drain().is_err());
    }
}
