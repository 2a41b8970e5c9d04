//! The GICv2 distributor register map (Arm IHI 0048B, section 4.3).
//!
//! | offset | register | access |
//! |---|---|---|
//! | `0x000` | `GICD_CTLR` | word |
//! | `0x004` | `GICD_TYPER` | word, read-only |
//! | `0x008` | `GICD_IIDR` | word, read-only |
//! | `0x080` | `GICD_IGROUPRn` | word |
//! | `0x100` / `0x180` | `GICD_ISENABLERn` / `GICD_ICENABLERn` | word |
//! | `0x200` / `0x280` | `GICD_ISPENDRn` / `GICD_ICPENDRn` | word |
//! | `0x300` / `0x380` | `GICD_ISACTIVERn` / `GICD_ICACTIVERn` | word |
//! | `0x400` | `GICD_IPRIORITYRn` | byte or word |
//! | `0x800` | `GICD_ITARGETSRn` (0..7 read-only, banked) | byte or word |
//! | `0xc00` | `GICD_ICFGRn` (0 read-only) | word |
//! | `0xf00` | `GICD_SGIR` | word, write-only |
//! | `0xf10` / `0xf20` | `GICD_CPENDSGIRn` / `GICD_SPENDSGIRn` | byte or word |
//! | `0xfe8` | `ICPIDR2` (architecture version 2) | word, read-only |
//!
//! Register n of the 1-bit registers covers INTIDs 32n..32n+31; register 0 (SGIs and PPIs)
//! is banked per vCPU. Other offsets, other widths and unaligned accesses read as zero and
//! ignore writes.

use super::{NUM_SGIS, Vgic, VgicHost};
use crate::hv::VcpuId;

/// `GICD_IIDR`: implementer Arm (JEP106 0x43b), product 0, revision 0.
pub const GICD_IIDR: u32 = 0x0000_043b;
/// `ICPIDR2` value: architecture version 2 in bits \[7:4\].
pub const GICD_PIDR2_V2: u32 = 0x2 << 4;

impl Vgic {
    /// A read of `len` bytes at `offset` in the GICv2 distributor frame by `vcpu`.
    pub fn v2_dist_read(&self, vcpu: VcpuId, offset: u64, len: u8) -> u64 {
        if !matches!(len, 1 | 4) || offset % u64::from(len) != 0 {
            return 0;
        }
        let word = len == 4;
        if let Some(v) = self.common_read(vcpu, offset, len) {
            return v;
        }
        match offset {
            0x000 if word => u64::from(self.ctlr & 1),
            0x004 if word => {
                let cpus = self.num_vcpus().saturating_sub(1) & 7;
                u64::from(self.it_lines_number() | cpus << 5)
            }
            0x008 if word => u64::from(GICD_IIDR),
            0x800..=0x81f => {
                // Banked: the accessing vCPU's own bit for SGIs and PPIs.
                let own = 1u8.checked_shl(vcpu).unwrap_or(0);
                self.read_bytes(vcpu, (offset - 0x800) as u32, u32::from(len), |_| own)
            }
            0x820..=0xbfb => {
                self.read_bytes(vcpu, (offset - 0x800) as u32, u32::from(len), |i| i.targets)
            }
            0xf10..=0xf2f => {
                let first = (offset & 0xf) as usize;
                let cpu = self.cpus.get(vcpu as usize);
                (0..usize::from(len)).fold(0, |acc, i| {
                    let b = cpu
                        .and_then(|c| c.sgi_sources.get(first + i))
                        .copied()
                        .unwrap_or(0);
                    acc | u64::from(b) << (8 * i)
                })
            }
            0xfe8 if word => u64::from(GICD_PIDR2_V2),
            _ => 0,
        }
    }

