//! The arm64 KVM calls: the in-kernel vGIC, `KVM_ARM_VCPU_INIT` and the boot registers.

use std::sync::Mutex;

use keel_core::arch::aarch64::layout::GicVersion;
use keel_core::{BootEntry, HvError, VcpuId};
use kvm_bindings::{kvm_create_device, kvm_device_attr, kvm_vcpu_init};
use kvm_ioctls::{DeviceFd, Kvm, VcpuFd, VmFd};

use super::{
    GIC_NR_IRQS, VGIC_CTRL_INIT, VGIC_GRP_ADDR, VGIC_GRP_CTRL, VGIC_GRP_NR_IRQS, boot_registers,
    spi_irq_line, vcpu_features, vgic_addresses, vgic_device_type,
};
use crate::hv::call;

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "kvm (aarch64)";

/// Per-VM arm64 state: the vGIC and the vCPU target KVM prefers.
#[derive(Debug)]
pub(crate) struct VmArch {
    gic: GicVersion,
    gic_fd: Mutex<DeviceFd>,
    target: kvm_vcpu_init,
}

/// Per-vCPU arm64 state: the `KVM_ARM_VCPU_INIT` target.
#[derive(Debug)]
pub(crate) struct VcpuArch {
    target: kvm_vcpu_init,
}

fn set_attr(
    fd: &DeviceFd,
    op: &'static str,
    group: u32,
    attr: u64,
    addr: u64,
) -> Result<(), HvError> {
    let a = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr,
    };
    fd.set_device_attr(&a).map_err(call(op))
}

/// Create the in-kernel GIC: a GICv3 if KVM has one, else a GICv2, placed where the device
/// tree will say. The emulated arm64 host has only GICv3 (its KVM cannot emulate a GICv2).
fn create_gic(vm: &VmFd) -> Result<(GicVersion, DeviceFd), HvError> {
    let mut v3_errno = 0;
    for gic in [GicVersion::V3, GicVersion::V2] {
        let mut dev = kvm_create_device {
            type_: vgic_device_type(gic),
            fd: 0,
            flags: 0,
        };
        match vm.create_device(&mut dev) {
            Ok(fd) => {
                for (attr, gpa) in vgic_addresses(gic) {
                    let value = gpa;
                    set_attr(
                        &fd,
                        "KVM_SET_DEVICE_ATTR (vGIC address)",
                        VGIC_GRP_ADDR,
                        attr,
                        std::ptr::addr_of!(value) as u64,
                    )?;
                }
                return Ok((gic, fd));
            }
            Err(e) if gic == GicVersion::V3 => v3_errno = e.errno(),
            Err(e) => {
                crate::log::debug(format_args!(
                    "vgic-v3: errno {v3_errno}, vgic-v2: errno {}",
                    e.errno()
                ));
            }
        }
    }
    // One message naming what is missing; the errno is the GICv3 one (usually ENODEV).
    Err(HvError::Call {
        op: "KVM_CREATE_DEVICE: this host's KVM has neither an in-kernel GICv3 nor a GICv2; creating the vgic-v3",
        errno: v3_errno,
    })
}

/// VM-wide setup before memory and vCPUs: the vGIC and the preferred vCPU target.
pub(crate) fn create_vm_arch(_kvm: &Kvm, vm: &VmFd, vcpus: u32) -> Result<VmArch, HvError> {
    let (gic, gic_fd) = create_gic(vm)?;
    if vcpus > gic.max_vcpus() {
        return Err(HvError::Invalid {
            what: match gic {
                GicVersion::V2 => "vCPU count (the host's GICv2 serves at most 8)",
                GicVersion::V3 => "vCPU count (more redistributors than fit below the UART)",
            },
            value: vcpus.into(),
        });
    }
    let mut target = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut target)
        .map_err(call("KVM_ARM_PREFERRED_TARGET"))?;
    Ok(VmArch {
        gic,
        gic_fd: Mutex::new(gic_fd),
        target,
    })
}

impl VmArch {
    /// The GIC the guest gets.
    pub(crate) fn gic(&self) -> GicVersion {
        self.gic
    }

    /// After every vCPU exists: the number of interrupts, then `CTRL_INIT`.
    pub(crate) fn complete(&self) -> Result<(), HvError> {
        let fd = self.gic_fd.lock().unwrap_or_else(|p| p.into_inner());
        let nr = GIC_NR_IRQS;
        set_attr(
            &fd,
            "KVM_SET_DEVICE_ATTR (vGIC number of IRQs)",
            VGIC_GRP_NR_IRQS,
            0,
            std::ptr::addr_of!(nr) as u64,
        )?;
        set_attr(
            &fd,
            "KVM_SET_DEVICE_ATTR (vGIC CTRL_INIT)",
            VGIC_GRP_CTRL,
            VGIC_CTRL_INIT,
            0,
        )
    }
}

/// The `KVM_IRQ_LINE` number of device interrupt `spi`.
pub(crate) fn irq_line_number(spi: u32) -> Result<u32, HvError> {
    spi_irq_line(spi).ok_or(HvError::Invalid {
        what: "SPI (the vGIC has 96)",
        value: spi.into(),
    })
}

fn init(fd: &VcpuFd, target: &kvm_vcpu_init, parked: bool) -> Result<(), HvError> {
    let mut kvi = *target;
    kvi.features[0] |= vcpu_features(parked);
    fd.vcpu_init(&kvi).map_err(call("KVM_ARM_VCPU_INIT"))
}

/// Initialise a new vCPU: vCPU 0 powered on, the others off until the guest's PSCI `CPU_ON`.
pub(crate) fn setup_vcpu(
    vm: &VmArch,
    fd: &VcpuFd,
    id: VcpuId,
    _vcpus: u32,
) -> Result<VcpuArch, HvError> {
    init(fd, &vm.target, id != 0)?;
    Ok(VcpuArch { target: vm.target })
}

/// Put the vCPU at `entry` (`KVM_ARM_VCPU_INIT` again resets it to match).
pub(crate) fn set_boot_entry(
    arch: &VcpuArch,
    fd: &VcpuFd,
    entry: &BootEntry,
) -> Result<(), HvError> {
    match entry {
        BootEntry::Parked => init(fd, &arch.target, true),
        BootEntry::Arm64 { .. } => {
            init(fd, &arch.target, false)?;
            for (id, value) in boot_registers(entry).into_iter().flatten() {
                fd.set_one_reg(id, &value.to_le_bytes())
                    .map_err(call("KVM_SET_ONE_REG"))?;
            }
            Ok(())
        }
        _ => Err(HvError::Unsupported {
            backend: BACKEND,
            what: "an x86 boot entry",
        }),
    }
}

/// Where the vCPU stopped, for fault messages.
pub(crate) fn fault_detail(fd: &VcpuFd, _ram: &keel_core::memory::GuestRam) -> String {
    let mut pc = [0u8; 8];
    match fd.get_one_reg(super::REG_PC, &mut pc) {
        Ok(_) => format!(" at pc {:#x}", u64::from_le_bytes(pc)),
        Err(_) => String::new(),
    }
}
