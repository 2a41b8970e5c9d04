//! One VM from its spec: create it, load the kernel, place devices, run the vCPUs and the
//! I/O thread, and return how the guest stopped.

use std::fs::File;
use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_core::hv::VmConfig;
use keel_core::restart::{RestartLimiter, RestartVerdict};
use keel_core::{BootEntry, HvError, Hypervisor, SystemEvent, Vcpu, Vm};
use keel_spec::{Arch, OnReboot, Output, VmPlan, VmSpec};
use keel_virtio::console::ConsoleInput;
use keel_virtio::host::FdConsoleInput;
use keel_virtio::{BlockBackend, ConsoleOutput, EntropySource, FileBackend, OsEntropy};
use keel_vmm::{
    BackendError, DeviceBackends, Interrupts, LogSink, PlacedDevice, SerialOutput, StopSink,
    VmmCore, run_vcpu,
};
use vmm_sys_util::eventfd::EventFd;

use crate::hv::{KvmHypervisor, KvmVm};
use crate::io::{self, Doorbell, DoorbellNotifier, IoContext};
use crate::placement::{self, Cgroup, CgroupScope, HostPlacement};
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

/// Why this backend refuses `spec`, if it does: passed-through devices (`[[vm.passthrough]]`)
/// and fixed physical RAM (`ram_phys_addr`) are seL4 only; no fake is offered here.
pub fn kvm_refusal(spec: &VmSpec) -> Option<String> {
    if let Some(d) = spec.passthrough.first() {
        return Some(format!(
            "passthrough {:?}: passthrough needs VFIO, which this backend does not have (passed-through devices run on seL4: keel sel4 build)",
            d.name
        ));
    }
    spec.ram_phys_addr.map(|p| {
        format!(
            "ram_phys_addr = {p:#x}: a user-space VMM cannot choose the physical pages behind guest RAM (seL4 only: keel sel4 build)"
        )
    })
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
    /// The guest reset more than `max_restarts_per_minute` times within a minute and
    /// [`run_vm`] stopped it instead of restarting it again.
    RestartLimit {
        /// Resets within the last minute, the one that stopped the VM included.
        resets: u32,
    },
    /// The VM was stopped from outside, by [`VmHandle::stop`].
    HostStop,
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

/// The result of [`Vmm::run`] and [`run_vm`]. It owns the (last) stopped VM, which is destroyed when the report
/// is dropped (or, with [`RunReport::leave_vm_to_process_exit`], when the process exits).
#[derive(Debug)]
pub struct RunReport {
    /// How the guest stopped.
    pub status: VmExitStatus,
    /// Measurements of the last run (always collected: they cost a few atomic adds per
    /// exit).
    pub stats: RunStats,
    /// How often [`run_vm`] restarted the VM after a guest reset (0 from [`Vmm::run`]).
    pub restarts: u32,
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

/// A guest output opened once and shared by every run of a VM: after a restart the new
/// VM's devices write on where the old ones stopped (a `file:` output is not truncated
/// again).
#[derive(Clone)]
struct SharedOutput(Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedOutput {
    fn open(output: &Output, what: &str) -> Result<SharedOutput, VmmError> {
        Ok(SharedOutput(Arc::new(Mutex::new(open_output(
            output, what,
        )?))))
    }

    fn boxed(&self) -> Box<dyn Write + Send> {
        Box::new(self.clone())
    }
}

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// The outputs of one VM (serial, then each virtio-console), kept across restarts.
struct VmOutputs {
    serial: SharedOutput,
    consoles: Vec<SharedOutput>,
    /// The vsock device's host socket (`[vm.vsock] socket`), bound once.
    vsock: Option<crate::vsock::SharedVsockHost>,
}

impl VmOutputs {
    fn open(spec: &VmSpec) -> Result<VmOutputs, VmmError> {
        Ok(VmOutputs {
            serial: SharedOutput::open(&spec.serial, "serial output")?,
            consoles: spec
                .consoles
                .iter()
                .enumerate()
                .map(|(i, c)| SharedOutput::open(&c.output, &format!("console {i} output")))
                .collect::<Result<_, _>>()?,
            vsock: match spec.vsock.as_ref().and_then(|v| v.socket.as_ref()) {
                None => None,
                Some(path) => Some(crate::vsock::SharedVsockHost::new(
                    crate::vsock::UnixVsockHost::bind(path.as_path()).map_err(|e| {
                        VmmError::HostFile {
                            what: "vsock socket".into(),
                            path: path.to_string(),
                            reason: e.to_string(),
                        }
                    })?,
                )),
            },
        })
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
    outputs: &'a VmOutputs,
    network: Option<&'a VmNetwork>,
}

/// A VM's network interfaces on Linux: its plan from the whole system (the interfaces
/// know their network, port and MAC) and, per interface, the port's shared ring windows
/// (mapped once, kept across restarts) and eventfds, as `keel up` handed them over.
pub struct VmNetwork {
    plan: VmPlan,
    ports: Vec<Arc<MappedPort>>,
    /// The vsock device's links to its peers (`plan.vsock.peers`, in order): two frame
    /// rings each, shared with the peer's VMM.
    vsock_peers: Vec<Arc<MappedPort>>,
    /// The shared regions' mappings, in the order of `plan.shared` (kept across restarts).
    shared: Vec<Arc<crate::net::Mapping>>,
    /// Per served disk (by disk index): its forwarding region, mapped in this process.
    forward_clients: Vec<(usize, Arc<MappedLink>)>,
    /// A storage VM's doorbell descriptors.
    forward_server: Option<crate::forward::ServerFds>,
}

/// A client VMM's end of one forwarding link: the region mapped here, and its eventfds.
struct MappedLink {
    region: crate::net::Mapping,
    bell: EventFd,
    wake: EventFd,
}

/// A served disk's bell: rings the storage VM, and holds the mapping the device's rings
/// live in (the device drops its rings before its bell).
struct LinuxForwardBell {
    bell: EventFd,
    _mapped: Arc<MappedLink>,
}

impl keel_virtio::forward_blk::ForwardBell for LinuxForwardBell {
    fn ring(&mut self) {
        // Fails only if the counter would overflow: the storage VM is signalled either way.
        let _ = self.bell.write(1);
    }
}

/// Milliseconds since the VMM started, for a forwarded disk's timeouts.
struct MonotonicClock(std::time::Instant);

impl keel_virtio::forward_blk::Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl std::fmt::Debug for VmNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmNetwork")
            .field("vm", &self.plan.name)
            .field("ports", &self.ports.len())
            .finish()
    }
}

/// One port's host side in a VMM process.
struct MappedPort {
    to_switch: crate::net::Mapping,
    from_switch: crate::net::Mapping,
    ring_peer: EventFd,
    wait_on: EventFd,
    slots: u64,
}

impl VmNetwork {
    /// The interfaces of `plan` (from `keel_spec::plan::plan_vm_of`) over `ports`, one per
    /// `plan.nics` entry in order: each window must be exactly the planned ring size.
    pub fn new(plan: VmPlan, ports: Vec<crate::net::PortFds>) -> Result<VmNetwork, VmmError> {
        if ports.len() != plan.nics.len() {
            return Err(VmmError::Host(format!(
                "vm {:?}: {} network ports given for {} interfaces",
                plan.name,
                ports.len(),
                plan.nics.len()
            )));
        }
        let mut mapped = Vec::with_capacity(ports.len());
        for (i, (p, nic)) in ports.into_iter().zip(&plan.nics).enumerate() {
            let want = keel_spec::plan::ring_window_len(nic.slots);
            let bad = |what: &str| VmmError::Host(format!("vm {:?}: net {i}: {what}", plan.name));
            for (m, what) in [(&p.to_switch, "to-switch"), (&p.from_switch, "from-switch")] {
                if m.len() as u64 != want {
                    return Err(bad(&format!(
                        "{what} window is {} bytes, the plan says {want}",
                        m.len()
                    )));
                }
            }
            let map = |m: &crate::net::SharedMemory| {
                m.map()
                    .map_err(|e| bad(&format!("cannot map a ring window: {e}")))
            };
            mapped.push(Arc::new(MappedPort {
                to_switch: map(&p.to_switch)?,
                from_switch: map(&p.from_switch)?,
                ring_peer: p.ring_peer,
                wait_on: p.wait_on,
                slots: u64::from(nic.slots),
            }));
        }
        Ok(VmNetwork {
            plan,
            ports: mapped,
            vsock_peers: Vec::new(),
            shared: Vec::new(),
            forward_clients: Vec::new(),
            forward_server: None,
        })
    }

    /// The VM's block-forwarding descriptors (docs/driver-vms.md): `clients`, one per
    /// served disk of the plan in disk order (each region exactly the planned size), and,
    /// for a storage VM, `server` (a wake-up per client it serves).
    pub fn with_forwarding(
        mut self,
        clients: Vec<crate::forward::ClientLinkFds>,
        server: Option<crate::forward::ServerFds>,
    ) -> Result<VmNetwork, VmmError> {
        let name = self.plan.name.clone();
        let served: Vec<(usize, u64)> = self
            .plan
            .disks
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.served.as_ref().map(|s| (i, s.region_len)))
            .collect();
        if clients.len() != served.len() {
            return Err(VmmError::Host(format!(
                "vm {name:?}: {} forwarding links given for {} served disks",
                clients.len(),
                served.len()
            )));
        }
        for (c, (disk, want)) in clients.into_iter().zip(served) {
            if c.region.len() as u64 != want {
                return Err(VmmError::Host(format!(
                    "vm {name:?}: disk {disk}: forwarding region is {} bytes, the plan says {want}",
                    c.region.len()
                )));
            }
            let region = c.region.map().map_err(|e| {
                VmmError::Host(format!(
                    "vm {name:?}: disk {disk}: cannot map its forwarding region: {e}"
                ))
            })?;
            self.forward_clients.push((
                disk,
                Arc::new(MappedLink {
                    region,
                    bell: c.bell,
                    wake: c.wake,
                }),
            ));
        }
        match &server {
            Some(s) if s.clients.len() != self.plan.serves.len() => {
                return Err(VmmError::Host(format!(
                    "vm {name:?}: {} client wake-ups given for {} clients served",
                    s.clients.len(),
                    self.plan.serves.len()
                )));
            }
            None if !self.plan.serves.is_empty() => {
                return Err(VmmError::Host(format!(
                    "vm {name:?}: it serves disks but was given no doorbell (run the system with `keel up`)"
                )));
            }
            _ => {}
        }
        self.forward_server = server;
        Ok(self)
    }

    /// The vsock device's links, one per `plan.vsock.peers` entry in order (as `keel up`
    /// handed them over: this VM's ring to the peer, the peer's ring to it, the peer's
    /// eventfd, its own), each window exactly `ring_window_len(VSOCK_RING_SLOTS)` bytes.
    pub fn with_vsock_peers(
        mut self,
        links: Vec<crate::net::PortFds>,
    ) -> Result<VmNetwork, VmmError> {
        let want_links = self.plan.vsock.as_ref().map_or(0, |v| v.peers.len());
        if links.len() != want_links {
            return Err(VmmError::Host(format!(
                "vm {:?}: {} vsock links given for {want_links} vsock peers",
                self.plan.name,
                links.len()
            )));
        }
        let slots = keel_spec::plan::VSOCK_RING_SLOTS;
        let want = keel_spec::plan::ring_window_len(slots);
        for (i, p) in links.into_iter().enumerate() {
            let bad = |what: String| {
                VmmError::Host(format!("vm {:?}: vsock peer {i}: {what}", self.plan.name))
            };
            for m in [&p.to_switch, &p.from_switch] {
                if m.len() as u64 != want {
                    return Err(bad(format!(
                        "ring window is {} bytes, the plan says {want}",
                        m.len()
                    )));
                }
            }
            let map = |m: &crate::net::SharedMemory| {
                m.map()
                    .map_err(|e| bad(format!("cannot map a ring window: {e}")))
            };
            self.vsock_peers.push(Arc::new(MappedPort {
                to_switch: map(&p.to_switch)?,
                from_switch: map(&p.from_switch)?,
                ring_peer: p.ring_peer,
                wait_on: p.wait_on,
                slots: u64::from(slots),
            }));
        }
        Ok(self)
    }

    /// The memory files of the plan's shared regions, one per `plan.shared` entry in
    /// order (each exactly the planned size), mapped `MAP_SHARED` once here; every build
    /// of the VM registers them as memory slots at their planned bases.
    pub fn with_shared(
        mut self,
        regions: Vec<crate::net::SharedMemory>,
    ) -> Result<VmNetwork, VmmError> {
        if regions.len() != self.plan.shared.len() {
            return Err(VmmError::Host(format!(
                "vm {:?}: {} shared memory files given for {} shared regions",
                self.plan.name,
                regions.len(),
                self.plan.shared.len()
            )));
        }
        for (file, m) in regions.iter().zip(&self.plan.shared) {
            let bad = |what: String| {
                VmmError::Host(format!(
                    "vm {:?}: shared region {:?}: {what}",
                    self.plan.name, m.region
                ))
            };
            if file.len() as u64 != m.size {
                return Err(bad(format!(
                    "memory file is {} bytes, the plan says {}",
                    file.len(),
                    m.size
                )));
            }
            let mapping = file
                .map()
                .map_err(|e| bad(format!("cannot map its memory file: {e}")))?;
            self.shared.push(Arc::new(mapping));
        }
        Ok(self)
    }

    /// The eventfds the VM's I/O threads wait on (one per interface, one per served
    /// disk: its wake-up).
    fn eventfds(&self) -> Vec<RawFd> {
        use std::os::fd::AsRawFd;
        self.ports
            .iter()
            .chain(&self.vsock_peers)
            .map(|p| p.wait_on.as_raw_fd())
            .chain(self.forward_clients.iter().map(|(_, l)| l.wake.as_raw_fd()))
            .collect()
    }
}

/// A port's VMM side as a virtio-net backend, holding the mappings its rings live in.
struct LinuxNetPort {
    // Declared first: dropped before the mappings it points into.
    port: keel_net::port::VmmPort,
    _mapped: Arc<MappedPort>,
}

impl keel_virtio::net::NetBackend for LinuxNetPort {
    fn send(&mut self, frame: &[u8]) -> Result<(), keel_virtio::net::NetError> {
        self.port.send(frame)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.port.recv(buf)
    }
    fn event_source(&self) -> Option<keel_virtio::device::EventSource> {
        self.port.event_source()
    }
    fn backlogged(&self) -> bool {
        self.port.backlogged()
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        keel_virtio::net::NetBackend::counters(&self.port)
    }
}

impl LinuxBackends<'_> {
    /// Disk `disk`'s client end of its forwarding link.
    fn forward_link(
        &self,
        disk: usize,
        served: &keel_spec::plan::ServedDiskPlan,
    ) -> Result<keel_virtio::ForwardLink, BackendError> {
        use std::os::fd::AsRawFd;
        let unavailable = |what: String| BackendError::Unavailable(what);
        let mapped = self
            .network
            .and_then(|n| n.forward_clients.iter().find(|(d, _)| *d == disk))
            .map(|(_, m)| m.clone())
            .ok_or_else(|| {
                unavailable(format!(
                    "vm {:?}: disk {disk} is served by vm {:?}: run the system with `keel up`",
                    self.spec.name, served.server
                ))
            })?;
        let geometry = keel_virtio::forward::ForwardGeometry {
            slots: served.slots,
            max_data: served.max_data as usize,
        };
        // SAFETY: the region is mapped for as long as `mapped` lives, which the bell holds
        // (the device drops its rings before its bell); only the ring code touches it here,
        // and the storage VM only through the ring protocol (or by writing bytes).
        let windows = unsafe { geometry.windows(mapped.region.as_ptr(), mapped.region.len()) }
            .map_err(|e| unavailable(format!("disk {disk}: {e}")))?;
        let bell = mapped
            .bell
            .try_clone()
            .map_err(|e| unavailable(format!("disk {disk}: eventfd: {e}")))?;
        // The wake-up eventfd stays open as long as the mapping (held by the bell); the I/O
        // thread empties it before delivering the event (`VmNetwork::eventfds`).
        let wake = keel_virtio::EventSource(mapped.wake.as_raw_fd() as u64);
        // Ids beyond any an earlier client of this region used (see ForwardClient::new).
        let first_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(keel_virtio::ForwardLink {
            windows,
            bell: Box::new(LinuxForwardBell {
                bell,
                _mapped: mapped,
            }),
            wake: Some(wake),
            clock: Box::new(MonotonicClock(std::time::Instant::now())),
            first_id,
        })
    }
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
        if let Some(served) = _plan.disks.get(disk).and_then(|p| p.served.as_ref()) {
            return Err(BackendError::Unavailable(format!(
                "vm {:?}: disk {disk} is served by vm {:?}: it is not a file",
                self.spec.name, served.server
            )));
        }
        let backend = match crate::sandbox::kept(d.path.as_path()) {
            Some(file) => file.and_then(|f| FileBackend::from_file(f, d.read_only)),
            None => FileBackend::open(d.path.as_path(), d.read_only),
        }
        .map_err(|e| BackendError::HostFile {
            what: format!("disk {disk}"),
            path: d.path.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Box::new(backend))
    }

    fn console(
        &mut self,
        _plan: &VmPlan,
        port: usize,
    ) -> Result<Box<dyn ConsoleOutput>, BackendError> {
        let out = self
            .outputs
            .consoles
            .get(port)
            .ok_or_else(|| BackendError::Unavailable(format!("no console {port}")))?
            .boxed();
        Ok(Box::new(HostConsoleOutput(out)))
    }

    fn vsock_host(
        &mut self,
        _plan: &VmPlan,
    ) -> Result<Box<dyn keel_virtio::vsock::VsockHost>, BackendError> {
        Ok(match &self.outputs.vsock {
            Some(host) => host.attach(),
            None => Box::new(keel_virtio::vsock::NoHost),
        })
    }

    fn vsock_peer(
        &mut self,
        _plan: &VmPlan,
        peer: usize,
    ) -> Result<Box<dyn keel_virtio::net::NetBackend>, BackendError> {
        let unavailable = |what: String| BackendError::Unavailable(what);
        let mapped = self
            .network
            .and_then(|n| n.vsock_peers.get(peer))
            .ok_or_else(|| {
                unavailable(format!(
                    "vm {:?}: vsock peers need `keel up` (it creates their rings)",
                    self.spec.name
                ))
            })?
            .clone();
        port_backend(mapped, &format!("vsock peer {peer}"))
    }

    fn console_input(
        &mut self,
        _plan: &VmPlan,
        port: usize,
    ) -> Result<Option<Box<dyn ConsoleInput>>, BackendError> {
        // Host stdin goes to the serial port when that is on stdio; else to the first
        // virtio-console port whose output is stdio.
        if self.spec.serial == Output::Stdio {
            return Ok(None);
        }
        let first_stdio = self
            .spec
            .consoles
            .iter()
            .position(|c| c.output == Output::Stdio);
        if first_stdio != Some(port) {
            return Ok(None);
        }
        let input = FdConsoleInput::stdin().map_err(|e| BackendError::HostFile {
            what: format!("console {port} input"),
            path: "stdin".into(),
            reason: e.to_string(),
        })?;
        Ok(Some(Box::new(input)))
    }

    fn served_block(
        &mut self,
        plan: &VmPlan,
        disk: usize,
    ) -> Result<keel_virtio::ForwardLink, BackendError> {
        let served = plan
            .disks
            .get(disk)
            .and_then(|d| d.served.as_ref())
            .ok_or_else(|| BackendError::Unavailable(format!("disk {disk} is not served")))?;
        self.forward_link(disk, served)
    }

    fn net(
        &mut self,
        _plan: &VmPlan,
        nic: usize,
    ) -> Result<Box<dyn keel_virtio::net::NetBackend>, BackendError> {
        let unavailable = |what: String| BackendError::Unavailable(what);
        let mapped = self
            .network
            .and_then(|n| n.ports.get(nic))
            .ok_or_else(|| {
                unavailable(format!(
                    "vm {:?}: network interfaces need `keel up` (it runs the switches)",
                    self.spec.name
                ))
            })?
            .clone();
        port_backend(mapped, &format!("net {nic}"))
    }

    fn doorbell(&mut self, plan: &VmPlan) -> Result<keel_vmm::devices::DoorbellPair, BackendError> {
        let fds = self
            .network
            .and_then(|n| n.forward_server.as_ref())
            .ok_or_else(|| {
                BackendError::Unavailable(format!(
                    "vm {:?}: serving disks needs `keel up` (it creates the links)",
                    plan.name
                ))
            })?;
        let dup = |e: &EventFd| {
            e.try_clone()
                .map_err(|e| BackendError::Unavailable(format!("doorbell eventfd: {e}")))
        };
        let clients = fds.clients.iter().map(dup).collect::<Result<Vec<_>, _>>()?;
        Ok((
            Box::new(crate::forward::DoorbellOutput::new(clients)),
            Box::new(crate::forward::DoorbellInput::new(dup(&fds.bell)?)),
        ))
    }

    fn entropy(&mut self, _plan: &VmPlan) -> Result<Box<dyn EntropySource>, BackendError> {
        let kept = crate::sandbox::kept(std::path::Path::new("/dev/urandom"));
        let source = match kept {
            Some(file) => file.map(OsEntropy::from_file),
            None => OsEntropy::open(),
        }
        .map_err(|e| BackendError::HostFile {
            what: "entropy source".into(),
            path: "/dev/urandom".into(),
            reason: e.to_string(),
        })?;
        Ok(Box::new(source))
    }
}

