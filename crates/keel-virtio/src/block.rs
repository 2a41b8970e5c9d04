//! virtio-blk (device type 2) over a [`BlockBackend`].

use alloc::string::String;
use alloc::vec::Vec;

use keel_core::GuestRam;

use crate::device::{ActiveQueues, DeviceError, VirtioDevice, device_type};
use crate::queue::Queue;

/// Bytes per virtio-blk sector (fixed by the spec, whatever the backend's block size).
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID serial.
pub const SERIAL_LEN: usize = 20;

/// Why a backend request failed. The guest sees VIRTIO_BLK_S_IOERR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The range is outside the disk.
    #[error("{op} of {len} bytes at offset {offset:#x} is past the end of the disk ({size} bytes)")]
    OutOfRange {
        /// `"read"`, `"write"`, `"discard"`.
        op: &'static str,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Disk size.
        size: u64,
    },
    /// A write to a read-only disk.
    #[error("{op} on a read-only disk")]
    ReadOnly {
        /// The operation.
        op: &'static str,
    },
    /// The host failed the operation.
    #[error("{op} at offset {offset:#x} failed: {message}")]
    Io {
        /// The operation.
        op: &'static str,
        /// Byte offset.
        offset: u64,
        /// What the host said.
        message: String,
    },
}

/// The storage behind a virtio-blk device: a file, a memory region, a block server.
pub trait BlockBackend: Send {
    /// Size in bytes (the guest sees `size / 512` sectors).
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Read `buf.len()` bytes at byte `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Write `data` at byte `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError>;
    /// Make completed writes durable.
    fn flush(&mut self) -> Result<(), BlockError>;
    /// Discard `len` bytes at `offset`; they read back as zeros afterwards.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError>;
}

/// A disk held in memory: a byte region on seL4, a `Vec<u8>` in tests.
#[derive(Debug)]
pub struct MemoryBackend<T> {
    data: T,
    read_only: bool,
}

impl<T: AsRef<[u8]> + AsMut<[u8]> + Send> MemoryBackend<T> {
    /// A writable disk over `data`.
    pub fn new(data: T) -> MemoryBackend<T> {
        MemoryBackend {
            data,
            read_only: false,
        }
    }

    /// A read-only disk over `data`.
    pub fn read_only(data: T) -> MemoryBackend<T> {
        MemoryBackend {
            data,
            read_only: true,
        }
    }

    /// The disk contents.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    fn range(
        &self,
        op: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<core::ops::Range<usize>, BlockError> {
        let size = self.data.as_ref().len();
        let err = BlockError::OutOfRange {
            op,
            offset,
            len: len as u64,
            size: size as u64,
        };
        let start = usize::try_from(offset).map_err(|_| err.clone())?;
        let end = start.checked_add(len).ok_or(err.clone())?;
        if end > size {
            return Err(err);
        }
        Ok(start..end)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]> + Send> BlockBackend for MemoryBackend<T> {
    fn size(&self) -> u64 {
        self.data.as_ref().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let r = self.range("read", offset, buf.len())?;
        buf.copy_from_slice(&self.data.as_ref()[r]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "write" });
        }
        let r = self.range("write", offset, data.len())?;
        self.data.as_mut()[r].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly { op: "discard" });
        }
        let n = usize::try_from(len).map_err(|_| BlockError::OutOfRange {
            op: "discard",
            offset,
            len,
            size: self.size(),
        })?;
        let r = self.range("discard", offset, n)?;
        self.data.as_mut()[r].fill(0);
        Ok(())
    }
}

/// The virtio-blk device.
#[derive(Debug)]
pub struct Block<B: BlockBackend> {
    backend: B,
    serial: [u8; SERIAL_LEN],
    active: Option<ActiveQueues>,
}

impl<B: BlockBackend> Block<B> {
    /// A disk over `backend` whose GET_ID serial is `id` (at most 20 bytes are kept; a
    /// shorter id is padded with zeros).
    pub fn new(backend: B, id: impl AsRef<[u8]>) -> Block<B> {
        let mut serial = [0u8; SERIAL_LEN];
        let id = id.as_ref();
        let n = id.len().min(SERIAL_LEN);
        serial[..n].copy_from_slice(&id[..n]);
        Block {
            backend,
            serial,
            active: None,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.backend.size() / SECTOR_SIZE
    }
}

impl<B: BlockBackend> VirtioDevice for Block<B> {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }

    fn device_features(&self) -> u64 {
        todo!()
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {
        todo!()
    }

    fn activate(
        &mut self,
        memory: GuestRam,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), DeviceError> {
        self.active = Some(ActiveQueues::new(memory, queues));
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, _queue: u16) -> Result<bool, DeviceError> {
        todo!()
    }
}
