//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2).
//!
//! [`MmioTransport`] owns the register file (features, status, queue configuration,
//! interrupt status) and the interrupt line; the device model behind it only sees
//! activation, notifications and its configuration space. Every register value comes from
//! the guest: accesses of the wrong width read zero / are ignored, queue configuration is
//! frozen once DRIVER_OK is set, and a device that finds the guest's queues malformed is put
//! into DEVICE_NEEDS_RESET instead of continuing.
//!
//! # Locking
//!
//! The transport is shared (`&self` everywhere) between the threads that access its
//! registers (vCPUs, through [`SyncBusDevice`]) and the thread that processes its queues
//! (an I/O worker calling [`MmioTransport::notify`] / [`MmioTransport::handle_event`]).
//! It has two locks, never held one inside the other except in the order register file →
//! device:
//!
//! - the **register file** (status, feature selection, queue configuration): taken by
//!   register accesses only, for a few loads and stores;
//! - the **device side** (the [`VirtioDevice`] with its active queues and backend): held by
//!   queue processing for as long as the device works, blocking disk I/O included.
//!
//! What both sides need is shared without either lock: InterruptStatus, `active` and
//! `failed` (DEVICE_NEEDS_RESET) are atomics; the interrupt line and the pending error each
//! sit behind a tiny lock held for one update. So the hot register path, an InterruptStatus
//! read, an InterruptACK write or a trapped QueueNotify (handed to a [`QueueNotifier`]
//! when one is set), never waits for queue processing.
//!
//! Three register paths do take the device side and so can wait for an in-flight request
//! (a disk read of megabytes): activation at DRIVER_OK, a reset (status 0) and device
//! configuration space accesses (offset `0x100` on). All three are driver set-up or
//! tear-down, rare and off the I/O path; a reset must wait anyway, since the device may
//! not touch guest memory after it. A trapped QueueNotify without a notifier (seL4's
//! single-threaded VMM) processes the queue inline, under the device side.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use keel_core::{BusDevice, GuestAddress, GuestMemoryRef, IrqLine, SyncBusDevice};
use spin::{Mutex, MutexGuard};

use crate::device::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::device::{DeviceError, DeviceFailure, EventSource, EventToken, VirtioDevice};
use crate::queue::Queue;

