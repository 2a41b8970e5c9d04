//! The arm64 guest platform: where RAM and every device sit in guest-physical space, and
//! which interrupt each device raises.
//!
//! The map follows QEMU's `virt` machine so that a guest sees the same platform under seL4
//! (on QEMU `virt` or real boards) and under KVM, and so that QEMU can serve as a reference:
//!
//! | what | base | size | interrupt |
//! |---|---|---|---|
//! | GIC distributor (v2 and v3) | `0x0800_0000` | 64 KiB | — |
//! | GICv2 CPU interface | `0x0801_0000` | 64 KiB | — |
//! | GICv3 redistributors | `0x080a_0000` | 128 KiB per vCPU | — |
//! | 8250 UART (ns16550a) | `0x0900_0000` | 4 KiB | SPI 1 |
//! | virtio-mmio device *i* | `0x0a00_0000 + i * 0x200` | `0x200` | SPI 16 + *i* |
//! | RAM | `0x4000_0000` | as configured | — |
//!
//! Interrupt numbers: GIC *SPI n* is interrupt ID (INTID) `32 + n`; *PPI n* is INTID `16 + n`.
//! Device trees name SPIs and PPIs by their index (`<0 n flags>` / `<1 n flags>`), the GIC
//! registers by INTID. [`Vm::irq_line`](crate::hv::Vm::irq_line) takes the SPI number.

use alloc::string::String;
use alloc::vec::Vec;

/// Guest-physical base of RAM.
pub const RAM_BASE: u64 = 0x4000_0000;

/// GIC distributor base (GICv2 and GICv3).
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// GIC distributor size.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// GICv2 CPU interface base.
pub const GICV2_CPU_BASE: u64 = 0x0801_0000;
/// GICv2 CPU interface size.
pub const GICV2_CPU_SIZE: u64 = 0x1_0000;
/// GICv3 redistributor region base.
pub const GICV3_REDIST_BASE: u64 = 0x080a_0000;
/// Size of one vCPU's redistributor (`RD_base` and `SGI_base` frames, 64 KiB each).
pub const GICV3_REDIST_SIZE: u64 = 0x2_0000;
/// Room for redistributors, up to the UART.
pub const GICV3_REDIST_REGION_SIZE: u64 = UART_BASE - GICV3_REDIST_BASE;

/// Most vCPUs a GICv2 can address.
pub const GICV2_MAX_VCPUS: u32 = 8;
/// Most vCPUs whose redistributors fit below the UART.
pub const GICV3_MAX_VCPUS: u32 = (GICV3_REDIST_REGION_SIZE / GICV3_REDIST_SIZE) as u32;

/// 8250 UART base.
pub const UART_BASE: u64 = 0x0900_0000;
/// 8250 UART size (one page, so that a stage-2 mapping never covers it).
pub const UART_SIZE: u64 = 0x1000;
/// 8250 UART interrupt (SPI number).
pub const UART_SPI: u32 = 1;
/// Input clock the UART's device-tree node declares (the classic 1.8432 MHz).
pub const UART_CLOCK_HZ: u32 = 1_843_200;

/// First virtio-mmio device.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
/// Size of (and distance between) virtio-mmio devices.
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
/// SPI of virtio-mmio device 0; device *i* uses `VIRTIO_MMIO_SPI_BASE + i`.
pub const VIRTIO_MMIO_SPI_BASE: u32 = 16;
/// Number of virtio-mmio slots.
pub const VIRTIO_MMIO_SLOTS: u32 = 32;

/// Highest SPI number a GIC can have (INTID 1019).
pub const MAX_SPI: u32 = 987;

/// Architected timer PPIs (`arm,armv8-timer` order: secure, non-secure, virtual, hypervisor).
pub const TIMER_PPI_SECURE: u32 = 13;
/// Non-secure EL1 physical timer PPI.
pub const TIMER_PPI_PHYS: u32 = 14;
/// Virtual timer PPI (INTID 27): the one a guest uses, and seL4's `VPPIEvent`.
pub const TIMER_PPI_VIRT: u32 = 11;
/// EL2 physical timer PPI.
pub const TIMER_PPI_HYP: u32 = 10;

