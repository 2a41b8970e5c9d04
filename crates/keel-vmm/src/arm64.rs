//! The arm64 platform of a VM: its firmware description (the device tree, generated from
//! the plan) and, for hypervisors that leave them to the VMM (seL4), the software GIC
//! distributor, PSCI and the trapped-register policy ([`SoftArm64`]).

use alloc::boxed::Box;
use alloc::sync::Arc;

use keel_core::arch::aarch64::boot::{LoadedLinux, load_linux};
use keel_core::arch::aarch64::layout::{
    Arm64Platform, GIC_DIST_BASE, GIC_DIST_SIZE, GicVersion, MmioDevice, PassthroughNode,
    PsciConduit, Trigger,
};
use keel_core::arch::aarch64::psci::{Psci, PsciHost, PsciOutcome, StartError, Started};
use keel_core::arch::aarch64::vgic::{Vgic, VgicError, VgicHost};
use keel_core::bus::SharedDevice;
use keel_core::{
    BootEntry, BusDevice, ExitAnswer, GuestAddress, GuestMemory, GuestRam, IrqLine, Resume,
    VcpuExit, VcpuId,
};
use keel_spec::VmPlan;
use keel_spec::plan::SerialPlan;

use crate::dispatch::Next;
use crate::log::{Level, Log, RateLimit};
use crate::{LoadError, VcpuControl};

/// The platform the guest's device tree describes, from the plan: RAM, vCPUs, `gic`, the
/// UART and the virtio devices at their planned windows (all level-triggered), the
/// command line, PSCI over `hvc`.
pub fn platform(plan: &VmPlan, gic: GicVersion) -> Arm64Platform {
    let mut p = Arm64Platform::new(0, plan.vcpus, gic);
    p.memory = plan.ram.clone();
    p.cmdline = plan.cmdline.clone();
    p.psci = PsciConduit::Hvc;
    p.uart = match plan.serial {
        SerialPlan::Mmio { base, size, irq } => Some(MmioDevice {
            base,
            size,
            spi: irq,
            trigger: Trigger::Level,
        }),
        SerialPlan::Port { .. } => None,
    };
    p.virtio = plan
        .devices
        .iter()
        .map(|d| MmioDevice {
            base: d.base,
            size: d.size,
            spi: d.irq,
            trigger: Trigger::Level,
        })
        .collect();
    // Passed-through devices with a node (seL4): at their physical addresses and INTIDs.
    p.passthrough = plan
        .passthrough
        .iter()
        .filter_map(|d| {
            let (compatible, reg) = d.dt.clone()?;
            Some(PassthroughNode {
                name: d.name.clone(),
                compatible,
                reg,
                spis: d.irqs.iter().map(|&i| i.saturating_sub(32)).collect(),
            })
        })
        .collect();
    p
}

/// Load the kernel `Image`, the initrd and the device tree of [`platform`] into `ram`.
pub fn load_guest(
    ram: &GuestRam,
    plan: &VmPlan,
    gic: GicVersion,
    kernel: &[u8],
    initrd: Option<&[u8]>,
) -> Result<LoadedLinux, LoadError> {
    let mut platform = platform(plan, gic);
    Ok(load_linux(ram, &mut platform, kernel, initrd)?)
}

/// A [`VgicHost`] behind a `dyn`, for the generic distributor methods.
struct DynHost<'a>(&'a mut dyn VgicHost);

impl VgicHost for DynHost<'_> {
    fn inject_list_register(&mut self, vcpu: VcpuId, lr: u8, intid: u32, priority: u8, group: u8) {
        self.0
            .inject_list_register(vcpu, lr, intid, priority, group)
    }
    fn kick(&mut self, vcpu: VcpuId) {
        self.0.kick(vcpu)
    }
    fn ack_ppi(&mut self, vcpu: VcpuId, intid: u32) {
        self.0.ack_ppi(vcpu, intid)
    }
    fn completed_spi(&mut self, vcpu: VcpuId, intid: u32) {
        self.0.completed_spi(vcpu, intid)
    }
}

struct SoftState {
    vgic: Vgic,
    psci: Psci,
    host: Box<dyn VgicHost + Send>,
}

/// How many trapped system-register accesses of a VM are logged.
pub const SYSREG_LOG_LIMIT: u32 = 8;

/// The GIC distributor, PSCI and trapped system registers of an arm64 VM whose hypervisor
/// handles none of them itself (seL4: every `hvc`, distributor access and vGIC maintenance
/// reaches the VMM). KVM's in-kernel GIC and PSCI make this unnecessary there.
pub struct SoftArm64 {
    state: spin::Mutex<SoftState>,
    vcpus: u32,
    gic: GicVersion,
    spis: u32,
    list_registers: u8,
    log: Log,
    sysregs: RateLimit,
}

