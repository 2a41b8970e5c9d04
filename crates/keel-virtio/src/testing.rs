//! Test-side guest: lays out split virtqueues in mock guest memory (like virtio-queue's
//! `MockSplitQueue`) and drives devices through the virtio-mmio registers the way a guest
//! driver does. Shared by the queue, transport and device tests.

use alloc::sync::Arc;
use alloc::vec::Vec;

use keel_core::irq::RecordingIrq;
use keel_core::{BusDevice, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryRef, GuestRam};

use crate::device::VirtioDevice;
use crate::device::features::VIRTIO_F_VERSION_1;
use crate::mmio::{MmioTransport, reg, status};
use crate::queue::{Queue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// Mock guest RAM: 1 MiB at guest-physical 0.
pub const RAM_SIZE: u64 = 0x10_0000;
/// Where guest data buffers start.
const BUFFERS: u64 = 0x8_0000;

pub fn ram() -> GuestRam {
    GuestRam::anonymous(&[(0, RAM_SIZE)]).unwrap()
}

/// Guest memory without a host mapping ([`GuestMemory::mapped`] is `None`): bytes in a
/// vector at guest-physical `base`, reached only by copies, as a shared window or a bounce
/// buffer between VMM and guest would be. Devices over it must take their copying paths.
#[derive(Debug)]
pub struct BounceMemory {
    base: u64,
    bytes: spin::Mutex<Vec<u8>>,
}

impl BounceMemory {
    /// `len` zeroed bytes at guest-physical `base`.
    pub fn new(base: u64, len: usize) -> BounceMemory {
        BounceMemory {
            base,
            bytes: spin::Mutex::new(alloc::vec![0; len]),
        }
    }

    /// The index range of `[gpa, gpa + len)` in the vector, if it lies wholly inside.
    fn range(
        &self,
        gpa: GuestAddress,
        len: usize,
    ) -> Result<core::ops::Range<usize>, GuestMemoryError> {
        let err = GuestMemoryError::OutOfRange {
            gpa: gpa.0,
            len: len as u64,
        };
        let start = gpa
            .0
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.bytes.lock().len() {
            return Err(err);
        }
        Ok(start..end)
    }

    fn aligned_u16(&self, gpa: GuestAddress) -> Result<core::ops::Range<usize>, GuestMemoryError> {
        if gpa.0 % 2 != 0 {
            return Err(GuestMemoryError::Misaligned {
                gpa: gpa.0,
                align: 2,
            });
        }
        self.range(gpa, 2)
    }
}

impl GuestMemory for BounceMemory {
    fn read(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes.lock()[r]);
        Ok(())
    }

    fn write(&self, gpa: GuestAddress, buf: &[u8]) -> Result<(), GuestMemoryError> {
        let r = self.range(gpa, buf.len())?;
        self.bytes.lock()[r].copy_from_slice(buf);
        Ok(())
    }

    // The lock orders these accesses as acquire/release would.
    fn load_u16_acquire(&self, gpa: GuestAddress) -> Result<u16, GuestMemoryError> {
        let r = self.aligned_u16(gpa)?;
        let b = &self.bytes.lock()[r];
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn store_u16_release(&self, gpa: GuestAddress, value: u16) -> Result<(), GuestMemoryError> {
        let r = self.aligned_u16(gpa)?;
        self.bytes.lock()[r].copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    fn contains(&self, gpa: GuestAddress, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|len| self.range(gpa, len).is_ok())
    }
}

/// A descriptor as the driver writes it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// A buffer of a chain: address, length, device-writable.
pub type Buf = (u64, u32, bool);

/// The guest side of one split virtqueue.
#[derive(Debug)]
pub struct GuestQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    avail_idx: u16,
    next_desc: u16,
}

