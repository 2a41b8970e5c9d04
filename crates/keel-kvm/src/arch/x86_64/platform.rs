//! The x86 PC platform of a VM: COM1, the i8042 and the debug-exit port on the port bus,
//! virtio-mmio windows at 0xd000_0000 + i * 0x1000 (GSI 5 + i) named on the command line,
//! the kernel (PVH ELF or bzImage), the MP table, and the ACPI tables with their
//! power-management ports.

use std::sync::Arc;

use keel_core::BootEntry;
use keel_core::arch::x86_64::acpi::{
    self, AcpiError, AcpiInput, PM_PORT_BASE, PM_PORT_LEN, VirtioMmioDevice,
};
use keel_core::arch::x86_64::cmdline::Cmdline;
use keel_core::arch::x86_64::layout::{
    CMDLINE_MAX, COM1_GSI, COM1_PORT, DEBUG_EXIT_PORT, I8042_DATA_PORT, VIRTIO_MMIO_SIZE,
    virtio_mmio_base, virtio_mmio_gsi,
};
use keel_core::arch::x86_64::{load_kernel, mptable};
use keel_core::bus::SharedDevice;
use keel_core::hv::Vm;
use keel_spec::VmSpec;

use crate::devices::{AcpiPower, DebugExit, I8042};
use crate::dispatch::{ExitHandler, StopSink};
use crate::hv::KvmVm;
use crate::log;
use crate::vmm::{PlacedDevice, VmmError};

/// The serial port's interrupt (COM1's GSI).
pub(crate) const SERIAL_IRQ: u32 = COM1_GSI;

/// Put the serial port, the i8042 and the debug-exit port on the port bus.
pub(crate) fn place_legacy(
    handler: &mut ExitHandler,
    serial: SharedDevice,
    stop: &Arc<dyn StopSink>,
) -> Result<(), VmmError> {
    let i8042: SharedDevice = Arc::new(spin::Mutex::new(I8042::new(stop.clone())));
    let debug_exit: SharedDevice = Arc::new(spin::Mutex::new(DebugExit::new(stop.clone())));
    let acpi_power: SharedDevice = Arc::new(spin::Mutex::new(AcpiPower::new(stop.clone())));
    let bus_err = |e: keel_core::BusError| VmmError::Host(format!("port bus: {e}"));
    handler
        .pio
        .insert(COM1_PORT.into(), 8, serial)
        .map_err(bus_err)?;
    handler
        .pio
        .insert(I8042_DATA_PORT.into(), 5, i8042)
        .map_err(bus_err)?;
    handler
        .pio
        .insert(DEBUG_EXIT_PORT.into(), 1, debug_exit)
        .map_err(bus_err)?;
    // The FADT's sleep control, sleep status and reset registers (ACPI power-off, reboot).
    handler
        .pio
        .insert(PM_PORT_BASE.into(), PM_PORT_LEN, acpi_power)
        .map_err(bus_err)
}

/// virtio-mmio window `index`: `(base, size, GSI)`.
pub(crate) fn virtio_slot(index: u32) -> Option<(u64, u64, u32)> {
    Some((
        virtio_mmio_base(index)?,
        VIRTIO_MMIO_SIZE,
        virtio_mmio_gsi(index)?,
    ))
}

/// Write the command line (the spec's, then one `virtio_mmio.device=` per device), the
/// kernel, the initrd and the MP table; return the boot vCPU's entry.
pub(crate) fn load_guest(
    vm: &KvmVm,
    spec: &VmSpec,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    devices: &[PlacedDevice],
) -> Result<BootEntry, VmmError> {
    let boot_err = |source| VmmError::Boot {
        vm: spec.name.clone(),
        path: spec.kernel.to_string(),
        source,
    };
    let mut cmdline = Cmdline::new((CMDLINE_MAX - 1) as usize);
    cmdline.push(&spec.cmdline).map_err(boot_err)?;
    for d in devices {
        cmdline
            .push_virtio_mmio(d.base, d.size, d.gsi)
            .map_err(boot_err)?;
    }
    let loaded = load_kernel(vm.ram(), kernel, initrd, &cmdline).map_err(boot_err)?;
    mptable::write_mptable(vm.ram(), spec.vcpus).map_err(boot_err)?;
    // ACPI for guests that find devices only there (Debian's kernel has no
    // VIRTIO_MMIO_CMDLINE_DEVICES) and power off through the FADT.
    let acpi_err = |e: AcpiError| VmmError::Host(format!("vm {:?}: ACPI tables: {e}", spec.name));
    let acpi_devices: Vec<VirtioMmioDevice> = devices
        .iter()
        .map(|d| VirtioMmioDevice {
            base: d.base,
            size: d.size,
            gsi: d.gsi,
        })
        .collect();
    let rsdp = acpi::write_acpi_tables(
        vm.ram(),
        &AcpiInput {
            vcpus: spec.vcpus,
            virtio_mmio: &acpi_devices,
        },
    )
    .map_err(acpi_err)?;
    acpi::publish_rsdp(vm.ram(), &loaded.entry, rsdp).map_err(acpi_err)?;
    log::debug(format_args!(
        "vm {:?}: {:?} kernel, entry {:?}, cmdline {:?}",
        spec.name,
        loaded.format,
        loaded.entry,
        cmdline.as_str()
    ));
    Ok(loaded.entry)
}