impl core::fmt::Debug for SoftArm64 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SoftArm64")
            .field("vcpus", &self.vcpus)
            .finish()
    }
}

impl SoftArm64 {
    /// A GIC of `gic` version with `spis` SPIs and `list_registers` list registers per
    /// vCPU, talking to the hypervisor through `host`; PSCI with vCPU 0 on.
    pub fn new(
        vcpus: u32,
        gic: GicVersion,
        spis: u32,
        list_registers: u8,
        host: Box<dyn VgicHost + Send>,
        log: Log,
    ) -> Result<SoftArm64, VgicError> {
        Ok(SoftArm64 {
            state: spin::Mutex::new(SoftState {
                vgic: Vgic::new(gic, vcpus, spis, list_registers)?,
                psci: Psci::new(vcpus),
                host,
            }),
            vcpus,
            gic,
            spis,
            list_registers,
            log,
            sysregs: RateLimit::new(SYSREG_LOG_LIMIT),
        })
    }

    /// The input line of SPI `spi`, for a device.
    pub fn irq_line(self: &Arc<Self>, spi: u32) -> Arc<dyn IrqLine> {
        Arc::new(SoftSpi {
            soft: self.clone(),
            spi,
        })
    }

    /// The distributor's register window as a bus device, at `(base, size, device)`.
    pub fn distributor(self: &Arc<Self>) -> (u64, u64, SharedDevice) {
        (
            GIC_DIST_BASE,
            GIC_DIST_SIZE,
            Arc::new(spin::Mutex::new(Distributor(self.clone()))),
        )
    }

    /// Whether any vCPU other than `vcpu` is powered on.
    pub fn sibling_runs(&self, vcpu: VcpuId) -> bool {
        let s = self.state.lock();
        (0..self.vcpus).any(|o| {
            o != vcpu && s.psci.state(o) == Some(keel_core::arch::aarch64::psci::PowerState::On)
        })
    }

    /// Back to power-on: every interrupt idle, vCPU 0 on, the others off.
    pub fn reset(&self) -> Result<(), VgicError> {
        let mut s = self.state.lock();
        s.vgic = Vgic::new(self.gic, self.vcpus, self.spis, self.list_registers)?;
        s.psci = Psci::new(self.vcpus);
        Ok(())
    }

    /// Handle the exits this layer owns; `None` for the rest.
    pub fn handle(
        &self,
        vcpus: &dyn VcpuControl,
        ram: &GuestRam,
        vcpu: VcpuId,
        exit: &VcpuExit,
    ) -> Option<Next> {
        Some(match *exit {
            VcpuExit::Hypercall { args, .. } => {
                let mut s = self.state.lock();
                let mut host = PsciBridge {
                    vcpus,
                    ram,
                    count: self.vcpus,
                    log: &self.log,
                };
                match s.psci.handle(args, vcpu, &mut host) {
                    PsciOutcome::Return(x) => Next::run(ExitAnswer::Hypercall(x)),
                    PsciOutcome::Suspend(x) => {
                        Next::Resume(Resume::WaitForInterrupt(ExitAnswer::Hypercall(x)))
                    }
                    PsciOutcome::Off => Next::Resume(Resume::Park),
                    PsciOutcome::System(event) => Next::Stop(event),
                }
            }
            VcpuExit::SysReg { encoding, write } => {
                // Nothing Keel's guests need traps here (GICv2, no debug registers): reads
                // are zero, writes are ignored, and the first few are reported.
                let what = if write.is_some() { "write" } else { "read" };
                let allowed = self.sysregs.allow();
                if allowed.logs() {
                    self.log.log(
                        Level::Warn,
                        format_args!(
                            "vcpu {vcpu}: trapped system register {encoding:#x} {what} (RAZ/WI){}",
                            allowed.suffix()
                        ),
                    );
                }
                Next::run(match write {
                    Some(_) => ExitAnswer::None,
                    None => ExitAnswer::Read(0),
                })
            }
            VcpuExit::VgicMaintenance { lr } => {
                let mut s = self.state.lock();
                let SoftState { vgic, host, .. } = &mut *s;
                let mut host = DynHost(host.as_mut());
                match lr {
                    Some(lr) => {
                        if let Some(intid) = vgic.maintenance(vcpu, lr, &mut host) {
                            if (16..32).contains(&intid) {
                                host.ack_ppi(vcpu, intid);
                            } else if intid >= 32 {
                                host.completed_spi(vcpu, intid);
                            }
                        }
                    }
                    None => self.log.log(
                        Level::Debug,
                        format_args!("vcpu {vcpu}: vGIC maintenance without a list register"),
                    ),
                }
                Next::run(ExitAnswer::None)
            }
            VcpuExit::VirtualPpi { irq } => {
                let mut s = self.state.lock();
                let SoftState { vgic, host, .. } = &mut *s;
                vgic.inject(vcpu, irq, &mut DynHost(host.as_mut()));
                Next::run(ExitAnswer::None)
            }
            VcpuExit::Halt => Next::Resume(Resume::WaitForInterrupt(ExitAnswer::None)),
            _ => return None,
        })
    }

