//! The virtio-mmio (version 2) register interface.

use core::ptr::{read_volatile, write_volatile};

/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;

/// Register offsets.
#[allow(missing_docs)]
pub mod reg {
    pub const MAGIC_VALUE: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const INTERRUPT_STATUS: usize = 0x060;
    pub const INTERRUPT_ACK: usize = 0x064;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    pub const CONFIG_GENERATION: usize = 0x0fc;
    pub const CONFIG: usize = 0x100;
}

/// Device status bits.
#[allow(missing_docs)]
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// One virtio-mmio register window.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: usize,
}

impl Mmio {
    /// A window at `base`.
    ///
    /// # Safety
    /// `base..base+0x200` must be a virtio-mmio register window (or unbacked
    /// MMIO space), identity-mapped, and not ordinary RAM used by this guest.
    pub unsafe fn new(base: u64) -> Self {
        Self {
            base: base as usize,
        }
    }

    /// Base address.
    pub fn base(&self) -> u64 {
        self.base as u64
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract makes base+offset (offset < 0x200, aligned)
        // an MMIO register; a volatile access is what the device expects.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as for read32.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// Reads the 32-bit little-endian config field at `offset`.
    pub fn config32(&self, offset: usize) -> u32 {
        // SAFETY: as for read32; the config space starts at 0x100, the
        // drivers read only fields their device defines, 4-byte aligned.
        unsafe { read_volatile((self.base + reg::CONFIG + offset) as *const u32) }
    }

    /// Reads the 8-bit config field at `offset` (virtio-mmio wants 8-bit fields
    /// read 8 bits wide).
    pub fn config8(&self, offset: usize) -> u8 {
        // SAFETY: as for read32; the drivers read only fields their device defines.
        unsafe { read_volatile((self.base + reg::CONFIG + offset) as *const u8) }
    }

    /// Reads the 16-bit little-endian config field at `offset` (2-byte aligned).
    pub fn config16(&self, offset: usize) -> u16 {
        // SAFETY: as for read32; the drivers read only fields their device
        // defines, 2-byte aligned.
        unsafe { read_volatile((self.base + reg::CONFIG + offset) as *const u16) }
    }

    /// Reads a 64-bit config field as two 32-bit halves, retrying while
    /// ConfigGeneration changes (bounded).
    pub fn config64(&self, offset: usize) -> u64 {
        let mut value = 0;
        for _ in 0..8 {
            let generation = self.read32(reg::CONFIG_GENERATION);
            let lo = u64::from(self.config32(offset));
            let hi = u64::from(self.config32(offset + 4));
            value = lo | (hi << 32);
            if self.read32(reg::CONFIG_GENERATION) == generation {
                break;
            }
        }
        value
    }

    /// The 64-bit device feature set.
    pub fn device_features(&self) -> u64 {
        self.write32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = u64::from(self.read32(reg::DEVICE_FEATURES));
        self.write32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = u64::from(self.read32(reg::DEVICE_FEATURES));
        lo | (hi << 32)
    }

    /// Writes the 64-bit driver feature set.
    pub fn set_driver_features(&self, features: u64) {
        self.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.write32(reg::DRIVER_FEATURES, features as u32);
        self.write32(reg::DRIVER_FEATURES_SEL, 1);
        self.write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// Device status register.
    pub fn status(&self) -> u32 {
        self.read32(reg::STATUS)
    }

    /// Sets device status.
    pub fn set_status(&self, value: u32) {
        self.write32(reg::STATUS, value);
    }

    /// Reads and acknowledges pending interrupts; returns what was pending.
    pub fn ack_interrupts(&self) -> u32 {
        let pending = self.read32(reg::INTERRUPT_STATUS);
        if pending != 0 {
            self.write32(reg::INTERRUPT_ACK, pending);
        }
        pending
    }
}
