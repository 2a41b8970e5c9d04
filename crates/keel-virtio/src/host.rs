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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A scratch image of `len` bytes, removed on drop.
    struct Image(PathBuf);

    impl Image {
        fn new(name: &str, contents: &[u8]) -> Image {
            let path = std::env::temp_dir().join(std::format!(
                "keel-virtio-{}-{name}.img",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            Image(path)
        }
    }

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn file_backend_round_trips_data() {
        let img = Image::new("rt", &[0u8; 4096]);
        let mut f = FileBackend::open(&img.0, false).unwrap();

        f.write_at(512, b"keel").unwrap();
        let mut b = [0u8; 4];
        f.read_at(512, &mut b).unwrap();

        assert_eq!(&b, b"keel");
        assert_eq!(f.size(), 4096);
    }

    #[test]
    fn file_backend_read_only_refuses_writes() {
        let img = Image::new("ro", &[7u8; 1024]);
        let mut f = FileBackend::open(&img.0, true).unwrap();

        assert_eq!(
            f.write_at(0, b"x"),
            Err(BlockError::ReadOnly { op: "write" })
        );
        assert_eq!(std::fs::read(&img.0).unwrap()[0], 7);
    }

    #[test]
    fn file_backend_read_past_end_is_refused() {
        let img = Image::new("end", &[0u8; 1024]);
        let mut f = FileBackend::open(&img.0, true).unwrap();
        let mut b = [0u8; 8];

        assert!(matches!(
            f.read_at(1020, &mut b),
            Err(BlockError::OutOfRange { offset: 1020, .. })
        ));
    }

    #[test]
    fn file_backend_discard_reads_back_zeros() {
        let img = Image::new("discard", &[9u8; 16384]);
        let mut f = FileBackend::open(&img.0, false).unwrap();

        f.discard(4096, 4096).unwrap();

        let data = std::fs::read(&img.0).unwrap();
        assert_eq!(data.len(), 16384);
        assert!(data[4096..8192].iter().all(|&b| b == 0));
        assert_eq!((data[4095], data[8192]), (9, 9));
    }

    #[test]
    fn file_backend_open_missing_file_fails() {
        assert!(FileBackend::open("/nonexistent/keel.img", true).is_err());
    }

    #[test]
    fn os_entropy_fills_buffer() {
        let mut e = OsEntropy::open().unwrap();
        let mut b = [0u8; 64];
        e.fill(&mut b).unwrap();
        assert!(b.iter().any(|&x| x != 0));
    }
}
