//! Fuzz target `virtio_mmio`: the virtio-mmio transport (`keel_virtio::mmio::MmioTransport`)
//! driven as a sequence of register accesses, for each device type (console, block over a
//! `MemoryBackend`, rng over `PatternEntropy`, net over `MockNet`; the first byte picks).
//!
//! Feeds: reads and writes of 1/2/4/8 bytes at any offset of the register window and of
//! the configuration space; a "standard bring-up" macro (reset, ACKNOWLEDGE, DRIVER,
//! fuzzed feature subset, FEATURES_OK, queues with a fuzzed size, DRIVER_OK) so the fuzzer
//! reaches an active device; queue notifications (register and direct), host-side resets,
//! console input / net frames arriving with their events, and guest memory stores (raw
//! bytes, descriptors, published chains) between accesses.
//!
//! Invariants (where the code enforces them):
//! - status only moves as the spec allows (`MmioTransport::write_status`): bits are only
//!   added (except by a reset), ACKNOWLEDGE ⊂ DRIVER ⊂ FEATURES_OK ⊂ DRIVER_OK in the order
//!   of §3.1.1, only defined bits are ever set, and FEATURES_OK is only accepted for a
//!   feature set ⊆ offered with VERSION_1 (`features_acceptable`; checked against a shadow of
//!   the driver's DriverFeatures writes made while they are writable).
//! - a status write of 0 (and `MmioTransport::reset`) resets everything
//!   (`reset_locked`): status 0, InterruptStatus 0, IRQ line low, every QueueReady 0, the
//!   device deactivated.
//! - the device is activated only with acked features ⊆ offered and with every ready queue
//!   passing `Queue::validate` (size a non-zero power of two ≤ its max, rings aligned and in
//!   RAM) (`MmioTransport::activate`; observed by a wrapping `VirtioDevice`), only with
//!   DRIVER_OK and FEATURES_OK in the status, and `process_queue` never runs on an inactive
//!   device (`run_device`).
//! - InterruptStatus only ever holds USED_BUFFER | CONFIG_CHANGE, and the IRQ line is high
//!   exactly when it is non-zero (`raise` / `acknowledge`).
//! - register reads of a width other than 4 or at a misaligned offset read 0, the
//!   identification registers read their constants (`SyncBusDevice::read`); configuration
//!   reads never panic and read 0 past the device's configuration size
//!   (`device::read_config_bytes`).
//! - the device writes guest memory only while active, and only inside the used ring of a
//!   ready queue (used index, elements, avail_event) or inside a device-writable buffer
//!   described by the queue's descriptor table or an indirect table it points at, as seen at
//!   some device operation since activation (a sound over-approximation of "a WRITE segment
//!   of a chain it popped"); recorded by a wrapping `GuestMemory`.
//! - no panic.

use std::sync::{Arc, Mutex};

use arbitrary::Unstructured;
use keel_core::irq::RecordingIrq;
use keel_core::{GuestMemoryRef, SyncBusDevice};
use keel_virtio::device::features::VIRTIO_F_VERSION_1;
use keel_virtio::device::{ActiveQueues, DeviceError, EventSource, EventToken, VirtioDevice};
use keel_virtio::mmio::{self, MmioTransport, reg, status};
use keel_virtio::queue::{Queue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use keel_virtio::testing::{MockNet, PatternEntropy};
use keel_virtio::{Block, Console, ConsoleOutput, MemoryBackend, Net, Rng};

use crate::virtio_common::{Recording, addr, in_ram, peek, poke, ram, within};

/// (max, size, ready, desc, avail, used) of one queue as the device was activated with it.
pub(crate) type QueueSnap = (u16, u16, bool, u64, u64, u64);

/// What a [`Spy`] saw.
#[derive(Default)]
pub(crate) struct SpyLog {
    /// The device is between a successful `activate` and `reset`.
    pub active: bool,
    /// Features of the last activation.
    pub features: u64,
    /// (max, size, ready, desc, avail, used) of each queue at the last activation.
    pub queues: Vec<QueueSnap>,
    /// Something the transport must never do, if it did.
    pub violation: Option<String>,
}

/// A device model that records what the transport does to it, then passes it on.
pub(crate) struct Spy<D> {
    pub inner: D,
    pub log: Arc<Mutex<SpyLog>>,
}

impl<D: VirtioDevice> Spy<D> {
    fn log(&self) -> std::sync::MutexGuard<'_, SpyLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_active(&self, what: &str) {
        let mut log = self.log();
        if !log.active && log.violation.is_none() {
            log.violation = Some(format!("{what} on a device that is not active"));
        }
    }
}

