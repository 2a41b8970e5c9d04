//! The flattened device tree an arm64 guest boots with, generated from [`Arm64Platform`].
//!
//! The tree carries what Linux needs to find its way on the platform of
//! [`layout`](super::layout): memory, CPUs (enable-method `psci`, `reg` = MPIDR affinity), the
//! GIC, the architected timer's PPIs, PSCI, the 8250 UART, the virtio-mmio devices, and
//! `/chosen` (command line, console, initrd).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use vm_fdt::FdtWriter;

use super::layout::{
    Arm64Platform, GicVersion, MAX_SPI, MmioDevice, PsciConduit, TIMER_PPI_HYP, TIMER_PPI_PHYS,
    TIMER_PPI_SECURE, TIMER_PPI_VIRT, Trigger, UART_CLOCK_HZ, mpidr,
};

/// Largest device tree the arm64 Linux boot protocol accepts.
pub const FDT_MAX_SIZE: usize = 2 << 20;

/// Phandle of the GIC node (the root's `interrupt-parent`).
const GIC_PHANDLE: u32 = 1;

// Interrupt specifier cells for the GIC bindings (`#interrupt-cells = <3>`).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

/// What is wrong with a platform description, or with the tree built from it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FdtError {
    /// The platform has no vCPU.
    #[error("the platform has no vCPU")]
    NoVcpus,
    /// More vCPUs than the interrupt controller layout serves.
    #[error("{vcpus} vCPUs is more than the {max} a {gic:?} layout supports")]
    TooManyVcpus {
        /// vCPUs asked for.
        vcpus: u32,
        /// The limit.
        max: u32,
        /// The GIC version.
        gic: GicVersion,
    },
    /// The platform has no RAM.
    #[error("the platform has no RAM region")]
    NoMemory,
    /// A region is empty or wraps around the address space.
    #[error("{what} at {base:#x} with size {size:#x} is empty or wraps around")]
    BadRegion {
        /// What the region is.
        what: &'static str,
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// Two regions overlap.
    #[error("{a} at {a_base:#x} overlaps {b} at {b_base:#x}")]
    Overlap {
        /// First region.
        a: &'static str,
        /// Its base.
        a_base: u64,
        /// Second region.
        b: &'static str,
        /// Its base.
        b_base: u64,
    },
    /// An SPI number above the GIC's range.
    #[error("device at {base:#x}: SPI {spi} is above the highest SPI {MAX_SPI}")]
    SpiOutOfRange {
        /// The device.
        base: u64,
        /// Its SPI.
        spi: u32,
    },
    /// Two devices share an SPI.
    #[error("devices at {a:#x} and {b:#x} share SPI {spi}")]
    SharedSpi {
        /// First device.
        a: u64,
        /// Second device.
        b: u64,
        /// The SPI.
        spi: u32,
    },
    /// The initrd ends before it starts.
    #[error("initrd end {end:#x} is below its start {start:#x}")]
    BadInitrd {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte at offset {offset}")]
    NulInCmdline {
        /// Where.
        offset: usize,
    },
    /// The tree is larger than the boot protocol allows.
    #[error("device tree of {size} bytes exceeds the {FDT_MAX_SIZE}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The device-tree writer refused a node or property.
    #[error("device tree writer: {0}")]
    Writer(vm_fdt::Error),
}

impl From<vm_fdt::Error> for FdtError {
    fn from(e: vm_fdt::Error) -> FdtError {
        FdtError::Writer(e)
    }
}

/// Check `platform` and write its device tree blob.
pub fn generate_fdt(platform: &Arm64Platform) -> Result<Vec<u8>, FdtError> {
    validate(platform)?;
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "keel,arm64-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    write_chosen(&mut fdt, platform)?;
    if let Some(uart) = &platform.uart {
        let aliases = fdt.begin_node("aliases")?;
        fdt.property_string("serial0", &uart_path(uart))?;
        fdt.end_node(aliases)?;
    }
    for &(base, size) in &platform.memory {
        let node = fdt.begin_node(&format!("memory@{base:x}"))?;
        fdt.property_string("device_type", "memory")?;
        fdt.property_array_u64("reg", &[base, size])?;
        fdt.end_node(node)?;
    }
    write_cpus(&mut fdt, platform)?;
    write_psci(&mut fdt, platform)?;
    write_gic(&mut fdt, platform)?;
    write_timer(&mut fdt, platform)?;
    if let Some(uart) = &platform.uart {
        let node = fdt.begin_node(&uart_path(uart)[1..])?;
        fdt.property_string("compatible", "ns16550a")?;
        fdt.property_array_u64("reg", &[uart.base, uart.size])?;
        fdt.property_array_u32("interrupts", &spi_cells(uart))?;
        fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
        fdt.property_u32("reg-shift", 0)?;
        fdt.property_u32("reg-io-width", 1)?;
        fdt.end_node(node)?;
    }
    for dev in &platform.virtio {
        let node = fdt.begin_node(&format!("virtio_mmio@{:x}", dev.base))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &[dev.base, dev.size])?;
        fdt.property_array_u32("interrupts", &spi_cells(dev))?;
        // Guest memory is cacheable on both sides: no cache maintenance around DMA.
        fdt.property_null("dma-coherent")?;
        fdt.end_node(node)?;
    }
    for dev in &platform.passthrough {
        let base = dev.reg.first().map_or(0, |r| r.0);
        let node = fdt.begin_node(&format!("{}@{base:x}", dev.name))?;
        fdt.property_string("compatible", &dev.compatible)?;
        let reg: Vec<u64> = dev.reg.iter().flat_map(|&(b, s)| [b, s]).collect();
        fdt.property_array_u64("reg", &reg)?;
        if !dev.spis.is_empty() {
            let cells: Vec<u32> = dev
                .spis
                .iter()
                .flat_map(|&spi| [GIC_SPI, spi, IRQ_TYPE_LEVEL_HIGH])
                .collect();
            fdt.property_array_u32("interrupts", &cells)?;
        }
        fdt.end_node(node)?;
    }
    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() > FDT_MAX_SIZE {
        return Err(FdtError::TooLarge { size: blob.len() });
    }
    Ok(blob)
}

