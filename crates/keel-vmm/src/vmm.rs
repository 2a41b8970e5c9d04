//! [`VmmCore`]: one VM's devices, platform and exit handling, built from its plan.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use keel_core::arch::aarch64::layout::GicVersion;
use keel_core::bus::SharedDevice;
use keel_core::{
    BootEntry, ExitAnswer, GuestRam, HvError, IrqLine, Resume, SystemEvent, Vcpu, VcpuExit, VcpuId,
    Vm, VmEvent, VmExits,
};
use keel_spec::plan::SerialPlan;
use keel_spec::{Access, Arch, VmPlan};

use crate::arm64::SoftArm64;
use crate::devices::{DeviceBackends, PlacedDevice, build_device};
use crate::dispatch::{ExitDispatcher, ExitStats, Next, ReadOnlyRegion};
use crate::log::{Level, Log};
use crate::serial::{Serial8250, SerialOutput};
use crate::stop::StopSink;
use crate::{BuildError, LoadError, VcpuControl};

/// What [`VmmCore::load_guest`] put into guest RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedGuest {
    /// Where the boot vCPU starts.
    pub entry: BootEntry,
    /// `(gpa, len)` of the kernel, initrd and device tree written (arm64; empty on x86,
    /// whose caches are coherent with a guest that starts with paging off).
    pub written: Vec<(u64, u64)>,
}

/// Who models the interrupt controller.
#[derive(Clone, Debug)]
pub enum Interrupts {
    /// The hypervisor does (KVM's in-kernel irqchip / vGIC, PSCI): device lines are the
    /// VM's [`Vm::irq_line`]s.
    InKernel,
    /// The VMM does (seL4 on arm64): device lines go into this software GIC, which also
    /// answers PSCI calls and vGIC maintenance.
    Soft(Arc<SoftArm64>),
}

/// One VM's devices, platform and exit handling, built from its plan. Shared by reference
/// between the vCPU threads of a thread-per-vCPU backend: every platform device sits behind
/// its own lock; a virtio transport keeps its own (a short one for its registers, another
/// for queue work), so no register access waits for a device's I/O.
pub struct VmmCore {
    plan: VmPlan,
    exits: ExitDispatcher,
    devices: Vec<PlacedDevice>,
    serial: Arc<spin::Mutex<Serial8250>>,
    soft: Option<Arc<SoftArm64>>,
    ram: GuestRam,
    log: Log,
}

impl core::fmt::Debug for VmmCore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmmCore")
            .field("vm", &self.plan.name)
            .field("devices", &self.devices)
            .finish()
    }
}

impl VmmCore {
    /// Build the platform and the devices of `plan` in `vm`: the UART writing to
    /// `serial_out`, the arch's platform devices reporting to `stop`, and every planned
    /// virtio device with the host resources of `backends`.
    pub fn build<V: Vm>(
        plan: &VmPlan,
        vm: &V,
        interrupts: Interrupts,
        backends: &mut dyn DeviceBackends,
        serial_out: Box<dyn SerialOutput>,
        stop: Arc<dyn StopSink>,
        log: Log,
    ) -> Result<VmmCore, BuildError> {
        let soft = match &interrupts {
            Interrupts::InKernel => None,
            Interrupts::Soft(s) => Some(s.clone()),
        };
        let line = |irq: u32| -> Result<Arc<dyn IrqLine>, HvError> {
            match &soft {
                None => vm.irq_line(irq),
                Some(s) => Ok(s.irq_line(irq)),
            }
        };
        let mut exits = ExitDispatcher::new(log.clone());
        // The hypervisor maps these read-only; a guest write exits here and is reported.
        for m in plan.shared.iter().filter(|m| m.access == Access::ReadOnly) {
            exits.add_read_only(ReadOnlyRegion {
                name: m.region.clone(),
                base: m.base,
                size: m.size,
            });
        }
        let serial_irq = match plan.serial {
            SerialPlan::Port { irq, .. } | SerialPlan::Mmio { irq, .. } => irq,
        };
        let serial = Arc::new(spin::Mutex::new(Serial8250::new(
            line(serial_irq)?,
            serial_out,
        )));
        let serial_dev: SharedDevice = serial.clone();
        match plan.serial {
            SerialPlan::Port { port, .. } => exits.pio.insert(port.into(), 8, serial_dev)?,
            SerialPlan::Mmio { base, size, .. } => exits.mmio.insert(base, size, serial_dev)?,
        }
        if plan.arch == Arch::X86_64 {
            crate::x86::place_platform(&mut exits, &stop, &log)?;
        }
        if let Some(s) = &soft {
            let (base, size, dist) = s.distributor();
            exits.mmio.insert(base, size, dist)?;
        }
        let mut devices = Vec::with_capacity(plan.devices.len());
        // The devices see guest RAM through the memory interface (mapped here: zero-copy).
        let memory: keel_core::memory::GuestMemoryRef = Arc::new(vm.ram().clone());
        for d in &plan.devices {
            let (placed, bus_device) =
                build_device(plan, d, backends, memory.clone(), line(d.irq)?).map_err(
                    |source| BuildError::Backend {
                        vm: plan.name.clone(),
                        source,
                    },
                )?;
            exits.mmio.insert_sync(d.base, d.size, bus_device)?;
            devices.push(placed);
        }
        Ok(VmmCore {
            plan: plan.clone(),
            exits,
            devices,
            serial,
            soft,
            ram: vm.ram().clone(),
            log,
        })
    }

