//! A fake hypervisor for conformance tests: scripted exits go through the real
//! [`VmmCore`](crate::VmmCore) and every answer, interrupt and vCPU start is recorded. It
//! serves both exit shapes: a [`FakeVcpu`] per thread ([`Vcpu::run`]) and one [`FakeExits`]
//! per VM ([`VmExits`]). Backend adapters test their mapping of native events onto the
//! same types against it.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use keel_core::hv::VmConfig;
use keel_core::irq::RecordingIrq;
use keel_core::{
    BootEntry, ExitAnswer, GuestRam, HvError, Hypervisor, IrqLine, Resume, SystemEvent, Vcpu,
    VcpuExit, VcpuId, Vm, VmEvent, VmExits,
};
use keel_spec::VmPlan;
use keel_virtio::{BlockBackend, ConsoleOutput, EntropyError, EntropySource, MemoryBackend};

use crate::devices::{BackendError, DeviceBackends};
use crate::log::{Level, LogSink};
use crate::serial::SerialOutput;
use crate::stop::StopSink;

/// What the fake hypervisor saw the VMM do.
#[derive(Debug, Default)]
pub struct Record {
    /// `(vcpu, entry)` of every vCPU the VMM started.
    pub started: Vec<(VcpuId, BootEntry)>,
    /// vCPUs the VMM stopped.
    pub stopped: Vec<VcpuId>,
    /// `(vcpu, resume)` of every completed exit.
    pub completed: Vec<(VcpuId, Resume)>,
}

/// A fake hypervisor.
#[derive(Debug, Default)]
pub struct FakeHypervisor;

impl Hypervisor for FakeHypervisor {
    type Vm = FakeVm;

    fn name(&self) -> &'static str {
        "fake"
    }

    fn create_vm(&self, config: &VmConfig) -> Result<FakeVm, HvError> {
        FakeVm::new(&config.ram)
    }
}

/// The interrupt lines devices asked for: `(irq, line)`.
type Lines = Vec<(u32, Arc<RecordingIrq>)>;

/// A VM of the fake hypervisor: anonymous RAM, recording interrupt lines.
#[derive(Clone, Debug)]
pub struct FakeVm {
    ram: GuestRam,
    lines: Arc<spin::Mutex<Lines>>,
    /// What the VMM did.
    pub record: Arc<spin::Mutex<Record>>,
}

impl FakeVm {
    /// A VM with RAM at `layout` (`(gpa, size)` regions).
    pub fn new(layout: &[(u64, u64)]) -> Result<FakeVm, HvError> {
        let ram = GuestRam::anonymous(layout).map_err(|_| HvError::Invalid {
            what: "RAM layout",
            value: layout.len() as u64,
        })?;
        Ok(FakeVm {
            ram,
            lines: Default::default(),
            record: Default::default(),
        })
    }

    /// The line of interrupt `irq`, if a device asked for it.
    pub fn line(&self, irq: u32) -> Option<Arc<RecordingIrq>> {
        self.lines
            .lock()
            .iter()
            .find(|(i, _)| *i == irq)
            .map(|(_, l)| l.clone())
    }
}

impl Vm for FakeVm {
    type Vcpu = FakeVcpu;

    fn ram(&self) -> &GuestRam {
        &self.ram
    }

    fn create_vcpu(&self, id: VcpuId) -> Result<FakeVcpu, HvError> {
        Ok(FakeVcpu::new(id, Vec::new()))
    }

    fn irq_line(&self, irq: u32) -> Result<Arc<dyn IrqLine>, HvError> {
        let line = Arc::new(RecordingIrq::new());
        self.lines.lock().push((irq, line.clone()));
        Ok(line)
    }

    fn start_vcpu(&self, id: VcpuId, entry: &BootEntry) -> Result<(), HvError> {
        self.record.lock().started.push((id, *entry));
        Ok(())
    }

    fn stop_vcpu(&self, id: VcpuId) -> Result<(), HvError> {
        self.record.lock().stopped.push(id);
        Ok(())
    }
}

/// A vCPU that replays scripted exits and records the answers it was given.
#[derive(Debug)]
pub struct FakeVcpu {
    id: VcpuId,
    script: VecDeque<VcpuExit>,
    ran: bool,
    /// The answer given with each `run` after the first (one per scripted exit).
    pub answers: Vec<ExitAnswer>,
}