/// The VMM side of a ring pair (a network port or a vsock peer link) as a backend, holding
/// the mappings its rings live in; `what` names it in errors (`net 0`, `vsock peer 1`).
fn port_backend(
    mapped: Arc<MappedPort>,
    what: &str,
) -> Result<Box<dyn keel_virtio::net::NetBackend>, BackendError> {
    use std::os::fd::AsRawFd;
    let unavailable = |why: String| BackendError::Unavailable(format!("{what}: {why}"));
    let window = |m: &crate::net::Mapping| {
        // SAFETY: `mapped` (which owns the mapping) is kept in the backend next to the
        // port, and dropped after it.
        unsafe { m.frame_window(mapped.slots) }
            .map_err(|e| unavailable(format!("ring window: {e}")))
    };
    let windows = keel_net::port::PortWindows {
        to_switch: window(&mapped.to_switch)?,
        from_switch: window(&mapped.from_switch)?,
    };
    let bell = mapped
        .ring_peer
        .try_clone()
        .map_err(|e| unavailable(format!("eventfd: {e}")))?;
    let event = keel_virtio::device::EventSource(mapped.wait_on.as_raw_fd() as u64);
    let port = keel_net::port::VmmPort::new(
        windows,
        Box::new(crate::net::EventFdBell(bell)),
        Some(event),
    );
    Ok(Box::new(LinuxNetPort {
        port,
        _mapped: mapped,
    }))
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
    /// Event sources that are port eventfds (see [`IoContext::eventfds`]).
    eventfds: Vec<RawFd>,
    serial_on_stdio: bool,
    control: Arc<Control>,
    started: Instant,
    /// Host CPUs of each vCPU thread (the spec's `placement.pcpus`).
    pcpus: Option<Vec<Vec<u32>>>,
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
    // A sandboxed process reads the copy it kept open (see `sandbox::kept`).
    crate::sandbox::read_kept(path.as_path())
        .unwrap_or_else(|| std::fs::read(path.as_path()))
        .map_err(|e| VmmError::HostFile {
            what: what.to_string(),
            path: path.to_string(),
            reason: e.to_string(),
        })
}

