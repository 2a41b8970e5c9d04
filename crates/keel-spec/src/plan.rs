//! The plan of a system: what every backend builds, decided once from the validated
//! description.
//!
//! A [`System`] says what the integrator asked for; a [`SystemPlan`] says where everything
//! goes: each VM's RAM regions, its platform devices, the slot, MMIO window and interrupt of
//! every virtio device, and where each vCPU runs. Both backends consume the same plan, so
//! the same TOML gives the same device slots and interrupts on KVM and on seL4 (the
//! seL4-specific part, components, shared regions and channels, is planned on top of it in
//! [`crate::microkit`]).
//!
//! Device order is fixed: disks in file order, then console ports in file order, then the
//! rng. Slot `i` of an arch is always the same window and interrupt.
//!
//! The plan types are serde-serializable (no_std): the seL4 backend hands a VM's plan to its
//! VMM protection domain as it is, so the PD builds exactly what `plan_vm` decided.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use keel_core::arch::aarch64::layout as arm64;
use keel_core::arch::x86_64::layout as x86;

use crate::layout::ram_layout;
use crate::model::{Arch, System, VmSpec};

/// What a planned virtio device is, and which entry of its VM's description it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceKind {
    /// virtio-blk for `disks[disk]`.
    Block {
        /// Index into [`VmSpec::disks`].
        disk: usize,
    },
    /// virtio-console for `consoles[port]`.
    Console {
        /// Index into [`VmSpec::consoles`].
        port: usize,
    },
    /// virtio-rng.
    Rng,
}

impl DeviceKind {
    /// The virtio device's name (`virtio-blk`, …).
    pub const fn virtio_name(self) -> &'static str {
        match self {
            DeviceKind::Block { .. } => "virtio-blk",
            DeviceKind::Console { .. } => "virtio-console",
            DeviceKind::Rng => "virtio-rng",
        }
    }
}

/// One virtio-mmio device of a VM: where the guest finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DevicePlan {
    /// What it is.
    pub kind: DeviceKind,
    /// Its slot: the index among the VM's virtio devices.
    pub slot: u32,
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Size of the register window.
    pub size: u64,
    /// Its interrupt: the GSI on x86, the SPI number (INTID 32 + n) on arm64.
    pub irq: u32,
}

impl fmt::Display for DevicePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} slot {} at {:#x}+{:#x} irq {}",
            self.kind.virtio_name(),
            self.slot,
            self.base,
            self.size,
            self.irq
        )
    }
}

/// The platform UART of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SerialPlan {
    /// x86: a 16550 on the port bus.
    Port {
        /// First port (COM1: 0x3f8).
        port: u16,
        /// Its GSI (COM1: 4).
        irq: u32,
    },
    /// arm64: a 16550-compatible UART in MMIO, level-triggered SPI.
    Mmio {
        /// Guest-physical base.
        base: u64,
        /// Window size.
        size: u64,
        /// SPI number.
        irq: u32,
    },
}

/// Where a VM's vCPUs run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPlan {
    /// Physical CPU of vCPU `i`, if the description pins it.
    pub vcpu_pcpus: Option<Vec<u32>>,
    /// Scheduling priority (0..=254).
    pub priority: u8,
    /// CPU time per period, microseconds.
    pub budget_us: u64,
    /// Period, microseconds.
    pub period_us: u64,
}

/// A disk as the guest sees it (the backend holds where its bytes are).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DiskPlan {
    /// Offered read-only (`VIRTIO_BLK_F_RO`).
    pub read_only: bool,
    /// The serial returned for `VIRTIO_BLK_T_GET_ID`: the description's `id`, else `disk<i>`.
    pub id: String,
}

