//! The GICv3 distributor, redistributors and SGI register (Arm IHI 0069), with affinity
//! routing always on and a single security state (`GICD_CTLR.ARE` and `.DS` read as one).
//!
//! Distributor (`GICD_*`, 64 KiB frame): `CTLR` (EnableGrp0 bit 0, EnableGrp1 bit 1),
//! `TYPER`, `IIDR`, the 1-bit and byte registers of [`v2`](super::v2) for SPIs only (the
//! private interrupts' registers read as zero: their state lives in the redistributors),
//! `IROUTER<n>` at `0x6000 + 8n` (64-bit, or 32-bit halves) and `PIDR2` at `0xffe8`.
//!
//! Redistributors, 128 KiB per vCPU from the region base, vCPU *i* at `i * 0x20000`:
//! `RD_base` with `GICR_CTLR` (no LPIs), `IIDR`, `TYPER` (affinity, processor number, `Last`
//! on the final one), `WAKER` (`ProcessorSleep` / `ChildrenAsleep`), `PIDR2`; and `SGI_base`
//! at `+0x10000` with `IGROUPR0`, `ISENABLER0` … `ICACTIVER0`, `IPRIORITYR0..7`, `ICFGR0/1`.
//!
//! SGIs are sent by writes of `ICC_SGI1R_EL1`, which trap to the hypervisor and reach the
//! VMM as [`VcpuExit::SysReg`](crate::hv::VcpuExit::SysReg): see [`Vgic::v3_sysreg_write`].

use super::super::esr::SysReg;
use super::super::layout::{GICV3_REDIST_SIZE, mpidr, vcpu_of_mpidr};
use super::{NUM_PRIVATE, Vgic, VgicHost};
use crate::hv::VcpuId;

/// `GICD_PIDR2` / `GICR_PIDR2`: architecture version 3 in bits \[7:4\].
pub const GIC_PIDR2_V3: u32 = 0x3 << 4;

const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;
const IROUTER_BASE: u64 = 0x6000;
const SGI_BASE: u64 = 0x1_0000;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// Whether a distributor offset addresses private (INTID < 32) state, which GICv3 keeps in
/// the redistributors.
fn private_in_distributor(offset: u64) -> bool {
    match offset {
        0x080..=0x3ff => (offset & 0x7f) < 4,
        0x400..=0x41f => true,
        0xc00..=0xc07 => true,
        _ => false,
    }
}

/// Read the 32-bit half at `offset & 4` of a 64-bit register, or all of it.
fn half(value: u64, offset: u64, len: u8) -> u64 {
    match (len, offset & 4) {
        (8, 0) => value,
        (4, 0) => value & 0xffff_ffff,
        (4, _) => value >> 32,
        _ => 0,
    }
}

impl Vgic {
    /// A read of `len` bytes at `offset` in the GICv3 distributor frame by `vcpu`.
    pub fn v3_dist_read(&self, vcpu: VcpuId, offset: u64, len: u8) -> u64 {
        if !matches!(len, 1 | 4 | 8) || offset % u64::from(len) != 0 {
            return 0;
        }
        let word = len == 4;
        if (IROUTER_BASE..IROUTER_BASE + 8 * 1020).contains(&offset) {
            let intid = ((offset - IROUTER_BASE) / 8) as u32;
            if intid < NUM_PRIVATE || len == 1 {
                return 0;
            }
            return self.irq(0, intid).map_or(0, |i| half(i.route, offset, len));
        }
        if private_in_distributor(offset) || len == 8 {
            return 0;
        }
        if let Some(v) = self.common_read(vcpu, offset, len) {
            return v;
        }
        match offset {
            0x0000 if word => u64::from(self.ctlr | CTLR_ARE | CTLR_DS),
            0x0004 if word => {
                let cpus = self.num_vcpus().saturating_sub(1).min(7);
                // IDbits [23:19]: 10 interrupt ID bits.
                u64::from(self.it_lines_number() | cpus << 5 | 9 << 19)
            }
            0x0008 if word => u64::from(super::v2::GICD_IIDR),
            0xffe8 if word => u64::from(GIC_PIDR2_V3),
            _ => 0,
        }
    }