impl Vmm {
    /// Build the VM `spec` describes: memory, kernel, devices, vCPUs. The devices, their
    /// slots and interrupts, the firmware description and exit handling are keel-vmm's,
    /// from the spec's plan; this adds KVM and the Linux host resources.
    ///
    /// Of the spec's `placement` this applies the vCPU threads' CPUs only: a budget below
    /// the period is refused (it needs the VM's own cgroup, which [`start_vm`] creates), so
    /// the VM never runs unbudgeted.
    pub fn from_spec(spec: &VmSpec) -> Result<Vmm, VmmError> {
        check_arch(spec)?;
        if let Some(p) = spec
            .placement
            .as_ref()
            .filter(|p| p.budget_us < p.period_us)
        {
            return Err(VmmError::Unsupported {
                vm: spec.name.clone(),
                what: format!(
                    "placement: budget_us {} < period_us {} needs the VM's own cgroup: run it with keel_kvm::start_vm or run_vm, not Vmm::from_spec",
                    p.budget_us, p.period_us
                ),
            });
        }
        Vmm::build(spec, &VmOutputs::open(spec)?, None)
    }

    /// Build the VM with outputs already opened (kept across restarts) and its network
    /// interfaces' ports, if any.
    fn build(
        spec: &VmSpec,
        outputs: &VmOutputs,
        network: Option<&VmNetwork>,
    ) -> Result<Vmm, VmmError> {
        let started = Instant::now();
        if let Some(what) = kvm_refusal(spec) {
            return Err(VmmError::Unsupported {
                vm: spec.name.clone(),
                what,
            });
        }
        // A CPU this process may not use is an error here, before anything is built.
        let allowed = placement::thread_affinity(0)
            .map_err(|e| VmmError::Host(format!("cannot read this thread's CPUs: {e}")))?;
        let pcpus = HostPlacement::prepare(spec, &allowed)?.vcpus;
        let plan = match network {
            Some(n) => n.plan.clone(),
            None => keel_spec::plan::plan_vm(spec).map_err(|e| VmmError::Unsupported {
                vm: spec.name.clone(),
                what: e.to_string(),
            })?,
        };
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
        // Shared regions: memory slots over the regions' memory files, read-only ones with
        // KVM_MEM_READONLY (a guest write exits, and keel-vmm reports it).
        if let Some(n) = network {
            for (i, (m, mapping)) in n.plan.shared.iter().zip(&n.shared).enumerate() {
                vm.map_shared(
                    i as u32,
                    m.base,
                    mapping.clone(),
                    m.access == keel_spec::Access::ReadOnly,
                )?;
            }
        }
        if plan.shared.len() != network.map_or(0, |n| n.shared.len()) {
            return Err(VmmError::Host(format!(
                "vm {:?}: its shared regions have no memory files",
                spec.name
            )));
        }
        let control = Arc::new(Control::default());
        let stop: Arc<dyn StopSink> = control.clone();
        let serial_out = HostSerialOutput(outputs.serial.boxed());
        let core = VmmCore::build(
            &plan,
            vm.as_ref(),
            Interrupts::InKernel,
            &mut LinuxBackends {
                spec,
                outputs,
                network,
            },
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
        // A QueueNotify that traps anyway goes to the same eventfd (DoorbellNotifier): queue
        // work never runs on a vCPU thread.
        for (d, dev) in core.devices().iter().enumerate() {
            let queues = dev.transport.num_queues();
            let mut notifier = DoorbellNotifier {
                fds: Vec::with_capacity(queues),
            };
            for q in 0..queues {
                let fd = vm.ioeventfd(dev.plan.base + QUEUE_NOTIFY, q as u32)?;
                notifier.fds.push(
                    fd.try_clone()
                        .map_err(|e| VmmError::Host(format!("eventfd: {e}")))?,
                );
                doorbells.push(Doorbell {
                    fd,
                    device: d,
                    queue: q as u16,
                });
            }
            dev.transport.set_notifier(Arc::new(notifier));
        }

        let boot_entry = core
            .load_guest(&kernel, initrd.as_deref(), vm.gic_version())
            .map_err(|source| VmmError::Load {
                vm: spec.name.clone(),
                path: spec.kernel.to_string(),
                source,
            })?
            .entry;
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
            // The vsock backend's epoll descriptor is edge-like too: the backend empties it
            // whenever the device is called.
            eventfds: network
                .map(VmNetwork::eventfds)
                .unwrap_or_default()
                .into_iter()
                .chain(outputs.vsock.as_ref().map(|v| v.epoll_fd()))
                .collect(),
            serial_on_stdio: spec.serial == Output::Stdio,
            control,
            started,
            pcpus,
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
        self.run_with(|_, _, _| {})
    }

    /// [`Vmm::run`], calling `started` with the VM's stop control, exit counters and
    /// devices once its threads run (how a [`VmHandle`] reaches the current run).
    fn run_with(
        self,
        started_hook: impl FnOnce(Arc<Control>, Arc<keel_vmm::ExitStats>, Arc<VmmCore>),
    ) -> Result<RunReport, VmmError> {
        let Vmm {
            name,
            vm,
            vcpus,
            core,
            doorbells,
            eventfds,
            serial_on_stdio,
            control,
            started,
            pcpus,
        } = self;
        // The one piece of process-wide state a KVM VMM needs: the (idempotent) handler of
        // the signal that kicks vCPU threads out of KVM_RUN. The terminal mode and the
        // software-KVM note are the program's business (the CLI does both).
        vmm_sys_util::signal::register_signal_handler(
            vmm_sys_util::signal::SIGRTMIN(),
            kick_handler,
        )
        .map_err(|e| VmmError::Host(format!("cannot install the vCPU kick signal: {e}")))?;

        let io_stop = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| VmmError::Host(format!("eventfd: {e}")))?,
        );
        // One worker per device (its doorbells), and one for stdin.
        let mut per_device: Vec<Vec<Doorbell>> =
            (0..core.devices().len()).map(|_| Vec::new()).collect();
        for d in doorbells {
            if let Some(list) = per_device.get_mut(d.device) {
                list.push(d);
            }
        }
        let mut contexts: Vec<(String, IoContext)> = per_device
            .into_iter()
            .enumerate()
            .map(|(i, doorbells)| {
                let events = core.devices()[i]
                    .transport
                    .event_sources()
                    .into_iter()
                    .filter_map(|(token, source)| {
                        // On Linux an event source is a file descriptor.
                        Some((i, token, RawFd::try_from(source.0).ok()?))
                    })
                    .collect();
                (
                    format!("keel-dev{i}"),
                    IoContext {
                        core: core.clone(),
                        devices: vec![i],
                        doorbells,
                        events,
                        eventfds: eventfds.clone(),
                        serial_input: false,
                        stop: io_stop.clone(),
                        user_stop: control.clone(),
                    },
                )
            })
            .collect();
        if serial_on_stdio {
            contexts.push((
                "keel-stdin".into(),
                IoContext {
                    core: core.clone(),
                    devices: Vec::new(),
                    doorbells: Vec::new(),
                    events: Vec::new(),
                    eventfds: Vec::new(),
                    serial_input: true,
                    stop: io_stop.clone(),
                    user_stop: control.clone(),
                },
            ));
        }
        let mut io_threads = Vec::with_capacity(contexts.len());
        for (name, ctx) in contexts {
            let control = control.clone();
            io_threads.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || {
                        if let Err(e) = crate::sandbox::enter(crate::sandbox::Role::Io) {
                            log::error(format_args!("I/O thread: sandbox: {e}"));
                            control.finish(Err(HvError::Call {
                                op: "seccomp filter of an I/O thread",
                                errno: libc::EPERM,
                            }));
                            return;
                        }
                        io::run(ctx)
                    })
                    .map_err(|e| VmmError::Host(format!("cannot start an I/O thread: {e}")))?,
            );
        }

        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let (exited_tx, exited_rx) = mpsc::channel();
        for mut vcpu in vcpus {
            let core = core.clone();
            let vm = vm.clone();
            let control = control.clone();
            let id = vcpu.id();
            let cpus = pcpus.as_ref().and_then(|p| p.get(id as usize).cloned());
            let exited = ExitNotice {
                index: threads.len(),
                tx: exited_tx.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("keel-vcpu{id}"))
                .spawn(move || {
                    let _exited = exited;
                    if let Err(e) = crate::sandbox::enter(crate::sandbox::Role::Vcpu) {
                        log::error(format_args!("vcpu {id}: sandbox: {e}"));
                        control.finish(Err(HvError::Call {
                            op: "seccomp filter of a vCPU thread",
                            errno: libc::EPERM,
                        }));
                        return;
                    }
                    if let Some(cpus) = cpus {
                        // The CPUs were checked against this process's when the VM was
                        // built; a failure now (the host took a CPU away) is reported.
                        if let Err(e) = placement::set_thread_affinity(0, &cpus) {
                            log::warn(format_args!(
                                "vcpu {id}: cannot restrict to host CPUs {}: {e}; it runs on the VM's other CPUs",
                                placement::cpu_list(&cpus)
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
        started_hook(control.clone(), core.stats().clone(), core.clone());

        // `Control::finish` set `control.stopping` before waking us: the vCPU loops see it.
        let outcome = control.wait();
        // Stop the I/O threads first: they end on their own while the vCPUs are kicked.
        let _ = io_stop.write(1);
        kick_and_join(threads, &exited_rx);
        for t in io_threads {
            let _ = t.join();
        }
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
            restarts: 0,
            stopped: Some(StoppedVm {
                _vm: vm,
                _core: core,
            }),
        })
    }
}

/// What happens to a VM over its life, as a [`VmHandle`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// Run `run` (0 first, then one more per restart) has started its vCPUs.
    Started {
        /// Which run.
        run: u32,
    },
    /// The guest reset and the VM is being rebuilt (restart `restarts` of its life).
    Restarting {
        /// Restarts so far, this one included.
        restarts: u32,
    },
    /// The VM has stopped for good.
    Stopped(VmExitStatus),
}

/// What a [`VmHandle`] reaches of the run in progress.
#[derive(Clone)]
struct CurrentRun {
    control: Arc<Control>,
    stats: Arc<keel_vmm::ExitStats>,
    core: Arc<VmmCore>,
}

/// One virtio device's counters, as [`VmProbe::device_counters`] reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCounters {
    /// The device's virtio name (`virtio-net`, …).
    pub kind: &'static str,
    /// Its label in the VM (`0 (disk "data")`-style, as in the VMM's logs).
    pub label: String,
    /// Its counters by name, in the device's order (`VirtioDevice::counters`).
    pub counters: Vec<(&'static str, u64)>,
}

/// Reads a running VM's counters from any thread (see [`VmHandle::probe`]); outlives the
/// handle's [`VmHandle::wait`].
#[derive(Clone)]
pub struct VmProbe {
    shared: Arc<HandleShared>,
}

impl std::fmt::Debug for VmProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmProbe").finish_non_exhaustive()
    }
}

