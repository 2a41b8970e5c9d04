//! arm64 on KVM: the values Keel hands to KVM (vCPU features, core-register ids and boot
//! values, the vGIC's attributes, `KVM_IRQ_LINE` numbers) and the guest platform (device tree,
//! `Image` placement) built from a [`VmSpec`].
//!
//! This module is portable logic compiled and unit-tested on every host; only [`kvm`] (built
//! on aarch64) makes the ioctls. The kernel `Image` loader and the device tree are keel-core's
//! ([`keel_core::arch::aarch64::image`], [`keel_core::arch::aarch64::fdt`]), the same code
//! the seL4 backend uses.
//!
//! Interrupts: devices raise level-triggered SPIs with `KVM_IRQ_LINE`
//! (`irq = KVM_ARM_IRQ_TYPE_SPI << 24 | INTID`), for the reason given on x86: virtio-mmio
//! and the 8250 are level-style devices (the line stays up while `InterruptStatus`/`IIR` has
//! something to say), and the vGIC models level SPIs exactly when told the level. An irqfd
//! only injects an edge (up then down), which the vGIC drops for a level-sensitive SPI that
//! is no longer held up before the guest acknowledges it, unless a resample fd and a thread
//! re-check the device at every EOI.

#[cfg(target_arch = "aarch64")]
pub(crate) mod kvm;

use keel_core::BootEntry;
use keel_core::arch::aarch64::layout::{
    GIC_DIST_BASE, GICV2_CPU_BASE, GICV3_REDIST_BASE, GicVersion, spi_intid,
};

// --- vCPU features (KVM_ARM_VCPU_INIT) ---------------------------------------------------

/// `KVM_ARM_VCPU_POWER_OFF`: the vCPU starts powered off, until a PSCI `CPU_ON`.
pub const FEATURE_POWER_OFF: u32 = 0;
/// `KVM_ARM_VCPU_PSCI_0_2`: KVM implements PSCI 0.2+ in the kernel (CPU_ON, SYSTEM_OFF, …).
pub const FEATURE_PSCI_0_2: u32 = 2;

/// The `features[0]` word of `KVM_ARM_VCPU_INIT`: in-kernel PSCI 0.2 for every vCPU, and
/// powered off for a vCPU the guest starts itself (PSCI `CPU_ON`, handled by KVM).
pub const fn vcpu_features(parked: bool) -> u32 {
    let mut f = 1 << FEATURE_PSCI_0_2;
    if parked {
        f |= 1 << FEATURE_POWER_OFF;
    }
    f
}

// --- core registers (KVM_SET_ONE_REG) ----------------------------------------------------

/// `KVM_REG_ARM64`.
const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`.
const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_ARM_CORE` (coprocessor field 0x10).
const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;

/// The `KVM_{GET,SET}_ONE_REG` id of the 64-bit core register at byte `offset` of
/// `struct kvm_regs` (KVM counts core registers in 32-bit words).
pub const fn core_reg_id(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset / 4)
}

/// `kvm_regs.regs.regs[0]` (x0).
pub const REG_X0: u64 = core_reg_id(0);
/// `kvm_regs.regs.pc` (after 31 general registers and sp).
pub const REG_PC: u64 = core_reg_id(32 * 8);
/// `kvm_regs.regs.pstate`.
pub const REG_PSTATE: u64 = core_reg_id(33 * 8);

/// `PSTATE` at kernel entry: EL1 with SP_EL1 (`EL1h`, mode 0b0101) and D, A, I, F masked,
/// as the arm64 Linux boot protocol requires.
pub const PSTATE_EL1H_DAIF_MASKED: u64 = 0x5 | 0xf << 6;

/// The core registers `(id, value)` that start a vCPU at `entry`: x0 = device tree,
/// PC = kernel entry, PSTATE = EL1h with DAIF masked. `None` for a parked vCPU (KVM keeps
/// it powered off until `CPU_ON` sets its PC and x0 itself) or a non-arm64 entry.
pub fn boot_registers(entry: &BootEntry) -> Option<[(u64, u64); 3]> {
    match *entry {
        BootEntry::Arm64 { pc, x0 } => Some([
            (REG_PSTATE, PSTATE_EL1H_DAIF_MASKED),
            (REG_X0, x0),
            (REG_PC, pc),
        ]),
        _ => None,
    }
}

// --- the in-kernel vGIC (KVM_CREATE_DEVICE) ------------------------------------------------

