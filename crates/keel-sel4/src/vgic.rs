//! A software GICv2 distributor for seL4 VMs, and the list-register bookkeeping of
//! interrupt injection.
//!
//! On seL4 the guest's GIC CPU interface is the hardware's virtual CPU interface (GICV,
//! mapped into the VM), but the distributor is not virtualised: the VMM emulates it from
//! stage-2 faults and injects interrupts into the vCPU's list registers with
//! `seL4_ARM_VCPU_InjectIRQ`. When the guest ends an interrupt the kernel sends a
//! `VGICMaintenance` fault naming the list register; the VMM frees it, re-injects level
//! interrupts that are still high, acknowledges virtual PPIs (`VCPU_AckVPPI`), and moves
//! queued interrupts in.
//!
//! Keel's own, deliberately small model (keel-core's portable vGIC was not available when
//! this was written): SGIs, PPIs and up to [`NUM_SPIS`] SPIs; groups, priorities and
//! active state are stored but not used for arbitration (interrupts go in arrival order).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// SPIs the distributor implements (INTIDs 32..32+NUM_SPIS).
pub const NUM_SPIS: u32 = 64;
/// INTIDs in total.
pub const NUM_IRQS: u32 = 32 + NUM_SPIS;
/// List registers of the QEMU `virt` GICv2 virtual interface.
pub const NUM_LIST_REGS: usize = 4;

/// What the distributor needs from the hypervisor.
pub trait VgicHost {
    /// Put `irq` into list register `lr` of `vcpu` (seL4: `VCPU_InjectIRQ`).
    fn inject(&mut self, vcpu: u32, irq: u32, lr: usize);
    /// The guest finished virtual PPI `irq` on `vcpu` (seL4: `VCPU_AckVPPI`).
    fn ack_vppi(&mut self, vcpu: u32, irq: u32);
}

#[derive(Clone, Debug, Default)]
struct CpuState {
    /// SGI/PPI enable bits (banked).
    enabled: u32,
    /// SGI/PPI priorities (banked).
    priority: [u8; 32],
    /// What each list register holds.
    lrs: [Option<u32>; NUM_LIST_REGS],
    /// Interrupts waiting for a free list register.
    queue: VecDeque<u32>,
}

/// The distributor state of one VM.
#[derive(Debug)]
pub struct Vgic {
    enabled: bool,
    cpus: Vec<CpuState>,
    spi_enabled: [u32; (NUM_SPIS / 32) as usize],
    spi_pending: [u32; (NUM_SPIS / 32) as usize],
    spi_level: [u32; (NUM_SPIS / 32) as usize],
    spi_priority: [u8; NUM_SPIS as usize],
    spi_target: [u8; NUM_SPIS as usize],
    config: [u32; (NUM_IRQS / 16) as usize],
    group: [u32; (NUM_IRQS / 32) as usize],
}

fn bit(v: &[u32], n: u32) -> bool {
    v.get((n / 32) as usize)
        .is_some_and(|w| w & (1 << (n % 32)) != 0)
}

fn set_bit(v: &mut [u32], n: u32, on: bool) {
    if let Some(w) = v.get_mut((n / 32) as usize) {
        if on {
            *w |= 1 << (n % 32);
        } else {
            *w &= !(1 << (n % 32));
        }
    }
}

impl Vgic {
    /// A distributor for `vcpus` vCPUs, everything disabled.
    pub fn new(vcpus: u32) -> Vgic {
        Vgic {
            enabled: false,
            cpus: alloc::vec![CpuState::default(); vcpus.clamp(1, 8) as usize],
            spi_enabled: [0; 2],
            spi_pending: [0; 2],
            spi_level: [0; 2],
            spi_priority: [0; NUM_SPIS as usize],
            spi_target: [1; NUM_SPIS as usize],
            config: [0; (NUM_IRQS / 16) as usize],
            group: [0; (NUM_IRQS / 32) as usize],
        }
    }

    fn enabled_for(&self, vcpu: u32, irq: u32) -> bool {
        if irq < 32 {
            self.cpus
                .get(vcpu as usize)
                .is_some_and(|c| c.enabled & (1 << irq) != 0)
        } else {
            bit(&self.spi_enabled, irq - 32)
        }
    }