impl VmProbe {
    /// The counters of every device of the current run that counts anything (virtio-net,
    /// virtio-console), in placement order; empty between runs. Waits for each device's queue work
    /// in progress.
    pub fn device_counters(&self) -> Vec<DeviceCounters> {
        let current = self.shared.current_run();
        let Some(run) = current else {
            return Vec::new();
        };
        run.core
            .devices()
            .iter()
            .filter_map(|d| {
                let counters = d.transport.counters();
                (!counters.is_empty()).then(|| DeviceCounters {
                    kind: d.plan.kind.virtio_name(),
                    label: d.label.clone(),
                    counters,
                })
            })
            .collect()
    }
}

/// What the handle shares with the thread that supervises the VM's runs.
#[derive(Default)]
struct HandleShared {
    /// The current run's stop control, exit counters and devices.
    current: Mutex<Option<CurrentRun>>,
    stop_requested: AtomicBool,
}

impl HandleShared {
    /// A copy of the current run's handles (`None` between runs).
    fn current_run(&self) -> Option<CurrentRun> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A running VM, seen from the program that started it: stop it, wait for it, follow its
/// life, read its counters. Started by [`start_vm`]. The library keeps no process-wide
/// state for it (beyond the vCPU kick signal's handler): several handles can live in one
/// process.
pub struct VmHandle {
    name: String,
    shared: Arc<HandleShared>,
    supervisor: Option<JoinHandle<Result<RunReport, VmmError>>>,
    events: Option<Receiver<LifecycleEvent>>,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle").field("vm", &self.name).finish()
    }
}