/// Everything a backend needs to build one VM, decided from its description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlan {
    /// The VM's name.
    pub name: String,
    /// Its architecture.
    pub arch: Arch,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM regions, `(gpa, size)`, sorted as laid out.
    pub ram: Vec<(u64, u64)>,
    /// The kernel command line as the description gives it (the firmware description adds
    /// the device locations where the arch needs them on the command line).
    pub cmdline: String,
    /// The platform UART.
    pub serial: SerialPlan,
    /// virtio devices, in slot order.
    pub devices: Vec<DevicePlan>,
    /// The disks, indexed by [`DeviceKind::Block`]'s `disk`.
    pub disks: Vec<DiskPlan>,
    /// Placement and scheduling.
    pub cpus: CpuPlan,
}

impl VmPlan {
    /// Total guest RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram.iter().map(|&(_, s)| s).sum()
    }
}

/// Why a VM cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// More virtio devices than the arch has slots for.
    #[error("vm {vm:?}: {devices} virtio devices; the {arch} platform has {slots} slots")]
    TooManyDevices {
        /// VM name.
        vm: String,
        /// The architecture.
        arch: Arch,
        /// Devices asked for.
        devices: usize,
        /// Slots available.
        slots: u32,
    },
}

/// Slot `index` of `arch`: `(base, size, irq)`, or `None` past the last slot.
pub fn virtio_slot(arch: Arch, index: u32) -> Option<(u64, u64, u32)> {
    match arch {
        Arch::X86_64 => Some((
            x86::virtio_mmio_base(index)?,
            x86::VIRTIO_MMIO_SIZE,
            x86::virtio_mmio_gsi(index)?,
        )),
        Arch::Aarch64 => (index < arm64::VIRTIO_MMIO_SLOTS).then(|| {
            let d = arm64::MmioDevice::virtio_slot(index);
            (d.base, d.size, d.spi)
        }),
    }
}

/// How many virtio slots `arch` has.
pub const fn virtio_slots(arch: Arch) -> u32 {
    match arch {
        Arch::X86_64 => x86::VIRTIO_MMIO_MAX_DEVICES,
        Arch::Aarch64 => arm64::VIRTIO_MMIO_SLOTS,
    }
}

/// The platform UART of `arch`.
pub const fn serial(arch: Arch) -> SerialPlan {
    match arch {
        Arch::X86_64 => SerialPlan::Port {
            port: x86::COM1_PORT,
            irq: x86::COM1_GSI,
        },
        Arch::Aarch64 => SerialPlan::Mmio {
            base: arm64::UART_BASE,
            size: arm64::UART_SIZE,
            irq: arm64::UART_SPI,
        },
    }
}

/// Plan one VM.
pub fn plan_vm(vm: &VmSpec) -> Result<VmPlan, PlanError> {
    let kinds = (0..vm.disks.len())
        .map(|disk| DeviceKind::Block { disk })
        .chain((0..vm.consoles.len()).map(|port| DeviceKind::Console { port }))
        .chain(vm.rng.then_some(DeviceKind::Rng));
    let mut devices = Vec::new();
    for (slot, kind) in kinds.enumerate() {
        let too_many = || PlanError::TooManyDevices {
            vm: vm.name.clone(),
            arch: vm.arch,
            devices: vm.disks.len() + vm.consoles.len() + usize::from(vm.rng),
            slots: virtio_slots(vm.arch),
        };
        let slot = u32::try_from(slot).map_err(|_| too_many())?;
        let (base, size, irq) = virtio_slot(vm.arch, slot).ok_or_else(too_many)?;
        devices.push(DevicePlan {
            kind,
            slot,
            base,
            size,
            irq,
        });
    }
    let placement = vm.placement.clone().unwrap_or_default();
    Ok(VmPlan {
        name: vm.name.clone(),
        arch: vm.arch,
        vcpus: vm.vcpus,
        ram: ram_layout(vm),
        cmdline: vm.cmdline.clone(),
        serial: serial(vm.arch),
        devices,
        disks: vm
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskPlan {
                read_only: d.read_only,
                id: d.id.clone().unwrap_or_else(|| alloc::format!("disk{i}")),
            })
            .collect(),
        cpus: CpuPlan {
            vcpu_pcpus: placement.pcpus,
            priority: placement.priority,
            budget_us: placement.budget_us,
            period_us: placement.period_us,
        },
    })
}