fn uart_path(uart: &MmioDevice) -> String {
    format!("/serial@{:x}", uart.base)
}

fn spi_cells(dev: &MmioDevice) -> [u32; 3] {
    let flags = match dev.trigger {
        Trigger::Level => IRQ_TYPE_LEVEL_HIGH,
        Trigger::Edge => IRQ_TYPE_EDGE_RISING,
    };
    [GIC_SPI, dev.spi, flags]
}

fn write_chosen(fdt: &mut FdtWriter, p: &Arm64Platform) -> Result<(), FdtError> {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &p.cmdline)?;
    if let Some(uart) = &p.uart {
        fdt.property_string("stdout-path", &uart_path(uart))?;
    }
    if let Some((start, end)) = p.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    fdt.end_node(node)?;
    Ok(())
}

fn write_cpus(fdt: &mut FdtWriter, p: &Arm64Platform) -> Result<(), FdtError> {
    let cpus = fdt.begin_node("cpus")?;
    // Affinity of up to 4096 * 256 vCPUs fits Aff0..Aff2: one cell.
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for vcpu in 0..p.vcpus {
        let aff = mpidr(vcpu) as u32;
        let node = fdt.begin_node(&format!("cpu@{aff:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u32("reg", aff)?;
        fdt.end_node(node)?;
    }
    fdt.end_node(cpus)?;
    Ok(())
}

fn write_psci(fdt: &mut FdtWriter, p: &Arm64Platform) -> Result<(), FdtError> {
    let node = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        alloc::vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    let method = match p.psci {
        PsciConduit::Hvc => "hvc",
        PsciConduit::Smc => "smc",
    };
    fdt.property_string("method", method)?;
    fdt.end_node(node)?;
    Ok(())
}

fn write_gic(fdt: &mut FdtWriter, p: &Arm64Platform) -> Result<(), FdtError> {
    let [(dist, dist_size), (second, second_size)] = p.gic_regions();
    let node = fdt.begin_node(&format!("intc@{dist:x}"))?;
    match p.gic {
        GicVersion::V2 => fdt.property_string("compatible", "arm,cortex-a15-gic")?,
        GicVersion::V3 => {
            fdt.property_string("compatible", "arm,gic-v3")?;
            fdt.property_u32("#redistributor-regions", 1)?;
        }
    }
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_array_u64("reg", &[dist, dist_size, second, second_size])?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(node)?;
    Ok(())
}

fn write_timer(fdt: &mut FdtWriter, p: &Arm64Platform) -> Result<(), FdtError> {
    // GICv2 PPI specifiers carry a mask of the CPUs the PPI is wired to in bits [15:8].
    let cpu_mask = match p.gic {
        GicVersion::V2 => ((1u32 << p.vcpus.min(8)) - 1) << 8,
        GicVersion::V3 => 0,
    };
    let flags = IRQ_TYPE_LEVEL_HIGH | cpu_mask;
    let node = fdt.begin_node("timer")?;
    fdt.property_string_list(
        "compatible",
        alloc::vec!["arm,armv8-timer".into(), "arm,armv7-timer".into()],
    )?;
    let mut cells = Vec::with_capacity(12);
    for ppi in [
        TIMER_PPI_SECURE,
        TIMER_PPI_PHYS,
        TIMER_PPI_VIRT,
        TIMER_PPI_HYP,
    ] {
        cells.extend_from_slice(&[GIC_PPI, ppi, flags]);
    }
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.property_null("always-on")?;
    fdt.end_node(node)?;
    Ok(())
}

fn validate(p: &Arm64Platform) -> Result<(), FdtError> {
    if p.vcpus == 0 {
        return Err(FdtError::NoVcpus);
    }
    let max = p.gic.max_vcpus();
    if p.vcpus > max {
        return Err(FdtError::TooManyVcpus {
            vcpus: p.vcpus,
            max,
            gic: p.gic,
        });
    }
    if p.memory.is_empty() {
        return Err(FdtError::NoMemory);
    }
    let mut regions: Vec<(&'static str, u64, u64)> = Vec::new();
    regions.extend(p.memory.iter().map(|&(b, s)| ("RAM", b, s)));
    let [dist, second] = p.gic_regions();
    regions.push(("GIC distributor", dist.0, dist.1));
    regions.push(("GIC CPU interface/redistributors", second.0, second.1));
    regions.extend(p.uart.iter().map(|u| ("UART", u.base, u.size)));
    regions.extend(
        p.virtio
            .iter()
            .map(|d| ("virtio-mmio device", d.base, d.size)),
    );
    regions.extend(
        p.passthrough
            .iter()
            .flat_map(|d| d.reg.iter().map(|&(b, s)| ("passed-through device", b, s))),
    );
    for &(what, base, size) in &regions {
        if size == 0 || base.checked_add(size).is_none() {
            return Err(FdtError::BadRegion { what, base, size });
        }
    }
    for (i, &(a, a_base, a_size)) in regions.iter().enumerate() {
        for &(b, b_base, b_size) in &regions[i + 1..] {
            // Both ends were checked not to wrap above.
            if a_base < b_base + b_size && b_base < a_base + a_size {
                return Err(FdtError::Overlap {
                    a,
                    a_base,
                    b,
                    b_base,
                });
            }
        }
    }
    let devices: Vec<&MmioDevice> = p.uart.iter().chain(p.virtio.iter()).collect();
    for (i, a) in devices.iter().enumerate() {
        if a.spi > MAX_SPI {
            return Err(FdtError::SpiOutOfRange {
                base: a.base,
                spi: a.spi,
            });
        }
        if let Some(b) = devices[i + 1..].iter().find(|b| b.spi == a.spi) {
            return Err(FdtError::SharedSpi {
                a: a.base,
                b: b.base,
                spi: a.spi,
            });
        }
    }
    for d in &p.passthrough {
        let base = d.reg.first().map_or(0, |r| r.0);
        if let Some(&spi) = d.spis.iter().find(|&&s| s > MAX_SPI) {
            return Err(FdtError::SpiOutOfRange { base, spi });
        }
        for &spi in &d.spis {
            if let Some(other) = devices.iter().find(|o| o.spi == spi) {
                return Err(FdtError::SharedSpi {
                    a: other.base,
                    b: base,
                    spi,
                });
            }
        }
    }
    match p.initrd {
        Some((start, end)) if end < start => return Err(FdtError::BadInitrd { start, end }),
        _ => {}
    }
    if let Some(offset) = p.cmdline.bytes().position(|b| b == 0) {
        return Err(FdtError::NulInCmdline { offset });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::layout::*;
    use super::*;
    use fdt::Fdt;

    fn platform(gic: GicVersion, vcpus: u32) -> Arm64Platform {
        let mut p = Arm64Platform::new(512 << 20, vcpus, gic);
        p.add_virtio();
        p.add_virtio();
        p.cmdline = "console=ttyS0 earlycon".into();
        p.initrd = Some((0x4800_0000, 0x4810_0000));
        p
    }

    fn cells(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn u64s(bytes: &[u8]) -> Vec<u64> {
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn prop<'a>(fdt: &'a Fdt<'a>, node: &str, name: &str) -> &'a [u8] {
        fdt.find_node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .property(name)
            .unwrap_or_else(|| panic!("no property {node}:{name}"))
            .value
    }

    fn string(bytes: &[u8]) -> &str {
        core::str::from_utf8(bytes.strip_suffix(&[0]).unwrap()).unwrap()
    }

    #[test]
    fn root_has_two_cell_addresses_and_the_gic_as_interrupt_parent() {
        let blob = generate_fdt(&platform(GicVersion::V3, 1)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(cells(prop(&fdt, "/", "#address-cells")), [2]);
        assert_eq!(cells(prop(&fdt, "/", "#size-cells")), [2]);
        assert_eq!(cells(prop(&fdt, "/", "interrupt-parent")), [GIC_PHANDLE]);
        assert_eq!(cells(prop(&fdt, "/intc@8000000", "phandle")), [GIC_PHANDLE]);
    }

    #[test]
    fn memory_node_covers_ram() {
        let blob = generate_fdt(&platform(GicVersion::V3, 1)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(
            string(prop(&fdt, "/memory@40000000", "device_type")),
            "memory"
        );
        assert_eq!(
            u64s(prop(&fdt, "/memory@40000000", "reg")),
            [0x4000_0000, 512 << 20]
        );
    }

    #[test]
    fn chosen_carries_cmdline_console_and_initrd() {
        let blob = generate_fdt(&platform(GicVersion::V3, 1)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(
            string(prop(&fdt, "/chosen", "bootargs")),
            "console=ttyS0 earlycon"
        );
        assert_eq!(
            string(prop(&fdt, "/chosen", "stdout-path")),
            "/serial@9000000"
        );
        assert_eq!(
            u64s(prop(&fdt, "/chosen", "linux,initrd-start")),
            [0x4800_0000]
        );
        assert_eq!(
            u64s(prop(&fdt, "/chosen", "linux,initrd-end")),
            [0x4810_0000]
        );
        assert_eq!(fdt.chosen().bootargs(), Some("console=ttyS0 earlycon"));
    }

    #[test]
    fn chosen_has_no_initrd_properties_without_initrd() {
        let mut p = platform(GicVersion::V3, 1);
        p.initrd = None;
        let blob = generate_fdt(&p).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert!(
            fdt.find_node("/chosen")
                .unwrap()
                .property("linux,initrd-start")
                .is_none()
        );
    }

    #[test]
    fn cpus_use_psci_and_mpidr_affinity_as_reg() {
        let blob = generate_fdt(&platform(GicVersion::V3, 18)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(cells(prop(&fdt, "/cpus", "#address-cells")), [1]);
        assert_eq!(cells(prop(&fdt, "/cpus", "#size-cells")), [0]);
        assert_eq!(fdt.cpus().count(), 18);
        assert_eq!(cells(prop(&fdt, "/cpus/cpu@f", "reg")), [0xf]);
        assert_eq!(cells(prop(&fdt, "/cpus/cpu@101", "reg")), [0x101]);
        assert_eq!(string(prop(&fdt, "/cpus/cpu@101", "enable-method")), "psci");
        assert_eq!(string(prop(&fdt, "/cpus/cpu@0", "device_type")), "cpu");
    }

    #[test]
    fn psci_node_is_1_0_over_hvc() {
        let blob = generate_fdt(&platform(GicVersion::V2, 2)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        let psci = fdt.find_node("/psci").unwrap();
        let compat: Vec<&str> = psci.compatible().unwrap().all().collect();
        assert_eq!(compat, ["arm,psci-1.0", "arm,psci-0.2"]);
        assert_eq!(string(prop(&fdt, "/psci", "method")), "hvc");
    }

    #[test]
    fn psci_method_follows_the_conduit() {
        let mut p = platform(GicVersion::V2, 2);
        p.psci = PsciConduit::Smc;
        let blob = generate_fdt(&p).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(string(prop(&fdt, "/psci", "method")), "smc");
    }

    #[test]
    fn gicv2_node_has_distributor_and_cpu_interface() {
        let blob = generate_fdt(&platform(GicVersion::V2, 2)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(
            string(prop(&fdt, "/intc@8000000", "compatible")),
            "arm,cortex-a15-gic"
        );
        assert_eq!(
            u64s(prop(&fdt, "/intc@8000000", "reg")),
            [0x0800_0000, 0x1_0000, 0x0801_0000, 0x1_0000]
        );
        assert_eq!(cells(prop(&fdt, "/intc@8000000", "#interrupt-cells")), [3]);
        assert!(
            fdt.find_node("/intc@8000000")
                .unwrap()
                .property("interrupt-controller")
                .is_some()
        );
    }

    #[test]
    fn gicv3_node_has_one_redistributor_frame_per_vcpu() {
        let blob = generate_fdt(&platform(GicVersion::V3, 4)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(
            string(prop(&fdt, "/intc@8000000", "compatible")),
            "arm,gic-v3"
        );
        assert_eq!(
            u64s(prop(&fdt, "/intc@8000000", "reg")),
            [0x0800_0000, 0x1_0000, 0x080a_0000, 4 * 0x2_0000]
        );
    }

    #[test]
    fn timer_lists_four_level_ppis_with_gicv2_cpu_mask() {
        let blob = generate_fdt(&platform(GicVersion::V2, 2)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(
            cells(prop(&fdt, "/timer", "interrupts")),
            [1, 13, 0x304, 1, 14, 0x304, 1, 11, 0x304, 1, 10, 0x304]
        );
        let compat: Vec<&str> = fdt
            .find_node("/timer")
            .unwrap()
            .compatible()
            .unwrap()
            .all()
            .collect();
        assert_eq!(compat[0], "arm,armv8-timer");
    }

    #[test]
    fn timer_ppis_have_no_cpu_mask_on_gicv3() {
        let blob = generate_fdt(&platform(GicVersion::V3, 2)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(cells(prop(&fdt, "/timer", "interrupts"))[2], 4);
    }

    #[test]
    fn uart_is_an_8250_with_byte_registers() {
        let blob = generate_fdt(&platform(GicVersion::V3, 1)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let n = "/serial@9000000";

        assert_eq!(string(prop(&fdt, n, "compatible")), "ns16550a");
        assert_eq!(u64s(prop(&fdt, n, "reg")), [0x0900_0000, 0x1000]);
        assert_eq!(cells(prop(&fdt, n, "interrupts")), [0, 1, 4]);
        assert_eq!(cells(prop(&fdt, n, "reg-shift")), [0]);
        assert_eq!(cells(prop(&fdt, n, "reg-io-width")), [1]);
        assert_eq!(cells(prop(&fdt, n, "clock-frequency")), [1_843_200]);
        assert_eq!(string(prop(&fdt, "/aliases", "serial0")), n);
    }

    #[test]
    fn virtio_devices_sit_in_their_slots_with_spi_16_plus_i() {
        let blob = generate_fdt(&platform(GicVersion::V3, 1)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        let nodes: Vec<_> = fdt.find_all_nodes("/virtio_mmio").collect();
        assert_eq!(nodes.len(), 2);
        let n = "/virtio_mmio@a000200";
        assert_eq!(string(prop(&fdt, n, "compatible")), "virtio,mmio");
        assert_eq!(u64s(prop(&fdt, n, "reg")), [0x0a00_0200, 0x200]);
        assert_eq!(cells(prop(&fdt, n, "interrupts")), [0, 17, 4]);
        assert!(fdt.find_node(n).unwrap().property("dma-coherent").is_some());
    }

    #[test]
    fn edge_triggered_device_is_described_as_rising_edge() {
        let mut p = platform(GicVersion::V3, 1);
        p.virtio[0].trigger = Trigger::Edge;
        let blob = generate_fdt(&p).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(
            cells(prop(&fdt, "/virtio_mmio@a000000", "interrupts")),
            [0, 16, 1]
        );
    }

    #[test]
    fn too_many_vcpus_for_gicv2_is_refused() {
        assert_eq!(
            generate_fdt(&platform(GicVersion::V2, 9)),
            Err(FdtError::TooManyVcpus {
                vcpus: 9,
                max: 8,
                gic: GicVersion::V2
            })
        );
    }

    #[test]
    fn zero_vcpus_is_refused() {
        assert_eq!(
            generate_fdt(&platform(GicVersion::V3, 0)),
            Err(FdtError::NoVcpus)
        );
    }

    #[test]
    fn ram_overlapping_a_device_is_refused() {
        let mut p = platform(GicVersion::V3, 1);
        p.memory.push((0x0900_0000, 0x1000));

        assert!(matches!(
            generate_fdt(&p),
            Err(FdtError::Overlap { a: "RAM", .. })
        ));
    }

    #[test]
    fn wrapping_ram_region_is_refused() {
        let mut p = platform(GicVersion::V3, 1);
        p.memory = alloc::vec![(u64::MAX - 0xfff, 0x2000)];

        assert!(matches!(generate_fdt(&p), Err(FdtError::BadRegion { .. })));
    }

    #[test]
    fn shared_spi_is_refused() {
        let mut p = platform(GicVersion::V3, 1);
        p.virtio[1].spi = UART_SPI;

        assert_eq!(
            generate_fdt(&p),
            Err(FdtError::SharedSpi {
                a: UART_BASE,
                b: 0x0a00_0200,
                spi: 1
            })
        );
    }

    #[test]
    fn inverted_initrd_is_refused() {
        let mut p = platform(GicVersion::V3, 1);
        p.initrd = Some((0x5000_0000, 0x4000_0000));

        assert!(matches!(generate_fdt(&p), Err(FdtError::BadInitrd { .. })));
    }

    #[test]
    fn nul_in_cmdline_is_refused() {
        let mut p = platform(GicVersion::V3, 1);
        p.cmdline = "a\0b".into();

        assert_eq!(generate_fdt(&p), Err(FdtError::NulInCmdline { offset: 1 }));
    }

    fn passed_through_disk() -> PassthroughNode {
        PassthroughNode {
            name: "disk0".into(),
            compatible: "virtio,mmio".into(),
            reg: alloc::vec![(0x0a00_3e00, 0x200)],
            spis: alloc::vec![47],
        }
    }

    #[test]
    fn a_passed_through_device_gets_its_node_with_reg_and_level_interrupts() {
        let mut p = platform(GicVersion::V2, 1);
        p.passthrough.push(passed_through_disk());
        let blob = generate_fdt(&p).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(
            string(prop(&fdt, "/disk0@a003e00", "compatible")),
            "virtio,mmio"
        );
        assert_eq!(
            u64s(prop(&fdt, "/disk0@a003e00", "reg")),
            [0x0a00_3e00, 0x200]
        );
        assert_eq!(
            cells(prop(&fdt, "/disk0@a003e00", "interrupts")),
            [GIC_SPI, 47, IRQ_TYPE_LEVEL_HIGH]
        );
    }

    #[test]
    fn a_passed_through_device_on_an_emulated_devices_spi_is_refused() {
        let mut p = platform(GicVersion::V2, 1);
        let mut d = passed_through_disk();
        d.spis = alloc::vec![p.virtio[0].spi];
        p.passthrough.push(d);

        assert!(matches!(generate_fdt(&p), Err(FdtError::SharedSpi { .. })));
    }
}