impl VmHandle {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stop the VM now (no restart follows); [`VmHandle::wait`] then reports
    /// [`VmExitStatus::HostStop`].
    pub fn stop(&self) {
        self.shared.stop_requested.store(true, Ordering::SeqCst);
        let current = self.shared.current_run();
        if let Some(run) = current {
            run.control.finish(Ok(SystemEvent::Shutdown));
        }
    }

    /// The life-cycle events, once (the receiver moves to the caller).
    pub fn take_events(&mut self) -> Option<Receiver<LifecycleEvent>> {
        self.events.take()
    }

    /// Exits handled so far by the current run.
    pub fn exits(&self) -> u64 {
        self.shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|run| run.stats.total())
            .unwrap_or(0)
    }

    /// A reader of the VM's device counters for another thread.
    pub fn probe(&self) -> VmProbe {
        VmProbe {
            shared: self.shared.clone(),
        }
    }

    /// Wait until the VM has stopped for good: every thread of it has ended.
    pub fn wait(mut self) -> Result<RunReport, VmmError> {
        let Some(t) = self.supervisor.take() else {
            return Err(VmmError::Host("the VM was already waited for".into()));
        };
        t.join()
            .unwrap_or_else(|_| Err(VmmError::Host("the VM's supervisor thread panicked".into())))
    }
}

