//! virtio-blk (device type 2) over a [`BlockBackend`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use keel_core::{GuestAddress, GuestMemory, GuestRam};

use crate::device::{ActiveQueues, DeviceError, VirtioDevice, device_type, read_config_bytes};
use crate::queue::DescriptorChain;

/// Feature: `seg_max` in the configuration is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: `blk_size` in the configuration is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature: the FLUSH request is supported.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature: the DISCARD request is supported.
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the serial.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: the request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: the request is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Maximum queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Most sectors one discard segment may cover (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Most segments in one discard request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Discard alignment, in sectors (4 KiB).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Size of the request header (type, reserved, sector).
pub(crate) const HEADER_LEN: u32 = 16;
/// Size of one discard segment (sector, num_sectors, flags).
const DISCARD_SEGMENT_LEN: u32 = 16;
/// Bytes moved between backend and guest per step.
const CHUNK: usize = 64 * 1024;
/// The one buffer a block device allocates for its requests (its bounce buffer, allocated
/// once, fallibly): requests of any length are moved through it in pieces of this size.
pub const BOUNCE_LEN: usize = CHUNK;

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

/// One guest buffer of a request as the host sees it: `len()` bytes of guest RAM at host
/// address `as_ptr()`, handed to a backend that moves data without a bounce buffer
/// ([`BlockBackend::read_vectored_at`]).
///
/// The memory is shared with a running guest: a backend must never make a Rust reference
/// (`&[u8]`, `&mut [u8]`) over it, only hand the address to the kernel (an `iovec` for
/// `preadv`/`pwritev`) or copy with raw-pointer copies. The address is valid only for
/// the duration of the backend call it is passed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestIoSlice {
    host: *mut u8,
    len: usize,
}

// SAFETY: a `GuestIoSlice` is an address and a length; it grants no access by itself (its
// fields are private, dereferencing needs `unsafe` code under the contract above), and
// guest RAM may be accessed from any thread.
unsafe impl Send for GuestIoSlice {}

impl GuestIoSlice {
    /// The slice for `[gpa, gpa + len)`, if it lies inside one region of `ram`.
    pub fn of_ram(ram: &GuestRam, gpa: GuestAddress, len: usize) -> Option<GuestIoSlice> {
        let host = ram.host_address(gpa, u64::try_from(len).ok()?)?;
        Some(GuestIoSlice { host, len })
    }

    /// The host address of the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.host
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Whether a backend moved a request's data itself ([`BlockBackend::read_vectored_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vectored {
    /// The data was moved between the backend and guest memory.
    Done,
    /// The backend has no vectored I/O: the device copies through its bounce buffer
    /// with [`BlockBackend::read_at`] / [`BlockBackend::write_at`].
    Unsupported,
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

    /// Read the bytes at `offset` straight into the guest buffers `bufs`, filling them in
    /// order (one `preadv` for a file): the whole request or an error. The default has no
    /// vectored I/O and returns [`Vectored::Unsupported`]; the device then copies through
    /// a bounce buffer with [`BlockBackend::read_at`] and stops asking.
    fn read_vectored_at(
        &mut self,
        offset: u64,
        bufs: &[GuestIoSlice],
    ) -> Result<Vectored, BlockError> {
        let _ = (offset, bufs);
        Ok(Vectored::Unsupported)
    }

    /// Write the guest buffers `bufs`, in order, at `offset` (one `pwritev` for a file).
    /// The default returns [`Vectored::Unsupported`], as for
    /// [`BlockBackend::read_vectored_at`].
    fn write_vectored_at(
        &mut self,
        offset: u64,
        bufs: &[GuestIoSlice],
    ) -> Result<Vectored, BlockError> {
        let _ = (offset, bufs);
        Ok(Vectored::Unsupported)
    }
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

/// The device feature bits of a virtio-blk disk (read-only or not): shared by [`Block`]
/// and the forwarding disk (`crate::forward_blk`).
pub(crate) fn blk_features(read_only: bool) -> u64 {
    let common = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
    if read_only {
        common | VIRTIO_BLK_F_RO
    } else {
        common | VIRTIO_BLK_F_DISCARD
    }
}

/// The configuration space of a virtio-blk disk of `capacity` sectors: struct
/// virtio_blk_config, up to discard_sector_alignment.
pub(crate) fn blk_config(capacity: u64) -> [u8; 48] {
    let mut c = [0u8; 48];
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    // seg_max: a chain also carries the header and the status descriptors.
    c[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    c[34..36].copy_from_slice(&1u16.to_le_bytes());
    c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
    c[44..48].copy_from_slice(&DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    c
}

/// The byte ranges of a checked DISCARD request (at most [`MAX_DISCARD_SEG`], each at most
/// [`MAX_DISCARD_SECTORS`] sectors, all inside the disk): a fixed array, nothing allocated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DiscardRanges {
    ranges: [(u64, u64); MAX_DISCARD_SEG as usize],
    count: usize,
}

impl DiscardRanges {
    /// `(offset, bytes)` of each segment, in the request's order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().take(self.count).copied()
    }
}

/// What a guest request asks for, once parsed and checked against the disk: the part of
/// the virtio-blk protocol that does not depend on where the bytes live.
#[derive(Clone, Copy, Debug)]
// The discard ranges are a fixed array on the stack (512 bytes): nothing allocated.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    /// Read `len` bytes at byte `offset` into the writable buffers.
    Read {
        /// Byte offset, inside the disk.
        offset: u64,
        /// Bytes, whole sectors.
        len: u32,
    },
    /// Write the `len` readable bytes after the header at byte `offset`.
    Write {
        /// Byte offset, inside the disk.
        offset: u64,
        /// Bytes, whole sectors.
        len: u32,
    },
    /// Make completed writes durable.
    Flush,
    /// Answer with the serial ([`write_serial`]).
    GetId,
    /// Discard these ranges (every one checked before any is discarded).
    Discard(DiscardRanges),
    /// Answered at once with this status and no data (refused or unsupported).
    Status(u8),
}