/// `"virt"` in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The (modern) transport version implemented.
pub const MMIO_VERSION: u32 = 2;
/// Keel's vendor ID: `"KEEL"` in little endian.
pub const VENDOR_ID: u32 = 0x4c45_454b;
/// Size of the register window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Register offsets (virtio 1.2 §4.2.2).
pub mod reg {
    /// MagicValue (R).
    pub const MAGIC: u64 = 0x000;
    /// Version (R).
    pub const VERSION: u64 = 0x004;
    /// DeviceID (R).
    pub const DEVICE_ID: u64 = 0x008;
    /// VendorID (R).
    pub const VENDOR_ID: u64 = 0x00c;
    /// DeviceFeatures (R).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel (W).
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures (W).
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel (W).
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel (W).
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax (R).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum (W).
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady (RW).
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify (W).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// InterruptStatus (R).
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptACK (W).
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status (RW).
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow (W).
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDescHigh (W).
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// QueueDriverLow (W): the available ring.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// QueueDriverHigh (W).
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// QueueDeviceLow (W): the used ring.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// QueueDeviceHigh (W).
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// SHMSel (W).
    pub const SHM_SEL: u64 = 0x0ac;
    /// SHMLenLow (R).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// SHMLenHigh (R).
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// SHMBaseLow (R).
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// SHMBaseHigh (R).
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// ConfigGeneration (R).
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bit: the device used buffers.
pub const INT_USED_BUFFER: u32 = 1;
/// InterruptStatus bit: the configuration (or device status) changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// The ring features the transport's [`Queue`] implements and always offers.
const RING_FEATURES: u64 = VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX;

/// Queue configuration as the driver writes it, before activation.
#[derive(Clone, Copy, Debug, Default)]
struct QueueConfig {
    max: u16,
    num: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

/// Where a trapped QueueNotify write goes when the device's queues are processed on another
/// thread (KVM: the device's I/O worker, reached through the queue's ioeventfd). Without
/// one, the transport processes the queue inline in the accessing thread.
pub trait QueueNotifier: Send + Sync {
    /// Hand a notification of `queue` (an index the device has) to the thread that
    /// processes the device's queues; it ends up in [`MmioTransport::notify`].
    fn notify(&self, queue: u16);
}

/// The register file: what register accesses read and write, behind its own lock.
struct Registers {
    /// The status register without DEVICE_NEEDS_RESET (that is [`MmioTransport::failed`]).
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    config_generation: u32,
}

impl Registers {
    /// Queue configuration may change only after FEATURES_OK and before DRIVER_OK.
    fn queue_config_writable(&self, failed: bool) -> bool {
        !failed && self.status & (status::DRIVER_OK | status::FAILED) == 0
    }
}

/// A virtio device behind a virtio-mmio register window. Shared by reference between the
/// threads that access its registers and the one that processes its queues: see the
/// module documentation for its locks.
pub struct MmioTransport<D: VirtioDevice> {
    // Fixed for the device's life, read without a lock.
    name: &'static str,
    device_type: u32,
    offered_features: u64,
    num_queues: usize,
    memory: GuestMemoryRef,
    /// The register file.
    regs: Mutex<Registers>,
    /// The device side: the model, its active queues and its backend.
    device: Mutex<D>,
    /// InterruptStatus: read without a lock; changed only under `irq`, with the line.
    interrupt_status: AtomicU32,
    /// The interrupt line; its lock orders level changes with `interrupt_status`.
    irq: Mutex<Arc<dyn IrqLine>>,
    /// The device was activated (changed only under the device lock).
    active: AtomicBool,
    /// The device hit an error: DEVICE_NEEDS_RESET, until a reset.
    failed: AtomicBool,
    /// The error that set `failed`, for the VMM.
    error: Mutex<Option<DeviceFailure>>,
    /// Where trapped QueueNotify writes go; inline processing when `None`.
    notifier: Mutex<Option<Arc<dyn QueueNotifier>>>,
}

impl<D: VirtioDevice> core::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // No lock: a debug print must not wait for queue processing.
        f.debug_struct("MmioTransport")
            .field("device", &self.name)
            .field("interrupt_status", &self.interrupt_status())
            .field("active", &self.active.load(Ordering::Acquire))
            .field("failed", &self.failed.load(Ordering::Acquire))
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Put `device` behind a register window; it reaches guest memory through `memory`
    /// (`Arc::new(ram)` for mapped [`keel_core::GuestRam`]) and interrupts the guest
    /// through `irq`. The device's type, name, features and queue count are read once
    /// here: they are fixed for its life.
    pub fn new(device: D, memory: GuestMemoryRef, irq: Arc<dyn IrqLine>) -> MmioTransport<D> {
        let queues: Vec<QueueConfig> = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueConfig {
                max,
                num: max,
                ..QueueConfig::default()
            })
            .collect();
        MmioTransport {
            name: device.name(),
            device_type: device.device_type(),
            offered_features: device.device_features() | VIRTIO_F_VERSION_1 | RING_FEATURES,
            num_queues: queues.len(),
            memory,
            regs: Mutex::new(Registers {
                status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                queues,
                config_generation: 0,
            }),
            device: Mutex::new(device),
            interrupt_status: AtomicU32::new(0),
            irq: Mutex::new(irq),
            active: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            notifier: Mutex::new(None),
        }
    }

    /// The device model, through exclusive access to the transport (no lock taken).
    pub fn device(&mut self) -> &D {
        self.device.get_mut()
    }

    /// The device model, mutably (e.g. to push console input before [`MmioTransport::poll`]).
    pub fn device_mut(&mut self) -> &mut D {
        self.device.get_mut()
    }

