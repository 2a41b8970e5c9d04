//! A software GIC distributor for hypervisors that virtualize only the CPU interface (seL4).
//!
//! seL4 gives a VMM the hardware virtual CPU interface — list registers filled with
//! `seL4_ARM_VCPU_InjectIRQ`, a `VGICMaintenance` fault when the guest completes (EOIs) one —
//! but no distributor: the guest's distributor (and, for GICv3, redistributor) registers
//! fault to the VMM, and the VMM decides which interrupt goes to which vCPU's list
//! registers. [`Vgic`] is that distributor. KVM has its own in the kernel and never uses it.
//!
//! Model, the same for GICv2 and GICv3:
//! - each interrupt has an enable, a pending latch, a line level (level-sensitive inputs),
//!   a priority, a group and a target (GICv2 `ITARGETSR`, GICv3 `IROUTER`); SGIs and PPIs
//!   are banked per vCPU;
//! - an interrupt that is enabled, pending, and whose group the distributor enables goes to
//!   its target vCPU: into a free list register through [`VgicHost::inject_list_register`]
//!   (followed by [`VgicHost::kick`] so that a vCPU waiting in `WFI` resumes), or, when all
//!   list registers hold interrupts, into a per-vCPU queue ordered by priority;
//! - the list register then owns the pending/active state until the guest EOIs it; the
//!   maintenance fault ([`Vgic::maintenance`]) frees the list register, refills it from the
//!   queue, and re-delivers a level-sensitive interrupt whose line is still high.
//!
//! Register accesses come in with the accessing vCPU (banked registers) and are checked
//! against the widths the GIC architecture allows; other accesses read as zero and writes
//! are ignored. See [`v2`] and [`v3`] for the register maps.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::layout::GicVersion;
use crate::hv::VcpuId;

pub mod v2;
pub mod v3;

/// Number of SGIs (INTIDs 0..16).
pub const NUM_SGIS: u32 = 16;
/// Number of private interrupts, SGIs and PPIs (INTIDs 0..32).
pub const NUM_PRIVATE: u32 = 32;
/// Most interrupts a GIC distributor has (INTIDs 0..1020).
pub const MAX_IRQS: u32 = 1020;
/// Most list registers the architecture allows (GICv3: 16; GICv2: 64).
pub const MAX_LIST_REGISTERS: u8 = 64;

/// Priority bits implemented (like KVM's vGIC): the low 3 bits of every priority byte are 0.
const PRIORITY_MASK: u8 = 0xf8;

/// What the distributor asks of the hypervisor.
pub trait VgicHost {
    /// Write list register `lr` of `vcpu` with interrupt `intid` pending (seL4:
    /// `seL4_ARM_VCPU_InjectIRQ(vcpu, intid, priority, group, lr)`). `priority` is the
    /// distributor's 8-bit priority; a GICv2 list register keeps its top 5 bits.
    fn inject_list_register(&mut self, vcpu: VcpuId, lr: u8, intid: u32, priority: u8, group: u8);

    /// `vcpu` has a new interrupt in a list register: resume it if it waits for one.
    fn kick(&mut self, vcpu: VcpuId);

    /// The guest completed virtual PPI `intid` on `vcpu` (its timer): the hypervisor may
    /// signal it again (seL4: `seL4_ARM_VCPU_AckVPPI`). Nothing by default.
    fn ack_ppi(&mut self, vcpu: VcpuId, intid: u32) {
        let _ = (vcpu, intid);
    }

    /// The guest completed SPI `intid` on `vcpu` (its list register came back through
    /// maintenance). A hypervisor that passes a physical interrupt through acknowledges it
    /// to the hardware now (seL4: `microkit_irq_ack`), so that the device can interrupt
    /// again only once the guest has handled it. Nothing by default.
    fn completed_spi(&mut self, vcpu: VcpuId, intid: u32) {
        let _ = (vcpu, intid);
    }
}

/// Why a distributor cannot be built as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VgicError {
    /// vCPU count outside what the GIC version addresses.
    #[error("a {gic:?} distributor serves 1 to {max} vCPUs, not {vcpus}")]
    Vcpus {
        /// GIC version.
        gic: GicVersion,
        /// vCPUs asked for.
        vcpus: u32,
        /// The limit.
        max: u32,
    },
    /// Too many SPIs.
    #[error("{spis} SPIs do not fit below INTID {MAX_IRQS}")]
    Spis {
        /// SPIs asked for.
        spis: u32,
    },
    /// List-register count outside 1..=64.
    #[error("{0} list registers is outside 1..={MAX_LIST_REGISTERS}")]
    ListRegisters(u8),
}