    /// Deliver `irq` to `vcpu` if the distributor and the interrupt are enabled; otherwise
    /// (SPIs) remember it as pending for when they are.
    pub fn inject(&mut self, vcpu: u32, irq: u32, host: &mut impl VgicHost) {
        if irq >= NUM_IRQS {
            return;
        }
        if !self.enabled || !self.enabled_for(vcpu, irq) {
            if irq >= 32 {
                set_bit(&mut self.spi_pending, irq - 32, true);
            }
            return;
        }
        if irq >= 32 {
            set_bit(&mut self.spi_pending, irq - 32, false);
        }
        let Some(cpu) = self.cpus.get_mut(vcpu as usize) else {
            return;
        };
        if cpu.lrs.contains(&Some(irq)) || cpu.queue.contains(&irq) {
            return;
        }
        match cpu.lrs.iter().position(Option::is_none) {
            Some(lr) => {
                cpu.lrs[lr] = Some(irq);
                host.inject(vcpu, irq, lr);
            }
            None => cpu.queue.push_back(irq),
        }
    }

    fn spi_target_vcpu(&self, spi: u32) -> u32 {
        let mask = self.spi_target.get(spi as usize).copied().unwrap_or(1);
        let n = self.cpus.len() as u32;
        (0..n).find(|c| mask & (1 << c) != 0).unwrap_or(0)
    }

    /// A device drives SPI `spi` (0-based) to `high`: a rising edge injects it.
    pub fn set_spi_level(&mut self, spi: u32, high: bool, host: &mut impl VgicHost) {
        if spi >= NUM_SPIS {
            return;
        }
        let was = bit(&self.spi_level, spi);
        set_bit(&mut self.spi_level, spi, high);
        if high && !was {
            let vcpu = self.spi_target_vcpu(spi);
            self.inject(vcpu, 32 + spi, host);
        }
    }

    /// The guest ended the interrupt in list register `lr` of `vcpu` (a `VGICMaintenance`
    /// fault). `None`: the kernel did not say which; nothing is freed.
    pub fn maintenance(&mut self, vcpu: u32, lr: Option<u8>, host: &mut impl VgicHost) {
        let Some(cpu) = self.cpus.get_mut(vcpu as usize) else {
            return;
        };
        let Some(irq) = lr
            .and_then(|l| cpu.lrs.get_mut(usize::from(l)))
            .and_then(Option::take)
        else {
            return;
        };
        if (16..32).contains(&irq) {
            host.ack_vppi(vcpu, irq);
        }
        // Fill the freed list register from the queue.
        if let Some(next) = cpu.queue.pop_front() {
            if let Some(l) = lr {
                cpu.lrs[usize::from(l)] = Some(next);
                host.inject(vcpu, next, usize::from(l));
            }
        }
        // A level-triggered SPI still asserted fires again.
        if irq >= 32 && bit(&self.spi_level, irq - 32) {
            self.inject(vcpu, irq, host);
        }
    }

    fn pending_spis(&mut self, host: &mut impl VgicHost) {
        if !self.enabled {
            return;
        }
        for spi in 0..NUM_SPIS {
            if bit(&self.spi_pending, spi) && bit(&self.spi_enabled, spi) {
                let vcpu = self.spi_target_vcpu(spi);
                self.inject(vcpu, 32 + spi, host);
            }
        }
    }

