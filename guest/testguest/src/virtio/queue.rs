//! Split virtqueues in one DMA page each: descriptor table at 0x000, driver
//! (available) ring at 0x400, device (used) ring at 0x800.
//!
//! Requests are synchronous: one chain at a time, always starting at
//! descriptor 0, completed before the next is submitted. The network driver
//! instead keeps many single-descriptor chains in flight ([`Virtqueue::post`]),
//! each descriptor owning its own buffer.

use super::mmio::{Mmio, reg};
use crate::dma;
use crate::x86::Deadline;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, compiler_fence};

/// Queue size the request/response drivers use.
pub const MAX_QUEUE_SIZE: u16 = 8;
/// Largest queue size one page holds (the descriptor table has 0x400 bytes).
pub const PAGE_QUEUE_LIMIT: u16 = 64;
/// VIRTQ_AVAIL_F_NO_INTERRUPT: the driver polls and wants no used-buffer interrupts.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Descriptor continues via `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor is device-writable.
pub const DESC_F_WRITE: u16 = 2;

const AVAIL_OFFSET: usize = 0x400;
const USED_OFFSET: usize = 0x800;

/// A split-virtqueue descriptor, as laid out in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Desc {
    /// Buffer guest-physical address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// DESC_F_* flags.
    pub flags: u16,
    /// Next descriptor index when DESC_F_NEXT.
    pub next: u16,
}

/// One buffer of a request.
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it.
    pub device_writes: bool,
}

impl Buffer {
    /// A buffer the device reads.
    pub fn readable<T: ?Sized>(data: &T, len: usize) -> Self {
        Self {
            addr: dma::paddr(data),
            len: len as u32,
            device_writes: false,
        }
    }

    /// A buffer the device writes.
    pub fn writable<T: ?Sized>(data: &T, len: usize) -> Self {
        Self {
            addr: dma::paddr(data),
            len: len as u32,
            device_writes: true,
        }
    }
}

/// A used-ring element.
#[derive(Clone, Copy, Debug)]
pub struct Used {
    /// Head descriptor index of the completed chain.
    pub id: u32,
    /// Bytes the device wrote.
    pub len: u32,
}

/// Queue set-up failures.
#[derive(Clone, Copy, Debug)]
pub enum QueueError {
    /// QueueNumMax is 0.
    NotAvailable,
    /// QueueReady was already set.
    AlreadyReady,
    /// The DMA region is used up.
    OutOfMemory,
    /// The chain does not fit the queue.
    ChainTooLong,
}

/// A split virtqueue owned by the driver.
#[derive(Debug)]
pub struct Virtqueue {
    mmio: Mmio,
    index: u16,
    size: u16,
    page: usize,
    avail_idx: u16,
    last_used: u16,
}

impl Virtqueue {
    /// Sets up queue `index` of the device at `mmio` and marks it ready.
    pub fn new(mmio: Mmio, index: u16) -> Result<Self, QueueError> {
        Self::with_max_size(mmio, index, MAX_QUEUE_SIZE)
    }