    /// The device model through the device-side lock: waits for queue processing in
    /// progress, and holds it off while the guard lives.
    pub fn lock_device(&self) -> MutexGuard<'_, D> {
        self.device.lock()
    }

    /// The device's name (`virtio-blk`, …).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How many queues the device has.
    pub fn num_queues(&self) -> usize {
        self.num_queues
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.regs.lock().status | self.needs_reset_bit()
    }

    fn needs_reset_bit(&self) -> u32 {
        if self.failed.load(Ordering::Acquire) {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        }
    }

    /// The InterruptStatus register.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status.load(Ordering::Acquire)
    }

    /// Whether the driver set DRIVER_OK and the device is running.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire) && !self.failed.load(Ordering::Acquire)
    }

    /// The features offered to the driver: the device's, VERSION_1 and the ring features.
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// The error that put the device into DEVICE_NEEDS_RESET, once. The VMM logs it as one
    /// line (`DeviceFailure` displays as `virtio-blk: queue 0: …`).
    pub fn take_error(&self) -> Option<DeviceFailure> {
        self.error.lock().take()
    }

    /// Send trapped QueueNotify writes to `notifier` instead of processing the queue in the
    /// accessing thread (a VMM whose queue work runs on an I/O thread).
    pub fn set_notifier(&self, notifier: Arc<dyn QueueNotifier>) {
        *self.notifier.lock() = Some(notifier);
    }

    /// Deliver a queue notification (a QueueNotify write, or an ioeventfd that fired): the
    /// device processes the queue under the device-side lock, which register accesses
    /// other than configuration space, activation and reset never take.
    pub fn notify(&self, queue: u16) {
        self.run_device(|d| d.process_queue(queue));
    }

    /// Let the device do work that does not come from the guest (console input). Call it
    /// after handing the device new input.
    pub fn poll(&self) {
        self.run_device(|d| d.poll());
    }

    /// How often the device wants [`MmioTransport::poll`] without events (see
    /// [`VirtioDevice::poll_interval_ms`]); takes the device-side lock.
    pub fn poll_interval_ms(&self) -> Option<u32> {
        self.device.lock().poll_interval_ms()
    }

    /// The host events the device waits on (see [`VirtioDevice::event_sources`]); takes
    /// the device-side lock.
    pub fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        self.device.lock().event_sources()
    }

    /// Deliver a host event the device declared in [`MmioTransport::event_sources`]: the
    /// device handles it and the transport raises the interrupt line if it asks, as for a
    /// queue notification. Ignored before DRIVER_OK and after a device error: what the
    /// event announced waits in the backend until the device next looks (a console, when
    /// the guest posts receive buffers).
    pub fn handle_event(&self, token: EventToken) {
        self.run_device(|d| d.handle_event(token));
    }

    /// Run device work if the device is active, then act on its answer, all under the
    /// device-side lock (so that a reset, which takes it too, cannot come in between).
    fn run_device(&self, work: impl FnOnce(&mut D) -> Result<bool, DeviceError>) {
        if !self.is_active() {
            return;
        }
        let mut device = self.device.lock();
        // `active` changes only under the device lock: look again now that we hold it.
        if !self.is_active() {
            return;
        }
        let result = work(&mut device);
        self.complete(result);
    }

    /// An event the device wants delivered again (see [`VirtioDevice::backlogged_event`]);
    /// None while the device is not active. Takes the device-side lock.
    pub fn backlogged_event(&self) -> Option<EventToken> {
        if !self.is_active() {
            return None;
        }
        self.device.lock().backlogged_event()
    }

    fn complete(&self, result: Result<bool, DeviceError>) {
        match result {
            Ok(true) => self.raise(INT_USED_BUFFER),
            Ok(false) => {}
            Err(error) => self.fail(error),
        }
    }

    fn raise(&self, bits: u32) {
        let line = self.irq.lock();
        self.interrupt_status.fetch_or(bits, Ordering::AcqRel);
        line.set_level(true);
    }

    /// InterruptACK: clear `bits`; the line drops when nothing is left. No device-side lock.
    fn acknowledge(&self, bits: u32) {
        let line = self.irq.lock();
        let left = self.interrupt_status.fetch_and(!bits, Ordering::AcqRel) & !bits;
        if left == 0 {
            line.set_level(false);
        }
    }

    /// Stop the device: DEVICE_NEEDS_RESET, a configuration-change interrupt, the error kept
    /// for the VMM. Every caller runs after DRIVER_OK (activation, device work, a trapped
    /// QueueNotify of an active device), so the driver is there to see the interrupt.
    fn fail(&self, error: DeviceError) {
        self.failed.store(true, Ordering::Release);
        {
            let mut pending = self.error.lock();
            if pending.is_none() {
                *pending = Some(DeviceFailure {
                    device: self.name,
                    error,
                });
            }
        }
        self.raise(INT_CONFIG_CHANGE);
    }

    /// Back to the power-on state, as when the driver writes status 0 (also a VM reset:
    /// the device model keeps its backend). Waits for queue processing in progress.
    pub fn reset(&self) {
        let mut regs = self.regs.lock();
        self.reset_locked(&mut regs);
    }

    fn reset_locked(&self, regs: &mut Registers) {
        {
            let mut device = self.device.lock();
            if self.active.load(Ordering::Acquire) {
                device.reset();
            }
            self.active.store(false, Ordering::Release);
            self.failed.store(false, Ordering::Release);
        }
        regs.status = 0;
        regs.device_features_sel = 0;
        regs.driver_features_sel = 0;
        regs.driver_features = 0;
        regs.queue_sel = 0;
        for q in &mut regs.queues {
            *q = QueueConfig {
                max: q.max,
                num: q.max,
                ..QueueConfig::default()
            };
        }
        let line = self.irq.lock();
        self.interrupt_status.store(0, Ordering::Release);
        line.set_level(false);
    }

    /// A QueueNotify write that trapped: to the notifier if there is one, else processed
    /// here. A queue the device does not have stops the device without touching it.
    fn queue_notify(&self, queue: u16) {
        if !self.is_active() {
            return;
        }
        if usize::from(queue) >= self.num_queues {
            self.fail(DeviceError::NoSuchQueue {
                queue,
                count: self.num_queues,
            });
            return;
        }
        let notifier = self.notifier.lock().clone();
        match notifier {
            Some(n) => n.notify(queue),
            None => self.notify(queue),
        }
    }

    fn write_status(&self, regs: &mut Registers, value: u32) {
        if value == 0 {
            self.reset_locked(regs);
            return;
        }
        let old = regs.status;
        // The driver may only add bits; DEVICE_NEEDS_RESET is the device's to set.
        let value = value & !status::DEVICE_NEEDS_RESET;
        if value & old != old {
            return;
        }
        let added = value & !old;
        if added & status::FAILED != 0 {
            regs.status |= status::FAILED;
        }
        let order = [
            (status::ACKNOWLEDGE, 0),
            (status::DRIVER, status::ACKNOWLEDGE),
            (status::FEATURES_OK, status::DRIVER),
            (status::DRIVER_OK, status::FEATURES_OK),
        ];
        for (bit, needs) in order {
            if added & bit == 0 {
                continue;
            }
            if regs.status & needs != needs {
                return;
            }
            match bit {
                status::FEATURES_OK if !self.features_acceptable(regs) => return,
                status::DRIVER_OK => {
                    regs.status |= bit;
                    self.activate(regs);
                    continue;
                }
                _ => {}
            }
            regs.status |= bit;
        }
    }

    fn features_acceptable(&self, regs: &Registers) -> bool {
        regs.driver_features & VIRTIO_F_VERSION_1 != 0
            && regs.driver_features & !self.offered_features == 0
    }

    /// DRIVER_OK: validate the queues and start the device (under the register-file lock;
    /// takes the device side, so it waits for nothing but a device that is not running).
    fn activate(&self, regs: &Registers) {
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        let mut queues = Vec::with_capacity(regs.queues.len());
        for (i, c) in regs.queues.iter().enumerate() {
            let mut q = Queue::new(c.max);
            q.set_size(c.num);
            q.set_desc_table(GuestAddress(c.desc));
            q.set_avail_ring(GuestAddress(c.driver));
            q.set_used_ring(GuestAddress(c.device));
            q.set_event_idx(regs.driver_features & VIRTIO_F_EVENT_IDX != 0);
            q.set_indirect(regs.driver_features & VIRTIO_F_INDIRECT_DESC != 0);
            q.set_ready(c.ready);
            if c.ready {
                if let Err(source) = q.validate(&*self.memory) {
                    // Queue indices fit in u16: a device has at most a handful of queues.
                    self.fail(DeviceError::Queue {
                        queue: i as u16,
                        source,
                    });
                    return;
                }
            }
            queues.push(q);
        }
        let mut device = self.device.lock();
        match device.activate(self.memory.clone(), queues, regs.driver_features) {
            Ok(()) => self.active.store(true, Ordering::Release),
            Err(e) => self.fail(e),
        }
    }

    fn read_register(&self, regs: &Registers, offset: u64) -> u32 {
        let q = regs.queues.get(regs.queue_sel as usize);
        match offset {
            reg::DEVICE_FEATURES => match regs.device_features_sel {
                0 => self.offered_features as u32,
                1 => (self.offered_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max)),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            reg::STATUS => regs.status | self.needs_reset_bit(),
            reg::CONFIG_GENERATION => regs.config_generation,
            _ => 0,
        }
    }

    fn write_register(&self, regs: &mut Registers, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => regs.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => regs.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                // Only while negotiating: after DRIVER, before FEATURES_OK.
                let s = regs.status;
                if s & status::DRIVER == 0 || s & status::FEATURES_OK != 0 {
                    return;
                }
                match regs.driver_features_sel {
                    0 => set_low(&mut regs.driver_features, value),
                    1 => set_high(&mut regs.driver_features, value),
                    _ => {}
                }
            }
            reg::QUEUE_SEL => regs.queue_sel = value,
            reg::STATUS => self.write_status(regs, value),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                if !regs.queue_config_writable(self.failed.load(Ordering::Acquire)) {
                    return;
                }
                let Some(q) = regs.queues.get_mut(regs.queue_sel as usize) else {
                    return;
                };
                match offset {
                    // Values that do not fit are kept as something validate() rejects.
                    reg::QUEUE_NUM => q.num = u16::try_from(value).unwrap_or(0),
                    reg::QUEUE_READY => q.ready = value & 1 != 0,
                    reg::QUEUE_DESC_LOW => set_low(&mut q.desc, value),
                    reg::QUEUE_DESC_HIGH => set_high(&mut q.desc, value),
                    reg::QUEUE_DRIVER_LOW => set_low(&mut q.driver, value),
                    reg::QUEUE_DRIVER_HIGH => set_high(&mut q.driver, value),
                    reg::QUEUE_DEVICE_LOW => set_low(&mut q.device, value),
                    _ => set_high(&mut q.device, value),
                }
            }
            _ => {}
        }
    }
}