/// Start the VM `spec` describes and return its handle. The VM is built here (so bad input
/// is reported before anything runs); a supervisor thread then runs it, restarting it in
/// place whenever the guest resets and `spec.on_reboot` is [`OnReboot::Restart`]: each
/// restart builds a fresh KVM VM from the spec (kernel and initrd read again, new devices
/// over the same disk files, the same serial and console outputs) after the previous VM
/// has been destroyed. A guest that resets more than `spec.max_restarts_per_minute` times
/// within a minute is stopped with [`VmExitStatus::RestartLimit`]. With
/// [`OnReboot::Stop`] a reset ends the run with [`VmExitStatus::Reboot`].
///
/// Logs one line per restart and one when the limit stops the VM. The report
/// [`VmHandle::wait`] returns is the last run's (see
/// [`RunReport::leave_vm_to_process_exit`]).
///
/// The VM's `placement` applies as [`crate::placement`] describes: its threads run on its
/// CPUs and in its scheduling class; a budget below the period puts this whole process in
/// the VM's cgroup `keel/keel-<pid>/<vm>` until the VM ends (see [`start_vm_in`]).
pub fn start_vm(spec: &VmSpec) -> Result<VmHandle, VmmError> {
    start_vm_with(spec, None)
}

/// [`start_vm`] for a VM with network interfaces: `network` holds its plan and ports (how
/// a `keel up` VMM process starts its VM).
pub fn start_vm_with(spec: &VmSpec, network: Option<VmNetwork>) -> Result<VmHandle, VmmError> {
    start_vm_in(spec, network, &CgroupScope::this_process("keel"))
}

