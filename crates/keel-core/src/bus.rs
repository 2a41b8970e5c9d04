//! Dispatch of MMIO and port-I/O accesses to the devices that own the addresses.
//!
//! A [`Bus`] maps disjoint address ranges to devices. Each device sits behind its own lock,
//! so vCPUs touching different devices never contend; on seL4 the single-threaded VMM never
//! finds a lock taken.

use alloc::sync::Arc;
use alloc::vec::Vec;

use spin::Mutex;

use crate::hv::VcpuId;

/// A device on a bus. `offset` is relative to the base of the device's range; `data.len()`
/// is the access width (1, 2, 4 or 8 for CPU accesses). Both come from the guest: a device
/// answers accesses it does not understand with zeros (reads) or ignores them (writes), it
/// never panics.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);

    /// vCPU `vcpu` reads: banked devices (a GIC distributor's per-CPU registers) override
    /// this; every other device sees [`BusDevice::read`].
    fn read_by(&mut self, vcpu: VcpuId, offset: u64, data: &mut [u8]) {
        let _ = vcpu;
        self.read(offset, data)
    }

    /// vCPU `vcpu` writes: see [`BusDevice::read_by`].
    fn write_by(&mut self, vcpu: VcpuId, offset: u64, data: &[u8]) {
        let _ = vcpu;
        self.write(offset, data)
    }
}

/// A device shared between the bus and whoever else drives it (an I/O thread, a backend).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A device that keeps its own locks: the bus calls it through a shared reference, holding
/// no lock of its own, so two vCPUs accessing it never wait for each other at the bus (the
/// virtio-mmio transport, whose register accesses take only short internal locks while its
/// I/O thread processes queues under another). `offset` and `data` are as for [`BusDevice`]
/// (guest-controlled: never panic on them); such a device is not banked per vCPU.
pub trait SyncBusDevice: Send + Sync {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
}

/// What a bus range dispatches to.
#[derive(Clone)]
pub enum BusTarget {
    /// A device behind the bus's lock ([`SharedDevice`]).
    Locked(SharedDevice),
    /// A device that locks itself ([`SyncBusDevice`]).
    Sync(Arc<dyn SyncBusDevice>),
}

impl core::fmt::Debug for BusTarget {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            BusTarget::Locked(_) => "BusTarget::Locked",
            BusTarget::Sync(_) => "BusTarget::Sync",
        })
    }
}

impl BusTarget {
    fn read(&self, vcpu: VcpuId, offset: u64, data: &mut [u8]) {
        match self {
            BusTarget::Locked(d) => d.lock().read_by(vcpu, offset, data),
            BusTarget::Sync(d) => d.read(offset, data),
        }
    }

    fn write(&self, vcpu: VcpuId, offset: u64, data: &[u8]) {
        match self {
            BusTarget::Locked(d) => d.lock().write_by(vcpu, offset, data),
            BusTarget::Sync(d) => d.write(offset, data),
        }
    }
}

/// What can go wrong placing devices or dispatching accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap {
        /// Base of the new range.
        base: u64,
        /// Its length.
        len: u64,
        /// Base of the device already there.
        other: u64,
    },
    /// The range is empty or wraps around.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange {
        /// Base.
        base: u64,
        /// Length.
        len: u64,
    },
    /// No device owns this address.
    #[error("no device at {addr:#x}")]
    Unmapped {
        /// The address accessed.
        addr: u64,
    },
}

#[derive(Clone)]
struct Entry {
    base: u64,
    len: u64,
    device: BusTarget,
}

