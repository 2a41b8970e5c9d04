//! The split virtqueue (virtio 1.2 §2.7), device side.
//!
//! The guest owns three rings in its memory: the descriptor table, the available ring
//! (driver → device) and the used ring (device → driver). Everything in them is hostile
//! input: [`Queue::pop`] copies a whole descriptor chain out of guest memory exactly once
//! (so the guest cannot change it between validation and use) and checks every index,
//! address, length, direction and flag before handing the device a [`DescriptorChain`].
//!
//! Modelled on Firecracker's `queue.rs` and rust-vmm's `virtio-queue`, over
//! [`keel_core::GuestMemory`] so it runs without std.

use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use keel_core::{GuestAddress, GuestMemory, GuestMemoryError};

/// Descriptor flag: the chain continues with the descriptor in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (otherwise device-readable).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available-ring flag: the driver does not want interrupts (without EVENT_IDX).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Largest queue size a split virtqueue may have.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Size of one descriptor in the table.
const DESC_SIZE: u64 = 16;
/// Most entries accepted in one indirect table (the split-ring maximum chain length).
pub const MAX_INDIRECT_ENTRIES: u32 = MAX_QUEUE_SIZE as u32;

/// Most buffers (non-empty descriptors) one chain may have by default
/// ([`Queue::set_max_segments`]): a popped chain's segment list is its only allocation,
/// so this bounds it (24 KiB) whatever indirect tables the guest builds. Linux's drivers
/// stay far below it (virtio-blk: `seg_max` + 2 = 256; virtio-net: MAX_SKB_FRAGS + 2).
/// A longer chain is [`QueueError::TooManySegments`].
pub const MAX_CHAIN_SEGMENTS: u32 = 1024;

/// What is wrong with a virtqueue or with a descriptor chain the driver made available.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The driver set a queue size that is zero, not a power of two, or above the maximum.
    #[error("queue size {size} is not a power of two between 1 and {max}")]
    InvalidSize {
        /// Size the driver wrote.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// The queue was used before the driver set it ready.
    #[error("queue is not ready")]
    NotReady,
    /// A ring is not aligned as the spec requires (16 / 2 / 4 bytes).
    #[error("{ring} at {gpa:#x} is not aligned to {align} bytes")]
    MisalignedRing {
        /// Which ring.
        ring: &'static str,
        /// Its guest-physical address.
        gpa: u64,
        /// The alignment required.
        align: u64,
    },
    /// A ring does not lie wholly in guest RAM (or wraps around).
    #[error("{ring} at {gpa:#x} (size {len:#x}) is not in guest RAM")]
    RingOutOfRange {
        /// Which ring.
        ring: &'static str,
        /// Its guest-physical address.
        gpa: u64,
        /// Its size in bytes for the current queue size.
        len: u64,
    },
    /// The available index moved further ahead of the device than the queue has entries.
    #[error(
        "available index {avail_idx} is {pending} entries ahead of the device's {next_avail}, more than the queue size {size}"
    )]
    AvailIndexRunaway {
        /// The index the driver published.
        avail_idx: u16,
        /// The next entry the device would take.
        next_avail: u16,
        /// `avail_idx - next_avail`, wrapping.
        pending: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor index (a head in the available ring or a `next` field) is outside the
    /// descriptor table.
    #[error("descriptor index {index} is outside a table of {table_len} descriptors")]
    DescriptorIndexOutOfRange {
        /// The index.
        index: u16,
        /// Entries in the table it indexes (queue size, or indirect table length).
        table_len: u32,
    },
    /// The chain has more descriptors than its table: it loops.
    #[error(
        "descriptor chain at head {head} is longer than its table of {limit} descriptors (a loop)"
    )]
    ChainTooLong {
        /// Head of the chain.
        head: u16,
        /// Entries in the table.
        limit: u32,
    },
    /// The chain has more buffers than the queue's cap ([`Queue::set_max_segments`]).
    #[error("descriptor chain at head {head} has more than {limit} buffers")]
    TooManySegments {
        /// Head of the chain.
        head: u16,
        /// The cap.
        limit: u32,
    },
    /// A descriptor's buffer is not wholly in guest RAM (or wraps around).
    #[error("descriptor {index} buffer {addr:#x}+{len:#x} is not in guest RAM")]
    DescriptorOutOfRange {
        /// Index of the descriptor in its table.
        index: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one (§2.7.4.2).
    #[error("descriptor {index} is device-readable but follows a device-writable descriptor")]
    ReadableAfterWritable {
        /// Index of the readable descriptor.
        index: u16,
    },
    /// An indirect descriptor without VIRTIO_F_INDIRECT_DESC negotiated.
    #[error("descriptor {index} is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated {
        /// Index of the descriptor.
        index: u16,
    },
    /// An indirect descriptor that also has VIRTQ_DESC_F_NEXT.
    #[error("indirect descriptor {index} also has VIRTQ_DESC_F_NEXT set")]
    IndirectWithNext {
        /// Index of the descriptor.
        index: u16,
    },
    /// An indirect descriptor inside an indirect table.
    #[error("entry {index} of an indirect table is itself indirect")]
    NestedIndirect {
        /// Index inside the indirect table.
        index: u16,
    },
    /// An indirect table whose length is zero, not a multiple of 16, or too long.
    #[error(
        "indirect descriptor {index} has table length {len:#x}: not a non-zero multiple of 16 of at most {MAX_INDIRECT_ENTRIES} entries"
    )]
    InvalidIndirectLength {
        /// Index of the indirect descriptor.
        index: u16,
        /// Its length field.
        len: u32,
    },
    /// An indirect table that is not wholly in guest RAM.
    #[error("indirect table of descriptor {index} at {addr:#x}+{len:#x} is not in guest RAM")]
    IndirectTableOutOfRange {
        /// Index of the indirect descriptor.
        index: u16,
        /// Table address.
        addr: u64,
        /// Table length.
        len: u32,
    },
    /// The buffers of one chain add up to more than 4 GiB - 1 (a used length is 32 bits).
    #[error("descriptor chain at head {head} has buffers totalling more than 4 GiB")]
    ChainTooLarge {
        /// Head of the chain.
        head: u16,
    },
    /// The VMM's heap could not hold the chain's segment list (at most
    /// [`MAX_INDIRECT_ENTRIES`] of them): this chain fails, the VMM goes on.
    #[error("descriptor chain at head {head}: no memory for its {segments} segments")]
    OutOfMemory {
        /// Head of the chain.
        head: u16,
        /// Segments held when the allocation failed.
        segments: usize,
    },
    /// The device tried to return a head that is not a descriptor index.
    #[error("used head {head} is outside queue size {size}")]
    InvalidUsedHead {
        /// The head.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// Guest memory could not be accessed.
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// What is wrong with the way a device uses a [`DescriptorChain`]: the chain does not have
/// the shape the device protocol requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has a device-writable buffer where the device accepts only readable ones.
    #[error(
        "descriptor chain at head {head} has {len} device-writable bytes where none are allowed"
    )]
    UnexpectedWritable {
        /// Head of the chain.
        head: u16,
        /// Writable bytes found.
        len: u32,
    },
    /// The chain has a device-readable buffer where the device accepts only writable ones.
    #[error(
        "descriptor chain at head {head} has {len} device-readable bytes where none are allowed"
    )]
    UnexpectedReadable {
        /// Head of the chain.
        head: u16,
        /// Readable bytes found.
        len: u32,
    },
    /// An access past the end of the readable or writable part of the chain.
    #[error(
        "descriptor chain at head {head}: {len} bytes at offset {offset} exceed its {available} {part} bytes"
    )]
    OutOfBounds {
        /// Head of the chain.
        head: u16,
        /// `"readable"` or `"writable"`.
        part: &'static str,
        /// Offset of the access inside that part.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Size of that part.
        available: u32,
    },
    /// A copy of the readable part was asked for that is larger than the caller's cap, or
    /// the VMM's heap could not hold it ([`DescriptorChain::read_all`]).
    #[error(
        "descriptor chain at head {head}: cannot copy its {len} readable bytes (cap {cap}, or no memory)"
    )]
    TooLargeToCopy {
        /// Head of the chain.
        head: u16,
        /// Readable bytes of the chain.
        len: u32,
        /// The caller's cap.
        cap: u32,
    },
    /// Guest memory could not be accessed.
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Most bytes [`DescriptorChain::read_all`] copies into a new buffer; larger chains are
/// read in bounded pieces with [`DescriptorChain::read_at`] (or [`read_all_capped`] with
/// a cap of the caller's).
///
/// [`read_all_capped`]: DescriptorChain::read_all_capped
pub const READ_ALL_LIMIT: u32 = 64 * 1024;