    /// Sets up queue `index` with at most `max_size` entries (capped at
    /// [`PAGE_QUEUE_LIMIT`], rounded down to a power of two) and marks it ready.
    pub fn with_max_size(mmio: Mmio, index: u16, max_size: u16) -> Result<Self, QueueError> {
        mmio.write32(reg::QUEUE_SEL, u32::from(index));
        if mmio.read32(reg::QUEUE_READY) != 0 {
            return Err(QueueError::AlreadyReady);
        }
        let max = mmio.read32(reg::QUEUE_NUM_MAX);
        if max == 0 {
            return Err(QueueError::NotAvailable);
        }
        let limit = max.min(u32::from(max_size.clamp(1, PAGE_QUEUE_LIMIT)));
        // Split queues have power-of-two sizes: round a device's odd maximum down.
        let mut size: u16 = 1;
        while u32::from(size) * 2 <= limit {
            size *= 2;
        }
        let page = dma::alloc_pages(1).ok_or(QueueError::OutOfMemory)?;
        let base = dma::paddr(page);
        let split = |addr: u64| (addr as u32, (addr >> 32) as u32);
        mmio.write32(reg::QUEUE_NUM, u32::from(size));
        let (lo, hi) = split(base);
        mmio.write32(reg::QUEUE_DESC_LOW, lo);
        mmio.write32(reg::QUEUE_DESC_HIGH, hi);
        let (lo, hi) = split(base + AVAIL_OFFSET as u64);
        mmio.write32(reg::QUEUE_DRIVER_LOW, lo);
        mmio.write32(reg::QUEUE_DRIVER_HIGH, hi);
        let (lo, hi) = split(base + USED_OFFSET as u64);
        mmio.write32(reg::QUEUE_DEVICE_LOW, lo);
        mmio.write32(reg::QUEUE_DEVICE_HIGH, hi);
        mmio.write32(reg::QUEUE_READY, 1);
        Ok(Self {
            mmio,
            index,
            size,
            page: base as usize,
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// Queue size in use.
    pub fn size(&self) -> u16 {
        self.size
    }

    fn write_desc(&mut self, i: u16, desc: Desc) {
        let slot = (self.page + usize::from(i % self.size) * 16) as *mut Desc;
        // SAFETY: the descriptor table occupies the first `size * 16` bytes of
        // this queue's own DMA page; i % size keeps the slot inside it.
        unsafe { write_volatile(slot, desc) };
    }

    /// Submits `buffers` as one chain (descriptors 0..n) and notifies the device.
    pub fn submit(&mut self, buffers: &[Buffer]) -> Result<(), QueueError> {
        let n = buffers.len();
        if n == 0 || n > usize::from(self.size) {
            return Err(QueueError::ChainTooLong);
        }
        for (i, b) in buffers.iter().enumerate() {
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            if i + 1 < n {
                flags |= DESC_F_NEXT;
            }
            let desc = Desc {
                addr: b.addr,
                len: b.len,
                flags,
                next: (i + 1) as u16,
            };
            self.write_desc(i as u16, desc);
        }
        self.publish(0);
        Ok(())
    }

    /// Writes `descs` verbatim at indices 0.. and publishes `head`: for
    /// negative tests that need malformed chains.
    pub fn submit_raw(&mut self, descs: &[Desc], head: u16) -> Result<(), QueueError> {
        if descs.len() > usize::from(self.size) {
            return Err(QueueError::ChainTooLong);
        }
        for (i, d) in descs.iter().enumerate() {
            self.write_desc(i as u16, *d);
        }
        self.publish(head);
        Ok(())
    }

    /// Makes descriptor `i` a one-buffer chain and adds it to the driver ring
    /// without notifying the device (see [`Virtqueue::notify`]). The caller
    /// owns the bookkeeping of which descriptors are in flight.
    pub fn post(&mut self, i: u16, buffer: Buffer) {
        let flags = if buffer.device_writes {
            DESC_F_WRITE
        } else {
            0
        };
        self.write_desc(
            i,
            Desc {
                addr: buffer.addr,
                len: buffer.len,
                flags,
                next: 0,
            },
        );
        self.push_avail(i % self.size);
    }

    /// Tells the device the driver ring has new entries.
    pub fn notify(&self) {
        compiler_fence(Ordering::SeqCst);
        self.mmio.write32(reg::QUEUE_NOTIFY, u32::from(self.index));
    }

    /// Asks the device not to interrupt when it uses buffers (the driver polls).
    pub fn suppress_interrupts(&mut self) {
        // SAFETY: avail.flags is at AVAIL_OFFSET in this queue's page.
        unsafe { write_volatile((self.page + AVAIL_OFFSET) as *mut u16, AVAIL_F_NO_INTERRUPT) };
    }

    fn publish(&mut self, head: u16) {
        self.push_avail(head);
        self.notify();
    }

    fn push_avail(&mut self, head: u16) {
        let ring_slot = self.page + AVAIL_OFFSET + 4 + usize::from(self.avail_idx % self.size) * 2;
        // SAFETY: the driver ring (flags, idx, ring[size]) lies at AVAIL_OFFSET
        // in this queue's page; the slot index is reduced modulo size.
        unsafe { write_volatile(ring_slot as *mut u16, head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry must be visible before the index (x86 keeps stores in
        // order; stop the compiler reordering them).
        compiler_fence(Ordering::Release);
        // SAFETY: avail.idx is at AVAIL_OFFSET + 2 in this queue's page.
        unsafe { write_volatile((self.page + AVAIL_OFFSET + 2) as *mut u16, self.avail_idx) };
    }

    /// Takes the next used element if the device has published one.
    pub fn take_used(&mut self) -> Option<Used> {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: used.idx is at USED_OFFSET + 2 in this queue's page.
        let used_idx = unsafe { read_volatile((self.page + USED_OFFSET + 2) as *const u16) };
        if used_idx == self.last_used {
            return None;
        }
        compiler_fence(Ordering::Acquire);
        let elem = self.page + USED_OFFSET + 4 + usize::from(self.last_used % self.size) * 8;
        // SAFETY: used.ring[size] of 8-byte elements follows used.idx in this
        // queue's page; the index is reduced modulo size.
        let (id, len) = unsafe {
            (
                read_volatile(elem as *const u32),
                read_volatile((elem + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(Used { id, len })
    }

    /// Polls for the next used element until `deadline`.
    pub fn wait_used(&mut self, deadline: Deadline) -> Option<Used> {
        loop {
            if let Some(used) = self.take_used() {
                self.mmio.ack_interrupts();
                return Some(used);
            }
            if deadline.expired() {
                return None;
            }
            core::hint::spin_loop();
        }
    }
}
