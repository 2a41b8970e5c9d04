//! One VM from its spec: create it, load the kernel, place devices, run the vCPUs and the
//! I/O thread, and return how the guest stopped.

use std::fs::File;
use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_core::hv::VmConfig;
use keel_core::{BootEntry, HvError, Hypervisor, SystemEvent, Vcpu, Vm};
use keel_spec::{Arch, Output, VmPlan, VmSpec};
use keel_virtio::{BlockBackend, ConsoleOutput, EntropySource, FileBackend, OsEntropy};
use keel_vmm::{
    BackendError, DeviceBackends, Interrupts, LogSink, PlacedDevice, SerialOutput, StopSink,
    VmmCore, run_vcpu,
};
use vmm_sys_util::eventfd::EventFd;

use crate::hv::{KvmHypervisor, KvmVm};
use crate::io::{self, Doorbell, IoContext};
use crate::stats::RunStats;
use crate::vcpu::{KvmVcpu, kick_handler};
use crate::{host, log};

/// virtio-mmio's QueueNotify register.
const QUEUE_NOTIFY: u64 = 0x50;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A host file named by the spec could not be used.
    #[error("{what} {path}: {reason}")]
    HostFile {
        /// Which file (`kernel`, `initrd`, `disk 0`, …).
        what: String,
        /// Its path.
        path: String,
        /// The OS's reason.
        reason: String,
    },
    /// The kernel, initrd or firmware description could not be loaded.
    #[error("vm {vm:?}: kernel {path}: {source}")]
    Load {
        /// The VM.
        vm: String,
        /// The kernel path.
        path: String,
        /// What the loader said.
        source: keel_vmm::LoadError,
    },
    /// The spec asks for something this backend does not do.
    #[error("vm {vm:?}: {what}")]
    Unsupported {
        /// The VM.
        vm: String,
        /// What.
        what: String,
    },
    /// KVM refused or failed.
    #[error("{0}")]
    Hypervisor(#[from] HvError),
    /// A host resource (thread, eventfd, signal) could not be set up.
    #[error("{0}")]
    Host(String),
}

impl VmmError {
    /// Whether the user's input (spec, files) is at fault rather than the VMM or the host:
    /// the CLI exits 2 for these, 1 for the rest.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            VmmError::HostFile { .. } | VmmError::Load { .. } | VmmError::Unsupported { .. }
        )
    }
}

/// How the guest stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExitStatus {
    /// Clean power-off.
    PowerOff,
    /// The guest wrote this code to the debug-exit port.
    ExitCode(u8),
    /// The guest asked for a reboot (i8042 reset, triple-fault-free reset event).
    Reboot,
    /// The guest crashed (triple fault).
    Crash,
}

impl From<SystemEvent> for VmExitStatus {
    fn from(e: SystemEvent) -> VmExitStatus {
        match e {
            SystemEvent::Shutdown => VmExitStatus::PowerOff,
            SystemEvent::Reset => VmExitStatus::Reboot,
            SystemEvent::Crash => VmExitStatus::Crash,
            SystemEvent::ExitCode(c) => VmExitStatus::ExitCode(c),
        }
    }
}

/// The result of [`Vmm::run`]. It owns the stopped VM, which is destroyed when the report
/// is dropped (or, with [`RunReport::leave_vm_to_process_exit`], when the process exits).
#[derive(Debug)]
pub struct RunReport {
    /// How the guest stopped.
    pub status: VmExitStatus,
    /// Measurements (always collected: they cost a few atomic adds per exit).
    pub stats: RunStats,
    /// What is left of the VM once its threads have stopped; `None` once handed to
    /// process exit.
    stopped: Option<StoppedVm>,
}