/// One buffer of a descriptor chain, as validated when the chain was popped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address of the buffer (the whole buffer is in guest RAM).
    pub addr: GuestAddress,
    /// Length in bytes (never zero: empty descriptors are dropped).
    pub len: u32,
    /// Whether the device may write the buffer (otherwise it may only read it).
    pub writable: bool,
}

/// A descriptor chain copied out of guest memory and validated: device-readable segments
/// first, then device-writable ones, every buffer inside guest RAM, total length below 4 GiB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    head: u16,
    segments: Vec<Segment>,
    first_writable: usize,
    readable_len: u32,
    writable_len: u32,
}

impl DescriptorChain {
    /// The head index, which [`Queue::add_used`] takes back.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// All segments in chain order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The device-readable segments (they all come first).
    pub fn readable(&self) -> &[Segment] {
        self.segments.get(..self.first_writable).unwrap_or(&[])
    }

    /// The device-writable segments (they all come last).
    pub fn writable(&self) -> &[Segment] {
        self.segments.get(self.first_writable..).unwrap_or(&[])
    }

    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u32 {
        self.readable_len
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u32 {
        self.writable_len
    }

    /// Fail unless the chain has no device-writable bytes (e.g. a transmit buffer).
    pub fn require_readable_only(&self) -> Result<(), ChainError> {
        if self.writable_len != 0 {
            return Err(ChainError::UnexpectedWritable {
                head: self.head,
                len: self.writable_len,
            });
        }
        Ok(())
    }

    /// Fail unless the chain has no device-readable bytes (e.g. a receive buffer).
    pub fn require_writable_only(&self) -> Result<(), ChainError> {
        if self.readable_len != 0 {
            return Err(ChainError::UnexpectedReadable {
                head: self.head,
                len: self.readable_len,
            });
        }
        Ok(())
    }

    /// Copy `buf.len()` bytes of the readable part, starting `offset` bytes into it.
    pub fn read_at<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ChainError> {
        let avail = self.readable_len;
        check_part(self.head, "readable", offset, buf.len(), avail)?;
        let mut done = 0usize;
        for_each_piece(self.readable(), offset, buf.len(), |gpa, len| {
            let piece = buf
                .get_mut(done..done + len)
                .ok_or(ChainError::OutOfBounds {
                    head: self.head,
                    part: "readable",
                    offset,
                    len: len as u64,
                    available: avail,
                })?;
            mem.read(gpa, piece)?;
            done += len;
            Ok(())
        })
    }

    /// Copy the whole readable part into a new buffer, if it is at most
    /// [`READ_ALL_LIMIT`] bytes ([`ChainError::TooLargeToCopy`] otherwise).
    pub fn read_all<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<Vec<u8>, ChainError> {
        self.read_all_capped(mem, READ_ALL_LIMIT)
    }

    /// Copy the whole readable part into a new buffer, if it is at most `cap` bytes. The
    /// buffer is allocated fallibly: a chain larger than `cap`, or one the heap cannot
    /// hold, fails with [`ChainError::TooLargeToCopy`] (that request only, never the VMM).
    pub fn read_all_capped<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        cap: u32,
    ) -> Result<Vec<u8>, ChainError> {
        let too_large = ChainError::TooLargeToCopy {
            head: self.head,
            len: self.readable_len,
            cap,
        };
        if self.readable_len > cap {
            return Err(too_large);
        }
        let len = self.readable_len as usize;
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|_| too_large)?;
        v.resize(len, 0);
        self.read_at(mem, 0, &mut v)?;
        Ok(v)
    }

    /// Call `f(gpa, len)` for each guest buffer piece of the `len` bytes at `offset` into
    /// the writable part (`writable`) or the readable part, in order, while `f` returns
    /// true. Fails if the range is not inside that part; returns whether every piece was
    /// visited.
    pub(crate) fn visit_pieces(
        &self,
        writable: bool,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, usize) -> bool,
    ) -> Result<bool, ChainError> {
        let (part, segments, available) = if writable {
            ("writable", self.writable(), self.writable_len)
        } else {
            ("readable", self.readable(), self.readable_len)
        };
        check_part(self.head, part, offset, len, available)?;
        let mut all = true;
        for_each_piece(segments, offset, len, |gpa, n| {
            all = all && f(gpa, n);
            Ok(())
        })?;
        Ok(all)
    }

    /// Copy `data` into the writable part, starting `offset` bytes into it.
    pub fn write_at<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ChainError> {
        let avail = self.writable_len;
        check_part(self.head, "writable", offset, data.len(), avail)?;
        let mut done = 0usize;
        for_each_piece(self.writable(), offset, data.len(), |gpa, len| {
            let piece = data.get(done..done + len).ok_or(ChainError::OutOfBounds {
                head: self.head,
                part: "writable",
                offset,
                len: len as u64,
                available: avail,
            })?;
            mem.write(gpa, piece)?;
            done += len;
            Ok(())
        })
    }
}