/// The INTID of SPI `spi`.
pub const fn spi_intid(spi: u32) -> u32 {
    32 + spi
}

/// The INTID of PPI `ppi`.
pub const fn ppi_intid(ppi: u32) -> u32 {
    16 + ppi
}

/// The affinity fields of vCPU `vcpu`'s `MPIDR_EL1`, as KVM assigns them by default: 16
/// vCPUs per Aff0 cluster (the reach of a GICv3 SGI target list), then Aff1, then Aff2.
/// The seL4 backend writes the same value into `VMPIDR_EL2`; the device tree's `cpu` nodes
/// and PSCI `CPU_ON` use it.
pub const fn mpidr(vcpu: u32) -> u64 {
    let v = vcpu as u64;
    (v & 0xf) | ((v >> 4) & 0xff) << 8 | ((v >> 12) & 0xff) << 16
}

/// The vCPU whose affinity is `mpidr` (bits other than Aff0..Aff2 must be zero), if the
/// value is one [`mpidr`] produces.
pub const fn vcpu_of_mpidr(mpidr_value: u64) -> Option<u32> {
    if mpidr_value & !0x00ff_ff0f != 0 {
        return None;
    }
    let aff0 = mpidr_value & 0xff;
    let aff1 = (mpidr_value >> 8) & 0xff;
    let aff2 = (mpidr_value >> 16) & 0xff;
    Some((aff0 | aff1 << 4 | aff2 << 12) as u32)
}

/// Interrupt controller generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2: memory-mapped CPU interface, at most 8 vCPUs.
    V2,
    /// GICv3: redistributors and the system-register CPU interface.
    V3,
}

impl GicVersion {
    /// Most vCPUs this layout supports.
    pub const fn max_vcpus(self) -> u32 {
        match self {
            GicVersion::V2 => GICV2_MAX_VCPUS,
            GicVersion::V3 => GICV3_MAX_VCPUS,
        }
    }
}

/// How an interrupt line signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Level-sensitive, active high: pending while the device holds the line up.
    Level,
    /// Rising edge: each edge makes the interrupt pending once.
    Edge,
}

/// A memory-mapped device and its interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// SPI number (INTID `32 + spi`).
    pub spi: u32,
    /// Trigger the device tree declares.
    pub trigger: Trigger,
}

impl MmioDevice {
    /// virtio-mmio slot `index` of the standard layout (level-triggered).
    pub const fn virtio_slot(index: u32) -> MmioDevice {
        MmioDevice {
            base: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            spi: VIRTIO_MMIO_SPI_BASE + index,
            trigger: Trigger::Level,
        }
    }

    /// The standard UART.
    pub const fn uart() -> MmioDevice {
        MmioDevice {
            base: UART_BASE,
            size: UART_SIZE,
            spi: UART_SPI,
            trigger: Trigger::Level,
        }
    }
}

/// The instruction a guest uses to call PSCI (device tree `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciConduit {
    /// `hvc #0`.
    Hvc,
    /// `smc #0`.
    Smc,
}

/// Everything the guest's device tree describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arm64Platform {
    /// RAM regions `(guest-physical base, size)`.
    pub memory: Vec<(u64, u64)>,
    /// Number of vCPUs (vCPU *i* has affinity [`mpidr`]`(i)`).
    pub vcpus: u32,
    /// Interrupt controller.
    pub gic: GicVersion,
    /// The 8250 UART, if the guest has one.
    pub uart: Option<MmioDevice>,
    /// virtio-mmio devices, in probe order.
    pub virtio: Vec<MmioDevice>,
    /// Kernel command line (`/chosen/bootargs`).
    pub cmdline: String,
    /// Initial ramdisk `[start, end)` in guest-physical memory.
    pub initrd: Option<(u64, u64)>,
    /// PSCI calling instruction.
    pub psci: PsciConduit,
    /// Physical devices passed through to the guest, each a node of its own.
    pub passthrough: Vec<PassthroughNode>,
}