    /// A 32-bit (or narrower) distributor register read by `vcpu` at `offset`.
    pub fn read(&self, vcpu: u32, offset: u64) -> u32 {
        let cpu = self.cpus.get(vcpu as usize);
        let word = |base: u64| ((offset - base) / 4) as u32;
        let bank = |spis: &[u32], n: u32, banked: u32| -> u32 {
            if n == 0 {
                banked
            } else {
                spis.get((n - 1) as usize).copied().unwrap_or(0)
            }
        };
        // Byte-per-interrupt registers: the four interrupts of the word at `offset`.
        let bytes = |base: u64, f: &dyn Fn(u32) -> u8| -> u32 {
            let first = ((offset & !3) - base) as u32;
            (0..4).fold(0, |acc, i| acc | (u32::from(f(first + i)) << (8 * i)))
        };
        match offset {
            0x000 => u32::from(self.enabled),
            0x004 => ((NUM_IRQS / 32) - 1) | ((self.cpus.len() as u32 - 1) << 5),
            0x008 => 0x0200_143b,
            0x080..=0x0bc => self.group.get(word(0x080) as usize).copied().unwrap_or(0),
            0x100..=0x13c | 0x180..=0x1bc => {
                let n = word(if offset >= 0x180 { 0x180 } else { 0x100 });
                bank(&self.spi_enabled, n, cpu.map_or(0, |c| c.enabled))
            }
            0x200..=0x23c | 0x280..=0x2bc => {
                let n = word(if offset >= 0x280 { 0x280 } else { 0x200 });
                bank(&self.spi_pending, n, 0)
            }
            0x400..=0x7f8 => bytes(0x400, &|irq| {
                if irq < 32 {
                    cpu.map_or(0, |c| c.priority[irq as usize])
                } else {
                    self.spi_priority
                        .get((irq - 32) as usize)
                        .copied()
                        .unwrap_or(0)
                }
            }),
            0x800..=0xbf8 => bytes(0x800, &|irq| {
                if irq < 32 {
                    1u8 << (vcpu & 7)
                } else {
                    self.spi_target
                        .get((irq - 32) as usize)
                        .copied()
                        .unwrap_or(0)
                }
            }),
            0xc00..=0xcfc => self.config.get(word(0xc00) as usize).copied().unwrap_or(0),
            0xfe8 => 0x2b, // ICPIDR2: GICv2
            _ => 0,
        }
    }

