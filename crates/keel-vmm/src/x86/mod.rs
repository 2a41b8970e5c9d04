//! The x86 PC platform of a VM: COM1, the i8042 and the debug-exit port on the port bus,
//! the ACPI power-management ports, and the firmware description (command line with the
//! virtio-mmio devices, MP table, ACPI tables) the kernel is loaded with.

pub mod acpi_power;
pub mod debug_exit;
pub mod i8042;

use alloc::sync::Arc;
use alloc::vec::Vec;

use keel_core::arch::x86_64::acpi::{self, AcpiInput, PM_PORT_BASE, PM_PORT_LEN, VirtioMmioDevice};
use keel_core::arch::x86_64::cmdline::Cmdline;
use keel_core::arch::x86_64::layout::{CMDLINE_MAX, DEBUG_EXIT_PORT, I8042_DATA_PORT};
use keel_core::arch::x86_64::{BootError, load_kernel, mptable};
use keel_core::bus::SharedDevice;
use keel_core::{BootEntry, GuestRam};
use keel_spec::VmPlan;

pub use acpi_power::AcpiPower;
pub use debug_exit::DebugExit;
pub use i8042::I8042;

use crate::dispatch::ExitDispatcher;
use crate::log::Log;
use crate::stop::StopSink;
use crate::{BuildError, LoadError};

/// Put the i8042, the debug-exit port and the ACPI power ports on the port bus.
pub fn place_platform(
    exits: &mut ExitDispatcher,
    stop: &Arc<dyn StopSink>,
    log: &Log,
) -> Result<(), BuildError> {
    let i8042: SharedDevice = Arc::new(spin::Mutex::new(I8042::new(stop.clone())));
    let debug_exit: SharedDevice = Arc::new(spin::Mutex::new(DebugExit::new(stop.clone())));
    let acpi_power: SharedDevice =
        Arc::new(spin::Mutex::new(AcpiPower::new(stop.clone(), log.clone())));
    exits.pio.insert(I8042_DATA_PORT.into(), 5, i8042)?;
    exits.pio.insert(DEBUG_EXIT_PORT.into(), 1, debug_exit)?;
    // The FADT's sleep control, sleep status and reset registers (ACPI power-off, reboot).
    exits
        .pio
        .insert(PM_PORT_BASE.into(), PM_PORT_LEN, acpi_power)?;
    Ok(())
}

/// Write the command line (the plan's, then one `virtio_mmio.device=` per device), the
/// kernel, the initrd, the MP table and the ACPI tables; return the boot vCPU's entry.
pub fn load_guest(
    ram: &GuestRam,
    plan: &VmPlan,
    kernel: &[u8],
    initrd: Option<&[u8]>,
) -> Result<BootEntry, LoadError> {
    let mut cmdline = Cmdline::new((CMDLINE_MAX - 1) as usize);
    cmdline.push(&plan.cmdline)?;
    for d in &plan.devices {
        cmdline.push_virtio_mmio(d.base, d.size, d.irq)?;
    }
    let loaded = load_kernel(ram, kernel, initrd, &cmdline)?;
    mptable::write_mptable(ram, plan.vcpus)?;
    // ACPI for guests that find devices only there (Debian's kernel has no
    // VIRTIO_MMIO_CMDLINE_DEVICES) and power off through the FADT.
    let acpi_devices: Vec<VirtioMmioDevice> = plan
        .devices
        .iter()
        .map(|d| VirtioMmioDevice {
            base: d.base,
            size: d.size,
            gsi: d.irq,
        })
        .collect();
    let rsdp = acpi::write_acpi_tables(
        ram,
        &AcpiInput {
            vcpus: plan.vcpus,
            virtio_mmio: &acpi_devices,
        },
    )?;
    acpi::publish_rsdp(ram, &loaded.entry, rsdp)?;
    Ok(loaded.entry)
}

impl From<BootError> for LoadError {
    fn from(e: BootError) -> LoadError {
        LoadError::X86(e)
    }
}

impl From<acpi::AcpiError> for LoadError {
    fn from(e: acpi::AcpiError) -> LoadError {
        LoadError::Acpi(e)
    }
}