/// The plan of a whole system: one [`VmPlan`] per VM, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemPlan {
    /// The system's name.
    pub name: String,
    /// The VMs.
    pub vms: Vec<VmPlan>,
}

impl SystemPlan {
    /// The plan of the VM named `name`.
    pub fn vm(&self, name: &str) -> Option<&VmPlan> {
        self.vms.iter().find(|v| v.name == name)
    }
}

/// Plan every VM of `system`.
pub fn plan(system: &System) -> Result<SystemPlan, PlanError> {
    Ok(SystemPlan {
        name: system.name().into(),
        vms: system.vms().iter().map(plan_vm).collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConsoleSpec, DiskSpec, HostPath, Memory, Output};

    fn vm(arch: Arch, disks: usize, consoles: usize, rng: bool) -> VmSpec {
        let mut v = VmSpec::new("v", arch, HostPath::new("/k"), Memory::Size(256 << 20));
        v.disks = (0..disks)
            .map(|i| DiskSpec {
                path: HostPath::new(alloc::format!("/d{i}")),
                read_only: false,
                id: None,
            })
            .collect();
        v.consoles = (0..consoles)
            .map(|_| ConsoleSpec {
                output: Output::Null,
            })
            .collect();
        v.rng = rng;
        v
    }

    #[test]
    fn devices_are_disks_then_consoles_then_rng_in_consecutive_slots() {
        let p = plan_vm(&vm(Arch::Aarch64, 2, 1, true)).unwrap();

        let kinds: Vec<_> = p.devices.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                DeviceKind::Block { disk: 0 },
                DeviceKind::Block { disk: 1 },
                DeviceKind::Console { port: 0 },
                DeviceKind::Rng
            ]
        );
        assert_eq!(
            p.devices.iter().map(|d| d.slot).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn arm64_slot_n_is_0x0a000000_plus_n_windows_on_spi_16_plus_n() {
        let p = plan_vm(&vm(Arch::Aarch64, 0, 2, true)).unwrap();

        assert_eq!(
            (p.devices[2].base, p.devices[2].size, p.devices[2].irq),
            (0x0a00_0400, 0x200, 18)
        );
        assert_eq!(p.serial, serial(Arch::Aarch64));
        assert_eq!(p.ram, [(0x4000_0000, 256 << 20)]);
    }

    #[test]
    fn x86_slot_n_is_0xd0000000_plus_n_pages_on_gsi_5_plus_n() {
        let p = plan_vm(&vm(Arch::X86_64, 1, 0, true)).unwrap();

        assert_eq!(
            (p.devices[1].base, p.devices[1].size, p.devices[1].irq),
            (0xd000_1000, 0x1000, 6)
        );
        assert_eq!(
            p.serial,
            SerialPlan::Port {
                port: 0x3f8,
                irq: 4
            }
        );
    }

    #[test]
    fn more_devices_than_slots_is_refused_with_the_counts() {
        let e = plan_vm(&vm(Arch::X86_64, 19, 1, false)).unwrap_err();

        assert_eq!(
            e.to_string(),
            "vm \"v\": 20 virtio devices; the x86_64 platform has 19 slots"
        );
    }

    #[test]
    fn no_two_devices_of_a_vm_share_a_window_or_an_interrupt() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let p = plan_vm(&vm(arch, 5, 5, true)).unwrap();
            for (i, a) in p.devices.iter().enumerate() {
                for b in &p.devices[i + 1..] {
                    assert!(a.base + a.size <= b.base || b.base + b.size <= a.base);
                    assert_ne!(a.irq, b.irq);
                }
            }
        }
    }
}