/// The device-tree node of a device passed through to the guest (a board's device at its
/// physical address, with its physical interrupts; level-triggered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughNode {
    /// Node name (`<name>@<first reg base>`).
    pub name: String,
    /// `compatible`.
    pub compatible: String,
    /// `reg`: `(base, size)` ranges.
    pub reg: Vec<(u64, u64)>,
    /// SPI numbers (INTID `32 + spi`).
    pub spis: Vec<u32>,
}

impl Arm64Platform {
    /// The standard platform: `ram_size` bytes of RAM at [`RAM_BASE`], `vcpus` vCPUs, the
    /// UART, no virtio devices, PSCI over `hvc`.
    pub fn new(ram_size: u64, vcpus: u32, gic: GicVersion) -> Arm64Platform {
        Arm64Platform {
            memory: alloc::vec![(RAM_BASE, ram_size)],
            vcpus,
            gic,
            uart: Some(MmioDevice::uart()),
            virtio: Vec::new(),
            cmdline: String::new(),
            initrd: None,
            psci: PsciConduit::Hvc,
            passthrough: Vec::new(),
        }
    }

    /// Add a virtio-mmio device in the next free standard slot and return it, or `None` when
    /// all [`VIRTIO_MMIO_SLOTS`] are taken.
    pub fn add_virtio(&mut self) -> Option<MmioDevice> {
        let index = u32::try_from(self.virtio.len()).ok()?;
        if index >= VIRTIO_MMIO_SLOTS {
            return None;
        }
        let dev = MmioDevice::virtio_slot(index);
        self.virtio.push(dev);
        Some(dev)
    }

    /// The GIC's register frames `(base, size)`: distributor, then the CPU interface (v2) or
    /// the redistributors of all vCPUs (v3).
    pub fn gic_regions(&self) -> [(u64, u64); 2] {
        match self.gic {
            GicVersion::V2 => [
                (GIC_DIST_BASE, GIC_DIST_SIZE),
                (GICV2_CPU_BASE, GICV2_CPU_SIZE),
            ],
            GicVersion::V3 => [
                (GIC_DIST_BASE, GIC_DIST_SIZE),
                (GICV3_REDIST_BASE, u64::from(self.vcpus) * GICV3_REDIST_SIZE),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spi_n_is_intid_32_plus_n() {
        assert_eq!(spi_intid(VIRTIO_MMIO_SPI_BASE), 48);
        assert_eq!(ppi_intid(TIMER_PPI_VIRT), 27);
    }

    #[test]
    fn mpidr_packs_16_vcpus_per_cluster() {
        assert_eq!(mpidr(0), 0);
        assert_eq!(mpidr(15), 0xf);
        assert_eq!(mpidr(16), 0x100);
        assert_eq!(mpidr(17), 0x101);
        assert_eq!(mpidr(4096), 0x1_0000);
    }

    #[test]
    fn mpidr_round_trips_through_vcpu_of_mpidr() {
        for v in [0, 1, 15, 16, 255, 4095, 4096, 70000] {
            assert_eq!(vcpu_of_mpidr(mpidr(v)), Some(v));
        }
    }

    #[test]
    fn mpidr_with_aff0_above_15_names_no_vcpu() {
        assert_eq!(vcpu_of_mpidr(0x10), None);
        assert_eq!(vcpu_of_mpidr(1 << 32), None);
    }

    #[test]
    fn redistributors_end_before_the_uart() {
        let p = Arm64Platform::new(1 << 30, GICV3_MAX_VCPUS, GicVersion::V3);
        let [_, (base, size)] = p.gic_regions();
        assert!(base + size <= UART_BASE);
        assert_eq!(GICV3_MAX_VCPUS, 123);
    }

    #[test]
    fn virtio_slots_run_out_after_32() {
        let mut p = Arm64Platform::new(1 << 30, 1, GicVersion::V2);
        for i in 0..VIRTIO_MMIO_SLOTS {
            assert_eq!(p.add_virtio().map(|d| d.spi), Some(16 + i));
        }
        assert_eq!(p.add_virtio(), None);
        assert_eq!(p.virtio[31].base, 0x0a00_3e00);
    }
}