/// A set of devices, each owning a disjoint address range.
#[derive(Clone, Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl core::fmt::Debug for Bus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (e.base, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Place `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        self.insert_target(base, len, BusTarget::Locked(device))
    }

    /// Place a device that locks itself at `[base, base + len)`: accesses reach it without
    /// a bus lock.
    pub fn insert_sync(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<dyn SyncBusDevice>,
    ) -> Result<(), BusError> {
        self.insert_target(base, len, BusTarget::Sync(device))
    }

    /// Place `device` at `[base, base + len)`.
    pub fn insert_target(
        &mut self,
        base: u64,
        len: u64,
        device: BusTarget,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap {
                base,
                len,
                other: e.base,
            });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` inside it. The whole access
    /// `[addr, addr + len)` must fall inside the device's range.
    pub fn resolve(&self, addr: u64, len: usize) -> Result<(&BusTarget, u64), BusError> {
        let i = self.entries.partition_point(|e| e.base <= addr);
        let e = i
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .ok_or(BusError::Unmapped { addr })?;
        let off = addr - e.base;
        if off >= e.len || (len as u64) > e.len - off {
            return Err(BusError::Unmapped { addr });
        }
        Ok((&e.device, off))
    }

    /// Dispatch a read. Unmapped addresses are an error the caller decides about (x86
    /// reads of unmapped ports conventionally return all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        let (dev, off) = self.resolve(addr, data.len())?;
        match dev {
            BusTarget::Locked(d) => d.lock().read(off, data),
            BusTarget::Sync(d) => d.read(off, data),
        }
        Ok(())
    }

    /// Dispatch a write.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), BusError> {
        let (dev, off) = self.resolve(addr, data.len())?;
        match dev {
            BusTarget::Locked(d) => d.lock().write(off, data),
            BusTarget::Sync(d) => d.write(off, data),
        }
        Ok(())
    }

    /// Dispatch a read made by `vcpu` (banked devices see who reads).
    pub fn read_by(&self, vcpu: VcpuId, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        let (dev, off) = self.resolve(addr, data.len())?;
        dev.read(vcpu, off, data);
        Ok(())
    }

    /// Dispatch a write made by `vcpu`.
    pub fn write_by(&self, vcpu: VcpuId, addr: u64, data: &[u8]) -> Result<(), BusError> {
        let (dev, off) = self.resolve(addr, data.len())?;
        dev.write(vcpu, off, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch([u8; 8]);
    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.0[o..o + data.len()]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.0[o..o + data.len()].copy_from_slice(data);
        }
    }

    fn scratch() -> SharedDevice {
        Arc::new(Mutex::new(Scratch([0; 8])))
    }

    #[test]
    fn access_reaches_device_at_offset() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 8, scratch()).unwrap();
        bus.write(0x1004, &[0xaa, 0xbb]).unwrap();
        let mut d = [0u8; 2];
        bus.read(0x1004, &mut d).unwrap();
        assert_eq!(d, [0xaa, 0xbb]);
    }

    /// A device that locks itself: records the last write's offset.
    struct LastWrite(core::sync::atomic::AtomicU64);
    impl SyncBusDevice for LastWrite {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, _data: &[u8]) {
            self.0.store(offset, core::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn access_reaches_sync_device_at_offset() {
        let mut bus = Bus::new();
        let dev = Arc::new(LastWrite(core::sync::atomic::AtomicU64::new(0)));
        bus.insert_sync(0x2000, 0x100, dev.clone()).unwrap();

        bus.write_by(1, 0x2010, &[0]).unwrap();
        let mut d = [0u8; 1];
        bus.read(0x2020, &mut d).unwrap();

        assert_eq!(dev.0.load(core::sync::atomic::Ordering::Relaxed), 0x10);
        assert_eq!(d, [0x20]);
    }

    #[test]
    fn overlapping_insert_is_refused() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 8, scratch()).unwrap();
        assert_eq!(
            bus.insert(0x1007, 8, scratch()),
            Err(BusError::Overlap {
                base: 0x1007,
                len: 8,
                other: 0x1000
            })
        );
    }

    #[test]
    fn access_straddling_the_end_of_a_device_is_unmapped() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 8, scratch()).unwrap();
        let mut d = [0u8; 4];
        assert_eq!(
            bus.read(0x1006, &mut d),
            Err(BusError::Unmapped { addr: 0x1006 })
        );
        assert_eq!(
            bus.read(0xfff, &mut d),
            Err(BusError::Unmapped { addr: 0xfff })
        );
    }

    #[test]
    fn wrapping_range_is_refused() {
        let mut bus = Bus::new();
        assert!(matches!(
            bus.insert(u64::MAX, 2, scratch()),
            Err(BusError::BadRange { .. })
        ));
    }
}