impl RunReport {
    /// Do not destroy the stopped VM when this report drops: leave it to the kernel at
    /// process exit. For a program that exits right after the run (the `keel run` CLI):
    /// closing the KVM VM fd explicitly runs `kvm_destroy_vm` synchronously, 2–12 ms on the
    /// benchmark machine, where the same destruction at process exit costs about 1 ms
    /// (bench/ANALYSIS.md, teardown). The VM's guest RAM, file descriptors and device
    /// state stay allocated until the process ends, so a program that goes on running VMs
    /// must not call this.
    pub fn leave_vm_to_process_exit(&mut self) {
        if let Some(stopped) = self.stopped.take() {
            std::mem::forget(stopped);
        }
    }
}

/// A VM whose vCPU and I/O threads have ended: the KVM VM (its fd, guest RAM) and
/// everything that holds a reference to it (interrupt lines inside the devices).
struct StoppedVm {
    _vm: Arc<KvmVm>,
    _core: Arc<VmmCore>,
}

impl std::fmt::Debug for StoppedVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoppedVm")
    }
}

/// Where guest output goes, as a `Write`.
fn open_output(output: &Output, what: &str) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match output {
        Output::Stdio => Box::new(std::io::stdout()),
        Output::Null => Box::new(std::io::sink()),
        Output::File(path) => {
            Box::new(
                File::create(path.as_path()).map_err(|e| VmmError::HostFile {
                    what: what.to_string(),
                    path: path.to_string(),
                    reason: e.to_string(),
                })?,
            )
        }
    })
}

/// The stop state shared by devices, vCPU threads and the main thread.
#[derive(Debug, Default)]
struct Control {
    outcome: Mutex<Option<Result<SystemEvent, HvError>>>,
    cond: Condvar,
    stopping: AtomicBool,
}

impl Control {
    fn finish(&self, outcome: Result<SystemEvent, HvError>) {
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if o.is_none() {
            *o = Some(outcome);
        }
        self.stopping.store(true, Ordering::Release);
        self.cond.notify_all();
    }

