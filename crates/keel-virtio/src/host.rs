//! Host backends for std targets: a raw image file behind virtio-blk, the OS's entropy
//! behind virtio-rng.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

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

impl BlockBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, _offset: u64, _buf: &mut [u8]) -> Result<(), BlockError> {
        let _ = &self.file;
        todo!()
    }

    fn write_at(&mut self, _offset: u64, _data: &[u8]) -> Result<(), BlockError> {
        todo!()
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        todo!()
    }

    fn discard(&mut self, _offset: u64, _len: u64) -> Result<(), BlockError> {
        todo!()
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
    fn fill(&mut self, _buf: &mut [u8]) -> Result<(), EntropyError> {
        let _ = &self.file;
        todo!()
    }
}