    /// A write of the low `len` bytes of `value` at `offset` in the GICv3 distributor frame.
    pub fn v3_dist_write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        len: u8,
        value: u64,
        host: &mut impl VgicHost,
    ) {
        if !matches!(len, 1 | 4 | 8) || offset % u64::from(len) != 0 {
            return;
        }
        if (IROUTER_BASE..IROUTER_BASE + 8 * 1020).contains(&offset) {
            let intid = ((offset - IROUTER_BASE) / 8) as u32;
            if intid < NUM_PRIVATE || len == 1 {
                return;
            }
            if let Some(irq) = self.irq_mut(0, intid) {
                // Aff3 [39:32], IRM [31], Aff2..Aff0 [23:0]; the rest is RES0.
                const MASK: u64 = 0xff_8000_0000 | 0xff_ffff;
                irq.route = match (len, offset & 4) {
                    (8, _) => value & MASK,
                    (_, 0) => (irq.route & !0xffff_ffff) | (value & 0xffff_ffff & MASK),
                    _ => (irq.route & 0xffff_ffff) | ((value << 32) & MASK),
                };
                self.deliver(0, intid, host);
            }
            return;
        }
        if private_in_distributor(offset) || len == 8 {
            return;
        }
        if self.common_write(vcpu, offset, len, value, host) {
            return;
        }
        if offset == 0 && len == 4 {
            self.ctlr = value as u32 & 0b11;
            self.deliver_all(host);
        }
    }

    /// A read of `len` bytes at `offset` in the redistributor region (vCPU `offset / 0x20000`).
    pub fn v3_redist_read(&self, offset: u64, len: u8) -> u64 {
        let Some((vcpu, off)) = self.redistributor(offset, len) else {
            return 0;
        };
        let word = len == 4;
        if off >= SGI_BASE {
            let off = off - SGI_BASE;
            if len == 8 || !sgi_frame_register(off) {
                return 0;
            }
            return self.common_read(vcpu, off, len).unwrap_or(0);
        }
        match off {
            0x0000 if word => 0,
            0x0004 if word => u64::from(super::v2::GICD_IIDR),
            0x0008 | 0x000c if len != 1 => half(self.gicr_typer(vcpu), off, len),
            0x0014 if word => {
                let asleep = self.cpus.get(vcpu as usize).is_some_and(|c| c.asleep);
                if asleep {
                    u64::from(WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP)
                } else {
                    0
                }
            }
            0xffe8 if word => u64::from(GIC_PIDR2_V3),
            _ => 0,
        }
    }

    /// A write in the redistributor region.
    pub fn v3_redist_write(&mut self, offset: u64, len: u8, value: u64, host: &mut impl VgicHost) {
        let Some((vcpu, off)) = self.redistributor(offset, len) else {
            return;
        };
        if off >= SGI_BASE {
            let off = off - SGI_BASE;
            if len != 8 && sgi_frame_register(off) {
                self.common_write(vcpu, off, len, value, host);
            }
            return;
        }
        if off == 0x0014 && len == 4 {
            if let Some(c) = self.cpus.get_mut(vcpu as usize) {
                c.asleep = value as u32 & WAKER_PROCESSOR_SLEEP != 0;
            }
        }
    }

    /// Handle a trapped write of system register `encoding` (packed as in
    /// [`SysReg::encoding`]) by `vcpu`. Returns `false` if the register is not one the
    /// distributor owns (the caller decides: usually an undefined-instruction error).
    pub fn v3_sysreg_write(
        &mut self,
        vcpu: VcpuId,
        encoding: u32,
        value: u64,
        host: &mut impl VgicHost,
    ) -> bool {
        let reg = SysReg::from_encoding(encoding);
        if reg != SysReg::ICC_SGI1R_EL1
            && reg != SysReg::ICC_SGI0R_EL1
            && reg != SysReg::ICC_ASGI1R_EL1
        {
            return false;
        }
        let sgi = ((value >> 24) & 0xf) as u32;
        let n = self.num_vcpus();
        if value & (1 << 40) != 0 {
            // IRM: every vCPU but the sender.
            self.send_sgi(vcpu, sgi, (0..n).filter(|&t| t != vcpu), host);
            return true;
        }
        let list = value & 0xffff;
        let aff1 = (value >> 16) & 0xff;
        let aff2 = (value >> 32) & 0xff;
        let range = (value >> 44) & 0xf;
        let aff3 = (value >> 48) & 0xff;
        let targets = (0..16u64)
            .filter(|b| list & (1 << b) != 0)
            .filter_map(|b| {
                let aff0 = range * 16 + b;
                vcpu_of_mpidr(aff3 << 32 | aff2 << 16 | aff1 << 8 | aff0)
            })
            .filter(|&t| t < n);
        let targets: alloc::vec::Vec<VcpuId> = targets.collect();
        self.send_sgi(vcpu, sgi, targets.into_iter(), host);
        true
    }

    /// `GICR_TYPER` of `vcpu`'s redistributor.
    fn gicr_typer(&self, vcpu: VcpuId) -> u64 {
        let aff = mpidr(vcpu);
        let affinity = (aff & 0xff_ffff) | ((aff >> 32) & 0xff) << 24;
        let last = if vcpu + 1 == self.num_vcpus() {
            1 << 4
        } else {
            0
        };
        affinity << 32 | u64::from(vcpu & 0xffff) << 8 | last
    }

    /// The vCPU owning the redistributor at region `offset`, and the offset inside it, for
    /// an access of a width the redistributor accepts.
    fn redistributor(&self, offset: u64, len: u8) -> Option<(VcpuId, u64)> {
        if !matches!(len, 1 | 4 | 8) || offset % u64::from(len) != 0 {
            return None;
        }
        let vcpu = u32::try_from(offset / GICV3_REDIST_SIZE).ok()?;
        if vcpu >= self.num_vcpus() {
            return None;
        }
        let off = offset % GICV3_REDIST_SIZE;
        // Byte accesses only to the priority registers.
        if len == 1 && !(SGI_BASE + 0x400..SGI_BASE + 0x420).contains(&off) {
            return None;
        }
        Some((vcpu, off))
    }
}