    /// A write of the low `len` bytes of `value` at `offset` in the GICv2 distributor frame
    /// by `vcpu`.
    pub fn v2_dist_write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        len: u8,
        value: u64,
        host: &mut impl VgicHost,
    ) {
        if !matches!(len, 1 | 4) || offset % u64::from(len) != 0 {
            return;
        }
        let word = len == 4;
        if self.common_write(vcpu, offset, len, value, host) {
            return;
        }
        match offset {
            0x000 if word => {
                self.ctlr = value as u32 & 1;
                self.deliver_all(host);
            }
            // ITARGETSR0..7 are read-only.
            0x820..=0xbfb => {
                let n = self.num_vcpus().min(8);
                let mask = ((1u32 << n) - 1) as u8;
                let first = (offset - 0x800) as u32;
                self.write_bytes(vcpu, first, u32::from(len), value, |i, b| {
                    i.targets = b & mask;
                });
                for intid in first..first + u32::from(len) {
                    self.deliver(vcpu, intid, host);
                }
            }
            0xf00 if word => self.write_sgir(vcpu, value as u32, host),
            0xf10..=0xf1f => self.write_sgi_pending(vcpu, offset, len, value, false, host),
            0xf20..=0xf2f => self.write_sgi_pending(vcpu, offset, len, value, true, host),
            _ => {}
        }
    }

    /// `GICD_SGIR`: target list filter \[25:24\], CPU target list \[23:16\], SGI \[3:0\].
    fn write_sgir(&mut self, sender: VcpuId, value: u32, host: &mut impl VgicHost) {
        let sgi = value & 0xf;
        let list = (value >> 16) & 0xff;
        let n = self.num_vcpus();
        let own = 1u32.checked_shl(sender).unwrap_or(0);
        let targets: u32 = match (value >> 24) & 3 {
            0 => list,
            1 => ((1u32 << n) - 1) & !own,
            2 => own,
            _ => 0,
        };
        self.send_sgi(
            sender,
            sgi,
            (0..n).filter(|t| targets & (1 << t) != 0),
            host,
        );
    }

    /// `GICD_SPENDSGIRn` / `GICD_CPENDSGIRn`: one byte per SGI, one bit per source vCPU.
    fn write_sgi_pending(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        len: u8,
        value: u64,
        set: bool,
        host: &mut impl VgicHost,
    ) {
        let first = (offset & 0xf) as u32;
        for i in 0..u32::from(len) {
            let sgi = first + i;
            let bits = (value >> (8 * i)) as u8;
            if sgi >= NUM_SGIS || bits == 0 {
                continue;
            }
            let Some(cpu) = self.cpus.get_mut(vcpu as usize) else {
                return;
            };
            let (Some(src), Some(irq)) = (
                cpu.sgi_sources.get_mut(sgi as usize),
                cpu.private.get_mut(sgi as usize),
            ) else {
                continue;
            };
            if set {
                *src |= bits;
                irq.pending_latch = true;
            } else {
                *src &= !bits;
                irq.pending_latch = *src != 0;
            }
            self.deliver(vcpu, sgi, host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_host::Recorder;
    use super::super::*;

    const SPI0: u32 = 32;

    /// A GICv2 distributor for `vcpus` vCPUs with 64 SPIs and `lrs` list registers,
    /// enabled, with SPI `SPI0 + n` for n < 4 enabled and targeted at vCPU 0.
    fn gic(vcpus: u32, lrs: u8) -> (Vgic, Recorder) {
        let mut g = Vgic::new(GicVersion::V2, vcpus, 64, lrs).unwrap();
        let mut h = Recorder::default();
        g.v2_dist_write(0, 0x000, 4, 1, &mut h);
        g.v2_dist_write(0, 0x104, 4, 0xf, &mut h);
        g.v2_dist_write(0, 0x820, 4, 0x0101_0101, &mut h);
        (g, h)
    }

    #[test]
    fn typer_reports_lines_and_cpus() {
        let g = Vgic::new(GicVersion::V2, 4, 64, 4).unwrap();
        // 96 interrupts: ITLinesNumber 2; CPUNumber 3.
        assert_eq!(g.v2_dist_read(0, 0x004, 4), 2 | 3 << 5);
    }

    #[test]
    fn iidr_and_pidr2_identify_a_gicv2() {
        let g = Vgic::new(GicVersion::V2, 1, 32, 4).unwrap();
        assert_eq!(g.v2_dist_read(0, 0x008, 4), 0x43b);
        assert_eq!(g.v2_dist_read(0, 0xfe8, 4), 0x20);
    }

    #[test]
    fn level_spi_is_injected_into_a_free_list_register_and_kicks() {
        let (mut g, mut h) = gic(1, 4);

        g.set_spi_level(0, true, &mut h);

        assert_eq!(h.injected, [(0, 0, SPI0, 0, 0)]);
        assert_eq!(h.kicked, [0]);
    }

    #[test]
    fn disabled_irq_is_not_injected() {
        let (mut g, mut h) = gic(1, 4);
        g.v2_dist_write(0, 0x184, 4, 1, &mut h);

        g.set_spi_level(0, true, &mut h);

        assert!(h.injected.is_empty());
        assert_eq!(g.v2_dist_read(0, 0x204, 4) & 1, 1, "still pending");
    }

    #[test]
    fn enabling_a_pending_irq_injects_it() {
        let (mut g, mut h) = gic(1, 4);
        g.v2_dist_write(0, 0x184, 4, 1, &mut h);
        g.set_spi_level(0, true, &mut h);

        g.v2_dist_write(0, 0x104, 4, 1, &mut h);

        assert_eq!(h.intids(0), [SPI0]);
    }

    #[test]
    fn disabled_distributor_injects_nothing_until_enabled() {
        let (mut g, mut h) = gic(1, 4);
        g.v2_dist_write(0, 0x000, 4, 0, &mut h);
        g.set_spi_level(1, true, &mut h);
        assert!(h.injected.is_empty());

        g.v2_dist_write(0, 0x000, 4, 1, &mut h);

        assert_eq!(h.intids(0), [SPI0 + 1]);
    }

    #[test]
    fn spi_goes_to_the_lowest_vcpu_in_its_target_list() {
        let (mut g, mut h) = gic(4, 4);
        g.v2_dist_write(0, 0x820, 1, 0b1100, &mut h);

        g.set_spi_level(0, true, &mut h);

        assert_eq!(h.intids(2), [SPI0]);
        assert!(h.intids(0).is_empty());
    }

    #[test]
    fn queued_spi_retargeted_before_delivery_goes_to_its_new_target() {
        // One list register: SPI0 fills it, SPI0 + 1 waits in vCPU 0's queue.
        let (mut g, mut h) = gic(2, 1);
        g.set_spi_level(0, true, &mut h);
        g.set_spi_level(1, true, &mut h);
        g.v2_dist_write(0, 0x821, 1, 0b10, &mut h);

        // vCPU 0 completes SPI0: its list register is free, but SPI0 + 1 now targets vCPU 1.
        g.maintenance(0, 0, &mut h);

        assert_eq!(h.intids(1), [SPI0 + 1]);
        assert!(!h.intids(0).contains(&(SPI0 + 1)));
    }

    #[test]
    fn spi_without_targets_stays_pending() {
        let (mut g, mut h) = gic(2, 4);
        g.v2_dist_write(0, 0x820, 1, 0, &mut h);

        g.set_spi_level(0, true, &mut h);

        assert!(h.injected.is_empty());
    }

    #[test]
    fn full_list_registers_queue_the_irq() {
        let (mut g, mut h) = gic(1, 2);
        g.set_spi_level(0, true, &mut h);
        g.set_spi_level(1, true, &mut h);

        g.set_spi_level(2, true, &mut h);

        assert_eq!(h.intids(0), [SPI0, SPI0 + 1]);
        assert_eq!(
            g.v2_dist_read(0, 0x204, 4) & 0b100,
            0b100,
            "queued shows as pending"
        );
    }

    #[test]
    fn eoi_frees_the_list_register_for_the_queued_irq() {
        let (mut g, mut h) = gic(1, 2);
        for spi in 0..3 {
            g.inject(0, SPI0 + spi, &mut h);
        }

        let done = g.maintenance(0, 1, &mut h);

        assert_eq!(done, Some(SPI0 + 1));
        assert_eq!(h.injected.last(), Some(&(0, 1, SPI0 + 2, 0, 0)));
    }

    #[test]
    fn queue_is_ordered_by_priority() {
        let (mut g, mut h) = gic(1, 1);
        g.v2_dist_write(0, 0x420, 4, 0x10_80_a0_00, &mut h);
        g.inject(0, SPI0, &mut h);
        g.inject(0, SPI0 + 1, &mut h); // priority 0xa0
        g.inject(0, SPI0 + 2, &mut h); // priority 0x80

        g.maintenance(0, 0, &mut h);

        assert_eq!(h.intids(0), [SPI0, SPI0 + 2]);
    }

    #[test]
    fn eoi_of_level_irq_still_high_reinjects() {
        let (mut g, mut h) = gic(1, 4);
        g.set_spi_level(0, true, &mut h);

        g.maintenance(0, 0, &mut h);

        assert_eq!(h.intids(0), [SPI0, SPI0]);
    }

    #[test]
    fn eoi_of_level_irq_after_line_drop_does_not_reinject() {
        let (mut g, mut h) = gic(1, 4);
        g.set_spi_level(0, true, &mut h);
        g.set_spi_level(0, false, &mut h);

        g.maintenance(0, 0, &mut h);

        assert_eq!(h.intids(0), [SPI0]);
    }

    #[test]
    fn edge_irq_is_not_reinjected_after_eoi() {
        let (mut g, mut h) = gic(1, 4);
        g.v2_dist_write(0, 0xc08, 4, 0b10, &mut h); // SPI0 edge
        g.set_spi_level(0, true, &mut h);

        g.maintenance(0, 0, &mut h);

        assert_eq!(h.intids(0), [SPI0]);
    }

    #[test]
    fn edge_during_service_is_delivered_after_eoi() {
        let (mut g, mut h) = gic(1, 4);
        g.inject(0, SPI0, &mut h);
        g.inject(0, SPI0, &mut h);
        assert_eq!(h.intids(0), [SPI0]);

        g.maintenance(0, 0, &mut h);

        assert_eq!(h.intids(0), [SPI0, SPI0]);
    }

    #[test]
    fn maintenance_of_an_empty_list_register_is_ignored() {
        let (mut g, mut h) = gic(1, 4);
        assert_eq!(g.maintenance(0, 3, &mut h), None);
        assert_eq!(g.maintenance(0, 200, &mut h), None);
        assert_eq!(g.maintenance(9, 0, &mut h), None);
    }

    #[test]
    fn sgi_from_vcpu0_reaches_vcpu1() {
        let (mut g, mut h) = gic(2, 4);
        g.v2_dist_write(1, 0x100, 4, 0xffff, &mut h);

        g.v2_dist_write(0, 0xf00, 4, 0b10 << 16 | 3, &mut h);

        assert_eq!(h.intids(1), [3]);
        assert!(h.intids(0).is_empty());
        assert_eq!(h.kicked, [1]);
    }

    #[test]
    fn sgi_to_all_but_self_skips_the_sender() {
        let (mut g, mut h) = gic(3, 4);
        for v in 0..3 {
            g.v2_dist_write(v, 0x100, 4, 0xffff, &mut h);
        }

        g.v2_dist_write(1, 0xf00, 4, 1 << 24 | 5, &mut h);

        assert_eq!(h.intids(0), [5]);
        assert!(h.intids(1).is_empty());
        assert_eq!(h.intids(2), [5]);
    }

    #[test]
    fn sgi_to_disabled_target_is_pending_with_its_source() {
        let (mut g, mut h) = gic(2, 4);

        g.v2_dist_write(0, 0xf00, 4, 0b10 << 16 | 2, &mut h);

        assert!(h.injected.is_empty());
        // SPENDSGIR0 byte 2 on vCPU 1: source vCPU 0.
        assert_eq!(g.v2_dist_read(1, 0xf22, 1), 1);
        assert_eq!(g.v2_dist_read(1, 0xf20, 4), 1 << 16);
    }

    #[test]
    fn cpendsgir_clears_a_pending_sgi() {
        let (mut g, mut h) = gic(2, 4);
        g.v2_dist_write(0, 0xf00, 4, 0b10 << 16 | 2, &mut h);

        g.v2_dist_write(1, 0xf12, 1, 1, &mut h);
        g.v2_dist_write(1, 0x100, 4, 0xffff, &mut h);

        assert!(h.injected.is_empty());
        assert_eq!(g.v2_dist_read(1, 0x200, 4), 0);
    }

    #[test]
    fn private_enables_are_banked_per_vcpu() {
        let (mut g, mut h) = gic(2, 4);

        g.v2_dist_write(1, 0x100, 4, 1 << 27, &mut h);

        assert_eq!(g.v2_dist_read(1, 0x100, 4), 1 << 27);
        assert_eq!(g.v2_dist_read(0, 0x100, 4), 0);
    }

    #[test]
    fn ppi_goes_to_its_own_vcpu() {
        let (mut g, mut h) = gic(2, 4);
        g.v2_dist_write(1, 0x100, 4, 1 << 27, &mut h);

        g.inject(1, 27, &mut h);

        assert_eq!(h.intids(1), [27]);
    }

    #[test]
    fn priority_byte_access_round_trips() {
        let (mut g, mut h) = gic(1, 4);

        g.v2_dist_write(0, 0x421, 1, 0xa0, &mut h);

        assert_eq!(g.v2_dist_read(0, 0x421, 1), 0xa0);
        assert_eq!(g.v2_dist_read(0, 0x420, 4), 0xa000);
    }

    #[test]
    fn priority_keeps_five_bits() {
        let (mut g, mut h) = gic(1, 4);
        g.v2_dist_write(0, 0x420, 1, 0xff, &mut h);
        assert_eq!(g.v2_dist_read(0, 0x420, 1), 0xf8);
    }

    #[test]
    fn injection_carries_the_priority() {
        let (mut g, mut h) = gic(1, 4);
        g.v2_dist_write(0, 0x420, 1, 0x50, &mut h);

        g.inject(0, SPI0, &mut h);

        assert_eq!(h.injected, [(0, 0, SPI0, 0x50, 0)]);
    }

    #[test]
    fn target_byte_access_round_trips_and_is_masked_to_existing_vcpus() {
        let (mut g, mut h) = gic(2, 4);

        g.v2_dist_write(0, 0x823, 1, 0xff, &mut h);

        assert_eq!(g.v2_dist_read(0, 0x823, 1), 0b11);
    }

    #[test]
    fn banked_itargetsr_reads_the_accessing_vcpu() {
        let (g, _) = gic(4, 4);
        assert_eq!(g.v2_dist_read(2, 0x81c, 4), 0x0404_0404);
    }

    #[test]
    fn sgi_configuration_is_read_only_edge() {
        let (mut g, mut h) = gic(1, 4);
        g.v2_dist_write(0, 0xc00, 4, 0, &mut h);
        assert_eq!(g.v2_dist_read(0, 0xc00, 4), 0xaaaa_aaaa);
    }

    #[test]
    fn halfword_and_unaligned_accesses_read_zero_and_are_ignored() {
        let (mut g, mut h) = gic(1, 4);
        g.v2_dist_write(0, 0x420, 2, 0xa0a0, &mut h);
        g.v2_dist_write(0, 0x102, 4, 0xffff_ffff, &mut h);

        assert_eq!(g.v2_dist_read(0, 0x420, 4), 0);
        assert_eq!(g.v2_dist_read(0, 0x104, 2), 0);
        assert_eq!(g.v2_dist_read(0, 0x104, 4), 0xf);
    }

    #[test]
    fn registers_beyond_the_implemented_irqs_read_zero() {
        let (mut g, mut h) = gic(1, 4);
        g.v2_dist_write(0, 0x17c, 4, 0xffff_ffff, &mut h);
        assert_eq!(g.v2_dist_read(0, 0x17c, 4), 0);
        assert_eq!(g.v2_dist_read(0, 0x7f8, 4), 0);
    }

    #[test]
    fn out_of_range_spi_level_is_ignored() {
        let (mut g, mut h) = gic(1, 4);
        g.set_spi_level(5000, true, &mut h);
        g.set_spi_level(u32::MAX, true, &mut h);
        assert!(h.injected.is_empty());
    }

    #[test]
    fn too_many_vcpus_for_gicv2_is_refused() {
        assert_eq!(
            Vgic::new(GicVersion::V2, 9, 32, 4).unwrap_err(),
            VgicError::Vcpus {
                gic: GicVersion::V2,
                vcpus: 9,
                max: 8
            }
        );
    }

    #[test]
    fn too_many_spis_are_refused_and_988_fill_the_id_space() {
        assert_eq!(
            Vgic::new(GicVersion::V2, 1, u32::MAX, 4).unwrap_err(),
            VgicError::Spis { spis: u32::MAX }
        );
        let g = Vgic::new(GicVersion::V2, 1, 988, 4).unwrap();
        assert_eq!(g.num_irqs(), 1020);
        assert_eq!(g.v2_dist_read(0, 0x004, 4) & 0x1f, 31);
    }
}