    /// Make interrupt `intid` (an SPI, INTID 32 and up) pending once: a physical interrupt
    /// passed through to the guest (seL4). The guest's completion of it comes back
    /// through [`VgicHost::completed_spi`].
    pub fn inject_spi(&self, intid: u32) {
        let mut s = self.state.lock();
        let SoftState { vgic, host, .. } = &mut *s;
        vgic.inject(0, intid, &mut DynHost(host.as_mut()));
    }

    fn set_spi(&self, spi: u32, level: bool) {
        let mut s = self.state.lock();
        let SoftState { vgic, host, .. } = &mut *s;
        vgic.set_spi_level(spi, level, &mut DynHost(host.as_mut()));
    }
}

/// PSCI's requests, carried out through the backend's vCPU control.
struct PsciBridge<'a> {
    vcpus: &'a dyn VcpuControl,
    ram: &'a GuestRam,
    count: u32,
    log: &'a Log,
}

impl PsciHost for PsciBridge<'_> {
    fn start_vcpu(
        &mut self,
        target: VcpuId,
        entry: u64,
        context_id: u64,
    ) -> Result<Started, StartError> {
        if target >= self.count {
            return Err(StartError::Internal);
        }
        if !self.ram.contains(GuestAddress(entry), 4) {
            return Err(StartError::InvalidAddress(entry));
        }
        self.vcpus
            .start_vcpu(
                target,
                &BootEntry::Arm64 {
                    pc: entry,
                    x0: context_id,
                },
            )
            .map_err(|e| {
                self.log.log(
                    Level::Error,
                    format_args!("PSCI CPU_ON of vcpu {target}: {e}"),
                );
                StartError::Internal
            })?;
        Ok(Started::Now)
    }

    fn stop_vcpu(&mut self, vcpu: VcpuId) {
        if let Err(e) = self.vcpus.stop_vcpu(vcpu) {
            self.log.log(
                Level::Error,
                format_args!("PSCI CPU_OFF of vcpu {vcpu}: {e}"),
            );
        }
    }

    // The outcome carries SYSTEM_OFF / SYSTEM_RESET; nothing else to do here.
    fn system_off(&mut self) {}
    fn system_reset(&mut self) {}
}

/// A device's interrupt line into the software distributor.
struct SoftSpi {
    soft: Arc<SoftArm64>,
    spi: u32,
}

impl IrqLine for SoftSpi {
    fn set_level(&self, high: bool) {
        self.soft.set_spi(self.spi, high);
    }
}

/// The distributor's registers on the MMIO bus: banked by the accessing vCPU.
struct Distributor(Arc<SoftArm64>);

impl Distributor {
    fn access_len(len: usize) -> u8 {
        u8::try_from(len).unwrap_or(0)
    }
}

impl BusDevice for Distributor {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.read_by(0, offset, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.write_by(0, offset, data)
    }

    fn read_by(&mut self, vcpu: VcpuId, offset: u64, data: &mut [u8]) {
        let len = Self::access_len(data.len());
        let s = self.0.state.lock();
        let v = match s.vgic.version() {
            GicVersion::V2 => s.vgic.v2_dist_read(vcpu, offset, len),
            GicVersion::V3 => s.vgic.v3_dist_read(vcpu, offset, len),
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write_by(&mut self, vcpu: VcpuId, offset: u64, data: &[u8]) {
        let len = Self::access_len(data.len());
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(bytes);
        let mut s = self.0.state.lock();
        let SoftState { vgic, host, .. } = &mut *s;
        let mut host = DynHost(host.as_mut());
        match vgic.version() {
            GicVersion::V2 => vgic.v2_dist_write(vcpu, offset, len, value, &mut host),
            GicVersion::V3 => vgic.v3_dist_write(vcpu, offset, len, value, &mut host),
        }
    }
}