impl FakeVcpu {
    /// vCPU `id` that will exit with `script`, then power the VM off.
    pub fn new(id: VcpuId, script: Vec<VcpuExit>) -> FakeVcpu {
        FakeVcpu {
            id,
            script: script.into(),
            ran: false,
            answers: Vec::new(),
        }
    }
}

impl Vcpu for FakeVcpu {
    fn id(&self) -> VcpuId {
        self.id
    }

    fn set_boot_entry(&mut self, _entry: &BootEntry) -> Result<(), HvError> {
        Ok(())
    }

    fn run(&mut self, answer: ExitAnswer) -> Result<VcpuExit, HvError> {
        if self.ran {
            self.answers.push(answer);
        }
        self.ran = true;
        Ok(self
            .script
            .pop_front()
            .unwrap_or(VcpuExit::System(SystemEvent::Shutdown)))
    }
}

/// A per-VM exit source replaying `(vcpu, exit)` pairs (and host notifications).
#[derive(Debug)]
pub struct FakeExits {
    script: VecDeque<VmEvent>,
    /// What the VMM answered, in order.
    pub completed: Vec<(VcpuId, Resume)>,
}

impl FakeExits {
    /// Events to deliver, then a power-off of vCPU 0.
    pub fn new(script: Vec<VmEvent>) -> FakeExits {
        FakeExits {
            script: script.into(),
            completed: Vec::new(),
        }
    }
}

impl VmExits for FakeExits {
    fn next(&mut self) -> Result<VmEvent, HvError> {
        Ok(self.script.pop_front().unwrap_or(VmEvent::Exit {
            vcpu: 0,
            exit: VcpuExit::System(SystemEvent::Shutdown),
        }))
    }

    fn complete(&mut self, vcpu: VcpuId, resume: Resume) -> Result<(), HvError> {
        self.completed.push((vcpu, resume));
        Ok(())
    }
}

/// Output collected in memory (serial, consoles).
#[derive(Clone, Debug, Default)]
pub struct Collected(pub Arc<spin::Mutex<Vec<u8>>>);

impl Collected {
    /// What was written, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl SerialOutput for Collected {
    fn write(&mut self, byte: u8) {
        self.0.lock().push(byte);
    }
}

impl ConsoleOutput for Collected {
    fn write(&mut self, bytes: &[u8]) {
        self.0.lock().extend_from_slice(bytes);
    }
}

/// Entropy that is a counter (tests only).
#[derive(Debug, Default)]
pub struct CountingEntropy(u8);

impl EntropySource for CountingEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

/// Host resources in memory: disks of `disk_size` zero bytes, consoles collected.
#[derive(Debug, Default)]
pub struct MemoryBackends {
    /// Size of every disk.
    pub disk_size: usize,
    /// Output of console port `i`.
    pub consoles: Vec<Collected>,
}

impl DeviceBackends for MemoryBackends {
    fn block(&mut self, plan: &VmPlan, disk: usize) -> Result<Box<dyn BlockBackend>, BackendError> {
        let d = plan
            .disks
            .get(disk)
            .ok_or_else(|| BackendError::Unavailable(alloc::format!("no disk {disk}")))?;
        let data = alloc::vec![0u8; self.disk_size];
        Ok(if d.read_only {
            Box::new(MemoryBackend::read_only(data))
        } else {
            Box::new(MemoryBackend::new(data))
        })
    }

    fn console(
        &mut self,
        _plan: &VmPlan,
        port: usize,
    ) -> Result<Box<dyn ConsoleOutput>, BackendError> {
        while self.consoles.len() <= port {
            self.consoles.push(Collected::default());
        }
        Ok(Box::new(self.consoles[port].clone()))
    }

    fn entropy(&mut self, _plan: &VmPlan) -> Result<Box<dyn EntropySource>, BackendError> {
        Ok(Box::new(CountingEntropy::default()))
    }
}

/// A stop sink that records guest events.
#[derive(Debug, Default)]
pub struct RecordingStop(pub spin::Mutex<Vec<SystemEvent>>);

impl StopSink for RecordingStop {
    fn guest_event(&self, event: SystemEvent) {
        self.0.lock().push(event);
    }
    fn stopping(&self) -> bool {
        !self.0.lock().is_empty()
    }
}

/// A log that keeps its lines.
#[derive(Debug, Default)]
pub struct RecordingLog(pub spin::Mutex<Vec<(Level, String)>>);

impl LogSink for RecordingLog {
    fn log(&self, level: Level, args: core::fmt::Arguments<'_>) {
        self.0.lock().push((level, alloc::format!("{args}")));
    }
}