/// A parsed request: what it asks for and where its status byte goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParsedRequest {
    /// What to do.
    pub(crate) kind: Parsed,
    /// The device-writable bytes before the status byte (the status's offset in the
    /// writable part).
    pub(crate) data_in: u32,
}

fn malformed(chain: &DescriptorChain, queue: u16, reason: String) -> DeviceError {
    DeviceError::BadRequest {
        queue,
        head: chain.head(),
        reason,
    }
}

/// The byte offset of `len` bytes at `sector`, if they are whole sectors inside a disk of
/// `size` bytes.
fn disk_range(size: u64, sector: u64, len: u64) -> Option<u64> {
    if len % SECTOR_SIZE != 0 {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    let capacity = (size / SECTOR_SIZE) * SECTOR_SIZE;
    (end <= capacity).then_some(offset)
}

/// Parse and check the request `chain` of `queue` for a disk of `size` bytes: its shape (a
/// malformed chain is a [`DeviceError`]: the device needs reset), its range, the read-only
/// flag and the discard segments. Reads only the header and the discard segments.
pub(crate) fn parse_request(
    mem: &dyn GuestMemory,
    chain: &DescriptorChain,
    queue: u16,
    size: u64,
    read_only: bool,
) -> Result<ParsedRequest, DeviceError> {
    // Structure the protocol needs before anything can be answered: a header the device
    // can read and a status byte it can write.
    if chain.writable_len() == 0 {
        return Err(malformed(
            chain,
            queue,
            String::from("no device-writable status byte at the end of the request"),
        ));
    }
    if chain.readable_len() < HEADER_LEN {
        return Err(malformed(
            chain,
            queue,
            format!(
                "request header is {} device-readable bytes, needs {HEADER_LEN}",
                chain.readable_len()
            ),
        ));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    chain
        .read_at(mem, 0, &mut header)
        .map_err(DeviceError::chain(queue))?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector);
    // The status byte is the last writable byte; data to the guest comes before it.
    let data_in = chain.writable_len() - 1;
    let data_out = chain.readable_len() - HEADER_LEN;
    let ioerr = Parsed::Status(VIRTIO_BLK_S_IOERR);
    let kind = match kind {
        VIRTIO_BLK_T_IN => match disk_range(size, sector, u64::from(data_in)) {
            Some(offset) => Parsed::Read {
                offset,
                len: data_in,
            },
            None => ioerr,
        },
        VIRTIO_BLK_T_OUT if read_only => ioerr,
        VIRTIO_BLK_T_OUT => match disk_range(size, sector, u64::from(data_out)) {
            Some(offset) => Parsed::Write {
                offset,
                len: data_out,
            },
            None => ioerr,
        },
        VIRTIO_BLK_T_FLUSH => Parsed::Flush,
        VIRTIO_BLK_T_GET_ID => Parsed::GetId,
        VIRTIO_BLK_T_DISCARD if read_only => Parsed::Status(VIRTIO_BLK_S_UNSUPP),
        VIRTIO_BLK_T_DISCARD => parse_discard(mem, chain, queue, size, data_out)?,
        _ => Parsed::Status(VIRTIO_BLK_S_UNSUPP),
    };
    Ok(ParsedRequest { kind, data_in })
}

/// The segments of a DISCARD request of `len` readable bytes after the header, every one
/// checked before any is discarded.
fn parse_discard(
    mem: &dyn GuestMemory,
    chain: &DescriptorChain,
    queue: u16,
    size: u64,
    len: u32,
) -> Result<Parsed, DeviceError> {
    if len == 0 || len % DISCARD_SEGMENT_LEN != 0 || len / DISCARD_SEGMENT_LEN > MAX_DISCARD_SEG {
        return Ok(Parsed::Status(VIRTIO_BLK_S_IOERR));
    }
    let mut ranges = DiscardRanges {
        ranges: [(0, 0); MAX_DISCARD_SEG as usize],
        count: (len / DISCARD_SEGMENT_LEN) as usize,
    };
    for (i, range) in (0..len / DISCARD_SEGMENT_LEN).zip(ranges.ranges.iter_mut()) {
        let mut seg = [0u8; DISCARD_SEGMENT_LEN as usize];
        chain
            .read_at(
                mem,
                u64::from(HEADER_LEN + i * DISCARD_SEGMENT_LEN),
                &mut seg,
            )
            .map_err(DeviceError::chain(queue))?;
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&seg[0..8]);
        let sector = u64::from_le_bytes(sector);
        let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        // No flag is defined for discard except `unmap`, which must be 0 (§5.2.6.2).
        if flags != 0 {
            return Ok(Parsed::Status(VIRTIO_BLK_S_UNSUPP));
        }
        let bytes = u64::from(sectors) * SECTOR_SIZE;
        match disk_range(size, sector, bytes) {
            Some(offset) if sectors <= MAX_DISCARD_SECTORS => *range = (offset, bytes),
            _ => return Ok(Parsed::Status(VIRTIO_BLK_S_IOERR)),
        }
    }
    Ok(Parsed::Discard(ranges))
}