impl<D: VirtioDevice> VirtioDevice for Spy<D> {
    fn device_type(&self) -> u32 {
        self.inner.device_type()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.inner.queue_max_sizes()
    }
    fn device_features(&self) -> u64 {
        self.inner.device_features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data)
    }
    fn active_queues(&mut self) -> &mut Option<ActiveQueues> {
        self.inner.active_queues()
    }
    fn activate(
        &mut self,
        memory: GuestMemoryRef,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), DeviceError> {
        {
            let mut log = self.log();
            if log.active && log.violation.is_none() {
                log.violation = Some("activated twice without a reset".into());
            }
            let maxes = self.inner.queue_max_sizes();
            if queues.len() != maxes.len() && log.violation.is_none() {
                log.violation = Some(format!("activated with {} queues", queues.len()));
            }
            for (i, q) in queues.iter().enumerate() {
                if q.max_size() != maxes.get(i).copied().unwrap_or(0) && log.violation.is_none() {
                    log.violation = Some(format!("queue {i} max changed to {}", q.max_size()));
                }
                if q.ready() {
                    if let Err(e) = q.validate(&*memory) {
                        if log.violation.is_none() {
                            log.violation = Some(format!("queue {i} activated although {e}"));
                        }
                    }
                }
            }
            log.features = acked_features;
            log.queues = queues
                .iter()
                .map(|q| {
                    (
                        q.max_size(),
                        q.size(),
                        q.ready(),
                        q.desc_table().0,
                        q.avail_ring().0,
                        q.used_ring().0,
                    )
                })
                .collect();
        }
        let r = self.inner.activate(memory, queues, acked_features);
        self.log().active = r.is_ok();
        r
    }
    fn reset(&mut self) {
        self.log().active = false;
        self.inner.reset()
    }
    fn process_queue(&mut self, queue: u16) -> Result<bool, DeviceError> {
        self.check_active("process_queue");
        self.inner.process_queue(queue)
    }
    fn poll(&mut self) -> Result<bool, DeviceError> {
        self.check_active("poll");
        self.inner.poll()
    }
    fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        self.inner.event_sources()
    }
    fn handle_event(&mut self, token: EventToken) -> Result<bool, DeviceError> {
        self.check_active("handle_event");
        self.inner.handle_event(token)
    }
    fn backlogged_event(&self) -> Option<EventToken> {
        self.inner.backlogged_event()
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.inner.counters()
    }
}

/// Console output kept for the checks.
#[derive(Clone, Default)]
pub(crate) struct Sink(pub Arc<Mutex<Vec<u8>>>);

impl ConsoleOutput for Sink {
    fn write(&mut self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
    }
}

/// Which device is behind the transport, with what the harness keeps of it.
enum Dev {
    Console(MmioTransport<Spy<Console<Sink>>>),
    Block(MmioTransport<Spy<Block<MemoryBackend<Vec<u8>>>>>),
    Rng(MmioTransport<Spy<Rng<PatternEntropy>>>),
    Net(MmioTransport<Spy<Net<MockNet>>>, MockNet),
}

/// Run `$body` with `$t` bound to the transport, whatever the device.
macro_rules! with_t {
    ($dev:expr, $t:ident => $body:expr) => {
        match $dev {
            Dev::Console($t) => $body,
            Dev::Block($t) => $body,
            Dev::Rng($t) => $body,
            Dev::Net($t, _) => $body,
        }
    };
}

