//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2).
//!
//! [`MmioTransport`] owns the register file (features, status, queue configuration,
//! interrupt status) and the interrupt line; the device model behind it only sees
//! activation, notifications and its configuration space. Every register value comes from
//! the guest: accesses of the wrong width read zero / are ignored, queue configuration is
//! frozen once DRIVER_OK is set, and a device that finds the guest's queues malformed is put
//! into DEVICE_NEEDS_RESET instead of continuing.

use alloc::sync::Arc;
use alloc::vec::Vec;

use keel_core::{BusDevice, GuestAddress, GuestMemoryRef, IrqLine};

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

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    memory: GuestMemoryRef,
    irq: Arc<dyn IrqLine>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    interrupt_status: u32,
    config_generation: u32,
    active: bool,
    failed: bool,
    error: Option<DeviceFailure>,
}

impl<D: VirtioDevice> core::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device.name())
            .field("status", &self.status)
            .field("interrupt_status", &self.interrupt_status)
            .field("active", &self.active)
            .field("failed", &self.failed)
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Put `device` behind a register window; it reaches guest memory through `memory`
    /// (`Arc::new(ram)` for mapped [`keel_core::GuestRam`]) and interrupts the guest
    /// through `irq`.
    pub fn new(device: D, memory: GuestMemoryRef, irq: Arc<dyn IrqLine>) -> MmioTransport<D> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueConfig {
                max,
                num: max,
                ..QueueConfig::default()
            })
            .collect();
        MmioTransport {
            device,
            memory,
            irq,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            config_generation: 0,
            active: false,
            failed: false,
            error: None,
        }
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (e.g. to push console input before [`MmioTransport::poll`]).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The InterruptStatus register.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Whether the driver set DRIVER_OK and the device is running.
    pub fn is_active(&self) -> bool {
        self.active && !self.failed
    }

    /// The features offered to the driver: the device's, VERSION_1 and the ring features.
    pub fn offered_features(&self) -> u64 {
        self.device.device_features() | VIRTIO_F_VERSION_1 | RING_FEATURES
    }

    /// The error that put the device into DEVICE_NEEDS_RESET, once. The VMM logs it as one
    /// line (`DeviceFailure` displays as `virtio-blk: queue 0: …`).
    pub fn take_error(&mut self) -> Option<DeviceFailure> {
        self.error.take()
    }

    /// Deliver a queue notification (a QueueNotify write, or an ioeventfd that fired).
    pub fn notify(&mut self, queue: u16) {
        if !self.is_active() {
            return;
        }
        let result = self.device.process_queue(queue);
        self.complete(result);
    }

    /// Let the device do work that does not come from the guest (console input). Call it
    /// after handing the device new input.
    pub fn poll(&mut self) {
        if !self.is_active() {
            return;
        }
        let result = self.device.poll();
        self.complete(result);
    }

    /// The host events the device waits on (see [`VirtioDevice::event_sources`]).
    pub fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        self.device.event_sources()
    }

    /// Deliver a host event the device declared in [`MmioTransport::event_sources`]: the
    /// device handles it and the transport raises the interrupt line if it asks, as for a
    /// queue notification. Ignored before DRIVER_OK and after a device error: what the
    /// event announced waits in the backend until the device next looks (a console, when
    /// the guest posts receive buffers).
    pub fn handle_event(&mut self, token: EventToken) {
        if !self.is_active() {
            return;
        }
        let result = self.device.handle_event(token);
        self.complete(result);
    }

    /// An event the device wants delivered again (see [`VirtioDevice::backlogged_event`]);
    /// None while the device is not active.
    pub fn backlogged_event(&self) -> Option<EventToken> {
        if !self.is_active() {
            return None;
        }
        self.device.backlogged_event()
    }

    fn complete(&mut self, result: Result<bool, DeviceError>) {
        match result {
            Ok(true) => self.raise(INT_USED_BUFFER),
            Ok(false) => {}
            Err(error) => self.fail(error),
        }
    }

    fn raise(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        self.irq.set_level(true);
    }

    /// Stop the device: DEVICE_NEEDS_RESET, a configuration-change interrupt, the error kept
    /// for the VMM.
    fn fail(&mut self, error: DeviceError) {
        self.failed = true;
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.error.is_none() {
            self.error = Some(DeviceFailure {
                device: self.device.name(),
                error,
            });
        }
        if self.status & status::DRIVER_OK != 0 {
            self.raise(INT_CONFIG_CHANGE);
        }
    }

    /// Back to the power-on state, as when the driver writes status 0 (also a VM reset:
    /// the device model keeps its backend).
    pub fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        self.failed = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig {
                max: q.max,
                num: q.max,
                ..QueueConfig::default()
            };
        }
        self.interrupt_status = 0;
        self.irq.set_level(false);
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue configuration may change only after FEATURES_OK and before DRIVER_OK.
    fn queue_config_writable(&self) -> bool {
        self.status & (status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET) == 0
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver may only add bits; DEVICE_NEEDS_RESET is the device's to set.
        let value = value & !status::DEVICE_NEEDS_RESET;
        if value & old & !status::DEVICE_NEEDS_RESET != old & !status::DEVICE_NEEDS_RESET {
            return;
        }
        let added = value & !old;
        if added & status::FAILED != 0 {
            self.status |= status::FAILED;
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
            if self.status & needs != needs {
                return;
            }
            match bit {
                status::FEATURES_OK if !self.features_acceptable() => return,
                status::DRIVER_OK => {
                    self.status |= bit;
                    self.activate();
                    continue;
                }
                _ => {}
            }
            self.status |= bit;
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & VIRTIO_F_VERSION_1 != 0
            && self.driver_features & !self.offered_features() == 0
    }

    fn activate(&mut self) {
        if self.failed {
            return;
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, c) in self.queues.iter().enumerate() {
            let mut q = Queue::new(c.max);
            q.set_size(c.num);
            q.set_desc_table(GuestAddress(c.desc));
            q.set_avail_ring(GuestAddress(c.driver));
            q.set_used_ring(GuestAddress(c.device));
            q.set_event_idx(self.driver_features & VIRTIO_F_EVENT_IDX != 0);
            q.set_indirect(self.driver_features & VIRTIO_F_INDIRECT_DESC != 0);
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
        match self
            .device
            .activate(self.memory.clone(), queues, self.driver_features)
        {
            Ok(()) => self.active = true,
            Err(e) => self.fail(e),
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max)),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            // No shared memory regions: length all ones means "does not exist".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                // Only while negotiating: after DRIVER, before FEATURES_OK.
                let s = self.status;
                if s & status::DRIVER == 0 || s & status::FEATURES_OK != 0 {
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, value),
                    1 => set_high(&mut self.driver_features, value),
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NOTIFY => {
                // The low 16 bits name the queue (the rest is notification data).
                self.notify(value as u16);
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status &= !value;
                if self.interrupt_status == 0 {
                    self.irq.set_level(false);
                }
            }
            reg::STATUS => self.write_status(value),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                if !self.queue_config_writable() {
                    return;
                }
                let Some(q) = self.selected_queue() else {
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

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
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
}