fn check_part(
    head: u16,
    part: &'static str,
    offset: u64,
    len: usize,
    available: u32,
) -> Result<(), ChainError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= u64::from(available) => Ok(()),
        _ => Err(ChainError::OutOfBounds {
            head,
            part,
            offset,
            len,
            available,
        }),
    }
}

/// Call `f(gpa, len)` for each piece of `[offset, offset + len)` of the concatenated
/// `segments`. The caller has checked that the range lies inside them.
fn for_each_piece(
    segments: &[Segment],
    mut offset: u64,
    mut len: usize,
    mut f: impl FnMut(GuestAddress, usize) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    for s in segments {
        if len == 0 {
            break;
        }
        let seg_len = u64::from(s.len);
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        // `offset < seg_len <= u32::MAX`, so both fit in usize on every supported target.
        let n = core::cmp::min(len as u64, seg_len - offset) as usize;
        // Inside a segment that was checked to be in guest RAM: cannot overflow.
        let gpa = GuestAddress(s.addr.0 + offset);
        f(gpa, n)?;
        len -= n;
        offset = 0;
    }
    Ok(())
}

/// The spec's `vring_need_event`: whether moving the used index from `old` to `new` passed
/// the driver's `event` index, in wrapping 16-bit arithmetic (§2.7.10).
fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One descriptor as laid out in a table.
#[derive(Clone, Copy, Debug)]
struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl RawDescriptor {
    fn parse(b: &[u8; 16]) -> RawDescriptor {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[0..8]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[8..12]);
        RawDescriptor {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes(len),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// The device side of one split virtqueue: its configuration (written by the driver through
/// the transport) and the device's positions in the rings.
#[derive(Clone, Debug)]
pub struct Queue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    next_avail: u16,
    next_used: u16,
    event_idx: bool,
    indirect: bool,
    /// Most segments of one chain.
    max_segments: u32,
    /// The used index when the device last decided about an interrupt.
    signalled_used: Option<u16>,
}

impl Queue {
    /// A queue whose size may be at most `max_size` (a power of two ≤ 32768 chosen by the
    /// device model). It starts with size `max_size`, not ready, rings at 0.
    pub fn new(max_size: u16) -> Queue {
        Queue {
            max_size,
            size: max_size,
            ready: false,
            desc_table: GuestAddress(0),
            avail_ring: GuestAddress(0),
            used_ring: GuestAddress(0),
            next_avail: 0,
            next_used: 0,
            event_idx: false,
            indirect: false,
            max_segments: MAX_CHAIN_SEGMENTS,
            signalled_used: None,
        }
    }

    /// Refuse chains of more than `n` buffers (default [`MAX_CHAIN_SEGMENTS`]; a device
    /// whose driver uses short chains sets a smaller cap). Kept across [`Queue::reset`].
    pub fn set_max_segments(&mut self, n: u32) {
        self.max_segments = n;
    }

    /// The most buffers one chain may have.
    pub fn max_segments(&self) -> u32 {
        self.max_segments
    }

    /// The largest size the device accepts.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The size the driver chose.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Set the size (checked by [`Queue::validate`], not here: the driver may write any value).
    pub fn set_size(&mut self, size: u16) {
        self.size = size;
    }

    /// Whether the driver has set the queue ready.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Set or clear the ready flag.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Guest address of the descriptor table.
    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }

    /// Set the guest address of the descriptor table.
    pub fn set_desc_table(&mut self, gpa: GuestAddress) {
        self.desc_table = gpa;
    }

    /// Guest address of the available (driver) ring.
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }

    /// Set the guest address of the available (driver) ring.
    pub fn set_avail_ring(&mut self, gpa: GuestAddress) {
        self.avail_ring = gpa;
    }

    /// Guest address of the used (device) ring.
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// Set the guest address of the used (device) ring.
    pub fn set_used_ring(&mut self, gpa: GuestAddress) {
        self.used_ring = gpa;
    }

    /// Use VIRTIO_F_EVENT_IDX notification suppression.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Accept indirect descriptors (VIRTIO_F_INDIRECT_DESC).
    pub fn set_indirect(&mut self, on: bool) {
        self.indirect = on;
    }

    /// The next available-ring entry the device will take.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The next used-ring entry the device will fill.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Back to the state after [`Queue::new`].
    pub fn reset(&mut self) {
        let max_segments = self.max_segments;
        *self = Queue::new(self.max_size);
        self.max_segments = max_segments;
    }

    /// Check the configuration: ready, size a power of two ≤ max, each ring aligned and
    /// wholly inside guest RAM.
    pub fn validate<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > self.max_size || size > MAX_QUEUE_SIZE {
            return Err(QueueError::InvalidSize {
                size,
                max: self.max_size,
            });
        }
        let n = u64::from(size);
        let rings = [
            ("descriptor table", self.desc_table, 16, DESC_SIZE * n),
            ("available ring", self.avail_ring, 2, 6 + 2 * n),
            ("used ring", self.used_ring, 4, 6 + 8 * n),
        ];
        for (ring, gpa, align, len) in rings {
            if gpa.0 % align != 0 {
                return Err(QueueError::MisalignedRing {
                    ring,
                    gpa: gpa.0,
                    align,
                });
            }
            if !mem.contains(gpa, len) {
                return Err(QueueError::RingOutOfRange {
                    ring,
                    gpa: gpa.0,
                    len,
                });
            }
        }
        Ok(())
    }

    /// Address `offset` bytes into a ring already checked by `validate`.
    fn ring_addr(base: GuestAddress, offset: u64) -> Result<GuestAddress, QueueError> {
        base.checked_add(offset)
            .ok_or(QueueError::Memory(GuestMemoryError::OutOfRange {
                gpa: base.0,
                len: offset,
            }))
    }

    /// Read the available index and check it against the device's position.
    fn pending<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<u16, QueueError> {
        let avail_idx = mem.load_u16_acquire(Self::ring_addr(self.avail_ring, 2)?)?;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending > self.size {
            return Err(QueueError::AvailIndexRunaway {
                avail_idx,
                next_avail: self.next_avail,
                pending,
                size: self.size,
            });
        }
        Ok(pending)
    }

    /// Take the next descriptor chain the driver made available, copied and validated, or
    /// `None` when the ring is empty. With EVENT_IDX, an empty ring also publishes
    /// `avail_event` so the driver notifies the device of the next buffer.
    pub fn pop<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        self.validate(mem)?;
        let mut pending = self.pending(mem)?;
        if pending == 0 && self.event_idx {
            // Ask for a notification at the next entry, then look again: the driver may
            // have published between our read and its check of avail_event.
            let avail_event = Self::ring_addr(self.used_ring, 4 + 8 * u64::from(self.size))?;
            mem.store_u16_release(avail_event, self.next_avail)?;
            fence(Ordering::SeqCst);
            pending = self.pending(mem)?;
        }
        if pending == 0 {
            return Ok(None);
        }
        let slot = u64::from(self.next_avail & (self.size - 1));
        let head = mem.read_u16(Self::ring_addr(self.avail_ring, 4 + 2 * slot)?)?;
        let chain = self.read_chain(mem, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    /// Walk the chain at `head`, copying each descriptor once.
    fn read_chain<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        head: u16,
    ) -> Result<DescriptorChain, QueueError> {
        let mut table = self.desc_table;
        let mut table_len = u32::from(self.size);
        let mut in_indirect = false;
        let mut index = head;
        let mut count = 0u32;
        let mut segments = Vec::new();
        let mut seen_writable = false;
        let mut readable_len = 0u32;
        let mut writable_len = 0u32;
        loop {
            if u32::from(index) >= table_len {
                return Err(QueueError::DescriptorIndexOutOfRange { index, table_len });
            }
            count += 1;
            if count > table_len {
                return Err(QueueError::ChainTooLong {
                    head,
                    limit: table_len,
                });
            }
            let mut raw = [0u8; 16];
            mem.read(
                Self::ring_addr(table, DESC_SIZE * u64::from(index))?,
                &mut raw,
            )?;
            let d = RawDescriptor::parse(&raw);

            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if in_indirect {
                    return Err(QueueError::NestedIndirect { index });
                }
                if !self.indirect {
                    return Err(QueueError::IndirectNotNegotiated { index });
                }
                if d.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(QueueError::IndirectWithNext { index });
                }
                let entries = d.len / DESC_SIZE as u32;
                if d.len == 0 || d.len % DESC_SIZE as u32 != 0 || entries > MAX_INDIRECT_ENTRIES {
                    return Err(QueueError::InvalidIndirectLength { index, len: d.len });
                }
                if !mem.contains(GuestAddress(d.addr), u64::from(d.len)) {
                    return Err(QueueError::IndirectTableOutOfRange {
                        index,
                        addr: d.addr,
                        len: d.len,
                    });
                }
                // The WRITE flag of the indirect descriptor itself is ignored (§2.7.5.3.2).
                table = GuestAddress(d.addr);
                table_len = entries;
                in_indirect = true;
                index = 0;
                count = 0;
                continue;
            }

            let writable = d.flags & VIRTQ_DESC_F_WRITE != 0;
            if !writable && seen_writable {
                return Err(QueueError::ReadableAfterWritable { index });
            }
            seen_writable |= writable;
            if d.len != 0 {
                if !mem.contains(GuestAddress(d.addr), u64::from(d.len)) {
                    return Err(QueueError::DescriptorOutOfRange {
                        index,
                        addr: d.addr,
                        len: d.len,
                    });
                }
                let part = if writable {
                    &mut writable_len
                } else {
                    &mut readable_len
                };
                *part = part
                    .checked_add(d.len)
                    .ok_or(QueueError::ChainTooLarge { head })?;
                readable_len
                    .checked_add(writable_len)
                    .ok_or(QueueError::ChainTooLarge { head })?;
                if segments.len() >= self.max_segments as usize {
                    return Err(QueueError::TooManySegments {
                        head,
                        limit: self.max_segments,
                    });
                }
                // At most `max_segments` segments (24 bytes each), but the heap may still
                // be short: that fails this chain, not the VMM.
                segments
                    .try_reserve(1)
                    .map_err(|_| QueueError::OutOfMemory {
                        head,
                        segments: segments.len(),
                    })?;
                segments.push(Segment {
                    addr: GuestAddress(d.addr),
                    len: d.len,
                    writable,
                });
            }
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            index = d.next;
        }
        let first_writable = segments
            .iter()
            .position(|s| s.writable)
            .unwrap_or(segments.len());
        Ok(DescriptorChain {
            head,
            segments,
            first_writable,
            readable_len,
            writable_len,
        })
    }

    /// Return the chain at `head` to the driver, saying the device wrote `len` bytes.
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.validate(mem)?;
        if head >= self.size {
            return Err(QueueError::InvalidUsedHead {
                head,
                size: self.size,
            });
        }
        let slot = u64::from(self.next_used & (self.size - 1));
        let elem = Self::ring_addr(self.used_ring, 4 + 8 * slot)?;
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        b[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(elem, &b)?;
        self.next_used = self.next_used.wrapping_add(1);
        // Release: the element (and the buffer contents) are visible before the index.
        // model: d_publish (model/notify.pml)
        mem.store_u16_release(Self::ring_addr(self.used_ring, 2)?, self.next_used)?;
        Ok(())
    }

    /// Whether the driver wants an interrupt for the used entries added since the last call.
    /// With EVENT_IDX this is the spec's `vring_need_event(used_event, new, old)`; without,
    /// it honours VIRTQ_AVAIL_F_NO_INTERRUPT. Returns false when nothing was added.
    ///
    /// The handshake with the driver (publish used idx in `add_used`, fence, read
    /// `used_event`; the driver arms, then re-checks) is model-checked in
    /// `crates/keel-virtio/model/notify.pml` (labels `d_publish`, `d_fence`, `d_read`,
    /// `d_notify`); the decision itself is checked exhaustively for small queues in
    /// `tests/exhaustive.rs`.
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.validate(mem)?;
        let new = self.next_used;
        let old = self.signalled_used.replace(new);
        if old == Some(new) {
            return Ok(false);
        }
        // Our used-index store must be visible before we read the driver's event field.
        // model: d_fence
        fence(Ordering::SeqCst);
        if self.event_idx {
            // model: d_read
            let used_event = mem.load_u16_acquire(Self::ring_addr(
                self.avail_ring,
                4 + 2 * u64::from(self.size),
            )?)?;
            Ok(match old {
                // First decision on this queue: interrupt rather than risk a stall.
                None => true,
                Some(old) => vring_need_event(used_event, new, old),
            })
        } else {
            let flags = mem.load_u16_acquire(self.avail_ring)?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Desc, GuestQueue, RAM_SIZE, ram, write_desc_at};
    use keel_core::GuestRam;

    const SIZE: u16 = 4;

    fn setup() -> (GuestRam, GuestQueue, Queue) {
        let mem = ram();
        let gq = GuestQueue::new(0x1000, SIZE);
        let q = gq.device_queue();
        (mem, gq, q)
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
        Desc {
            addr,
            len,
            flags,
            next,
        }
    }

    #[test]
    fn pop_returns_readable_then_writable_segments() {
        let (mem, mut gq, mut q) = setup();
        gq.add_chain(&mem, &[(0x8000, 16, false), (0x9000, 32, true)]);

        let chain = q.pop(&mem).unwrap().unwrap();

        assert_eq!(chain.head(), 0);
        assert_eq!(chain.readable().len(), 1);
        assert_eq!(chain.readable()[0].addr, GuestAddress(0x8000));
        assert_eq!(chain.writable()[0].len, 32);
        assert_eq!((chain.readable_len(), chain.writable_len()), (16, 32));
    }

    #[test]
    fn empty_ring_pops_nothing() {
        let (mem, _gq, mut q) = setup();
        assert_eq!(q.pop(&mem).unwrap(), None);
    }

    #[test]
    fn descriptor_loop_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        gq.write_desc(&mem, 0, desc(0x8000, 8, VIRTQ_DESC_F_NEXT, 0));
        gq.publish(&mem, 0);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::ChainTooLong {
                head: 0,
                limit: SIZE.into()
            })
        );
    }

    #[test]
    fn chain_of_queue_size_descriptors_is_accepted() {
        let (mem, mut gq, mut q) = setup();
        let bufs: Vec<_> = (0..SIZE)
            .map(|i| (0x8000 + u64::from(i) * 8, 8, false))
            .collect();
        gq.add_chain(&mem, &bufs);

        assert_eq!(q.pop(&mem).unwrap().unwrap().segments().len(), SIZE.into());
    }

    #[test]
    fn chain_longer_than_queue_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        // 0 → 1 → 2 → 3 → 1: every descriptor once, then one more.
        for i in 0..SIZE {
            let next = if i == SIZE - 1 { 1 } else { i + 1 };
            gq.write_desc(&mem, i, desc(0x8000, 8, VIRTQ_DESC_F_NEXT, next));
        }
        gq.publish(&mem, 0);

        assert!(matches!(q.pop(&mem), Err(QueueError::ChainTooLong { .. })));
    }

    #[test]
    fn head_index_out_of_range_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        gq.publish(&mem, SIZE);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::DescriptorIndexOutOfRange {
                index: SIZE,
                table_len: SIZE.into()
            })
        );
    }

    #[test]
    fn next_index_out_of_range_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        gq.write_desc(&mem, 0, desc(0x8000, 8, VIRTQ_DESC_F_NEXT, 9));
        gq.publish(&mem, 0);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::DescriptorIndexOutOfRange {
                index: 9,
                table_len: SIZE.into()
            })
        );
    }

    #[test]
    fn out_of_range_descriptor_address_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        gq.add_chain(&mem, &[(RAM_SIZE - 8, 16, false)]);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::DescriptorOutOfRange {
                index: 0,
                addr: RAM_SIZE - 8,
                len: 16
            })
        );
    }

    #[test]
    fn wrapping_descriptor_address_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        gq.add_chain(&mem, &[(u64::MAX - 3, 16, true)]);

        assert!(matches!(
            q.pop(&mem),
            Err(QueueError::DescriptorOutOfRange { .. })
        ));
    }

    #[test]
    fn readable_after_writable_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        gq.add_chain(&mem, &[(0x8000, 8, true), (0x9000, 8, false)]);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::ReadableAfterWritable { index: 1 })
        );
    }

    #[test]
    fn misaligned_descriptor_table_is_rejected() {
        let (mem, _gq, mut q) = setup();
        q.set_desc_table(GuestAddress(0x1008));

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::MisalignedRing {
                ring: "descriptor table",
                gpa: 0x1008,
                align: 16
            })
        );
    }

    #[test]
    fn misaligned_used_ring_is_rejected() {
        let (mem, gq, mut q) = setup();
        q.set_used_ring(GuestAddress(gq.used + 2));

        assert!(matches!(
            q.validate(&mem),
            Err(QueueError::MisalignedRing { align: 4, .. })
        ));
    }

    #[test]
    fn ring_outside_ram_is_rejected() {
        let (mem, _gq, mut q) = setup();
        q.set_avail_ring(GuestAddress(RAM_SIZE - 4));

        assert!(matches!(
            q.validate(&mem),
            Err(QueueError::RingOutOfRange {
                ring: "available ring",
                ..
            })
        ));
    }

    #[test]
    fn queue_size_not_power_of_two_is_rejected() {
        let (mem, _gq, mut q) = setup();
        q.set_size(3);
        assert_eq!(
            q.validate(&mem),
            Err(QueueError::InvalidSize { size: 3, max: SIZE })
        );
    }

    #[test]
    fn queue_size_above_max_is_rejected() {
        let (mem, _gq, mut q) = setup();
        q.set_size(SIZE * 2);
        assert!(matches!(
            q.validate(&mem),
            Err(QueueError::InvalidSize { .. })
        ));
    }

    #[test]
    fn queue_not_ready_is_rejected() {
        let (mem, _gq, mut q) = setup();
        q.set_ready(false);
        assert_eq!(q.pop(&mem), Err(QueueError::NotReady));
    }

    #[test]
    fn avail_idx_runaway_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        gq.set_avail_idx(&mem, SIZE + 1);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::AvailIndexRunaway {
                avail_idx: SIZE + 1,
                next_avail: 0,
                pending: SIZE + 1,
                size: SIZE
            })
        );
    }

    #[test]
    fn avail_idx_full_ring_is_accepted() {
        let (mem, mut gq, mut q) = setup();
        for _ in 0..SIZE {
            gq.add_chain(&mem, &[(0x8000, 8, false)]);
        }
        let mut n = 0;
        while q.pop(&mem).unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, SIZE);
    }

    /// A direct descriptor 0 pointing at an indirect table at 0x6000 with `entries`.
    fn with_indirect(mem: &GuestRam, gq: &mut GuestQueue, q: &mut Queue, entries: &[Desc]) {
        q.set_indirect(true);
        for (i, d) in entries.iter().enumerate() {
            write_desc_at(mem, 0x6000 + 16 * i as u64, *d);
        }
        let len = 16 * entries.len() as u32;
        gq.write_desc(mem, 0, desc(0x6000, len, VIRTQ_DESC_F_INDIRECT, 0));
        gq.publish(mem, 0);
    }

    #[test]
    fn indirect_table_is_followed() {
        let (mem, mut gq, mut q) = setup();
        let entries = [
            desc(0x8000, 16, VIRTQ_DESC_F_NEXT, 1),
            desc(0x9000, 512, VIRTQ_DESC_F_NEXT, 2),
            desc(0xa000, 1, VIRTQ_DESC_F_WRITE, 0),
        ];
        with_indirect(&mem, &mut gq, &mut q, &entries);

        let chain = q.pop(&mem).unwrap().unwrap();

        assert_eq!(chain.head(), 0);
        assert_eq!(chain.segments().len(), 3);
        assert_eq!((chain.readable_len(), chain.writable_len()), (528, 1));
    }

    #[test]
    fn indirect_table_may_exceed_queue_size() {
        let (mem, mut gq, mut q) = setup();
        let entries: Vec<Desc> = (0..8)
            .map(|i| {
                desc(
                    0x8000 + 8 * i,
                    8,
                    if i < 7 { VIRTQ_DESC_F_NEXT } else { 0 },
                    i as u16 + 1,
                )
            })
            .collect();
        with_indirect(&mem, &mut gq, &mut q, &entries);

        assert_eq!(q.pop(&mem).unwrap().unwrap().segments().len(), 8);
    }

    #[test]
    fn indirect_table_without_feature_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        with_indirect(&mem, &mut gq, &mut q, &[desc(0x8000, 8, 0, 0)]);
        q.set_indirect(false);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::IndirectNotNegotiated { index: 0 })
        );
    }

    #[test]
    fn indirect_table_length_not_multiple_of_16_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        q.set_indirect(true);
        gq.write_desc(&mem, 0, desc(0x6000, 24, VIRTQ_DESC_F_INDIRECT, 0));
        gq.publish(&mem, 0);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::InvalidIndirectLength { index: 0, len: 24 })
        );
    }

    #[test]
    fn indirect_table_of_zero_length_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        q.set_indirect(true);
        gq.write_desc(&mem, 0, desc(0x6000, 0, VIRTQ_DESC_F_INDIRECT, 0));
        gq.publish(&mem, 0);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::InvalidIndirectLength { index: 0, len: 0 })
        );
    }

    #[test]
    fn indirect_table_with_next_flag_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        q.set_indirect(true);
        gq.write_desc(
            &mem,
            0,
            desc(0x6000, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1),
        );
        gq.publish(&mem, 0);

        assert_eq!(q.pop(&mem), Err(QueueError::IndirectWithNext { index: 0 }));
    }

    #[test]
    fn indirect_table_nested_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        let entries = [
            desc(0x8000, 8, VIRTQ_DESC_F_NEXT, 1),
            desc(0x7000, 16, VIRTQ_DESC_F_INDIRECT, 0),
        ];
        with_indirect(&mem, &mut gq, &mut q, &entries);

        assert_eq!(q.pop(&mem), Err(QueueError::NestedIndirect { index: 1 }));
    }

    #[test]
    fn indirect_table_outside_ram_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        q.set_indirect(true);
        gq.write_desc(&mem, 0, desc(RAM_SIZE - 16, 32, VIRTQ_DESC_F_INDIRECT, 0));
        gq.publish(&mem, 0);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::IndirectTableOutOfRange {
                index: 0,
                addr: RAM_SIZE - 16,
                len: 32
            })
        );
    }

    #[test]
    fn indirect_table_loop_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        let entries = [
            desc(0x8000, 8, VIRTQ_DESC_F_NEXT, 1),
            desc(0x8000, 8, VIRTQ_DESC_F_NEXT, 0),
        ];
        with_indirect(&mem, &mut gq, &mut q, &entries);

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::ChainTooLong { head: 0, limit: 2 })
        );
    }

    #[test]
    fn indirect_table_entry_next_out_of_table_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        with_indirect(
            &mem,
            &mut gq,
            &mut q,
            &[desc(0x8000, 8, VIRTQ_DESC_F_NEXT, 1)],
        );

        assert_eq!(
            q.pop(&mem),
            Err(QueueError::DescriptorIndexOutOfRange {
                index: 1,
                table_len: 1
            })
        );
    }

    #[test]
    fn used_ring_wraps_at_queue_size() {
        let (mem, mut gq, mut q) = setup();
        for round in 0..u32::from(SIZE) + 2 {
            gq.add_chain(&mem, &[(0x8000, 8, true)]);
            let chain = q.pop(&mem).unwrap().unwrap();
            q.add_used(&mem, chain.head(), round).unwrap();
        }

        let idx = gq.used_idx(&mem);
        assert_eq!(idx, SIZE + 2);
        // Entry SIZE+1 went to slot 1, overwriting round 1.
        assert_eq!(gq.used_elem(&mem, 1), (1, u32::from(SIZE) + 1));
    }

    #[test]
    fn add_used_rejects_head_outside_queue() {
        let (mem, _gq, mut q) = setup();
        assert_eq!(
            q.add_used(&mem, SIZE, 0),
            Err(QueueError::InvalidUsedHead {
                head: SIZE,
                size: SIZE
            })
        );
    }

    fn use_one(mem: &GuestRam, gq: &mut GuestQueue, q: &mut Queue) {
        gq.add_chain(mem, &[(0x8000, 8, true)]);
        let chain = q.pop(mem).unwrap().unwrap();
        q.add_used(mem, chain.head(), 8).unwrap();
    }

    #[test]
    fn event_idx_suppresses_notification_until_used_event_is_passed() {
        let (mem, mut gq, mut q) = setup();
        q.set_event_idx(true);
        use_one(&mem, &mut gq, &mut q);
        assert!(q.needs_notification(&mem).unwrap());
        // The driver wants to hear once the used entry with index 3 is there.
        gq.set_used_event(&mem, 3);

        let mut decisions = Vec::new();
        for _ in 0..3 {
            use_one(&mem, &mut gq, &mut q);
            decisions.push(q.needs_notification(&mem).unwrap());
        }

        assert_eq!(decisions, [false, false, true]);
    }

    #[test]
    fn event_idx_needs_notification_when_several_entries_pass_used_event() {
        let (mem, mut gq, mut q) = setup();
        q.set_event_idx(true);
        use_one(&mem, &mut gq, &mut q);
        q.needs_notification(&mem).unwrap();
        gq.set_used_event(&mem, 1);

        use_one(&mem, &mut gq, &mut q);
        use_one(&mem, &mut gq, &mut q);

        assert!(q.needs_notification(&mem).unwrap());
    }

    #[test]
    fn need_event_uses_wrapping_arithmetic() {
        assert!(vring_need_event(0xffff, 0x0000, 0xfffe));
        assert!(vring_need_event(0xfffe, 0x0001, 0xfffe));
        assert!(!vring_need_event(0x0001, 0x0001, 0xffff));
        assert!(vring_need_event(0x0000, 0x0001, 0xffff));
        assert!(!vring_need_event(5, 5, 5));
    }

    #[test]
    fn nothing_used_needs_no_notification() {
        let (mem, mut gq, mut q) = setup();
        use_one(&mem, &mut gq, &mut q);
        assert!(q.needs_notification(&mem).unwrap());
        assert!(!q.needs_notification(&mem).unwrap());
    }

    #[test]
    fn no_interrupt_flag_suppresses_notification_without_event_idx() {
        let (mem, mut gq, mut q) = setup();
        gq.set_avail_flags(&mem, VIRTQ_AVAIL_F_NO_INTERRUPT);
        use_one(&mem, &mut gq, &mut q);
        assert!(!q.needs_notification(&mem).unwrap());
    }

    #[test]
    fn empty_pop_publishes_avail_event_with_event_idx() {
        let (mem, mut gq, mut q) = setup();
        q.set_event_idx(true);
        gq.add_chain(&mem, &[(0x8000, 8, false)]);
        gq.add_chain(&mem, &[(0x8000, 8, false)]);
        q.pop(&mem).unwrap();
        q.pop(&mem).unwrap();

        assert_eq!(q.pop(&mem).unwrap(), None);

        assert_eq!(gq.avail_event(&mem), 2);
    }

    #[test]
    fn read_and_write_cross_segment_boundaries() {
        let (mem, mut gq, mut q) = setup();
        mem.write(GuestAddress(0x8000), b"abc").unwrap();
        mem.write(GuestAddress(0x9000), b"defg").unwrap();
        gq.add_chain(
            &mem,
            &[
                (0x8000, 3, false),
                (0x9000, 4, false),
                (0xa000, 2, true),
                (0xb000, 4, true),
            ],
        );
        let chain = q.pop(&mem).unwrap().unwrap();

        assert_eq!(chain.read_all(&mem).unwrap(), b"abcdefg");
        chain.write_at(&mem, 1, b"xyz").unwrap();

        let mut a = [0u8; 2];
        let mut b = [0u8; 2];
        mem.read(GuestAddress(0xa000), &mut a).unwrap();
        mem.read(GuestAddress(0xb000), &mut b).unwrap();
        assert_eq!((&a, &b), (b"\0x", b"yz"));
    }

    #[test]
    fn write_past_writable_part_is_rejected_without_writing() {
        let (mem, mut gq, mut q) = setup();
        gq.add_chain(&mem, &[(0x8000, 4, false), (0xa000, 4, true)]);
        let chain = q.pop(&mem).unwrap().unwrap();

        let err = chain.write_at(&mem, 2, b"xyz").unwrap_err();

        assert_eq!(
            err,
            ChainError::OutOfBounds {
                head: 0,
                part: "writable",
                offset: 2,
                len: 3,
                available: 4
            }
        );
        assert_eq!(mem.read_u32(GuestAddress(0xa000)).unwrap(), 0);
    }

    #[test]
    fn require_writable_only_rejects_readable_bytes() {
        let (mem, mut gq, mut q) = setup();
        gq.add_chain(&mem, &[(0x8000, 4, false), (0xa000, 4, true)]);
        let chain = q.pop(&mem).unwrap().unwrap();

        assert_eq!(
            chain.require_writable_only(),
            Err(ChainError::UnexpectedReadable { head: 0, len: 4 })
        );
        assert!(chain.require_readable_only().is_err());
    }

    #[test]
    fn read_all_of_a_chain_over_the_cap_fails_that_chain_only() {
        let (mem, mut gq, mut q) = setup();
        gq.add_chain(&mem, &[(0x4000, 16, false)]);
        let chain = q.pop(&mem).unwrap().unwrap();

        let got = chain.read_all_capped(&mem, 8);

        assert_eq!(
            got,
            Err(ChainError::TooLargeToCopy {
                head: 0,
                len: 16,
                cap: 8
            })
        );
        assert_eq!(chain.read_all_capped(&mem, 16).map(|v| v.len()), Ok(16));
    }

    #[test]
    fn read_all_refuses_more_than_read_all_limit() {
        let (mem, mut gq, mut q) = setup();
        // One buffer described twice: READ_ALL_LIMIT + 2 bytes readable.
        let half = READ_ALL_LIMIT / 2 + 1;
        gq.add_chain(&mem, &[(0x4000, half, false), (0x4000, half, false)]);
        let chain = q.pop(&mem).unwrap().unwrap();

        let got = chain.read_all(&mem);

        assert!(matches!(got, Err(ChainError::TooLargeToCopy { len, .. }) if len == 2 * half));
    }

    #[test]
    fn chain_with_more_segments_than_the_cap_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        q.set_max_segments(2);
        gq.add_chain(
            &mem,
            &[(0x4000, 8, false), (0x5000, 8, false), (0x6000, 8, true)],
        );

        let got = q.pop(&mem);

        assert_eq!(got, Err(QueueError::TooManySegments { head: 0, limit: 2 }));
    }

    #[test]
    fn indirect_table_longer_than_the_segment_cap_is_rejected() {
        let (mem, mut gq, mut q) = setup();
        q.set_indirect(true);
        let entries: Vec<Desc> = (0..MAX_CHAIN_SEGMENTS as u16 + 1)
            .map(|i| desc(0x8000, 4, VIRTQ_DESC_F_NEXT, i + 1))
            .chain([desc(0x8000, 4, 0, 0)])
            .collect();
        with_indirect(&mem, &mut gq, &mut q, &entries);

        let got = q.pop(&mem);

        assert_eq!(
            got,
            Err(QueueError::TooManySegments {
                head: 0,
                limit: MAX_CHAIN_SEGMENTS
            })
        );
    }
}