/// Answer a GET_ID request: the serial (as much as `data_in` bytes hold); returns the bytes
/// written.
pub(crate) fn write_serial(
    mem: &dyn GuestMemory,
    chain: &DescriptorChain,
    queue: u16,
    serial: &[u8; SERIAL_LEN],
    data_in: u32,
) -> Result<u32, DeviceError> {
    let n = (data_in as usize).min(SERIAL_LEN);
    chain
        .write_at(mem, 0, &serial[..n])
        .map_err(DeviceError::chain(queue))?;
    Ok(n as u32)
}

/// Write a request's status byte (after its `data_in` data bytes).
pub(crate) fn write_status(
    mem: &dyn GuestMemory,
    chain: &DescriptorChain,
    queue: u16,
    data_in: u32,
    status: u8,
) -> Result<(), DeviceError> {
    chain
        .write_at(mem, u64::from(data_in), &[status])
        .map_err(DeviceError::chain(queue))
}

/// The GET_ID serial of `id`: at most 20 bytes are kept, a shorter id is padded with zeros.
pub(crate) fn serial_of(id: &[u8]) -> [u8; SERIAL_LEN] {
    let mut serial = [0u8; SERIAL_LEN];
    let n = id.len().min(SERIAL_LEN);
    serial[..n].copy_from_slice(&id[..n]);
    serial
}

/// The virtio-blk device.
#[derive(Debug)]
pub struct Block<B: BlockBackend> {
    backend: B,
    serial: [u8; SERIAL_LEN],
    active: Option<ActiveQueues>,
    bounce: Vec<u8>,
    /// Scratch for the guest buffers of one vectored request (empty between requests).
    iov: Vec<GuestIoSlice>,
    /// Whether to try the backend's vectored I/O (cleared on its first `Unsupported`).
    vectored: bool,
}

impl<B: BlockBackend> Block<B> {
    /// A disk over `backend` whose GET_ID serial is `id` (at most 20 bytes are kept; a
    /// shorter id is padded with zeros).
    pub fn new(backend: B, id: impl AsRef<[u8]>) -> Block<B> {
        Block {
            backend,
            serial: serial_of(id.as_ref()),
            active: None,
            bounce: Vec::new(),
            iov: Vec::new(),
            vectored: true,
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
        blk_features(self.backend.read_only())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&blk_config(self.capacity()), offset, data);
    }

    fn active_queues(&mut self) -> &mut Option<ActiveQueues> {
        &mut self.active
    }

    fn process_queue(&mut self, queue: u16) -> Result<bool, DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        if self.bounce.len() != CHUNK {
            // Fallible: a VMM whose heap is short fails this device, not itself.
            let mut bounce = Vec::new();
            bounce
                .try_reserve_exact(CHUNK)
                .map_err(|_| DeviceError::OutOfMemory {
                    what: "the block bounce buffer",
                    bytes: CHUNK,
                })?;
            bounce.resize(CHUNK, 0);
            self.bounce = bounce;
        }
        let (mem, q) = active.get(queue)?;
        let mut used = false;
        while let Some(chain) = q.pop(mem).map_err(DeviceError::queue(queue))? {
            let mut request = Request {
                backend: &mut self.backend,
                serial: &self.serial,
                bounce: &mut self.bounce,
                iov: &mut self.iov,
                vectored: &mut self.vectored,
                mem,
                chain: &chain,
                queue,
            };
            let len = request.execute()?;
            q.add_used(mem, chain.head(), len)
                .map_err(DeviceError::queue(queue))?;
            used = true;
        }
        if used {
            active.needs_notification(queue)
        } else {
            Ok(false)
        }
    }
}

