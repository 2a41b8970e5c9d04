//! Host backends for std targets: a raw image file behind virtio-blk, the OS's entropy
//! behind virtio-rng.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::string::ToString;

use crate::block::{BlockBackend, BlockError};
use crate::rng::{EntropyError, EntropySource};

/// A raw disk image in a host file.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    size: u64,
    read_only: bool,
}

impl FileBackend {
    /// Open the image at `path`; `read_only` opens it O_RDONLY.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<FileBackend> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let size = file.metadata()?.len();
        Ok(FileBackend {
            file,
            size,
            read_only,
        })
    }
}

fn io_error(op: &'static str, offset: u64, e: &io::Error) -> BlockError {
    BlockError::Io {
        op,
        offset,
        message: e.to_string(),
    }
}

impl FileBackend {
    fn check_range(&self, op: &'static str, offset: u64, len: u64) -> Result<(), BlockError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::OutOfRange {
                op,
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Deallocate the range; it reads back as zeros and the file keeps its size.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor belongs to
        // `self.file`, which is open for the duration of the call.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zeros(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let zeros = [0u8; 64 * 1024];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(|e| io_error("discard", offset + done, &e))?;
            done += n as u64;
        }
        Ok(())
    }
}

impl BlockBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_range("read", offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_error("read", offset, &e))
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "write" });
        }
        self.check_range("write", offset, data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| io_error("write", offset, &e))
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.file.sync_data().map_err(|e| io_error("flush", 0, &e))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "discard" });
        }
        self.check_range("discard", offset, len)?;
        match self.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            // Filesystems without hole punching: the range must still read back as zeros.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.write_zeros(offset, len),
            Err(e) => Err(io_error("discard", offset, &e)),
        }
    }
}

/// The host's entropy (`/dev/urandom`).
#[derive(Debug)]
pub struct OsEntropy {
    file: File,
}

impl OsEntropy {
    /// Open `/dev/urandom`.
    pub fn open() -> io::Result<OsEntropy> {
        Ok(OsEntropy {
            file: File::open("/dev/urandom")?,
        })
    }
}

impl EntropySource for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        self.file
            .read_exact(buf)
            .map_err(|e| EntropyError(std::format!("reading /dev/urandom: {e}")))
    }
}