/// [`start_vm_with`] for a VM of a named system: a budgeted VM's cgroup is
/// `keel/<system>-<owner_pid>/<vm>` (`scope`), under the cgroup cpu controller's mount. The
/// cgroup is created and this process moved into it before the VM is built; the process
/// leaves it and it is removed when the VM has stopped for good (or building it failed).
/// No usable cpu controller (none mounted, not permitted) is an error: the VM does not
/// run unbudgeted.
pub fn start_vm_in(
    spec: &VmSpec,
    network: Option<VmNetwork>,
    scope: &CgroupScope,
) -> Result<VmHandle, VmmError> {
    check_arch(spec)?;
    let allowed = placement::thread_affinity(0)
        .map_err(|e| VmmError::Host(format!("cannot read this thread's CPUs: {e}")))?;
    let host_placement = HostPlacement::prepare(spec, &allowed)?;
    let cgroup = match host_placement.bandwidth {
        None => None,
        Some((budget, period)) => Some(enter_cgroup(&spec.name, scope, budget, period)?),
    };
    let outputs = VmOutputs::open(spec)?;
    let first = Vmm::build(spec, &outputs, network.as_ref())?;
    // The sandbox asked for (`sandbox::request`): the VM is built, no vCPU runs yet, and
    // this is still the process's only thread.
    if let Some(mut profile) = crate::sandbox::take_request() {
        if let Some(c) = &cgroup {
            let (procs, dirs) = c.exit_paths();
            profile.cgroup_files.push(procs);
            profile.cgroup_dirs.extend(dirs);
        }
        if let placement::SchedClass::RoundRobin { rt_priority } = host_placement.class {
            profile.rt_priority = u64::try_from(rt_priority).ok();
        }
        let began = Instant::now();
        let applied = crate::sandbox::apply(&profile)
            .map_err(|e| VmmError::Host(format!("vm {:?}: sandbox: {e}", spec.name)))?;
        log::debug(format_args!(
            "vm {:?}: sandboxed in {} us: {applied:?}",
            spec.name,
            began.elapsed().as_micros()
        ));
    }
    // Threads the process asked to start under the sandbox (e.g. the admin's console relay).
    crate::sandbox::run_deferred();
    let shared = Arc::new(HandleShared::default());
    let (events_tx, events_rx) = mpsc::channel();
    let name = spec.name.clone();
    let spec = spec.clone();
    let supervisor = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("keel-vm-{}", spec.name))
            .spawn(move || {
                // Every thread of the VM is created from here: they inherit its CPUs and
                // class (vCPU threads then narrow to their own CPUs). The cgroup is left
                // and removed once the last run has stopped.
                let _cgroup = cgroup;
                host_placement.apply_to_current_thread()?;
                supervise(
                    &spec,
                    &outputs,
                    network.as_ref(),
                    first,
                    &shared,
                    &events_tx,
                )
            })
            .map_err(|e| VmmError::Host(format!("cannot start the VM's supervisor: {e}")))?
    };
    // In a sandboxed process the calling (main) thread only waits from now on.
    crate::sandbox::enter(crate::sandbox::Role::Main)
        .map_err(|e| VmmError::Host(format!("vm {name:?}: sandbox: {e}")))?;
    Ok(VmHandle {
        name,
        shared,
        supervisor: Some(supervisor),
        events: Some(events_rx),
    })
}