/// One request being executed: the chain, and what the device needs to answer it.
struct Request<'a, B> {
    backend: &'a mut B,
    serial: &'a [u8; SERIAL_LEN],
    bounce: &'a mut [u8],
    iov: &'a mut Vec<GuestIoSlice>,
    vectored: &'a mut bool,
    mem: &'a dyn GuestMemory,
    chain: &'a DescriptorChain,
    queue: u16,
}

/// How a request ended: the status byte and the data bytes written to the guest.
struct Outcome {
    status: u8,
    written: u32,
}

impl Outcome {
    fn status(status: u8) -> Outcome {
        Outcome { status, written: 0 }
    }
}

impl<B: BlockBackend> Request<'_, B> {
    /// Run the request and write its status; returns the used length.
    fn execute(&mut self) -> Result<u32, DeviceError> {
        let parsed = parse_request(
            self.mem,
            self.chain,
            self.queue,
            self.backend.size(),
            self.backend.read_only(),
        )?;
        let outcome = match parsed.kind {
            Parsed::Read { offset, len } => self.read(offset, len)?,
            Parsed::Write { offset, len } => self.write(offset, len)?,
            Parsed::Flush => Outcome::status(match self.backend.flush() {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(_) => VIRTIO_BLK_S_IOERR,
            }),
            Parsed::GetId => Outcome {
                status: VIRTIO_BLK_S_OK,
                written: write_serial(
                    self.mem,
                    self.chain,
                    self.queue,
                    self.serial,
                    parsed.data_in,
                )?,
            },
            Parsed::Discard(ranges) => self.discard(&ranges),
            Parsed::Status(status) => Outcome::status(status),
        };
        write_status(
            self.mem,
            self.chain,
            self.queue,
            parsed.data_in,
            outcome.status,
        )?;
        Ok(outcome.written + 1)
    }

    /// Move the `len` bytes at `offset` of the disk to the first `len` bytes of the
    /// writable part (`to_guest`) or from the `len` bytes after the header in the readable
    /// part, with the backend's vectored I/O. `None` when the backend has none, guest
    /// memory has no host mapping ([`GuestMemory::mapped`]) or a buffer has no single
    /// host address (it spans two RAM regions): the caller then takes the bounce path.
    fn transfer_vectored(
        &mut self,
        to_guest: bool,
        offset: u64,
        len: u32,
    ) -> Result<Option<Result<(), BlockError>>, DeviceError> {
        if !*self.vectored || len == 0 {
            return Ok(None);
        }
        let Some(ram) = self.mem.mapped() else {
            return Ok(None);
        };
        let start = if to_guest { 0 } else { u64::from(HEADER_LEN) };
        let iov = &mut *self.iov;
        iov.clear();
        let mapped = self
            .chain
            .visit_pieces(to_guest, start, len as usize, |gpa, n| {
                // A slice the heap cannot hold sends the request down the bounce path.
                match GuestIoSlice::of_ram(ram, gpa, n) {
                    Some(s) if iov.try_reserve(1).is_ok() => {
                        iov.push(s);
                        true
                    }
                    _ => false,
                }
            })
            .map_err(DeviceError::chain(self.queue))?;
        let result = if mapped {
            let r = if to_guest {
                self.backend.read_vectored_at(offset, iov)
            } else {
                self.backend.write_vectored_at(offset, iov)
            };
            match r {
                Ok(Vectored::Done) => Some(Ok(())),
                Ok(Vectored::Unsupported) => {
                    *self.vectored = false;
                    None
                }
                Err(e) => Some(Err(e)),
            }
        } else {
            None
        };
        // No host address outlives the request.
        iov.clear();
        Ok(result)
    }

    fn read(&mut self, offset: u64, len: u32) -> Result<Outcome, DeviceError> {
        match self.transfer_vectored(true, offset, len)? {
            Some(Ok(())) => {
                return Ok(Outcome {
                    status: VIRTIO_BLK_S_OK,
                    written: len,
                });
            }
            // How much reached the guest is unknown: report none.
            Some(Err(_)) => return Ok(Outcome::status(VIRTIO_BLK_S_IOERR)),
            None => {}
        }
        let mut done = 0u32;
        while done < len {
            let n = ((len - done) as usize).min(self.bounce.len());
            let buf = &mut self.bounce[..n];
            if self.backend.read_at(offset + u64::from(done), buf).is_err() {
                return Ok(Outcome {
                    status: VIRTIO_BLK_S_IOERR,
                    written: done,
                });
            }
            self.chain
                .write_at(self.mem, u64::from(done), buf)
                .map_err(DeviceError::chain(self.queue))?;
            done += n as u32;
        }
        Ok(Outcome {
            status: VIRTIO_BLK_S_OK,
            written: len,
        })
    }

    fn write(&mut self, offset: u64, len: u32) -> Result<Outcome, DeviceError> {
        match self.transfer_vectored(false, offset, len)? {
            Some(Ok(())) => return Ok(Outcome::status(VIRTIO_BLK_S_OK)),
            Some(Err(_)) => return Ok(Outcome::status(VIRTIO_BLK_S_IOERR)),
            None => {}
        }
        let mut done = 0u32;
        while done < len {
            let n = ((len - done) as usize).min(self.bounce.len());
            let buf = &mut self.bounce[..n];
            self.chain
                .read_at(self.mem, u64::from(HEADER_LEN + done), buf)
                .map_err(DeviceError::chain(self.queue))?;
            if self
                .backend
                .write_at(offset + u64::from(done), buf)
                .is_err()
            {
                return Ok(Outcome::status(VIRTIO_BLK_S_IOERR));
            }
            done += n as u32;
        }
        Ok(Outcome::status(VIRTIO_BLK_S_OK))
    }

    fn discard(&mut self, ranges: &DiscardRanges) -> Outcome {
        for (offset, bytes) in ranges.iter() {
            if self.backend.discard(offset, bytes).is_err() {
                return Outcome::status(VIRTIO_BLK_S_IOERR);
            }
        }
        Outcome::status(VIRTIO_BLK_S_OK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{BounceMemory, GuestDriver, RAM_SIZE};
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicU32, Ordering};

    const DISK_SECTORS: u64 = 64;

    /// A memory disk that counts flushes.
    #[derive(Debug)]
    struct CountingDisk {
        inner: MemoryBackend<Vec<u8>>,
        flushes: Arc<AtomicU32>,
    }

    impl BlockBackend for CountingDisk {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_only(&self) -> bool {
            self.inner.read_only()
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.inner.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
            self.inner.write_at(offset, data)
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
            self.inner.discard(offset, len)
        }
    }

    /// A memory disk with vectored I/O (`vectored`) or without, recording how it was used.
    #[derive(Debug)]
    struct RecordingDisk {
        inner: MemoryBackend<Vec<u8>>,
        vectored: bool,
        fail: bool,
        /// `read_at` + `write_at` calls.
        copies: u32,
        /// `*_vectored_at` calls, with the slice lengths of the last one.
        vectored_calls: u32,
        last_slices: Vec<usize>,
    }

    impl RecordingDisk {
        fn new(vectored: bool) -> RecordingDisk {
            RecordingDisk {
                inner: MemoryBackend::new(patterned()),
                vectored,
                fail: false,
                copies: 0,
                vectored_calls: 0,
                last_slices: Vec::new(),
            }
        }

        fn record(&mut self, bufs: &[GuestIoSlice]) -> Result<Vectored, BlockError> {
            self.vectored_calls += 1;
            self.last_slices = bufs.iter().map(|b| b.len()).collect();
            if !self.vectored {
                return Ok(Vectored::Unsupported);
            }
            if self.fail {
                return Err(BlockError::Io {
                    op: "test",
                    offset: 0,
                    message: String::from("injected"),
                });
            }
            Ok(Vectored::Done)
        }
    }

    impl BlockBackend for RecordingDisk {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.copies += 1;
            self.inner.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
            self.copies += 1;
            self.inner.write_at(offset, data)
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            Ok(())
        }
        fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
            self.inner.discard(offset, len)
        }
        fn read_vectored_at(
            &mut self,
            offset: u64,
            bufs: &[GuestIoSlice],
        ) -> Result<Vectored, BlockError> {
            let answer = self.record(bufs)?;
            if answer == Vectored::Done {
                let mut at = offset as usize;
                for b in bufs {
                    let src = &self.inner.bytes()[at..at + b.len()];
                    // SAFETY: `b` is guest RAM of the test's mock memory, valid for `b.len()`
                    // bytes during this call and reached through no reference; `src` is the
                    // disk vector, a different allocation of `b.len()` bytes. Copied as the
                    // VMM copies guest RAM (atomically: the guest may write it meanwhile).
                    unsafe { keel_core::memory::copy::copy_to_shared(src, b.as_ptr()) };
                    at += b.len();
                }
            }
            Ok(answer)
        }
        fn write_vectored_at(
            &mut self,
            offset: u64,
            bufs: &[GuestIoSlice],
        ) -> Result<Vectored, BlockError> {
            let answer = self.record(bufs)?;
            if answer == Vectored::Done {
                let mut at = offset;
                for b in bufs {
                    let mut data = alloc::vec![0u8; b.len()];
                    // SAFETY: as in `read_vectored_at`; `data` is a fresh vector of
                    // `b.len()` bytes.
                    unsafe { keel_core::memory::copy::copy_from_shared(b.as_ptr(), &mut data) };
                    self.inner.write_at(at, &data)?;
                    at += b.len() as u64;
                }
            }
            Ok(answer)
        }
    }

    fn recording_disk(vectored: bool) -> GuestDriver<Block<RecordingDisk>> {
        GuestDriver::start(Block::new(RecordingDisk::new(vectored), "rec"))
    }

    /// A disk whose sector `n` is filled with the byte `n`.
    fn patterned() -> Vec<u8> {
        let mut disk = alloc::vec![0u8; (DISK_SECTORS * SECTOR_SIZE) as usize];
        for (n, sector) in disk.chunks_mut(SECTOR_SIZE as usize).enumerate() {
            sector.fill(n as u8);
        }
        disk
    }

    fn disk() -> GuestDriver<Block<MemoryBackend<Vec<u8>>>> {
        GuestDriver::start(Block::new(MemoryBackend::new(patterned()), "keel-disk-0"))
    }

    fn read_only_disk() -> GuestDriver<Block<MemoryBackend<Vec<u8>>>> {
        GuestDriver::start(Block::new(MemoryBackend::read_only(patterned()), "ro"))
    }

    fn header(kind: u32, sector: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        h
    }

    /// Submit header + data (readable for OUT-like requests, writable for IN-like) +
    /// status; returns (status, data address, used length).
    fn request<B: BlockBackend>(
        d: &mut GuestDriver<Block<B>>,
        kind: u32,
        sector: u64,
        out: Option<&[u8]>,
        in_len: u32,
    ) -> (u8, u64, u32) {
        let h = d.buffer(&header(kind, sector));
        let status = d.buffer(&[0xff]);
        let mut bufs = alloc::vec![(h, 16, false)];
        let mut data = 0;
        if let Some(out) = out {
            data = d.buffer(out);
            bufs.push((data, out.len() as u32, false));
        }
        if in_len > 0 {
            data = d.alloc(in_len);
            bufs.push((data, in_len, true));
        }
        bufs.push((status, 1, true));
        d.submit(0, &bufs);
        let (_, used) = d.last_used(0).expect("request was not completed");
        (d.read_mem(status, 1)[0], data, used)
    }

    #[test]
    fn capacity_in_config_is_in_sectors() {
        let mut d = disk();
        assert_eq!(u64::from_le_bytes(d.config::<8>(0)), DISK_SECTORS);
    }

    #[test]
    fn read_request_returns_disk_contents() {
        let mut d = disk();

        let (status, data, used) = request(&mut d, VIRTIO_BLK_T_IN, 3, None, 1024);

        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(d.read_mem(data, 512), [3u8; 512]);
        assert_eq!(d.read_mem(data + 512, 512), [4u8; 512]);
        assert_eq!(used, 1025);
        assert!(d.irq.is_high());
    }

    #[test]
    fn write_request_reaches_disk() {
        let mut d = disk();

        let (status, _, used) = request(&mut d, VIRTIO_BLK_T_OUT, 5, Some(&[0xee; 512]), 0);

        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(used, 1);
        let disk = d.transport.device().backend().bytes();
        assert_eq!(&disk[5 * 512..6 * 512], &[0xee; 512]);
        assert_eq!(disk[6 * 512], 6);
    }

    #[test]
    fn vectored_backend_reads_straight_into_every_data_buffer() {
        let mut d = recording_disk(true);
        let h = d.buffer(&header(VIRTIO_BLK_T_IN, 2));
        let (a, b, status) = (d.alloc(512), d.alloc(1024), d.alloc(1));

        d.submit(
            0,
            &[
                (h, 16, false),
                (a, 512, true),
                (b, 1024, true),
                (status, 1, true),
            ],
        );

        assert_eq!(d.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
        assert_eq!(d.read_mem(a, 512), [2u8; 512]);
        assert_eq!(d.read_mem(b, 1024)[..512], [3u8; 512]);
        assert_eq!(d.read_mem(b + 512, 512), [4u8; 512]);
        let disk = d.transport.device().backend();
        assert_eq!((disk.vectored_calls, disk.copies), (1, 0));
        assert_eq!(disk.last_slices, [512, 1024]);
    }

    #[test]
    fn vectored_backend_writes_straight_from_every_data_buffer() {
        let mut d = recording_disk(true);
        let h = d.buffer(&header(VIRTIO_BLK_T_OUT, 1));
        let (a, b) = (d.buffer(&[0xaa; 512]), d.buffer(&[0xbb; 512]));
        let status = d.alloc(1);

        d.submit(
            0,
            &[
                (h, 16, false),
                (a, 512, false),
                (b, 512, false),
                (status, 1, true),
            ],
        );

        assert_eq!(d.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
        let disk = d.transport.device().backend();
        assert_eq!(&disk.inner.bytes()[512..1024], &[0xaa; 512]);
        assert_eq!(&disk.inner.bytes()[1024..1536], &[0xbb; 512]);
        assert_eq!((disk.vectored_calls, disk.copies), (1, 0));
    }

    #[test]
    fn status_byte_in_the_data_buffer_is_not_handed_to_the_backend() {
        let mut d = recording_disk(true);
        let h = d.buffer(&header(VIRTIO_BLK_T_IN, 5));
        let data = d.alloc(513);

        d.submit(0, &[(h, 16, false), (data, 513, true)]);

        assert_eq!(d.read_mem(data + 512, 1)[0], VIRTIO_BLK_S_OK);
        assert_eq!(d.read_mem(data, 512), [5u8; 512]);
        assert_eq!(d.transport.device().backend().last_slices, [512]);
    }

    #[test]
    fn vectored_read_failure_gets_ioerr() {
        let mut backend = RecordingDisk::new(true);
        backend.fail = true;
        let mut d = GuestDriver::start(Block::new(backend, "fail"));

        let (status, _, used) = request(&mut d, VIRTIO_BLK_T_IN, 0, None, 512);

        assert_eq!((status, used), (VIRTIO_BLK_S_IOERR, 1));
    }

    #[test]
    fn backend_without_vectored_io_is_served_through_the_bounce_buffer_and_not_asked_again() {
        let mut d = recording_disk(false);

        let (first, data, _) = request(&mut d, VIRTIO_BLK_T_IN, 7, None, 512);
        let (second, _, _) = request(&mut d, VIRTIO_BLK_T_OUT, 7, Some(&[1; 512]), 0);

        assert_eq!((first, second), (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK));
        assert_eq!(d.read_mem(data, 512), [7u8; 512]);
        let disk = d.transport.device().backend();
        assert_eq!((disk.vectored_calls, disk.copies), (1, 2));
        assert_eq!(&disk.inner.bytes()[7 * 512..8 * 512], &[1; 512]);
    }

    /// A started recording disk over guest memory without a host mapping.
    fn recording_disk_over_bounce_memory(vectored: bool) -> GuestDriver<Block<RecordingDisk>> {
        let mem = Arc::new(BounceMemory::new(0, RAM_SIZE as usize));
        GuestDriver::start_with_memory(Block::new(RecordingDisk::new(vectored), "bounce"), mem)
    }

    #[test]
    fn read_over_unmapped_memory_is_copied_into_the_guest_buffers() {
        let mut d = recording_disk_over_bounce_memory(true);
        let h = d.buffer(&header(VIRTIO_BLK_T_IN, 2));
        let (a, b, status) = (d.alloc(512), d.alloc(1024), d.alloc(1));

        d.submit(
            0,
            &[
                (h, 16, false),
                (a, 512, true),
                (b, 1024, true),
                (status, 1, true),
            ],
        );

        assert_eq!(d.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
        assert_eq!(d.read_mem(a, 512), [2u8; 512]);
        assert_eq!(d.read_mem(b, 512), [3u8; 512]);
        assert_eq!(d.read_mem(b + 512, 512), [4u8; 512]);
        assert_eq!(d.last_used(0), Some((0, 1537)));
        let disk = d.transport.device().backend();
        assert_eq!((disk.vectored_calls, disk.copies), (0, 1));
    }

    #[test]
    fn write_over_unmapped_memory_is_copied_from_the_guest_buffers() {
        let mut d = recording_disk_over_bounce_memory(true);
        let h = d.buffer(&header(VIRTIO_BLK_T_OUT, 5));
        let a = d.buffer(&[0xaa; 512]);
        let b = d.buffer(&[0xbb; 512]);
        let status = d.alloc(1);

        d.submit(
            0,
            &[
                (h, 16, false),
                (a, 512, false),
                (b, 512, false),
                (status, 1, true),
            ],
        );

        assert_eq!(d.read_mem(status, 1)[0], VIRTIO_BLK_S_OK);
        let disk = d.transport.device().backend();
        assert_eq!(&disk.inner.bytes()[5 * 512..6 * 512], &[0xaa; 512]);
        assert_eq!(&disk.inner.bytes()[6 * 512..7 * 512], &[0xbb; 512]);
        assert_eq!(disk.inner.bytes()[7 * 512], 7);
        assert_eq!((disk.vectored_calls, disk.copies), (0, 1));
    }

    #[test]
    fn request_larger_than_the_bounce_buffer_over_unmapped_memory_moves_every_byte() {
        // 96 KiB, more than one CHUNK, out of a 160 KiB disk whose sector n holds n % 251.
        // (Filled and compared slice-wise: per-byte loops are slow under Miri.)
        let len = CHUNK + CHUNK / 2;
        let mut contents = alloc::vec![0u8; 160 * 1024];
        for (n, sector) in contents.chunks_mut(SECTOR_SIZE as usize).enumerate() {
            sector.fill((n % 251) as u8);
        }
        let mem = Arc::new(BounceMemory::new(0, RAM_SIZE as usize));
        let disk = Block::new(MemoryBackend::new(contents.clone()), "big");
        let mut d = GuestDriver::start_with_memory(disk, mem);
        let new_data = alloc::vec![0x5a; len];

        let (read, data, used) = request(&mut d, VIRTIO_BLK_T_IN, 8, None, len as u32);
        let (written, _, _) = request(&mut d, VIRTIO_BLK_T_OUT, 8, Some(&new_data), 0);

        assert_eq!((read, written), (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK));
        assert_eq!(used, len as u32 + 1);
        assert_eq!(d.read_mem(data, len), &contents[4096..4096 + len]);
        let disk = d.transport.device().backend().bytes();
        assert_eq!(&disk[4096..4096 + len], &new_data[..]);
        assert_eq!(&disk[..4096], &contents[..4096]);
        assert_eq!(&disk[4096 + len..], &contents[4096 + len..]);
    }

    #[test]
    fn read_only_disk_rejects_writes_with_ioerr() {
        let mut d = read_only_disk();

        let (status, _, _) = request(&mut d, VIRTIO_BLK_T_OUT, 0, Some(&[0xee; 512]), 0);

        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(d.transport.device().backend().bytes()[0], 0);
    }

    #[test]
    fn read_only_disk_offers_f_ro_and_not_discard() {
        let mut d = read_only_disk();
        let f = d.device_features();
        assert_ne!(f & VIRTIO_BLK_F_RO, 0);
        assert_eq!(f & VIRTIO_BLK_F_DISCARD, 0);
    }

    #[test]
    fn request_past_capacity_gets_ioerr() {
        let mut d = disk();

        let (status, _, _) = request(&mut d, VIRTIO_BLK_T_IN, DISK_SECTORS - 1, None, 1024);

        assert_eq!(status, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn sector_overflow_gets_ioerr() {
        let mut d = disk();

        let (status, _, _) = request(&mut d, VIRTIO_BLK_T_IN, u64::MAX / 256, None, 512);

        assert_eq!(status, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn data_length_not_multiple_of_sector_gets_ioerr() {
        let mut d = disk();

        let (status, _, _) = request(&mut d, VIRTIO_BLK_T_OUT, 0, Some(&[1; 100]), 0);

        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(d.transport.device().backend().bytes()[0], 0);
    }

    #[test]
    fn missing_status_descriptor_sets_needs_reset() {
        let mut d = disk();
        let h = d.buffer(&header(VIRTIO_BLK_T_FLUSH, 0));

        d.submit(0, &[(h, 16, false)]);

        assert!(d.needs_reset());
        let failure = d.transport.take_error().unwrap();
        assert_eq!(
            alloc::format!("{failure}"),
            "virtio-blk: queue 0, descriptor chain at head 0: no device-writable status byte at the end of the request"
        );
    }

    #[test]
    fn short_header_sets_needs_reset() {
        let mut d = disk();
        let h = d.buffer(&[0; 8]);
        let s = d.alloc(1);

        d.submit(0, &[(h, 8, false), (s, 1, true)]);

        assert!(d.needs_reset());
    }

    #[test]
    fn flush_reaches_backend() {
        let flushes = Arc::new(AtomicU32::new(0));
        let backend = CountingDisk {
            inner: MemoryBackend::new(patterned()),
            flushes: flushes.clone(),
        };
        let mut d = GuestDriver::start(Block::new(backend, "f"));

        let (status, _, _) = request(&mut d, VIRTIO_BLK_T_FLUSH, 0, None, 0);

        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn get_id_returns_serial() {
        let mut d = disk();

        let (status, data, used) = request(&mut d, VIRTIO_BLK_T_GET_ID, 0, None, 20);

        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(d.read_mem(data, 20), b"keel-disk-0\0\0\0\0\0\0\0\0\0");
        assert_eq!(used, 21);
    }

    fn discard_segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&sectors.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        s
    }

    #[test]
    fn discard_zeroes_range() {
        let mut d = disk();

        let seg = discard_segment(2, 3, 0);
        let (status, _, _) = request(&mut d, VIRTIO_BLK_T_DISCARD, 0, Some(&seg), 0);

        assert_eq!(status, VIRTIO_BLK_S_OK);
        let disk = d.transport.device().backend().bytes();
        assert!(disk[2 * 512..5 * 512].iter().all(|&b| b == 0));
        assert_eq!((disk[2 * 512 - 1], disk[5 * 512]), (1, 5));
    }

    #[test]
    fn discard_with_unmap_flag_is_unsupported() {
        let mut d = disk();

        let seg = discard_segment(2, 1, 1);
        let (status, _, _) = request(&mut d, VIRTIO_BLK_T_DISCARD, 0, Some(&seg), 0);

        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
        assert_eq!(d.transport.device().backend().bytes()[2 * 512], 2);
    }

    #[test]
    fn discard_past_capacity_gets_ioerr_and_discards_nothing() {
        let mut d = disk();
        let mut segs = Vec::new();
        segs.extend_from_slice(&discard_segment(1, 1, 0));
        segs.extend_from_slice(&discard_segment(DISK_SECTORS, 1, 0));

        let (status, _, _) = request(&mut d, VIRTIO_BLK_T_DISCARD, 0, Some(&segs), 0);

        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(d.transport.device().backend().bytes()[512], 1);
    }

    #[test]
    fn unknown_request_type_is_unsupported() {
        let mut d = disk();

        let (status, _, _) = request(&mut d, 99, 0, None, 0);

        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
    }
}
