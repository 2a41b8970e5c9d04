//! The arm64 platform of a VM (QEMU-`virt`-like, [`keel_core::arch::aarch64::layout`]): the
//! 8250 UART on the MMIO bus, virtio-mmio devices in the standard slots, the device tree
//! describing them, and the kernel `Image`.

use std::sync::Arc;

use keel_core::BootEntry;
use keel_core::arch::aarch64::boot::load_linux;
use keel_core::arch::aarch64::layout::{UART_BASE, UART_SIZE, UART_SPI};
use keel_core::bus::SharedDevice;
use keel_core::hv::Vm;
use keel_spec::VmSpec;

use crate::dispatch::{ExitHandler, StopSink};
use crate::hv::KvmVm;
use crate::log;
use crate::vmm::{PlacedDevice, VmmError};

/// The UART's interrupt (SPI 1).
pub(crate) const SERIAL_IRQ: u32 = UART_SPI;

/// Put the 8250 UART on the MMIO bus (arm64 has no port I/O; power-off and reset are PSCI
/// calls KVM turns into system events).
pub(crate) fn place_legacy(
    handler: &mut ExitHandler,
    serial: SharedDevice,
    _stop: &Arc<dyn StopSink>,
) -> Result<(), VmmError> {
    handler
        .mmio
        .insert(UART_BASE, UART_SIZE, serial)
        .map_err(|e| VmmError::Host(format!("MMIO bus: {e}")))
}

/// virtio-mmio slot `index`: `(base, size, SPI)`.
pub(crate) fn virtio_slot(index: u32) -> Option<(u64, u64, u32)> {
    super::virtio_slot(index)
}

/// Write the kernel, the initrd and the device tree (memory, vCPUs, the GIC KVM gave,
/// timer, PSCI, UART, the placed virtio devices, the spec's command line); return the boot
/// vCPU's entry.
pub(crate) fn load_guest(
    vm: &KvmVm,
    spec: &VmSpec,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    devices: &[PlacedDevice],
) -> Result<BootEntry, VmmError> {
    // The device tree lists the devices where placement put them: one source of truth.
    let virtio: Vec<_> = devices.iter().map(|d| (d.base, d.size, d.gsi)).collect();
    let mut platform = super::platform(
        &keel_spec::ram_layout(spec),
        spec.vcpus,
        vm.arch().gic(),
        &virtio,
        &spec.cmdline,
    );
    let loaded = load_linux(vm.ram(), &mut platform, kernel, initrd).map_err(|source| {
        VmmError::Arm64Boot {
            vm: spec.name.clone(),
            path: spec.kernel.to_string(),
            source,
        }
    })?;
    let entry = loaded.entry();
    log::debug(format_args!(
        "vm {:?}: arm64 Image, {:?} GIC, entry {entry:?}, device tree {} bytes, initrd {:x?}, cmdline {:?}",
        spec.name, platform.gic, loaded.fdt_len, platform.initrd, platform.cmdline
    ));
    Ok(entry)
}