/// Create VM `vm`'s cgroup with `budget_us` per `period_us` and move this process into it.
fn enter_cgroup(
    vm: &str,
    scope: &CgroupScope,
    budget_us: u64,
    period_us: u64,
) -> Result<Cgroup, VmmError> {
    let fail = |why: String| {
        VmmError::Host(format!(
            "vm {vm:?}: placement: budget_us {budget_us} per period_us {period_us} needs a cgroup of its own: {why}"
        ))
    };
    let controller = placement::host_cpu_controller().ok_or_else(|| {
        fail("this host has no cgroup cpu controller mounted (cgroup v2 with cpu in cgroup.controllers, or a v1 cpu hierarchy)".into())
    })?;
    let cgroup = Cgroup::enter(&controller, scope, vm, budget_us, period_us).map_err(fail)?;
    log::debug(format_args!(
        "vm {vm:?}: in cgroup {} ({budget_us} us per {period_us} us)",
        cgroup.path().display()
    ));
    Ok(cgroup)
}

/// The supervisor: run, restart by policy, report.
fn supervise(
    spec: &VmSpec,
    outputs: &VmOutputs,
    network: Option<&VmNetwork>,
    first: Vmm,
    shared: &Arc<HandleShared>,
    events: &Sender<LifecycleEvent>,
) -> Result<RunReport, VmmError> {
    let max = spec.max_restarts_per_minute;
    let mut limiter = RestartLimiter::new(max, RestartLimiter::MINUTE_MS);
    let origin = Instant::now();
    let mut restarts = 0u32;
    let mut next = Some(first);
    loop {
        let vmm = match next.take() {
            Some(v) => v,
            None => Vmm::build(spec, outputs, network)?,
        };
        let run = restarts;
        let mut report = vmm.run_with(|control, stats, core| {
            *shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(CurrentRun {
                control: control.clone(),
                stats,
                core,
            });
            let _ = events.send(LifecycleEvent::Started { run });
            // A stop asked for while this run was being built.
            if shared.stop_requested.load(Ordering::SeqCst) {
                control.finish(Ok(SystemEvent::Shutdown));
            }
        })?;
        *shared.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        report.restarts = restarts;
        if shared.stop_requested.load(Ordering::SeqCst) {
            report.status = VmExitStatus::HostStop;
        }
        if report.status != VmExitStatus::Reboot || spec.on_reboot == OnReboot::Stop {
            let _ = events.send(LifecycleEvent::Stopped(report.status));
            return Ok(report);
        }
        let now_ms = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        match limiter.record(now_ms) {
            RestartVerdict::Stop { count } => {
                log::notice(format_args!(
                    "vm {:?}: rebooted {count} times within a minute (max_restarts_per_minute = {max}); stopping",
                    spec.name
                ));
                report.status = VmExitStatus::RestartLimit { resets: count };
                let _ = events.send(LifecycleEvent::Stopped(report.status));
                return Ok(report);
            }
            RestartVerdict::Restart { count } => {
                log::info(format_args!(
                    "vm {:?}: guest rebooted; restarting ({count} of at most {max} per minute)",
                    spec.name
                ));
                // Destroy this VM (guest RAM, fds, disk backends) before the next is built.
                drop(report);
                restarts = restarts.saturating_add(1);
                let _ = events.send(LifecycleEvent::Restarting { restarts });
            }
        }
    }
}

/// Run the VM `spec` describes until it stops for good: [`start_vm`], then
/// [`VmHandle::wait`].
pub fn run_vm(spec: &VmSpec) -> Result<RunReport, VmmError> {
    start_vm(spec)?.wait()
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

#[cfg(test)]
mod refusal_tests {
    use super::*;
    use keel_spec::{Arch, HostPath, Memory, PassthroughSpec, RamRegion};

    fn spec() -> VmSpec {
        VmSpec::new(
            "drv",
            Arch::Aarch64,
            HostPath::new("/k"),
            Memory::Size(256 << 20),
        )
    }

    #[test]
    fn passthrough_is_refused_on_kvm_for_want_of_vfio() {
        let mut s = spec();
        s.passthrough.push(PassthroughSpec {
            name: "disk0".into(),
            mmio: vec![RamRegion {
                base: 0x0a00_3000,
                size: 0x1000,
            }],
            irqs: vec![79],
            dt: None,
            dma: keel_spec::Dma::None,
        });

        assert_eq!(
            kvm_refusal(&s).unwrap(),
            "passthrough \"disk0\": passthrough needs VFIO, which this backend does not have (passed-through devices run on seL4: keel sel4 build)"
        );
    }

    #[test]
    fn fixed_physical_ram_is_refused_on_kvm() {
        let mut s = spec();
        s.ram_phys_addr = Some(0x4000_0000);

        assert!(
            kvm_refusal(&s)
                .unwrap()
                .starts_with("ram_phys_addr = 0x40000000: a user-space VMM cannot choose")
        );
        assert_eq!(kvm_refusal(&spec()), None);
    }
}