/// Whether `off` in the `SGI_base` frame is one of the private-interrupt registers.
fn sgi_frame_register(off: u64) -> bool {
    matches!(
        off,
        0x080 | 0x100 | 0x180 | 0x200 | 0x280 | 0x300 | 0x380 | 0x400..=0x41f | 0xc00 | 0xc04
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_host::Recorder;
    use super::super::*;
    use super::*;

    const SPI0: u32 = 32;
    const RD: u64 = 0x2_0000;

    /// A GICv3 for `vcpus` vCPUs, 64 SPIs, 4 list registers, both groups enabled.
    fn gic(vcpus: u32) -> (Vgic, Recorder) {
        let mut g = Vgic::new(GicVersion::V3, vcpus, 64, 4).unwrap();
        let mut h = Recorder::default();
        g.v3_dist_write(0, 0x0, 4, 0x13, &mut h);
        (g, h)
    }

    fn sgi1r(g: &mut Vgic, h: &mut Recorder, from: VcpuId, value: u64) -> bool {
        g.v3_sysreg_write(from, SysReg::ICC_SGI1R_EL1.encoding(), value, h)
    }

    #[test]
    fn ctlr_reads_are_and_ds_as_one() {
        let (g, _) = gic(1);
        assert_eq!(g.v3_dist_read(0, 0x0, 4), 0x53);
    }

    #[test]
    fn typer_reports_lines_and_id_bits() {
        let (g, _) = gic(2);
        assert_eq!(g.v3_dist_read(0, 0x4, 4), 2 | 1 << 5 | 9 << 19);
        assert_eq!(g.v3_dist_read(0, 0xffe8, 4), 0x30);
    }

    #[test]
    fn spi_is_routed_by_irouter_affinity() {
        let (mut g, mut h) = gic(3);
        g.v3_dist_write(0, 0x104, 4, 1, &mut h);
        g.v3_dist_write(0, 0x6100, 8, 2, &mut h);

        g.set_spi_level(0, true, &mut h);

        assert_eq!(h.injected, [(2, 0, SPI0, 0, 1)]);
    }

    #[test]
    fn irouter_round_trips_in_32_bit_halves() {
        let (mut g, mut h) = gic(1);
        g.v3_dist_write(0, 0x6108, 4, 0x8000_0102, &mut h);
        g.v3_dist_write(0, 0x610c, 4, 0x1ff, &mut h);

        assert_eq!(g.v3_dist_read(0, 0x6108, 8), 0xff_8000_0102);
        assert_eq!(g.v3_dist_read(0, 0x610c, 4), 0xff);
    }

    #[test]
    fn private_registers_in_the_distributor_read_zero() {
        let (mut g, mut h) = gic(1);
        g.v3_dist_write(0, 0x100, 4, 0xffff_ffff, &mut h);
        assert_eq!(g.v3_dist_read(0, 0x100, 4), 0);
        assert_eq!(g.v3_redist_read(SGI_BASE + 0x100, 4), 0);
    }

    #[test]
    fn redistributor_typer_has_affinity_number_and_last() {
        let (g, _) = gic(18);

        assert_eq!(
            g.v3_redist_read(17 * RD + 0x8, 8),
            0x101 << 32 | 17 << 8 | 1 << 4
        );
        assert_eq!(g.v3_redist_read(RD + 0x8, 8), 1 << 32 | 1 << 8);
        assert_eq!(g.v3_redist_read(17 * RD + 0xc, 4), 0x101);
    }

    #[test]
    fn waker_wakes_the_redistributor() {
        let (mut g, mut h) = gic(2);
        assert_eq!(g.v3_redist_read(RD + 0x14, 4), 0b110);

        g.v3_redist_write(RD + 0x14, 4, 0, &mut h);

        assert_eq!(g.v3_redist_read(RD + 0x14, 4), 0);
        assert_eq!(g.v3_redist_read(0x14, 4), 0b110);
    }

    #[test]
    fn redistributor_beyond_the_last_vcpu_reads_zero() {
        let (g, _) = gic(2);
        assert_eq!(g.v3_redist_read(2 * RD + 0x8, 8), 0);
    }

    #[test]
    fn ppi_enable_in_sgi_frame_lets_the_timer_through() {
        let (mut g, mut h) = gic(2);
        g.v3_redist_write(RD + SGI_BASE + 0x100, 4, 1 << 27, &mut h);

        g.inject(1, 27, &mut h);

        assert_eq!(h.injected, [(1, 0, 27, 0, 1)]);
    }

    #[test]
    fn sgi_frame_priority_is_byte_accessible() {
        let (mut g, mut h) = gic(1);
        g.v3_redist_write(SGI_BASE + 0x41b, 1, 0xa0, &mut h);
        assert_eq!(g.v3_redist_read(SGI_BASE + 0x418, 4), 0xa000_0000);
        assert_eq!(g.v3_redist_read(SGI_BASE + 0x41b, 1), 0xa0);
    }

    #[test]
    fn sgi_from_vcpu0_reaches_vcpu1_through_icc_sgi1r() {
        let (mut g, mut h) = gic(2);
        g.v3_redist_write(RD + SGI_BASE + 0x100, 4, 0xffff, &mut h);

        let handled = sgi1r(&mut g, &mut h, 0, 1 << 24 | 0b10);

        assert!(handled);
        assert_eq!(h.intids(1), [1]);
        assert!(h.intids(0).is_empty());
    }

    #[test]
    fn sgi1r_uses_aff1_to_reach_the_second_cluster() {
        let (mut g, mut h) = gic(18);
        g.v3_redist_write(17 * RD + SGI_BASE + 0x100, 4, 0xffff, &mut h);

        sgi1r(&mut g, &mut h, 0, 7 << 24 | 1 << 16 | 0b10);

        assert_eq!(h.intids(17), [7]);
    }

    #[test]
    fn sgi1r_with_irm_goes_to_all_but_the_sender() {
        let (mut g, mut h) = gic(3);
        for v in 0..3u64 {
            g.v3_redist_write(v * RD + SGI_BASE + 0x100, 4, 0xffff, &mut h);
        }

        sgi1r(&mut g, &mut h, 2, 1 << 40 | 4 << 24);

        assert_eq!(h.intids(0), [4]);
        assert_eq!(h.intids(1), [4]);
        assert!(h.intids(2).is_empty());
    }

    #[test]
    fn other_system_registers_are_not_the_distributors() {
        let (mut g, mut h) = gic(1);
        let handled = g.v3_sysreg_write(0, SysReg::new(3, 0, 1, 0, 0).encoding(), 0, &mut h);
        assert!(!handled);
    }

    #[test]
    fn group_0_interrupt_waits_for_enable_grp0() {
        let mut g = Vgic::new(GicVersion::V3, 1, 32, 4).unwrap();
        let mut h = Recorder::default();
        g.v3_dist_write(0, 0x0, 4, 0b10, &mut h); // group 1 only
        g.v3_dist_write(0, 0x084, 4, 0, &mut h); // SPI 0..31 → group 0
        g.v3_dist_write(0, 0x104, 4, 1, &mut h);
        g.inject(0, SPI0, &mut h);
        assert!(h.injected.is_empty());

        g.v3_dist_write(0, 0x0, 4, 0b11, &mut h);

        assert_eq!(h.injected, [(0, 0, SPI0, 0, 0)]);
    }

    #[test]
    fn unaligned_and_wrong_width_accesses_are_ignored() {
        let (mut g, mut h) = gic(1);
        g.v3_dist_write(0, 0x6101, 1, 0xff, &mut h);
        g.v3_redist_write(0x14, 2, 0, &mut h);
        g.v3_redist_write(0x15, 1, 0, &mut h);

        assert_eq!(g.v3_dist_read(0, 0x6100, 8), 0);
        assert_eq!(g.v3_redist_read(0x14, 4), 0b110);
    }
}
