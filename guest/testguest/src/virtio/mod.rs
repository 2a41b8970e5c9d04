//! virtio over MMIO: probing, feature negotiation and the status protocol.

pub mod mmio;
pub mod queue;

use crate::cmdline::MmioDevice;
use crate::fail;
use crate::fail::TestResult;
use crate::x86::Deadline;
use mmio::{Mmio, reg, status};

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// Device IDs this guest drives.
pub mod id {
    /// Network device.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
}

/// A human name for a device ID.
pub fn device_name(device_id: u32) -> &'static str {
    match device_id {
        0 => "none",
        id::NET => "net",
        id::BLK => "blk",
        id::CONSOLE => "console",
        id::RNG => "rng",
        19 => "vsock",
        26 => "fs",
        _ => "other",
    }
}

/// A probed virtio-mmio transport.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    /// Registers.
    pub mmio: Mmio,
    /// Where the command line said it is.
    pub location: MmioDevice,
    /// DeviceID (0 = placeholder transport with no device).
    pub device_id: u32,
}

/// Checks the window at `location` is a version-2 virtio-mmio device.
pub fn probe(location: MmioDevice) -> TestResult<Transport> {
    let end = location.base.checked_add(0x200);
    if !location.base.is_multiple_of(0x200)
        || end.is_none_or(|e| e > 1 << 32)
        || location.size < 0x200
    {
        return fail!(
            "virtio-mmio window {:#x}+{:#x} is unaligned or above 4 GiB",
            location.base,
            location.size
        );
    }
    // SAFETY: the command line names this window as a virtio-mmio device; it
    // is below 4 GiB (identity-mapped) and 0x200-aligned (checked above). If
    // it is not backed, reads return all-ones and the magic check fails.
    let mmio = unsafe { Mmio::new(location.base) };
    let magic = mmio.read32(reg::MAGIC_VALUE);
    if magic != mmio::MAGIC {
        return fail!(
            "virtio-mmio at {:#x}: magic {:#x}, want 0x74726976",
            location.base,
            magic
        );
    }
    let version = mmio.read32(reg::VERSION);
    if version != 2 {
        return fail!(
            "virtio-mmio at {:#x}: version {}, want 2 (modern)",
            location.base,
            version
        );
    }
    Ok(Transport {
        mmio,
        location,
        device_id: mmio.read32(reg::DEVICE_ID),
    })
}

/// Resets the device and negotiates `VERSION_1 | (offered & optional)`,
/// following the status protocol up to FEATURES_OK. Returns the features.
pub fn negotiate(mmio: Mmio, optional: u64) -> TestResult<u64> {
    mmio.set_status(0);
    let deadline = Deadline::after_ms(1000);
    while mmio.status() != 0 {
        if deadline.expired() {
            return fail!("virtio-mmio at {:#x}: reset not acknowledged", mmio.base());
        }
    }
    mmio.set_status(status::ACKNOWLEDGE);
    mmio.set_status(status::ACKNOWLEDGE | status::DRIVER);
    let offered = mmio.device_features();
    if offered & F_VERSION_1 == 0 {
        mmio.set_status(status::FAILED);
        return fail!(
            "virtio-mmio at {:#x}: device does not offer VERSION_1 (features {:#x})",
            mmio.base(),
            offered
        );
    }
    let features = offered & (F_VERSION_1 | optional);
    mmio.set_driver_features(features);
    mmio.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    let now = mmio.status();
    if now & status::FEATURES_OK == 0 {
        mmio.set_status(status::FAILED);
        return fail!(
            "virtio-mmio at {:#x}: FEATURES_OK not accepted (status {:#x})",
            mmio.base(),
            now
        );
    }
    Ok(features)
}

/// Sets DRIVER_OK (after the queues are set up).
pub fn driver_ok(mmio: Mmio) -> TestResult {
    mmio.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
    let now = mmio.status();
    if now & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 || now & status::DRIVER_OK == 0 {
        return fail!(
            "virtio-mmio at {:#x}: bad status {:#x} after DRIVER_OK",
            mmio.base(),
            now
        );
    }
    Ok(())
}