/// Bytes of configuration space each device has (what its `read_config` copies from).
fn config_len(dev: &Dev) -> u64 {
    match dev {
        Dev::Console(_) => 12,
        Dev::Block(_) => 48,
        Dev::Rng(_) => 0,
        Dev::Net(..) => 12,
    }
}

fn reg_read(t: &impl SyncBusDevice, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn reg_write(t: &impl SyncBusDevice, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// The harness's picture of what the transport must hold.
struct Shadow {
    status: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// Writable guest ranges the device may write since activation, and the used rings.
    allowed: Vec<(u64, u64)>,
}

const DEFINED_STATUS: u32 = status::ACKNOWLEDGE
    | status::DRIVER
    | status::FEATURES_OK
    | status::DRIVER_OK
    | status::DEVICE_NEEDS_RESET
    | status::FAILED;

/// Add to `allowed` every device-writable buffer the descriptor table of each ready queue
/// (and each indirect table it points at) describes now, and each used ring.
fn note_writable(g: &keel_core::GuestRam, queues: &[QueueSnap], allowed: &mut Vec<(u64, u64)>) {
    for &(_, size, ready, desc, _, used) in queues {
        if !ready {
            continue;
        }
        let n = u64::from(size);
        // The device's part of the used ring: idx, ring[], avail_event.
        allowed.push((used.wrapping_add(2), 4 + 8 * n));
        let table = peek(g, desc, (16 * n) as usize);
        for d in table.chunks_exact(16) {
            let a = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes([d[12], d[13]]);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if len % 16 == 0 && in_ram(a, u64::from(len)) {
                    let entries = peek(g, a, len.min(16 * 4096) as usize);
                    for e in entries.chunks_exact(16) {
                        let ea = u64::from_le_bytes(e[0..8].try_into().unwrap());
                        let el = u32::from_le_bytes(e[8..12].try_into().unwrap());
                        let ef = u16::from_le_bytes([e[12], e[13]]);
                        if ef & VIRTQ_DESC_F_WRITE != 0 && el != 0 {
                            allowed.push((ea, u64::from(el)));
                        }
                    }
                }
            } else if flags & VIRTQ_DESC_F_WRITE != 0 && len != 0 {
                allowed.push((a, u64::from(len)));
            }
        }
        allowed.sort_unstable();
        allowed.dedup();
    }
}

/// Past this many allowed ranges the write check is given up for the input (keeps it
/// cheap; dropping ranges instead would make it wrong).
const MAX_ALLOWED: usize = 1 << 14;

/// The fuzz target body.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mem = Arc::new(Recording::new(ram()));
    let memref: GuestMemoryRef = mem.clone();
    let irq = Arc::new(RecordingIrq::new());
    let log = Arc::new(Mutex::new(SpyLog::default()));
    let spy = |inner| Spy {
        inner,
        log: log.clone(),
    };
    let kind: u8 = u.arbitrary().unwrap_or(0);
    let dev = match kind % 4 {
        0 => Dev::Console(MmioTransport::new(
            spy(Console::new(Sink::default()).with_size(80, 25)),
            memref,
            irq.clone(),
        )),
        1 => {
            let disk = vec![0x5au8; 64 * 1024];
            let backend = if kind & 4 != 0 {
                MemoryBackend::read_only(disk)
            } else {
                MemoryBackend::new(disk)
            };
            Dev::Block(MmioTransport::new(
                Spy {
                    inner: Block::new(backend, "fuzz"),
                    log: log.clone(),
                },
                memref,
                irq.clone(),
            ))
        }
        2 => Dev::Rng(MmioTransport::new(
            Spy {
                inner: Rng::new(PatternEntropy::default()),
                log: log.clone(),
            },
            memref,
            irq.clone(),
        )),
        _ => {
            let backend = MockNet::default();
            Dev::Net(
                MmioTransport::new(
                    Spy {
                        inner: Net::new(backend.clone(), [2, 0, 0, 0, 0, 1]),
                        log: log.clone(),
                    },
                    memref,
                    irq.clone(),
                ),
                backend,
            )
        }
    };
    let _ = spy;
    let offered = with_t!(&dev, t => t.offered_features());
    let num_queues = with_t!(&dev, t => t.num_queues());
    let cfg_len = config_len(&dev);
    let g = &mem.ram;
    let mut sh = Shadow {
        status: 0,
        driver_features_sel: 0,
        driver_features: 0,
        allowed: Vec::new(),
    };
    let mut guest_avail = vec![0u16; num_queues];
    type Seen = (bool, Vec<QueueSnap>, u64, Option<String>);
    let spylog = |log: &Arc<Mutex<SpyLog>>| -> Seen {
        let l = log.lock().unwrap_or_else(|e| e.into_inner());
        (l.active, l.queues.clone(), l.features, l.violation.clone())
    };

    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        let op: u8 = u.arbitrary().unwrap_or(0);
        let mut reset_expected = false;
        let mut device_op = false;
        match op % 12 {
            0 | 1 => {
                // A register write of any width at any offset of the window.
                let offset = u64::from(u.arbitrary::<u16>().unwrap_or(0) % 0x200);
                let width = [1usize, 2, 4, 8][usize::from(u.arbitrary::<u8>().unwrap_or(2) % 4)];
                let value: u64 = u.arbitrary().unwrap_or(0);
                let bytes = value.to_le_bytes();
                let aligned4 = width == 4 && offset % 4 == 0;
                if aligned4 && offset == reg::STATUS && value as u32 == 0 {
                    reset_expected = true;
                }
                if aligned4 && offset == reg::DRIVER_FEATURES_SEL {
                    sh.driver_features_sel = value as u32;
                }
                if aligned4
                    && offset == reg::DRIVER_FEATURES
                    && sh.status & status::DRIVER != 0
                    && sh.status & status::FEATURES_OK == 0
                {
                    let v = u64::from(value as u32);
                    match sh.driver_features_sel {
                        0 => sh.driver_features = (sh.driver_features & !0xffff_ffff) | v,
                        1 => sh.driver_features = (sh.driver_features & 0xffff_ffff) | (v << 32),
                        _ => {}
                    }
                }
                device_op = aligned4 && offset == reg::QUEUE_NOTIFY;
                if device_op {
                    let (active, queues, _, _) = spylog(&log);
                    if active {
                        note_writable(g, &queues, &mut sh.allowed);
                    }
                }
                with_t!(&dev, t => t.write(offset, &bytes[..width]));
            }
            2 => {
                // A register read of any width at any offset of the window.
                let offset = u64::from(u.arbitrary::<u16>().unwrap_or(0) % 0x100);
                let width = [1usize, 2, 4, 8][usize::from(u.arbitrary::<u8>().unwrap_or(2) % 4)];
                let mut b = [0xeeu8; 8];
                with_t!(&dev, t => t.read(offset, &mut b[..width]));
                let v = &b[..width];
                if width != 4 || offset % 4 != 0 {
                    assert!(
                        v.iter().all(|&x| x == 0),
                        "a {width}-byte read at {offset:#x} returned {v:?}, not 0"
                    );
                } else {
                    let x = u32::from_le_bytes(v.try_into().unwrap());
                    let want = match offset {
                        reg::MAGIC => Some(mmio::MMIO_MAGIC),
                        reg::VERSION => Some(mmio::MMIO_VERSION),
                        reg::VENDOR_ID => Some(mmio::VENDOR_ID),
                        _ => None,
                    };
                    if let Some(w) = want {
                        assert_eq!(x, w, "register {offset:#x}");
                    }
                    if offset == reg::INTERRUPT_STATUS {
                        assert_eq!(x & !3, 0, "InterruptStatus has undefined bits: {x:#x}");
                    }
                }
            }
            3 => {
                // Configuration space: reads and writes of any width anywhere in 0x100..0x200.
                let off = u64::from(u.arbitrary::<u8>().unwrap_or(0));
                let width = [1usize, 2, 4, 8][usize::from(u.arbitrary::<u8>().unwrap_or(2) % 4)];
                if u.arbitrary::<u8>().unwrap_or(0) & 3 == 0 {
                    let value: u64 = u.arbitrary().unwrap_or(0);
                    with_t!(&dev, t => t.write(reg::CONFIG + off, &value.to_le_bytes()[..width]));
                } else {
                    let mut b = [0xeeu8; 8];
                    with_t!(&dev, t => t.read(reg::CONFIG + off, &mut b[..width]));
                    for (i, &x) in b[..width].iter().enumerate() {
                        if off + i as u64 >= cfg_len {
                            assert_eq!(
                                x,
                                0,
                                "config byte {} past the {cfg_len}-byte space read {x:#x}",
                                off + i as u64
                            );
                        }
                    }
                }
            }
            4 => {
                // Standard bring-up with a fuzzed feature subset and queue size.
                let mask: u64 = u.arbitrary().unwrap_or(u64::MAX);
                let features = if u.arbitrary::<u8>().unwrap_or(0) < 224 {
                    offered & mask
                } else {
                    mask
                };
                let size = match u.arbitrary::<u8>().unwrap_or(0) {
                    x @ 0..=239 => 1u16 << (x % 9),
                    _ => u.arbitrary().unwrap_or(0),
                };
                reset_expected = true;
                sh.status = 0;
                sh.allowed.clear();
                with_t!(&dev, t => {
                    reg_write(t, reg::STATUS, 0);
                    reg_write(t, reg::STATUS, status::ACKNOWLEDGE);
                    reg_write(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
                    reg_write(t, reg::DRIVER_FEATURES_SEL, 0);
                    reg_write(t, reg::DRIVER_FEATURES, features as u32);
                    reg_write(t, reg::DRIVER_FEATURES_SEL, 1);
                    reg_write(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
                    reg_write(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
                    for i in 0..num_queues as u64 {
                        let base = 0x1000 + 0x2000 * i;
                        let n = u64::from(size);
                        reg_write(t, reg::QUEUE_SEL, i as u32);
                        reg_write(t, reg::QUEUE_NUM, u32::from(size));
                        reg_write(t, reg::QUEUE_DESC_LOW, base as u32);
                        reg_write(t, reg::QUEUE_DRIVER_LOW, (base + 16 * n.min(256)) as u32);
                        reg_write(t, reg::QUEUE_DEVICE_LOW, ((base + 16 * n.min(256) + 6 + 2 * n.min(256) + 3) & !3) as u32);
                        reg_write(t, reg::QUEUE_READY, 1);
                    }
                    let s = reg_read(t, reg::STATUS);
                    reg_write(t, reg::STATUS, s | status::DRIVER_OK);
                });
                sh.driver_features_sel = 1;
                sh.driver_features = features;
                guest_avail.iter_mut().for_each(|a| *a = 0);
                // Ring memory left from an earlier run is the guest's problem; start clean.
                poke(g, 0x1000, &[0u8; 0x4000]);
            }
            5 => {
                // Notify a queue directly (an ioeventfd), or poll, or a host event.
                let (active, queues, _, _) = spylog(&log);
                if active {
                    note_writable(g, &queues, &mut sh.allowed);
                }
                device_op = true;
                let which: u8 = u.arbitrary().unwrap_or(0);
                match which % 4 {
                    0 | 1 => with_t!(&dev, t => t.notify(u16::from(which >> 2) % 3)),
                    2 => with_t!(&dev, t => t.poll()),
                    _ => match &dev {
                        Dev::Net(t, backend) => {
                            let n = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 2048);
                            backend.arrive(&vec![0xabu8; n]);
                            t.handle_event(keel_virtio::net::RX_EVENT);
                        }
                        Dev::Console(t) => {
                            let n = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 4096);
                            t.lock_device().inner.push_input(&vec![b'i'; n]);
                            t.poll();
                        }
                        _ => {
                            with_t!(&dev, t => t.handle_event(EventToken(u.arbitrary::<u8>().unwrap_or(0).into())))
                        }
                    },
                }
            }
            6 => {
                // The host resets the device (a VM reset).
                reset_expected = true;
                with_t!(&dev, t => t.reset());
            }
            7 => {
                // Raw guest bytes anywhere.
                let at = addr(&mut u);
                let n = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 64);
                let bytes = u.bytes(n).unwrap_or(&[]).to_vec();
                poke(g, at, &bytes);
            }
            8..=10 => {
                // The guest publishes a chain on a queue as last activated.
                let (_, queues, _, _) = spylog(&log);
                let qi = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % num_queues.max(1);
                let Some(&(_, size, _, desc, avail, _)) = queues.get(qi) else {
                    continue;
                };
                let size = size.max(1);
                let nbuf = 1 + u.arbitrary::<u8>().unwrap_or(0) % 4;
                let first: u16 = u.arbitrary().unwrap_or(0);
                let indirect = u.arbitrary::<u8>().unwrap_or(0) % 4 == 0;
                let slot_base = 0x1_0000 + 0x800 * u64::from(u.arbitrary::<u8>().unwrap_or(0) % 15);
                let mut entries = Vec::new();
                for k in 0..nbuf {
                    let len = u32::from(u.arbitrary::<u16>().unwrap_or(16) % 0x200);
                    let w = u.arbitrary::<u8>().unwrap_or(0) % 2 == 0;
                    let at = slot_base + 0x200 * u64::from(k);
                    let nfill = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 32);
                    let fill = u.bytes(nfill).unwrap_or(&[]).to_vec();
                    poke(g, at, &fill);
                    let last = k + 1 == nbuf;
                    let mut flags = if w { VIRTQ_DESC_F_WRITE } else { 0 };
                    if !last {
                        flags |= VIRTQ_DESC_F_NEXT;
                    }
                    let (idx, next) = if indirect {
                        (u16::from(k), u16::from(k + 1))
                    } else {
                        (
                            first.wrapping_add(k.into()) % size,
                            first.wrapping_add(u16::from(k) + 1) % size,
                        )
                    };
                    entries.push((idx, desc_bytes(at, len, flags, next)));
                }
                let head = first % size;
                if indirect {
                    let table = 0x1_7800 + 0x40 * u64::from(first % 32);
                    for (idx, d) in &entries {
                        poke(g, table + 16 * u64::from(*idx), d);
                    }
                    let d = desc_bytes(table, 16 * u32::from(nbuf), VIRTQ_DESC_F_INDIRECT, 0);
                    poke(g, desc.wrapping_add(16 * u64::from(head)), &d);
                } else {
                    for (idx, d) in &entries {
                        poke(g, desc.wrapping_add(16 * u64::from(*idx)), d);
                    }
                }
                let ga = &mut guest_avail[qi];
                poke(
                    g,
                    avail.wrapping_add(4 + 2 * u64::from(*ga % size)),
                    &head.to_le_bytes(),
                );
                *ga = ga.wrapping_add(1);
                poke(g, avail.wrapping_add(2), &ga.to_le_bytes());
                if u.arbitrary::<u8>().unwrap_or(0) & 1 == 0 {
                    // ... and notifies.
                    let (active, queues, _, _) = spylog(&log);
                    if active {
                        note_writable(g, &queues, &mut sh.allowed);
                    }
                    device_op = true;
                    with_t!(&dev, t => reg_write(t, reg::QUEUE_NOTIFY, qi as u32));
                }
            }
            _ => {
                // InterruptACK of what is pending (a driver's interrupt handler).
                let is = with_t!(&dev, t => reg_read(t, reg::INTERRUPT_STATUS));
                let mask: u32 = u.arbitrary().unwrap_or(u32::MAX);
                with_t!(&dev, t => reg_write(t, reg::INTERRUPT_ACK, is & mask));
            }
        }

        // ---- invariants after every operation ----
        let writes = mem.take();
        let (spy_active, _, spy_features, violation) = spylog(&log);
        if let Some(v) = violation {
            panic!("transport misused the device: {v}");
        }
        let st = with_t!(&dev, t => reg_read(t, reg::STATUS));
        let is = with_t!(&dev, t => t.interrupt_status());
        let active = with_t!(&dev, t => t.is_active());
        assert_eq!(
            st,
            with_t!(&dev, t => t.status()),
            "Status register and status() differ"
        );
        assert_eq!(
            st & !DEFINED_STATUS,
            0,
            "status has undefined bits: {st:#x}"
        );
        assert_eq!(is & !3, 0, "InterruptStatus has undefined bits: {is:#x}");
        assert_eq!(
            irq.is_high(),
            is != 0,
            "IRQ line level disagrees with InterruptStatus {is:#x}"
        );
        let s = st & !status::DEVICE_NEEDS_RESET;
        for (bit, needs) in [
            (status::DRIVER, status::ACKNOWLEDGE),
            (status::FEATURES_OK, status::DRIVER),
            (status::DRIVER_OK, status::FEATURES_OK),
        ] {
            assert!(
                s & bit == 0 || s & needs != 0,
                "status {s:#x}: bit {bit:#x} without {needs:#x}"
            );
        }
        if reset_expected && s == 0 {
            // A reset: everything back to power-on.
            assert_eq!(is, 0, "InterruptStatus not cleared by a reset");
            assert!(!active && !spy_active, "device still active after a reset");
            assert_eq!(st, 0, "DEVICE_NEEDS_RESET survived a reset");
            with_t!(&dev, t => {
                for i in 0..num_queues as u32 + 1 {
                    reg_write(t, reg::QUEUE_SEL, i);
                    assert_eq!(reg_read(t, reg::QUEUE_READY), 0, "queue {i} ready after a reset");
                }
                reg_write(t, reg::QUEUE_SEL, 0);
            });
            sh.driver_features = 0;
            sh.driver_features_sel = 0;
            sh.allowed.clear();
        } else if reset_expected {
            assert_eq!(op % 12, 4, "a reset left status {st:#x}");
        } else {
            assert_eq!(
                s & sh.status,
                sh.status,
                "status lost bits {:#x} -> {s:#x} without a reset",
                sh.status
            );
        }
        if s & status::FEATURES_OK != 0 && sh.status & status::FEATURES_OK == 0 {
            assert_eq!(
                sh.driver_features & !offered,
                0,
                "FEATURES_OK accepted unoffered features {:#x}",
                sh.driver_features
            );
            assert!(
                sh.driver_features & VIRTIO_F_VERSION_1 != 0,
                "FEATURES_OK accepted without VERSION_1"
            );
        }
        if active {
            assert!(
                spy_active,
                "transport active but the device was never activated"
            );
            assert!(
                s & status::DRIVER_OK != 0 && s & status::FEATURES_OK != 0,
                "active with status {st:#x}"
            );
            assert_eq!(
                spy_features & !offered,
                0,
                "device activated with unoffered features {spy_features:#x}"
            );
        }
        for &(a, l) in &writes {
            if sh.allowed.len() > MAX_ALLOWED {
                break;
            }
            assert!(
                device_op,
                "guest memory written at {a:#x}+{l:#x} outside any device operation"
            );
            assert!(
                sh.allowed.iter().any(|&(b, bl)| within(a, l, b, bl)),
                "device wrote {a:#x}+{l:#x}: not a used ring nor a device-writable buffer"
            );
        }
        sh.status = s;
    }
}

fn desc_bytes(a: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&a.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    b
}