impl GuestQueue {
    /// Rings laid out from `base` (16-aligned): table, available ring, used ring.
    pub fn new(base: u64, size: u16) -> GuestQueue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        GuestQueue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            next_desc: 0,
        }
    }

    /// A device-side queue configured like this one and ready.
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size);
        q.set_desc_table(GuestAddress(self.desc));
        q.set_avail_ring(GuestAddress(self.avail));
        q.set_used_ring(GuestAddress(self.used));
        q.set_ready(true);
        q
    }

    pub fn write_desc(&self, mem: &dyn GuestMemory, index: u16, d: Desc) {
        write_desc_at(mem, self.desc + 16 * u64::from(index), d);
    }

    /// Put `head` in the available ring and publish it.
    pub fn publish(&mut self, mem: &dyn GuestMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_u16(GuestAddress(self.avail + 4 + 2 * slot), head)
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store_u16_release(GuestAddress(self.avail + 2), self.avail_idx)
            .unwrap();
    }

    /// Write a raw available index (for runaway tests).
    pub fn set_avail_idx(&mut self, mem: &dyn GuestMemory, idx: u16) {
        self.avail_idx = idx;
        mem.write_u16(GuestAddress(self.avail + 2), idx).unwrap();
    }

    /// Link `bufs` into a chain of fresh descriptors and publish it; returns the head.
    pub fn add_chain(&mut self, mem: &dyn GuestMemory, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let next = (index + 1) % self.size;
            self.write_desc(
                mem,
                index,
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    pub fn used_idx(&self, mem: &dyn GuestMemory) -> u16 {
        mem.read_u16(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i` (mod size): (id, len).
    pub fn used_elem(&self, mem: &dyn GuestMemory, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            mem.read_u32(GuestAddress(at)).unwrap(),
            mem.read_u32(GuestAddress(at + 4)).unwrap(),
        )
    }

    pub fn set_avail_flags(&self, mem: &dyn GuestMemory, flags: u16) {
        mem.write_u16(GuestAddress(self.avail), flags).unwrap();
    }

    pub fn set_used_event(&self, mem: &dyn GuestMemory, v: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_u16(GuestAddress(at), v).unwrap();
    }

    pub fn avail_event(&self, mem: &dyn GuestMemory) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        mem.read_u16(GuestAddress(at)).unwrap()
    }
}

pub fn write_desc_at(mem: &dyn GuestMemory, at: u64, d: Desc) {
    mem.write_u64(GuestAddress(at), d.addr).unwrap();
    mem.write_u32(GuestAddress(at + 8), d.len).unwrap();
    mem.write_u16(GuestAddress(at + 12), d.flags).unwrap();
    mem.write_u16(GuestAddress(at + 14), d.next).unwrap();
}

/// Queue size the test driver configures.
pub const DRIVER_QUEUE_SIZE: u16 = 16;

/// A guest driver for one device behind an MMIO transport.
pub struct GuestDriver<D: VirtioDevice> {
    pub transport: MmioTransport<D>,
    pub mem: GuestMemoryRef,
    pub irq: Arc<RecordingIrq>,
    pub queues: Vec<GuestQueue>,
    next_buf: u64,
}

impl<D: VirtioDevice> GuestDriver<D> {
    /// The device on a fresh transport over mapped RAM ([`ram`]), not yet initialised.
    pub fn new(device: D) -> GuestDriver<D> {
        GuestDriver::with_memory(device, Arc::new(ram()))
    }

    /// The device on a fresh transport over `mem` (which must hold [`RAM_SIZE`] bytes at
    /// guest-physical 0), not yet initialised.
    pub fn with_memory(device: D, mem: GuestMemoryRef) -> GuestDriver<D> {
        let irq = Arc::new(RecordingIrq::new());
        let transport = MmioTransport::new(device, mem.clone(), irq.clone());
        GuestDriver {
            transport,
            mem,
            irq,
            queues: Vec::new(),
            next_buf: BUFFERS,
        }
    }

    /// Bring the device up as Linux does, accepting every offered feature.
    pub fn start(device: D) -> GuestDriver<D> {
        GuestDriver::start_with(GuestDriver::new(device))
    }

    /// [`GuestDriver::start`] over `mem` (see [`GuestDriver::with_memory`]).
    pub fn start_with_memory(device: D, mem: GuestMemoryRef) -> GuestDriver<D> {
        GuestDriver::start_with(GuestDriver::with_memory(device, mem))
    }

    /// [`GuestDriver::start`] with every queue of `queue_size` entries.
    pub fn start_sized(device: D, queue_size: u16) -> GuestDriver<D> {
        let mut d = GuestDriver::new(device);
        let offered = d.device_features();
        assert!(d.negotiate(offered), "FEATURES_OK refused");
        d.setup_queues_sized(queue_size);
        d.driver_ok();
        assert!(d.transport.is_active(), "device did not activate");
        d
    }

    fn start_with(mut d: GuestDriver<D>) -> GuestDriver<D> {
        let offered = d.device_features();
        assert!(d.negotiate(offered), "FEATURES_OK refused");
        d.setup_queues();
        d.driver_ok();
        assert!(d.transport.is_active(), "device did not activate");
        d
    }

    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write_reg(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.read_reg(reg::STATUS)
    }

    pub fn device_features(&mut self) -> u64 {
        self.write_reg(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.read_reg(reg::DEVICE_FEATURES);
        self.write_reg(reg::DEVICE_FEATURES_SEL, 1);
        let high = self.read_reg(reg::DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; whether it stuck.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write_reg(reg::STATUS, 0);
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE);
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        self.write_reg(reg::DRIVER_FEATURES, features as u32);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        self.write_reg(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write_reg(reg::STATUS, s);
        self.status() & status::FEATURES_OK != 0
    }

    /// Lay out and configure every queue the device has, size [`DRIVER_QUEUE_SIZE`].
    pub fn setup_queues(&mut self) {
        self.setup_queues_sized(DRIVER_QUEUE_SIZE);
    }

    /// Lay out and configure every queue the device has, `size` entries each (at most 256:
    /// each queue's rings get 8 KiB).
    pub fn setup_queues_sized(&mut self, size: u16) {
        assert!(size <= 256, "queue rings would overlap");
        self.queues.clear();
        let count = self.transport.device().queue_max_sizes().len();
        for i in 0..count {
            let q = GuestQueue::new(0x1000 + 0x2000 * i as u64, size);
            self.configure_queue(i as u32, &q);
            self.queues.push(q);
        }
    }

    pub fn configure_queue(&mut self, index: u32, q: &GuestQueue) {
        self.write_reg(reg::QUEUE_SEL, index);
        self.write_reg(reg::QUEUE_NUM, u32::from(q.size));
        self.write_reg(reg::QUEUE_DESC_LOW, q.desc as u32);
        self.write_reg(reg::QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        self.write_reg(reg::QUEUE_DRIVER_LOW, q.avail as u32);
        self.write_reg(reg::QUEUE_DRIVER_HIGH, (q.avail >> 32) as u32);
        self.write_reg(reg::QUEUE_DEVICE_LOW, q.used as u32);
        self.write_reg(reg::QUEUE_DEVICE_HIGH, (q.used >> 32) as u32);
        self.write_reg(reg::QUEUE_READY, 1);
    }

    pub fn driver_ok(&mut self) {
        let s = self.status();
        self.write_reg(reg::STATUS, s | status::DRIVER_OK);
    }

    /// Guest memory for a buffer of `len` bytes (zeroed).
    pub fn alloc(&mut self, len: u32) -> u64 {
        let at = self.next_buf;
        self.next_buf = (at + u64::from(len) + 15) & !15;
        assert!(self.next_buf <= RAM_SIZE, "test buffers exhausted");
        at
    }

    /// A buffer holding `data`.
    pub fn buffer(&mut self, data: &[u8]) -> u64 {
        let at = self.alloc(data.len() as u32);
        self.mem.write(GuestAddress(at), data).unwrap();
        at
    }

    /// Publish a chain on `queue` and notify through the QueueNotify register.
    pub fn submit(&mut self, queue: u16, bufs: &[Buf]) -> u16 {
        let head = self.post(queue, bufs);
        self.write_reg(reg::QUEUE_NOTIFY, u32::from(queue));
        head
    }

    /// Publish a chain on `queue` without notifying.
    pub fn post(&mut self, queue: u16, bufs: &[Buf]) -> u16 {
        let q = &mut self.queues[usize::from(queue)];
        q.add_chain(&*self.mem, bufs)
    }

    /// The most recent used element of `queue`: (id, len), or None if nothing was used.
    pub fn last_used(&self, queue: u16) -> Option<(u32, u32)> {
        let q = &self.queues[usize::from(queue)];
        let idx = q.used_idx(&*self.mem);
        (idx != 0).then(|| q.used_elem(&*self.mem, idx.wrapping_sub(1)))
    }

    pub fn read_mem(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = alloc::vec![0u8; len];
        self.mem.read(GuestAddress(at), &mut v).unwrap();
        v
    }

    /// Read `N` bytes of device configuration space.
    pub fn config<const N: usize>(&mut self, offset: u64) -> [u8; N] {
        let mut b = [0u8; N];
        self.transport.read(reg::CONFIG + offset, &mut b);
        b
    }

    /// Whether the device reported DEVICE_NEEDS_RESET.
    pub fn needs_reset(&mut self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }
}

/// Features a modern driver always accepts.
pub const VERSION_1: u64 = VIRTIO_F_VERSION_1;

/// Entropy that is the byte 0xa5 repeated, or fails when told to.
#[derive(Debug, Default)]
pub struct PatternEntropy {
    pub fail: bool,
}

impl crate::rng::EntropySource for PatternEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), crate::rng::EntropyError> {
        if self.fail {
            return Err(crate::rng::EntropyError(alloc::string::String::from(
                "test source is broken",
            )));
        }
        buf.fill(0xa5);
        Ok(())
    }
}

/// A started virtio-rng: the simplest device, for transport tests.
pub fn rng_driver() -> GuestDriver<crate::rng::Rng<PatternEntropy>> {
    GuestDriver::start(crate::rng::Rng::new(PatternEntropy::default()))
}

/// A network backend for tests, shared with the test through clones: frames the test makes
/// arrive (`arrive`) are received by the device, frames the device sends are kept (`sent`).
/// Its event source is 9. It keeps the [`crate::net::NetBackend`] contract: a frame longer
/// than the device's buffer is dropped and counted (`recv_dropped`), never truncated.
#[derive(Clone, Debug, Default)]
pub struct MockNet(Arc<spin::Mutex<MockNetState>>);

#[derive(Debug, Default)]
struct MockNetState {
    incoming: alloc::collections::VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    refuse: bool,
    recv_dropped: u64,
    stop_short: bool,
}

impl MockNet {
    /// The host side receives `frame` for the guest.
    pub fn arrive(&self, frame: &[u8]) {
        self.0.lock().incoming.push_back(frame.to_vec());
    }

    /// Frames still waiting in the backend.
    pub fn waiting(&self) -> usize {
        self.0.lock().incoming.len()
    }

    /// Frames the guest transmitted, in order.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.0.lock().sent.clone()
    }

    /// Make `send` fail as a full backend does.
    pub fn refuse_sends(&self) {
        self.0.lock().refuse = true;
    }

    /// Make `recv` return `None` as a backend that stopped early to bound its work, and
    /// say so through `backlogged`.
    pub fn stop_short(&self, on: bool) {
        self.0.lock().stop_short = on;
    }

    /// Frames the backend dropped because the device's buffer was too short for them.
    pub fn recv_dropped(&self) -> u64 {
        self.0.lock().recv_dropped
    }
}

impl crate::net::NetBackend for MockNet {
    fn send(&mut self, frame: &[u8]) -> Result<(), crate::net::NetError> {
        let mut s = self.0.lock();
        if s.refuse {
            return Err(crate::net::NetError::Full { len: frame.len() });
        }
        s.sent.push(frame.to_vec());
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut s = self.0.lock();
        if s.stop_short {
            return None;
        }
        while let Some(frame) = s.incoming.pop_front() {
            if frame.len() > buf.len() {
                s.recv_dropped += 1;
                continue;
            }
            buf[..frame.len()].copy_from_slice(&frame);
            return Some(frame.len());
        }
        None
    }

    fn event_source(&self) -> Option<crate::device::EventSource> {
        Some(crate::device::EventSource(9))
    }

    fn backlogged(&self) -> bool {
        self.0.lock().stop_short
    }
}