    /// Write the kernel, the initrd and the firmware description (arm64: the device tree,
    /// with the GIC `gic`; x86: command line, MP and ACPI tables) into guest RAM; return
    /// the boot vCPU's entry and, on arm64, the ranges written (a VMM whose guest starts
    /// with caches off cleans them to the point of coherency).
    pub fn load_guest(
        &self,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        gic: GicVersion,
    ) -> Result<LoadedGuest, LoadError> {
        match self.plan.arch {
            Arch::X86_64 => Ok(LoadedGuest {
                entry: crate::x86::load_guest(&self.ram, &self.plan, kernel, initrd)?,
                written: Vec::new(),
            }),
            Arch::Aarch64 => {
                let loaded = crate::arm64::load_guest(&self.ram, &self.plan, gic, kernel, initrd)?;
                let boot = loaded.layout;
                let mut written = alloc::vec![(boot.kernel, kernel.len() as u64)];
                if let Some((start, end)) = boot.initrd {
                    written.push((start, end - start));
                }
                written.push((boot.fdt, loaded.fdt_len as u64));
                Ok(LoadedGuest {
                    entry: loaded.entry(),
                    written,
                })
            }
        }
    }

    /// Answer one exit of `vcpu`: arch policy first (PSCI, vGIC, trapped registers where
    /// the VMM owns them), then the buses.
    pub fn handle(&self, vcpus: &dyn VcpuControl, vcpu: VcpuId, exit: VcpuExit) -> Next {
        if let Some(soft) = &self.soft {
            if let Some(next) = soft.handle(vcpus, &self.ram, vcpu, &exit) {
                return next;
            }
        }
        if let Some(next) = self.exits.handle(vcpu, &exit) {
            return next;
        }
        match exit {
            // A hypervisor that waits by itself never reports `Halt`; one that does not
            // lets the vCPU wait for its next interrupt.
            VcpuExit::Halt => Next::Resume(Resume::WaitForInterrupt(ExitAnswer::None)),
            other => {
                self.log.log(
                    Level::Error,
                    format_args!("vcpu {vcpu}: unexpected exit {other:?}; stopping the VM"),
                );
                Next::Stop(SystemEvent::Crash)
            }
        }
    }

    /// The plan this VM was built from.
    pub fn plan(&self) -> &VmPlan {
        &self.plan
    }

    /// The virtio devices, in slot order.
    pub fn devices(&self) -> &[PlacedDevice] {
        &self.devices
    }

    /// The platform UART (host input goes in here).
    pub fn serial(&self) -> &Arc<spin::Mutex<Serial8250>> {
        &self.serial
    }

    /// Exit counters.
    pub fn stats(&self) -> &Arc<ExitStats> {
        &self.exits.stats
    }

    /// The software interrupt controller, where the VMM models it.
    pub fn soft_arm64(&self) -> Option<&Arc<SoftArm64>> {
        self.soft.as_ref()
    }

    /// This VM's log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Deliver a QueueNotify of `queue` to device `index` (a doorbell the hypervisor
    /// caught without an exit, e.g. a KVM ioeventfd).
    pub fn notify(&self, index: usize, queue: u16) {
        if let Some(d) = self.devices.get(index) {
            d.notify(queue, &self.log);
        }
    }

    /// Log every device's pending error.
    pub fn report_device_errors(&self) {
        for d in &self.devices {
            d.report_error(&self.log);
        }
    }

    /// A VM reset: every device and the UART back to power-on (backends keep their data),
    /// the software GIC and PSCI too. The caller reloads the guest and restarts vCPU 0.
    pub fn reset(&self) -> Result<(), BuildError> {
        for d in &self.devices {
            d.transport.reset();
        }
        self.serial.lock().reset();
        if let Some(s) = &self.soft {
            s.reset()?;
        }
        Ok(())
    }
}

/// Run `vcpu` on its own thread until the guest stops the VM, `stop` says so, or the
/// hypervisor fails (the thread-per-vCPU shape: KVM). Returns the guest's event if this
/// vCPU saw it; `Ok(None)` when another thread stopped the VM or the vCPU was parked.
pub fn run_vcpu<V: Vcpu>(
    vcpu: &mut V,
    core: &VmmCore,
    vcpus: &dyn VcpuControl,
    stop: &dyn StopSink,
) -> Result<Option<SystemEvent>, HvError> {
    let mut answer = ExitAnswer::None;
    loop {
        if stop.stopping() {
            return Ok(None);
        }
        let exit = vcpu.run(answer)?;
        match core.handle(vcpus, vcpu.id(), exit) {
            // The hypervisor waits for interrupts in `run` itself.
            Next::Resume(Resume::Run(a) | Resume::WaitForInterrupt(a)) => answer = a,
            Next::Resume(Resume::Park) => return Ok(None),
            Next::Stop(event) => return Ok(Some(event)),
        }
    }
}

/// Run a VM whose exits all arrive at one place (the single-threaded shape: seL4's fault
/// endpoint) until the guest stops it, `stop` says so (a platform device reported the
/// guest's request there: `Ok(None)`), or the hypervisor fails. Host events go to
/// `notified` (device event sources).
pub fn run_exits<E: VmExits>(
    exits: &mut E,
    core: &VmmCore,
    vcpus: &dyn VcpuControl,
    stop: &dyn StopSink,
    mut notified: impl FnMut(u64),
) -> Result<Option<SystemEvent>, HvError> {
    loop {
        match exits.next()? {
            VmEvent::Exit { vcpu, exit } => match core.handle(vcpus, vcpu, exit) {
                Next::Resume(resume) => {
                    if stop.stopping() {
                        return Ok(None);
                    }
                    exits.complete(vcpu, resume)?
                }
                Next::Stop(event) => return Ok(Some(event)),
            },
            VmEvent::Notified(bits) => notified(bits),
        }
    }
}