/// `KVM_DEV_TYPE_ARM_VGIC_V2`.
pub const DEV_TYPE_VGIC_V2: u32 = 5;
/// `KVM_DEV_TYPE_ARM_VGIC_V3`.
pub const DEV_TYPE_VGIC_V3: u32 = 7;
/// `KVM_DEV_ARM_VGIC_GRP_ADDR`.
pub const VGIC_GRP_ADDR: u32 = 0;
/// `KVM_DEV_ARM_VGIC_GRP_NR_IRQS`.
pub const VGIC_GRP_NR_IRQS: u32 = 3;
/// `KVM_DEV_ARM_VGIC_GRP_CTRL`.
pub const VGIC_GRP_CTRL: u32 = 4;
/// `KVM_DEV_ARM_VGIC_CTRL_INIT`.
pub const VGIC_CTRL_INIT: u64 = 0;
const VGIC_V2_ADDR_TYPE_DIST: u64 = 0;
const VGIC_V2_ADDR_TYPE_CPU: u64 = 1;
const VGIC_V3_ADDR_TYPE_DIST: u64 = 2;
const VGIC_V3_ADDR_TYPE_REDIST: u64 = 3;

/// Interrupts the vGIC implements: 32 private (SGIs, PPIs) and 96 SPIs, enough for the UART
/// (SPI 1) and all [`VIRTIO_MMIO_SLOTS`] virtio-mmio devices (SPIs 16..48). A multiple of 32.
pub const GIC_NR_IRQS: u32 = 128;

/// The `KVM_DEV_TYPE_*` of a GIC version.
pub const fn vgic_device_type(gic: GicVersion) -> u32 {
    match gic {
        GicVersion::V2 => DEV_TYPE_VGIC_V2,
        GicVersion::V3 => DEV_TYPE_VGIC_V3,
    }
}

/// The `KVM_DEV_ARM_VGIC_GRP_ADDR` attributes `(attr, guest-physical address)` that place
/// the GIC where the device tree says: the distributor, then the CPU interface (v2) or the
/// base of the redistributor region (v3, KVM lays out one 128 KiB frame pair per vCPU).
pub const fn vgic_addresses(gic: GicVersion) -> [(u64, u64); 2] {
    match gic {
        GicVersion::V2 => [
            (VGIC_V2_ADDR_TYPE_DIST, GIC_DIST_BASE),
            (VGIC_V2_ADDR_TYPE_CPU, GICV2_CPU_BASE),
        ],
        GicVersion::V3 => [
            (VGIC_V3_ADDR_TYPE_DIST, GIC_DIST_BASE),
            (VGIC_V3_ADDR_TYPE_REDIST, GICV3_REDIST_BASE),
        ],
    }
}

// --- interrupt lines (KVM_IRQ_LINE) --------------------------------------------------------

/// `KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT`.
const IRQ_LINE_TYPE_SPI: u32 = 1 << 24;

/// The `KVM_IRQ_LINE` number of SPI `spi` (`irq_type` SPI, INTID `32 + spi`), or `None`
/// beyond the [`GIC_NR_IRQS`] the vGIC has.
pub const fn spi_irq_line(spi: u32) -> Option<u32> {
    if spi >= GIC_NR_IRQS - 32 {
        return None;
    }
    Some(IRQ_LINE_TYPE_SPI | spi_intid(spi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_vcpu_has_psci_and_secondaries_start_powered_off() {
        assert_eq!(vcpu_features(false), 0b100);
        assert_eq!(vcpu_features(true), 0b101);
    }

    #[test]
    fn core_register_ids_match_the_kvm_abi() {
        // Values of KVM_REG_ARM_CORE_REG(regs.regs[0]), (regs.pc), (regs.pstate) on arm64.
        assert_eq!(REG_X0, 0x6030_0000_0010_0000);
        assert_eq!(REG_PC, 0x6030_0000_0010_0040);
        assert_eq!(REG_PSTATE, 0x6030_0000_0010_0042);
    }

    #[test]
    fn entry_sets_x0_pc_and_el1h_with_daif_masked() {
        let regs = boot_registers(&BootEntry::Arm64 {
            pc: 0x4020_0000,
            x0: 0x4800_0000,
        })
        .unwrap();

        assert!(regs.contains(&(REG_PSTATE, 0x3c5)));
        assert!(regs.contains(&(REG_X0, 0x4800_0000)));
        assert!(regs.contains(&(REG_PC, 0x4020_0000)));
    }

    #[test]
    fn parked_and_x86_entries_set_no_registers() {
        assert_eq!(boot_registers(&BootEntry::Parked), None);
        assert_eq!(
            boot_registers(&BootEntry::X86Pvh {
                eip: 1,
                ebx: 2,
                gdt_gpa: 3
            }),
            None
        );
    }

    #[test]
    fn spi_line_encodes_type_spi_and_the_intid() {
        assert_eq!(spi_irq_line(1), Some(0x0100_0021));
        assert_eq!(spi_irq_line(16), Some(0x0100_0030));
        assert_eq!(spi_irq_line(95), Some(0x0100_007f));
        assert_eq!(spi_irq_line(96), None);
    }
}