impl<D: VirtioDevice> SyncBusDevice for MmioTransport<D> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            // Configuration space belongs to the device: this waits for a request in
            // flight (rare: drivers read it at set-up and on a config-change interrupt).
            self.device.lock().read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let value = match offset {
            // Constants and InterruptStatus: no lock.
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::INTERRUPT_STATUS => self.interrupt_status(),
            // No shared memory regions: length all ones means "does not exist".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            _ => self.read_register(&self.regs.lock(), offset),
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            // See `read`: may wait for a request in flight.
            self.device.lock().write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            // No register-file lock: the hot path.
            reg::INTERRUPT_ACK => self.acknowledge(value),
            // The low 16 bits name the queue (the rest is notification data).
            reg::QUEUE_NOTIFY => self.queue_notify(value as u16),
            _ => self.write_register(&mut self.regs.lock(), offset, value),
        }
    }
}

/// The single-owner form (a bus entry behind its own lock, as in seL4's VMM): the same
/// accesses as [`SyncBusDevice`].
impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        SyncBusDevice::read(&*self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        SyncBusDevice::write(&*self, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{
        GuestDriver, GuestQueue, PatternEntropy, RAM_SIZE, VERSION_1, rng_driver,
    };
    use alloc::format;

    fn fresh() -> GuestDriver<Rng<PatternEntropy>> {
        GuestDriver::new(Rng::new(PatternEntropy::default()))
    }

    #[test]
    fn identification_registers_read_back() {
        let mut d = fresh();
        assert_eq!(d.read_reg(reg::MAGIC), 0x7472_6976);
        assert_eq!(d.read_reg(reg::VERSION), 2);
        assert_eq!(d.read_reg(reg::DEVICE_ID), 4);
        assert_eq!(d.read_reg(reg::VENDOR_ID), 0x4c45_454b);
    }

    #[test]
    fn device_features_offer_version_1() {
        let mut d = fresh();
        assert_ne!(d.device_features() & VERSION_1, 0);
    }

    #[test]
    fn features_ok_refused_without_version_1() {
        let mut d = fresh();
        assert!(!d.negotiate(0));
        assert_eq!(d.status(), status::ACKNOWLEDGE | status::DRIVER);
    }

    #[test]
    fn features_ok_refused_for_features_not_offered() {
        let mut d = fresh();
        assert!(!d.negotiate(VERSION_1 | 1 << 40));
    }

    #[test]
    fn features_ok_accepted_for_offered_features() {
        let mut d = fresh();
        assert!(d.negotiate(VERSION_1 | VIRTIO_F_EVENT_IDX));
    }

    #[test]
    fn driver_ok_without_features_ok_is_ignored() {
        let mut d = fresh();
        d.write_reg(reg::STATUS, status::ACKNOWLEDGE);
        d.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        d.write_reg(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(d.status(), status::ACKNOWLEDGE | status::DRIVER);
        assert!(!d.transport.is_active());
    }

    #[test]
    fn driver_cannot_clear_status_bits_without_reset() {
        let mut d = rng_driver();
        d.write_reg(reg::STATUS, status::ACKNOWLEDGE);
        assert_ne!(d.status() & status::DRIVER_OK, 0);
    }

    #[test]
    fn status_zero_resets_device() {
        let mut d = rng_driver();
        let a = d.alloc(8);
        d.submit(0, &[(a, 8, true)]);
        assert!(d.irq.is_high());

        d.write_reg(reg::STATUS, 0);

        assert_eq!(d.status(), 0);
        assert_eq!(d.read_reg(reg::INTERRUPT_STATUS), 0);
        assert!(!d.irq.is_high());
        assert_eq!(d.read_reg(reg::QUEUE_READY), 0);
        assert!(!d.transport.is_active());
    }

    #[test]
    fn device_works_again_after_reset() {
        let mut d = rng_driver();
        d.write_reg(reg::STATUS, 0);
        let offered = d.device_features();
        assert!(d.negotiate(offered));
        d.setup_queues();
        d.driver_ok();
        let a = d.alloc(8);

        d.submit(0, &[(a, 8, true)]);

        assert_eq!(d.last_used(0), Some((0, 8)));
    }

    #[test]
    fn narrow_register_access_is_ignored() {
        let mut d = fresh();
        let mut two = [0xffu8; 2];
        d.transport.read(reg::MAGIC, &mut two);
        d.transport.write(reg::STATUS, &[status::ACKNOWLEDGE as u8]);

        assert_eq!(two, [0, 0]);
        assert_eq!(d.status(), 0);
    }

    #[test]
    fn queue_num_max_is_zero_for_missing_queue() {
        let mut d = fresh();
        d.write_reg(reg::QUEUE_SEL, 0);
        assert_eq!(d.read_reg(reg::QUEUE_NUM_MAX), 256);
        d.write_reg(reg::QUEUE_SEL, 1);
        assert_eq!(d.read_reg(reg::QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn queue_config_writes_after_driver_ok_are_ignored() {
        let mut d = rng_driver();
        d.write_reg(reg::QUEUE_SEL, 0);
        d.write_reg(reg::QUEUE_DESC_LOW, 0x10);
        d.write_reg(reg::QUEUE_READY, 0);
        let a = d.alloc(8);

        d.submit(0, &[(a, 8, true)]);

        assert_eq!(d.read_reg(reg::QUEUE_READY), 1);
        assert_eq!(d.last_used(0), Some((0, 8)));
    }

    #[test]
    fn used_buffer_interrupt_stays_high_until_acknowledged() {
        let mut d = rng_driver();
        let a = d.alloc(8);
        d.submit(0, &[(a, 8, true)]);
        assert_eq!(d.read_reg(reg::INTERRUPT_STATUS), INT_USED_BUFFER);
        assert!(d.irq.is_high());

        d.write_reg(reg::INTERRUPT_ACK, INT_USED_BUFFER);

        assert_eq!(d.read_reg(reg::INTERRUPT_STATUS), 0);
        assert!(!d.irq.is_high());
    }

    #[test]
    fn notify_method_processes_queue_without_mmio_write() {
        let mut d = rng_driver();
        let a = d.alloc(8);
        d.post(0, &[(a, 8, true)]);

        d.transport.notify(0);

        assert_eq!(d.last_used(0), Some((0, 8)));
    }

    #[test]
    fn notify_before_driver_ok_does_nothing() {
        let mut d = fresh();
        assert!(d.negotiate(VERSION_1));
        d.setup_queues();
        let a = d.alloc(8);

        d.submit(0, &[(a, 8, true)]);

        assert_eq!(d.last_used(0), None);
    }

    #[test]
    fn bad_descriptor_sets_needs_reset_and_records_error() {
        let mut d = rng_driver();

        d.submit(0, &[(RAM_SIZE, 8, true)]);

        assert!(d.needs_reset());
        assert_eq!(d.read_reg(reg::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
        assert!(d.irq.is_high());
        let failure = d.transport.take_error().unwrap();
        assert_eq!(
            format!("{failure}"),
            "virtio-rng: queue 0: descriptor 0 buffer 0x100000+0x8 is not in guest RAM"
        );
        assert_eq!(d.transport.take_error(), None);
    }

    #[test]
    fn failed_device_ignores_further_notifications() {
        let mut d = rng_driver();
        d.submit(0, &[(RAM_SIZE, 8, true)]);
        let a = d.alloc(8);

        d.submit(0, &[(a, 8, true)]);

        assert_eq!(d.last_used(0), None);
    }

    #[test]
    fn misaligned_queue_at_driver_ok_sets_needs_reset() {
        let mut d = fresh();
        assert!(d.negotiate(VERSION_1));
        let mut q = GuestQueue::new(0x1000, 16);
        q.desc = 0x1004;
        d.configure_queue(0, &q);

        d.driver_ok();

        assert!(d.needs_reset());
        assert!(!d.transport.is_active());
        assert!(matches!(
            d.transport.take_error().map(|f| f.error),
            Some(DeviceError::Queue {
                queue: 0,
                source: crate::queue::QueueError::MisalignedRing { gpa: 0x1004, .. }
            })
        ));
    }

    #[test]
    fn queue_notify_for_missing_queue_sets_needs_reset() {
        let mut d = rng_driver();
        d.write_reg(reg::QUEUE_NOTIFY, 7);
        assert!(d.needs_reset());
    }

    /// A worker thread inside a disk request while another thread uses the registers: the
    /// register accesses must complete while the request is still blocked.
    mod concurrency {
        use super::*;
        use crate::block::{Block, VIRTIO_BLK_T_OUT};
        use crate::block::{BlockBackend, BlockError, MemoryBackend, VIRTIO_BLK_T_IN};
        use crate::testing::GuestDriver;
        use keel_core::Bus;
        use keel_core::irq::RecordingIrq;
        use std::sync::mpsc::{self, Receiver, Sender};
        use std::thread;
        use std::time::Duration;
        use std::vec;

        /// How long the register thread may take before the test gives up: far beyond any
        /// scheduling delay, only there so that a failure does not hang the suite.
        const GIVE_UP: Duration = Duration::from_secs(60);
        const BASE: u64 = 0x1000_0000;

        /// A disk whose reads stop until the test releases them (writes pass).
        struct GatedDisk {
            inner: MemoryBackend<Vec<u8>>,
            entered: Sender<()>,
            release: Receiver<()>,
        }

        impl BlockBackend for GatedDisk {
            fn size(&self) -> u64 {
                self.inner.size()
            }
            fn read_only(&self) -> bool {
                false
            }
            fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
                self.entered.send(()).unwrap();
                self.release.recv().unwrap();
                self.inner.read_at(offset, buf)
            }
            fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
                self.inner.write_at(offset, data)
            }
            fn flush(&mut self) -> Result<(), BlockError> {
                Ok(())
            }
            fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
                self.inner.discard(offset, len)
            }
        }

        struct Gate {
            entered: Receiver<()>,
            release: Sender<()>,
        }

        fn gated_disk() -> (GuestDriver<Block<GatedDisk>>, Gate) {
            let (entered_tx, entered) = mpsc::channel();
            let (release, release_rx) = mpsc::channel();
            let disk = GatedDisk {
                inner: MemoryBackend::new(vec![0x5a; 64 * 512]),
                entered: entered_tx,
                release: release_rx,
            };
            (
                GuestDriver::start(Block::new(disk, "gated")),
                Gate { entered, release },
            )
        }

        fn header(d: &mut GuestDriver<Block<GatedDisk>>, kind: u32) -> u64 {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            d.buffer(&h)
        }

        /// A completed write (InterruptStatus has USED_BUFFER), then a read posted but not
        /// yet notified.
        fn used_buffer_pending_and_read_posted() -> (GuestDriver<Block<GatedDisk>>, Gate) {
            let (mut d, gate) = gated_disk();
            let h = header(&mut d, VIRTIO_BLK_T_OUT);
            let data = d.buffer(&[1; 512]);
            let status = d.alloc(1);
            d.submit(0, &[(h, 16, false), (data, 512, false), (status, 1, true)]);
            assert_eq!(d.read_reg(reg::INTERRUPT_STATUS), INT_USED_BUFFER);
            let h = header(&mut d, VIRTIO_BLK_T_IN);
            let data = d.alloc(512);
            let status = d.alloc(1);
            d.post(0, &[(h, 16, false), (data, 512, true), (status, 1, true)]);
            (d, gate)
        }

        fn on_bus<D: VirtioDevice + 'static>(t: &Arc<MmioTransport<D>>) -> Bus {
            let mut bus = Bus::new();
            bus.insert_sync(BASE, MMIO_WINDOW_SIZE, t.clone()).unwrap();
            bus
        }

        fn read32(bus: &Bus, offset: u64) -> u32 {
            let mut b = [0u8; 4];
            bus.read(BASE + offset, &mut b).unwrap();
            u32::from_le_bytes(b)
        }

        fn write32(bus: &Bus, offset: u64, value: u32) {
            bus.write(BASE + offset, &value.to_le_bytes()).unwrap();
        }

        #[test]
        fn interrupt_status_and_ack_complete_while_a_disk_request_is_blocked() {
            let (d, gate) = used_buffer_pending_and_read_posted();
            let GuestDriver {
                transport,
                mem,
                irq,
                queues,
                ..
            } = d;
            let transport = Arc::new(transport);
            let bus = on_bus(&transport);
            let worker = {
                let t = transport.clone();
                thread::spawn(move || t.notify(0))
            };
            gate.entered
                .recv_timeout(GIVE_UP)
                .expect("the read never started");

            let (done_tx, done) = mpsc::channel();
            let line: Arc<RecordingIrq> = irq.clone();
            let vcpu = thread::spawn(move || {
                let before = read32(&bus, reg::INTERRUPT_STATUS);
                write32(&bus, reg::INTERRUPT_ACK, before);
                let after = read32(&bus, reg::INTERRUPT_STATUS);
                done_tx.send((before, after, line.is_high())).unwrap();
            });
            let answer = done.recv_timeout(GIVE_UP);
            gate.release.send(()).unwrap();
            worker.join().unwrap();
            vcpu.join().unwrap();

            assert_eq!(
                answer.expect("register accesses waited for the blocked disk request"),
                (INT_USED_BUFFER, 0, false)
            );
            // The read completed once released: the write and the read are used.
            assert_eq!(queues[0].used_idx(&*mem), 2);
        }

        struct Recorded(Sender<u16>);

        impl QueueNotifier for Recorded {
            fn notify(&self, queue: u16) {
                self.0.send(queue).unwrap();
            }
        }

        #[test]
        fn trapped_queue_notify_goes_to_the_notifier_while_a_request_is_blocked() {
            let (d, gate) = used_buffer_pending_and_read_posted();
            let transport = Arc::new(d.transport);
            let (notified_tx, notified) = mpsc::channel();
            transport.set_notifier(Arc::new(Recorded(notified_tx)));
            let bus = on_bus(&transport);
            let worker = {
                let t = transport.clone();
                thread::spawn(move || t.notify(0))
            };
            gate.entered
                .recv_timeout(GIVE_UP)
                .expect("the read never started");

            let vcpu = thread::spawn(move || write32(&bus, reg::QUEUE_NOTIFY, 0));
            let answer = notified.recv_timeout(GIVE_UP);
            gate.release.send(()).unwrap();
            worker.join().unwrap();
            vcpu.join().unwrap();

            assert_eq!(
                answer.expect("QueueNotify waited for the blocked disk request"),
                0
            );
        }
    }
}