    fn wait(&self) -> Result<SystemEvent, HvError> {
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(outcome) = o.take() {
                return outcome;
            }
            o = self.cond.wait(o).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl StopSink for Control {
    fn guest_event(&self, event: SystemEvent) {
        self.finish(Ok(event));
    }
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// virtio-console output to a host writer.
struct HostConsoleOutput(Box<dyn Write + Send>);

impl ConsoleOutput for HostConsoleOutput {
    fn write(&mut self, bytes: &[u8]) {
        let _ = self.0.write_all(bytes).and_then(|()| self.0.flush());
    }
}

/// The UART's output to a host writer, byte by byte as the guest transmits.
struct HostSerialOutput(Box<dyn Write + Send>);

impl SerialOutput for HostSerialOutput {
    fn write(&mut self, byte: u8) {
        let _ = self.0.write_all(&[byte]).and_then(|()| self.0.flush());
    }
}

/// The host resources of a VM's devices on Linux: disk files, console outputs, the OS's
/// entropy.
struct LinuxBackends<'a> {
    spec: &'a VmSpec,
}

impl DeviceBackends for LinuxBackends<'_> {
    fn block(
        &mut self,
        _plan: &VmPlan,
        disk: usize,
    ) -> Result<Box<dyn BlockBackend>, BackendError> {
        let d = self
            .spec
            .disks
            .get(disk)
            .ok_or_else(|| BackendError::Unavailable(format!("no disk {disk}")))?;
        let backend = FileBackend::open(d.path.as_path(), d.read_only).map_err(|e| {
            BackendError::HostFile {
                what: format!("disk {disk}"),
                path: d.path.to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(Box::new(backend))
    }

    fn console(
        &mut self,
        _plan: &VmPlan,
        port: usize,
    ) -> Result<Box<dyn ConsoleOutput>, BackendError> {
        let c = self
            .spec
            .consoles
            .get(port)
            .ok_or_else(|| BackendError::Unavailable(format!("no console {port}")))?;
        let out =
            open_output(&c.output, &format!("console {port} output")).map_err(|e| match e {
                VmmError::HostFile { what, path, reason } => {
                    BackendError::HostFile { what, path, reason }
                }
                other => BackendError::Unavailable(other.to_string()),
            })?;
        Ok(Box::new(HostConsoleOutput(out)))
    }

    fn entropy(&mut self, _plan: &VmPlan) -> Result<Box<dyn EntropySource>, BackendError> {
        let source = OsEntropy::open().map_err(|e| BackendError::HostFile {
            what: "entropy source".into(),
            path: "/dev/urandom".into(),
            reason: e.to_string(),
        })?;
        Ok(Box::new(source))
    }
}

/// keel-kvm's log as a VMM log sink: `keel: …` lines on stderr.
#[derive(Debug)]
struct StderrLog;

impl LogSink for StderrLog {
    fn log(&self, level: keel_vmm::Level, args: std::fmt::Arguments<'_>) {
        match level {
            keel_vmm::Level::Error => log::error(args),
            keel_vmm::Level::Warn => log::warn(args),
            keel_vmm::Level::Info => log::info(args),
            keel_vmm::Level::Debug => log::debug(args),
        }
    }
}

/// A built VM, ready to run.
pub struct Vmm {
    name: String,
    vm: Arc<KvmVm>,
    vcpus: Vec<KvmVcpu>,
    core: Arc<VmmCore>,
    doorbells: Vec<Doorbell>,
    serial_on_stdio: bool,
    control: Arc<Control>,
    started: Instant,
    /// Host CPU of each vCPU thread (the spec's `placement.pcpus`).
    pcpus: Option<Vec<u32>>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("name", &self.name)
            .field("devices", &self.core.devices())
            .finish()
    }
}

fn read_file(what: &str, path: &keel_spec::HostPath) -> Result<Vec<u8>, VmmError> {
    std::fs::read(path.as_path()).map_err(|e| VmmError::HostFile {
        what: what.to_string(),
        path: path.to_string(),
        reason: e.to_string(),
    })
}

impl Vmm {
    /// Build the VM `spec` describes: memory, kernel, devices, vCPUs. The devices, their
    /// slots and interrupts, the firmware description and exit handling are keel-vmm's,
    /// from the spec's plan; this adds KVM and the Linux host resources.
    pub fn from_spec(spec: &VmSpec) -> Result<Vmm, VmmError> {
        let started = Instant::now();
        check_arch(spec)?;
        let plan = keel_spec::plan::plan_vm(spec).map_err(|e| VmmError::Unsupported {
            vm: spec.name.clone(),
            what: e.to_string(),
        })?;
        let kernel = read_file("kernel", &spec.kernel)?;
        let initrd = match &spec.initrd {
            Some(p) => Some(read_file("initrd", p)?),
            None => None,
        };

        let hv = KvmHypervisor::new()?;
        let vm = Arc::new(hv.create_vm(&VmConfig {
            ram: plan.ram.clone(),
            vcpus: plan.vcpus,
        })?);
        let control = Arc::new(Control::default());
        let stop: Arc<dyn StopSink> = control.clone();
        let serial_out = HostSerialOutput(open_output(&spec.serial, "serial output")?);
        let core = VmmCore::build(
            &plan,
            vm.as_ref(),
            Interrupts::InKernel,
            &mut LinuxBackends { spec },
            Box::new(serial_out),
            stop,
            Arc::new(StderrLog),
        )
        .map_err(|e| match e {
            keel_vmm::BuildError::Backend {
                source: BackendError::HostFile { what, path, reason },
                ..
            } => VmmError::HostFile { what, path, reason },
            keel_vmm::BuildError::Hypervisor(e) => VmmError::Hypervisor(e),
            other => VmmError::Host(other.to_string()),
        })?;

        // Doorbells: one ioeventfd per queue, matching the queue index.
        let mut doorbells = Vec::new();
        for (d, dev) in core.devices().iter().enumerate() {
            let queues = dev.transport.lock().num_queues();
            for q in 0..queues {
                let fd = vm.ioeventfd(dev.plan.base + QUEUE_NOTIFY, q as u32)?;
                doorbells.push(Doorbell {
                    fd,
                    device: d,
                    queue: q as u16,
                });
            }
        }

        let boot_entry = core
            .load_guest(&kernel, initrd.as_deref(), vm.gic_version())
            .map_err(|source| VmmError::Load {
                vm: spec.name.clone(),
                path: spec.kernel.to_string(),
                source,
            })?;
        log::debug(format_args!(
            "vm {:?}: entry {boot_entry:?}, devices {:?}",
            spec.name,
            core.devices()
        ));

        let mut vcpus = Vec::with_capacity(spec.vcpus as usize);
        for id in 0..spec.vcpus {
            let mut vcpu = vm.create_vcpu(id)?;
            let entry = if id == 0 {
                boot_entry
            } else {
                BootEntry::Parked
            };
            vcpu.set_boot_entry(&entry)?;
            vcpus.push(vcpu);
        }
        vm.complete_irqchip()?;
        Ok(Vmm {
            name: spec.name.clone(),
            vm,
            vcpus,
            core: Arc::new(core),
            doorbells,
            serial_on_stdio: spec.serial == Output::Stdio,
            control,
            started,
            pcpus: spec.placement.as_ref().and_then(|p| p.pcpus.clone()),
        })
    }

    /// The virtio devices, in placement order.
    pub fn devices(&self) -> &[PlacedDevice] {
        self.core.devices()
    }

    /// Run the VM until the guest stops it or the hypervisor fails. Every thread of the VM
    /// has ended when this returns; the VM itself is destroyed when the returned report
    /// drops (see [`RunReport::leave_vm_to_process_exit`]), or here on an error.
    pub fn run(self) -> Result<RunReport, VmmError> {
        let Vmm {
            name,
            vm,
            vcpus,
            core,
            doorbells,
            serial_on_stdio,
            control,
            started,
            pcpus,
        } = self;
        host::note_software_kvm();
        vmm_sys_util::signal::register_signal_handler(
            vmm_sys_util::signal::SIGRTMIN(),
            kick_handler,
        )
        .map_err(|e| VmmError::Host(format!("cannot install the vCPU kick signal: {e}")))?;
        let _raw = if serial_on_stdio {
            host::RawTerminal::enable()
        } else {
            None
        };

        let io_stop = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| VmmError::Host(format!("eventfd: {e}")))?,
        );
        let io_ctx = IoContext {
            core: core.clone(),
            doorbells,
            serial_input: serial_on_stdio,
            stop: io_stop.clone(),
            user_stop: control.clone(),
        };
        let io_thread = std::thread::Builder::new()
            .name("keel-io".into())
            .spawn(move || io::run(io_ctx))
            .map_err(|e| VmmError::Host(format!("cannot start the I/O thread: {e}")))?;

        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let (exited_tx, exited_rx) = mpsc::channel();
        for mut vcpu in vcpus {
            let core = core.clone();
            let vm = vm.clone();
            let control = control.clone();
            let id = vcpu.id();
            let pcpu = pcpus.as_ref().and_then(|p| p.get(id as usize).copied());
            let exited = ExitNotice {
                index: threads.len(),
                tx: exited_tx.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("keel-vcpu{id}"))
                .spawn(move || {
                    let _exited = exited;
                    if let Some(cpu) = pcpu {
                        if let Err(e) = host::pin_current_thread(cpu) {
                            log::warn(format_args!(
                                "vcpu {id}: cannot pin to host CPU {cpu}: {e}; running unpinned"
                            ));
                        }
                    }
                    let result = run_vcpu(&mut vcpu, &core, vm.as_ref(), control.as_ref());
                    match result {
                        Ok(Some(event)) => control.finish(Ok(event)),
                        Ok(None) => {}
                        Err(e) => control.finish(Err(e)),
                    }
                    // The vCPU fd is closed here, on its own thread, not kept for the stopped
                    // VM: measured, a VM whose vCPU fds are still open at process exit takes
                    // ~14 ms to be destroyed there instead of ~1 ms.
                    drop(vcpu);
                })
                .map_err(|e| VmmError::Host(format!("cannot start vcpu {id}: {e}")))?;
            threads.push(t);
        }

        // Only the vCPU threads' clones may keep the channel open: once all are gone,
        // every vCPU thread has left its loop.
        drop(exited_tx);

        // `Control::finish` set `control.stopping` before waking us: the vCPU loops see it.
        let outcome = control.wait();
        // Stop the I/O thread first: it ends on its own while the vCPUs are kicked.
        let _ = io_stop.write(1);
        kick_and_join(threads, &exited_rx);
        let _ = io_thread.join();
        core.report_device_errors();

        let stats = RunStats {
            wall: started.elapsed(),
            peak_rss: host::peak_rss(),
            guest_touched: vm.resident_bytes(),
            guest_ram: vm.ram().size(),
            ..RunStats::default()
        }
        .with_exits(core.stats());
        let event = outcome?;
        log::debug(format_args!("vm {name:?} stopped: {event}"));
        Ok(RunReport {
            status: event.into(),
            stats,
            stopped: Some(StoppedVm {
                _vm: vm,
                _core: core,
            }),
        })
    }
}

/// Refuse a guest architecture other than the host's: KVM runs guests of its own kind.
fn check_arch(spec: &VmSpec) -> Result<(), VmmError> {
    if Arch::host() == Some(spec.arch) {
        return Ok(());
    }
    Err(VmmError::Unsupported {
        vm: spec.name.clone(),
        what: format!(
            "arch \"{}\" cannot run on this {} host: KVM runs guests of the host's own architecture only (scripts/run-demo.sh shows the emulated arm64 host route)",
            spec.arch,
            std::env::consts::ARCH
        ),
    })
}

/// Sent by a vCPU thread (its index in the thread list) when it leaves its run loop,
/// including by a panic: the value is dropped with the thread's closure.
struct ExitNotice {
    index: usize,
    tx: Sender<usize>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.tx.send(self.index);
    }
}