    /// A distributor register write by `vcpu`: `len` bytes of `value` at `offset`.
    pub fn write(&mut self, vcpu: u32, offset: u64, len: u8, value: u32, host: &mut impl VgicHost) {
        let word = |base: u64| ((offset - base) / 4) as u32;
        match offset {
            0x000 => {
                self.enabled = value & 1 != 0;
                self.pending_spis(host);
            }
            0x080..=0x0bc => {
                if let Some(g) = self.group.get_mut(word(0x080) as usize) {
                    *g = value;
                }
            }
            0x100..=0x13c => {
                let n = word(0x100);
                if n == 0 {
                    if let Some(c) = self.cpus.get_mut(vcpu as usize) {
                        c.enabled |= value;
                    }
                } else if let Some(w) = self.spi_enabled.get_mut((n - 1) as usize) {
                    *w |= value;
                    self.pending_spis(host);
                }
            }
            0x180..=0x1bc => {
                let n = word(0x180);
                if n == 0 {
                    if let Some(c) = self.cpus.get_mut(vcpu as usize) {
                        c.enabled &= !value;
                    }
                } else if let Some(w) = self.spi_enabled.get_mut((n - 1) as usize) {
                    *w &= !value;
                }
            }
            0x200..=0x23c => {
                let n = word(0x200);
                for b in 0..32 {
                    if value & (1 << b) != 0 {
                        let irq = n * 32 + b;
                        let target = if irq < 32 {
                            vcpu
                        } else {
                            self.spi_target_vcpu(irq - 32)
                        };
                        self.inject(target, irq, host);
                    }
                }
            }
            0x280..=0x2bc => {
                let n = word(0x280);
                if n > 0 {
                    if let Some(w) = self.spi_pending.get_mut((n - 1) as usize) {
                        *w &= !value;
                    }
                }
            }
            0x400..=0x7fb => {
                for i in 0..u32::from(len.min(4)) {
                    let irq = (offset - 0x400) as u32 + i;
                    let p = (value >> (8 * i)) as u8;
                    if irq < 32 {
                        if let Some(c) = self.cpus.get_mut(vcpu as usize) {
                            c.priority[irq as usize] = p;
                        }
                    } else if let Some(s) = self.spi_priority.get_mut((irq - 32) as usize) {
                        *s = p;
                    }
                }
            }
            0x800..=0xbfb => {
                for i in 0..u32::from(len.min(4)) {
                    let irq = (offset - 0x800) as u32 + i;
                    if irq >= 32 {
                        if let Some(t) = self.spi_target.get_mut((irq - 32) as usize) {
                            *t = (value >> (8 * i)) as u8;
                        }
                    }
                }
            }
            0xc00..=0xcfc => {
                if let Some(c) = self.config.get_mut(word(0xc00) as usize) {
                    *c = value;
                }
            }
            0xf00 => {
                // GICD_SGIR: TargetListFilter [25:24], CPUTargetList [23:16], INTID [3:0].
                let sgi = value & 0xf;
                let n = self.cpus.len() as u32;
                let targets: u32 = match (value >> 24) & 3 {
                    0 => (value >> 16) & 0xff,
                    1 => ((1 << n) - 1) & !(1 << vcpu),
                    2 => 1 << vcpu,
                    _ => 0,
                };
                for t in 0..n {
                    if targets & (1 << t) != 0 {
                        self.inject(t, sgi, host);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        injected: Vec<(u32, u32, usize)>,
        acked: Vec<(u32, u32)>,
    }

    impl VgicHost for Rec {
        fn inject(&mut self, vcpu: u32, irq: u32, lr: usize) {
            self.injected.push((vcpu, irq, lr));
        }
        fn ack_vppi(&mut self, vcpu: u32, irq: u32) {
            self.acked.push((vcpu, irq));
        }
    }

    fn enabled(vcpus: u32, h: &mut Rec) -> Vgic {
        let mut g = Vgic::new(vcpus);
        g.write(0, 0x000, 4, 1, h);
        g.write(0, 0x104, 4, u32::MAX, h);
        g
    }

    #[test]
    fn rising_spi_is_injected_into_a_free_list_register() {
        let mut h = Rec::default();
        let mut g = enabled(1, &mut h);

        g.set_spi_level(16, true, &mut h);

        assert_eq!(h.injected, [(0, 48, 0)]);
    }

    #[test]
    fn disabled_spi_is_held_pending_until_enabled() {
        let mut h = Rec::default();
        let mut g = Vgic::new(1);
        g.write(0, 0x000, 4, 1, &mut h);
        g.set_spi_level(1, true, &mut h);
        assert!(h.injected.is_empty());

        g.write(0, 0x104, 4, 1 << 1, &mut h);

        assert_eq!(h.injected, [(0, 33, 0)]);
    }

    #[test]
    fn fifth_interrupt_waits_for_a_maintenance_fault() {
        let mut h = Rec::default();
        let mut g = enabled(1, &mut h);
        for spi in 0..5 {
            g.set_spi_level(spi, true, &mut h);
        }
        assert_eq!(h.injected.len(), 4);

        g.maintenance(0, Some(2), &mut h);

        assert_eq!(h.injected[4], (0, 36, 2));
    }

    #[test]
    fn level_still_high_at_eoi_is_injected_again() {
        let mut h = Rec::default();
        let mut g = enabled(1, &mut h);
        g.set_spi_level(0, true, &mut h);

        g.maintenance(0, Some(0), &mut h);

        assert_eq!(h.injected, [(0, 32, 0), (0, 32, 0)]);
    }

    #[test]
    fn timer_ppi_is_acked_at_eoi() {
        let mut h = Rec::default();
        let mut g = enabled(1, &mut h);
        g.write(0, 0x100, 4, 1 << 27, &mut h);
        g.inject(0, 27, &mut h);

        g.maintenance(0, Some(0), &mut h);

        assert_eq!(h.acked, [(0, 27)]);
    }

    #[test]
    fn sgi_to_others_reaches_every_other_vcpu() {
        let mut h = Rec::default();
        let mut g = enabled(2, &mut h);
        g.write(1, 0x100, 4, 0xffff, &mut h);

        g.write(0, 0xf00, 4, (1 << 24) | 3, &mut h);

        assert_eq!(h.injected, [(1, 3, 0)]);
    }

    #[test]
    fn itargetsr0_reads_the_reading_vcpus_own_mask() {
        let g = Vgic::new(2);

        assert_eq!(g.read(1, 0x800), 0x0202_0202);
    }

    #[test]
    fn spi_targets_read_back_per_byte() {
        let mut h = Rec::default();
        let mut g = Vgic::new(2);
        g.write(0, 0x820, 1, 2, &mut h);

        assert_eq!(g.read(0, 0x820) & 0xff, 2);
        assert_eq!(g.read(0, 0x820) >> 8 & 0xff, 1);
    }

    #[test]
    fn typer_reports_vcpus_and_lines() {
        let g = Vgic::new(2);

        assert_eq!(g.read(0, 0x004), 2 | (1 << 5));
    }
}