/// Where an interrupt's pending state is, once the distributor has handed it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// In the distributor.
    None,
    /// Waiting in this vCPU's queue for a free list register.
    Queued(VcpuId),
    /// In a list register of this vCPU, until the guest EOIs it.
    InLr(VcpuId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Irq {
    enabled: bool,
    pending_latch: bool,
    line_level: bool,
    active: bool,
    edge: bool,
    priority: u8,
    group: u8,
    /// GICv2 `ITARGETSR` byte (SPIs).
    targets: u8,
    /// GICv3 `IROUTER` (SPIs).
    route: u64,
    delivery: Delivery,
}

impl Irq {
    const fn new(edge: bool, group: u8) -> Irq {
        Irq {
            enabled: false,
            pending_latch: false,
            line_level: false,
            active: false,
            edge,
            priority: 0,
            group,
            targets: 0,
            route: 0,
            delivery: Delivery::None,
        }
    }

    fn pending(&self) -> bool {
        self.pending_latch || (!self.edge && self.line_level)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct CpuState {
    private: [Irq; NUM_PRIVATE as usize],
    /// INTID held by each list register.
    lrs: Vec<Option<u32>>,
    /// Interrupts waiting for a list register, highest priority first.
    queue: VecDeque<u32>,
    /// GICv2: for each SGI, the bitmap of vCPUs that sent it and are not yet delivered.
    sgi_sources: [u8; NUM_SGIS as usize],
    /// GICv3 `GICR_WAKER.ProcessorSleep`.
    asleep: bool,
}

/// The software distributor of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vgic {
    version: GicVersion,
    ctlr: u32,
    spis: Vec<Irq>,
    cpus: Vec<CpuState>,
}

/// Bits of `GICD_CTLR` that enable group 0 and group 1 delivery.
const CTLR_ENABLE_GRP0: u32 = 1 << 0;
const CTLR_ENABLE_GRP1: u32 = 1 << 1;

impl Vgic {
    /// A distributor of `version` for `vcpus` vCPUs, with `spis` shared peripheral interrupts
    /// (rounded up to a multiple of 32) and `list_registers` list registers per vCPU (the
    /// hardware's count: `ICH_VTR_EL2.ListRegs + 1`, or `GICH_VTR` on GICv2).
    pub fn new(
        version: GicVersion,
        vcpus: u32,
        spis: u32,
        list_registers: u8,
    ) -> Result<Vgic, VgicError> {
        let max = match version {
            GicVersion::V2 => 8,
            GicVersion::V3 => super::layout::GICV3_MAX_VCPUS,
        };
        if vcpus == 0 || vcpus > max {
            return Err(VgicError::Vcpus {
                gic: version,
                vcpus,
                max,
            });
        }
        if spis > MAX_IRQS - NUM_PRIVATE {
            return Err(VgicError::Spis { spis });
        }
        let spis_rounded = spis.div_ceil(32) * 32;
        if list_registers == 0 || list_registers > MAX_LIST_REGISTERS {
            return Err(VgicError::ListRegisters(list_registers));
        }
        // GICv3 guests (Linux) use group 1 only, and group-0 virtual interrupts arrive as
        // FIQs there; GICv2 guests leave everything in group 0, signalled as IRQs.
        let group = match version {
            GicVersion::V2 => 0,
            GicVersion::V3 => 1,
        };
        let mut private = [Irq::new(false, group); NUM_PRIVATE as usize];
        for sgi in private.iter_mut().take(NUM_SGIS as usize) {
            sgi.edge = true;
        }
        let cpus = (0..vcpus)
            .map(|_| CpuState {
                private,
                lrs: alloc::vec![None; usize::from(list_registers)],
                queue: VecDeque::new(),
                sgi_sources: [0; NUM_SGIS as usize],
                asleep: true,
            })
            .collect();
        // Interrupt IDs 1020..1023 are special: never SPIs.
        let spi_count = spis_rounded.min(MAX_IRQS - NUM_PRIVATE);
        Ok(Vgic {
            version,
            ctlr: 0,
            spis: alloc::vec![Irq::new(false, group); spi_count as usize],
            cpus,
        })
    }

    /// Number of interrupt IDs, SGIs and PPIs included.
    pub fn num_irqs(&self) -> u32 {
        NUM_PRIVATE + self.spis.len() as u32
    }

    /// Number of vCPUs.
    pub fn num_vcpus(&self) -> u32 {
        self.cpus.len() as u32
    }

    /// The GIC version modelled.
    pub fn version(&self) -> GicVersion {
        self.version
    }

    fn irq(&self, owner: VcpuId, intid: u32) -> Option<&Irq> {
        if intid < NUM_PRIVATE {
            self.cpus.get(owner as usize)?.private.get(intid as usize)
        } else {
            self.spis.get((intid - NUM_PRIVATE) as usize)
        }
    }

    fn irq_mut(&mut self, owner: VcpuId, intid: u32) -> Option<&mut Irq> {
        if intid < NUM_PRIVATE {
            self.cpus
                .get_mut(owner as usize)?
                .private
                .get_mut(intid as usize)
        } else {
            self.spis.get_mut((intid - NUM_PRIVATE) as usize)
        }
    }

    /// Drive the input line of interrupt `intid` (an SPI, or a PPI of `owner`; `owner` is
    /// ignored for SPIs). A rising edge makes an edge-triggered interrupt pending; a
    /// level-sensitive one is pending while the line is high.
    pub fn set_level(&mut self, owner: VcpuId, intid: u32, level: bool, host: &mut impl VgicHost) {
        let Some(irq) = self.irq_mut(owner, intid) else {
            return;
        };
        let rising = level && !irq.line_level;
        irq.line_level = level;
        if rising && irq.edge {
            irq.pending_latch = true;
        }
        if rising {
            self.deliver(owner, intid, host);
        }
    }

    /// [`Vgic::set_level`] for SPI number `spi` (INTID `32 + spi`), as
    /// [`Vm::irq_line`](crate::hv::Vm::irq_line) numbers them.
    pub fn set_spi_level(&mut self, spi: u32, level: bool, host: &mut impl VgicHost) {
        if let Some(intid) = spi.checked_add(NUM_PRIVATE) {
            self.set_level(0, intid, level, host);
        }
    }

    /// Make interrupt `intid` pending once, whatever its trigger (an edge, an MSI-like
    /// notification, or the virtual timer PPI seL4 reports in a `VPPIEvent`).
    pub fn inject(&mut self, owner: VcpuId, intid: u32, host: &mut impl VgicHost) {
        let Some(irq) = self.irq_mut(owner, intid) else {
            return;
        };
        irq.pending_latch = true;
        self.deliver(owner, intid, host);
    }

    /// The guest completed the interrupt in list register `lr` of `vcpu` (seL4
    /// `VGICMaintenance` fault). Frees the list register, refills it from the queue, and
    /// delivers the interrupt again if it is still pending (a level line still high, or a
    /// new edge). Returns the completed INTID — the VMM acknowledges a virtual PPI with
    /// `seL4_ARM_VCPU_AckVPPI` when it is the timer's — or `None` if the list register was
    /// not in use.
    pub fn maintenance(&mut self, vcpu: VcpuId, lr: u8, host: &mut impl VgicHost) -> Option<u32> {
        let slot = self
            .cpus
            .get_mut(vcpu as usize)?
            .lrs
            .get_mut(usize::from(lr))?;
        let intid = slot.take()?;
        if let Some(irq) = self.irq_mut(vcpu, intid) {
            irq.delivery = Delivery::None;
            irq.active = false;
        }
        self.drain_queue(vcpu, host);
        self.deliver(vcpu, intid, host);
        Some(intid)
    }

    /// Which vCPU an interrupt goes to, if any.
    fn target(&self, owner: VcpuId, intid: u32, irq: &Irq) -> Option<VcpuId> {
        if intid < NUM_PRIVATE {
            return Some(owner);
        }
        let n = self.num_vcpus();
        match self.version {
            // 1-of-N: the lowest-numbered vCPU in the target list.
            GicVersion::V2 => {
                let t = irq.targets.trailing_zeros();
                (t < n.min(8)).then_some(t)
            }
            GicVersion::V3 => {
                const IRM: u64 = 1 << 31;
                if irq.route & IRM != 0 {
                    Some(0)
                } else {
                    let aff = (irq.route & 0xff_ffff) | ((irq.route >> 32) & 0xff) << 32;
                    super::layout::vcpu_of_mpidr(aff).filter(|&v| v < n)
                }
            }
        }
    }

    fn group_enabled(&self, group: u8) -> bool {
        match self.version {
            // Without security extensions GICD_CTLR bit 0 enables forwarding of everything.
            GicVersion::V2 => self.ctlr & CTLR_ENABLE_GRP0 != 0,
            GicVersion::V3 => {
                let bit = if group == 0 {
                    CTLR_ENABLE_GRP0
                } else {
                    CTLR_ENABLE_GRP1
                };
                self.ctlr & bit != 0
            }
        }
    }

    /// Hand interrupt `intid` (of `owner`, if private) on to its target, if it can go.
    fn deliver(&mut self, owner: VcpuId, intid: u32, host: &mut impl VgicHost) {
        let Some(irq) = self.irq(owner, intid).copied() else {
            return;
        };
        if irq.delivery != Delivery::None
            || !irq.enabled
            || !irq.pending()
            || !self.group_enabled(irq.group)
        {
            return;
        }
        let Some(target) = self.target(owner, intid, &irq) else {
            return;
        };
        let Some(cpu) = self.cpus.get_mut(target as usize) else {
            return;
        };
        if let Some(lr) = cpu.lrs.iter().position(Option::is_none) {
            self.place_in_lr(target, lr, owner, intid, host);
        } else {
            // Queue by priority (lower value first), FIFO among equals.
            let priority = irq.priority;
            let at = cpu.queue.iter().position(|&q| {
                let p = if q < NUM_PRIVATE {
                    cpu.private.get(q as usize).map(|i| i.priority)
                } else {
                    self.spis
                        .get((q - NUM_PRIVATE) as usize)
                        .map(|i| i.priority)
                };
                p.is_some_and(|p| p > priority)
            });
            match at {
                Some(i) => cpu.queue.insert(i, intid),
                None => cpu.queue.push_back(intid),
            }
            if let Some(irq) = self.irq_mut(owner, intid) {
                irq.delivery = Delivery::Queued(target);
            }
        }
    }

    fn place_in_lr(
        &mut self,
        vcpu: VcpuId,
        lr: usize,
        owner: VcpuId,
        intid: u32,
        host: &mut impl VgicHost,
    ) {
        let Some(irq) = self.irq_mut(owner, intid) else {
            return;
        };
        irq.pending_latch = false;
        irq.delivery = Delivery::InLr(vcpu);
        let (priority, group) = (irq.priority, irq.group);
        if intid < NUM_SGIS {
            if let Some(src) = self
                .cpus
                .get_mut(owner as usize)
                .and_then(|c| c.sgi_sources.get_mut(intid as usize))
            {
                *src = 0;
            }
        }
        if let Some(slot) = self
            .cpus
            .get_mut(vcpu as usize)
            .and_then(|c| c.lrs.get_mut(lr))
        {
            *slot = Some(intid);
        }
        // `lr` < MAX_LIST_REGISTERS (64), checked in `new`.
        host.inject_list_register(vcpu, lr as u8, intid, priority, group);
        host.kick(vcpu);
    }

    /// Move queued interrupts of `vcpu` into its free list registers; drop the ones that are
    /// no longer deliverable (disabled, or a level line that went low), and hand the ones
    /// retargeted meanwhile to their new target.
    fn drain_queue(&mut self, vcpu: VcpuId, host: &mut impl VgicHost) {
        loop {
            let Some(cpu) = self.cpus.get_mut(vcpu as usize) else {
                return;
            };
            let Some(lr) = cpu.lrs.iter().position(Option::is_none) else {
                return;
            };
            let Some(intid) = cpu.queue.pop_front() else {
                return;
            };
            // A queued private interrupt is always the target's own.
            let owner = vcpu;
            let Some(irq) = self.irq_mut(owner, intid) else {
                continue;
            };
            irq.delivery = Delivery::None;
            let irq = *irq;
            if !irq.enabled || !irq.pending() || !self.group_enabled(irq.group) {
                continue;
            }
            if self.target(owner, intid, &irq) == Some(vcpu) {
                self.place_in_lr(vcpu, lr, owner, intid, host);
            } else {
                // An SPI retargeted (ITARGETSR / IROUTER) while it waited here: it goes to
                // its new target, or stays pending in the distributor if it has none.
                self.deliver(owner, intid, host);
            }
        }
    }

    /// Deliver everything deliverable (after the distributor or a group is enabled).
    fn deliver_all(&mut self, host: &mut impl VgicHost) {
        for vcpu in 0..self.num_vcpus() {
            for intid in 0..NUM_PRIVATE {
                self.deliver(vcpu, intid, host);
            }
        }
        for intid in NUM_PRIVATE..self.num_irqs() {
            self.deliver(0, intid, host);
        }
    }

    /// Send SGI `sgi` from `sender` to each vCPU in `targets` (a bitmap of vCPU indices).
    fn send_sgi(
        &mut self,
        sender: VcpuId,
        sgi: u32,
        targets: impl Iterator<Item = VcpuId>,
        host: &mut impl VgicHost,
    ) {
        if sgi >= NUM_SGIS {
            return;
        }
        for t in targets {
            let Some(cpu) = self.cpus.get_mut(t as usize) else {
                continue;
            };
            if let Some(src) = cpu.sgi_sources.get_mut(sgi as usize) {
                *src |= 1u8.checked_shl(sender).unwrap_or(0);
            }
            if let Some(irq) = cpu.private.get_mut(sgi as usize) {
                irq.pending_latch = true;
            }
            self.deliver(t, sgi, host);
        }
    }

    // ---- Register helpers shared by the GICv2 and GICv3 maps ----

    /// Read a 1-bit-per-interrupt register covering INTIDs `32 * index ..`.
    fn read_bits(&self, vcpu: VcpuId, index: u32, f: impl Fn(&Irq) -> bool) -> u32 {
        let mut v = 0;
        for bit in 0..32 {
            if let Some(irq) = self.irq(vcpu, index * 32 + bit) {
                if f(irq) {
                    v |= 1 << bit;
                }
            }
        }
        v
    }

    /// Apply `f` to each interrupt whose bit is set in `value`, then deliver it.
    fn write_bits(
        &mut self,
        vcpu: VcpuId,
        index: u32,
        value: u32,
        host: &mut impl VgicHost,
        f: impl Fn(&mut Irq),
    ) {
        for bit in 0..32 {
            if value & (1 << bit) == 0 {
                continue;
            }
            let intid = index * 32 + bit;
            if let Some(irq) = self.irq_mut(vcpu, intid) {
                f(irq);
                self.deliver(vcpu, intid, host);
            }
        }
    }

    /// Read `len` priority bytes from INTID `first`.
    fn read_bytes(&self, vcpu: VcpuId, first: u32, len: u32, f: impl Fn(&Irq) -> u8) -> u64 {
        (0..len).fold(0u64, |acc, i| {
            let b = self.irq(vcpu, first + i).map_or(0, &f);
            acc | u64::from(b) << (8 * i)
        })
    }

    fn write_bytes(
        &mut self,
        vcpu: VcpuId,
        first: u32,
        len: u32,
        value: u64,
        f: impl Fn(&mut Irq, u8),
    ) {
        for i in 0..len {
            if let Some(irq) = self.irq_mut(vcpu, first + i) {
                f(irq, (value >> (8 * i)) as u8);
            }
        }
    }

    fn read_cfg(&self, vcpu: VcpuId, index: u32) -> u32 {
        let mut v = 0;
        for i in 0..16 {
            if self.irq(vcpu, index * 16 + i).is_some_and(|irq| irq.edge) {
                v |= 2 << (2 * i);
            }
        }
        v
    }

    fn write_cfg(&mut self, vcpu: VcpuId, index: u32, value: u32) {
        for i in 0..16 {
            let intid = index * 16 + i;
            // SGI configuration is fixed (edge).
            if intid < NUM_SGIS {
                continue;
            }
            if let Some(irq) = self.irq_mut(vcpu, intid) {
                irq.edge = value & (2 << (2 * i)) != 0;
            }
        }
    }

    /// The common 1-bit and byte registers at the same offsets in the GICv2 distributor,
    /// the GICv3 distributor and the GICv3 `SGI_base` frame. `None` if `offset` is not one
    /// of them.
    fn common_read(&self, vcpu: VcpuId, offset: u64, len: u8) -> Option<u64> {
        let word = len == 4;
        let index = ((offset & 0x7f) / 4) as u32;
        let v = match offset {
            0x080..=0x0ff if word => u64::from(self.read_bits(vcpu, index, |i| i.group != 0)),
            0x100..=0x1ff if word => u64::from(self.read_bits(vcpu, index, |i| i.enabled)),
            0x200..=0x2ff if word => u64::from(self.read_bits(vcpu, index, |i| {
                i.pending() || matches!(i.delivery, Delivery::InLr(_) | Delivery::Queued(_))
            })),
            0x300..=0x3ff if word => u64::from(self.read_bits(vcpu, index, |i| i.active)),
            0x400..=0x7fb if len == 1 || word => {
                self.read_bytes(vcpu, (offset - 0x400) as u32, u32::from(len), |i| {
                    i.priority
                })
            }
            0xc00..=0xcff if word => u64::from(self.read_cfg(vcpu, ((offset - 0xc00) / 4) as u32)),
            _ => return None,
        };
        Some(v)
    }

    fn common_write(
        &mut self,
        vcpu: VcpuId,
        offset: u64,
        len: u8,
        value: u64,
        host: &mut impl VgicHost,
    ) -> bool {
        let word = len == 4;
        let index = ((offset & 0x7f) / 4) as u32;
        let v = value as u32;
        match offset {
            0x080..=0x0ff if word => {
                for bit in 0..32 {
                    if let Some(irq) = self.irq_mut(vcpu, index * 32 + bit) {
                        irq.group = ((v >> bit) & 1) as u8;
                    }
                }
            }
            0x100..=0x17f if word => self.write_bits(vcpu, index, v, host, |i| i.enabled = true),
            0x180..=0x1ff if word => self.write_bits(vcpu, index, v, host, |i| i.enabled = false),
            0x200..=0x27f if word => {
                self.write_bits(vcpu, index, v, host, |i| i.pending_latch = true)
            }
            0x280..=0x2ff if word => {
                self.write_bits(vcpu, index, v, host, |i| i.pending_latch = false)
            }
            0x300..=0x37f if word => self.write_bits(vcpu, index, v, host, |i| i.active = true),
            0x380..=0x3ff if word => self.write_bits(vcpu, index, v, host, |i| i.active = false),
            0x400..=0x7fb if len == 1 || word => self.write_bytes(
                vcpu,
                (offset - 0x400) as u32,
                u32::from(len),
                value,
                |i, b| i.priority = b & PRIORITY_MASK,
            ),
            0xc00..=0xcff if word => self.write_cfg(vcpu, ((offset - 0xc00) / 4) as u32, v),
            _ => return false,
        }
        true
    }

    /// `GICD_TYPER.ITLinesNumber`: interrupt lines / 32 - 1.
    fn it_lines_number(&self) -> u32 {
        self.num_irqs().div_ceil(32) - 1
    }
}

#[cfg(test)]
pub(crate) mod test_host {
    use super::*;

    /// Records what the distributor asked of the hypervisor.
    #[derive(Debug, Default)]
    pub struct Recorder {
        /// `(vcpu, lr, intid, priority, group)` per injection.
        pub injected: Vec<(VcpuId, u8, u32, u8, u8)>,
        /// Kicked vCPUs.
        pub kicked: Vec<VcpuId>,
    }

    impl VgicHost for Recorder {
        fn inject_list_register(
            &mut self,
            vcpu: VcpuId,
            lr: u8,
            intid: u32,
            priority: u8,
            group: u8,
        ) {
            self.injected.push((vcpu, lr, intid, priority, group));
        }
        fn kick(&mut self, vcpu: VcpuId) {
            self.kicked.push(vcpu);
        }
    }

    impl Recorder {
        /// The INTIDs injected into `vcpu`, in order.
        pub fn intids(&self, vcpu: VcpuId) -> Vec<u32> {
            self.injected
                .iter()
                .filter(|i| i.0 == vcpu)
                .map(|i| i.2)
                .collect()
        }
    }
}