/// How long a kicked vCPU thread gets to report before it is kicked again. A kick is lost
/// only when it lands before the thread's first `KVM_RUN` has published its
/// `immediate_exit` byte, so a re-kick is the rare case, not a polling loop.
const REKICK_AFTER: Duration = Duration::from_millis(2);

/// Kick every vCPU thread out of `KVM_RUN`, wait until each has reported leaving its loop
/// (`exited`, one [`ExitNotice`] per thread) and join them. The stop flag must be set
/// before the call so that a kicked thread does not enter `KVM_RUN` again.
fn kick_and_join(threads: Vec<JoinHandle<()>>, exited: &Receiver<usize>) {
    let sig = vmm_sys_util::signal::SIGRTMIN();
    let kick = |t: &JoinHandle<()>| {
        // SAFETY: the thread has not been joined, so its pthread_t is valid; the signal
        // has a handler installed, so it cannot kill the process.
        unsafe { libc::pthread_kill(t.as_pthread_t() as libc::pthread_t, sig) };
    };
    let mut running = vec![true; threads.len()];
    let mut left = threads.len();
    threads.iter().for_each(kick);
    let started = Instant::now();
    let mut warned = false;
    while left > 0 {
        match exited.recv_timeout(REKICK_AFTER) {
            Ok(index) => {
                if let Some(r) = running.get_mut(index).filter(|r| **r) {
                    *r = false;
                    left -= 1;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                threads
                    .iter()
                    .zip(&running)
                    .filter(|(_, r)| **r)
                    .for_each(|(t, _)| kick(t));
                if !warned && started.elapsed() >= Duration::from_secs(5) {
                    log::warn(format_args!("a vCPU thread does not stop; still waiting"));
                    warned = true;
                }
            }
            // Every sender is gone: every thread has left its loop.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    for t in threads {
        let _ = t.join();
    }
}
