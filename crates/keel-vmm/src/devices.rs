//! The virtio devices of a VM, built from its plan: the one place where a device kind meets
//! its model. The backend supplies only host resources ([`DeviceBackends`]); which model
//! serves a [`DeviceKind`], its slot and its interrupt are the same on every hypervisor.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use keel_core::memory::GuestMemoryRef;
use keel_core::{IrqLine, SyncBusDevice};
use keel_spec::{DeviceKind, DevicePlan, VmPlan};
use keel_virtio::console::ConsoleInput;
use keel_virtio::device::{EventSource, EventToken};
use keel_virtio::forward::ForwardGeometry;
use keel_virtio::forward_blk::{ForwardBlock, ForwardDisk, ForwardLink};
use keel_virtio::mmio::QueueNotifier;
use keel_virtio::net::{Net, NetBackend};
use keel_virtio::vsock::{NoHost, Vsock, VsockHost};
use keel_virtio::{
    Block, BlockBackend, Console, ConsoleOutput, DeviceFailure, EntropySource, MmioTransport, Rng,
    VirtioDevice,
};

use crate::log::{Level, Log, RateLimit};

/// Why a host resource for a device could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// A host file named by the description could not be used (the user's input).
    #[error("{what} {path}: {reason}")]
    HostFile {
        /// Which file (`disk 0`, `console 1 output`, …).
        what: String,
        /// Its path.
        path: String,
        /// The OS's reason.
        reason: String,
    },
    /// This backend cannot provide it.
    #[error("{0}")]
    Unavailable(String),
}

/// A storage VM's doorbell as a backend provides it: the output ringing clients, the input
/// saying a client rang ([`DeviceBackends::doorbell`]).
pub type DoorbellPair = (Box<dyn ConsoleOutput>, Box<dyn ConsoleInput>);

/// The host side of a VM's devices: what each backend provides (files on Linux, payload
/// regions and the console component on seL4).
pub trait DeviceBackends {
    /// The storage of disk `disk` (`plan.disks[disk]`), a disk of this VM's own (not
    /// served: see [`DeviceBackends::served_block`]).
    fn block(&mut self, plan: &VmPlan, disk: usize) -> Result<Box<dyn BlockBackend>, BackendError>;
    /// The client end of served disk `disk` (`plan.disks[disk].served`,
    /// docs/driver-vms.md): the forwarding region's rings, the bell that rings the storage
    /// VM, the wake-up it signals, a clock and the first request id. The VMM builds the
    /// asynchronous device ([`ForwardBlock`]) from them and the plan. By default the
    /// backend has none, and a VM with a served disk is refused.
    fn served_block(&mut self, plan: &VmPlan, disk: usize) -> Result<ForwardLink, BackendError> {
        let _ = disk;
        Err(BackendError::Unavailable(format!(
            "vm {:?}: this backend cannot use disks served by other VMs",
            plan.name
        )))
    }
    /// Where console port `port` writes.
    fn console(
        &mut self,
        plan: &VmPlan,
        port: usize,
    ) -> Result<Box<dyn ConsoleOutput>, BackendError>;
    /// The rng's entropy.
    fn entropy(&mut self, plan: &VmPlan) -> Result<Box<dyn EntropySource>, BackendError>;
    /// What the host types into console port `port`, if anything (its event source tells
    /// the backend when to deliver it). None by default.
    fn console_input(
        &mut self,
        plan: &VmPlan,
        port: usize,
    ) -> Result<Option<Box<dyn ConsoleInput>>, BackendError> {
        let _ = (plan, port);
        Ok(None)
    }
    /// A storage VM's doorbell ([`DeviceKind::Doorbell`], docs/driver-vms.md): the
    /// console output that rings client `i` on byte `i`, and the input that says a client
    /// published requests. By default the backend has none, and a storage VM is refused.
    fn doorbell(&mut self, plan: &VmPlan) -> Result<DoorbellPair, BackendError> {
        Err(BackendError::Unavailable(format!(
            "vm {:?}: this backend cannot serve disks to other VMs",
            plan.name
        )))
    }
    /// The switch port behind network interface `nic` (`plan.nics[nic]`). By default the
    /// backend has none, and a VM with an interface is refused.
    fn net(&mut self, plan: &VmPlan, nic: usize) -> Result<Box<dyn NetBackend>, BackendError> {
        let _ = nic;
        Err(BackendError::Unavailable(format!(
            "vm {:?}: this backend cannot attach network interfaces",
            plan.name
        )))
    }
    /// The host side of the VM's vsock device (`plan.vsock`). By default none: the guest's
    /// connections to the host are reset.
    fn vsock_host(&mut self, plan: &VmPlan) -> Result<Box<dyn VsockHost>, BackendError> {
        let _ = plan;
        Ok(Box::new(NoHost))
    }
    /// The packet link to vsock peer `peer` (`plan.vsock.peers[peer]`). By default the
    /// backend has none, and a VM with vsock peers is refused.
    fn vsock_peer(
        &mut self,
        plan: &VmPlan,
        peer: usize,
    ) -> Result<Box<dyn NetBackend>, BackendError> {
        let _ = peer;
        Err(BackendError::Unavailable(format!(
            "vm {:?}: this backend cannot link vsock peers",
            plan.name
        )))
    }
}

/// A virtio-mmio transport seen through what the VMM needs of it besides the bus. Shared
/// (`&self`) between the vCPU threads, which reach its registers through the bus, and the
/// device's I/O thread: queue work holds only the transport's device-side lock, so a slow
/// request never stalls a register access (see `keel_virtio::mmio`).
pub trait VirtioSlot: Send + Sync {
    /// Deliver a queue notification (queue work runs in the calling thread).
    fn notify(&self, queue: u16);
    /// The error that put the device into NEEDS_RESET, once.
    fn take_error(&self) -> Option<DeviceFailure>;
    /// How many queues the device has.
    fn num_queues(&self) -> usize;
    /// Back to the power-on state (a VM reset): the backend keeps its data. Waits for
    /// queue work in progress.
    fn reset(&self);
    /// The host events the device waits on.
    fn event_sources(&self) -> Vec<(EventToken, EventSource)>;
    /// Deliver host event `token` (the transport raises the interrupt if the device asks).
    fn handle_event(&self, token: EventToken);
    /// An event the device stopped serving after its batch limit, to deliver again after
    /// the VMM's other pending work (see `VirtioDevice::backlogged_event`).
    fn backlogged_event(&self) -> Option<EventToken>;
    /// Send QueueNotify writes that trap to `notifier` (the device's I/O thread) instead of
    /// processing the queue in the vCPU thread.
    fn set_notifier(&self, notifier: Arc<dyn QueueNotifier>);
    /// The device's counters by name (`VirtioDevice::counters`); waits for queue work in
    /// progress.
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// Let the device do work of its own (`VirtioDevice::poll`: a forwarded disk's
    /// timeouts).
    fn poll(&self);
    /// How often [`VirtioSlot::poll`] is due without events (`VirtioDevice::poll_interval_ms`).
    fn poll_interval_ms(&self) -> Option<u32>;
}

impl<D: VirtioDevice> VirtioSlot for MmioTransport<D> {
    fn notify(&self, queue: u16) {
        MmioTransport::notify(self, queue);
    }
    fn take_error(&self) -> Option<DeviceFailure> {
        MmioTransport::take_error(self)
    }
    fn num_queues(&self) -> usize {
        MmioTransport::num_queues(self)
    }
    fn reset(&self) {
        MmioTransport::reset(self);
    }
    fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        MmioTransport::event_sources(self)
    }
    fn handle_event(&self, token: EventToken) {
        MmioTransport::handle_event(self, token);
    }
    fn backlogged_event(&self) -> Option<EventToken> {
        MmioTransport::backlogged_event(self)
    }
    fn set_notifier(&self, notifier: Arc<dyn QueueNotifier>) {
        MmioTransport::set_notifier(self, notifier);
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.lock_device().counters()
    }
    fn poll(&self) {
        MmioTransport::poll(self);
    }
    fn poll_interval_ms(&self) -> Option<u32> {
        MmioTransport::poll_interval_ms(self)
    }
}

/// A virtio device placed in the VM.
#[derive(Clone)]
pub struct PlacedDevice {
    /// Where the plan put it.
    pub plan: DevicePlan,
    /// `0 (disk "data")`-style name for logs, after the device kind.
    pub label: String,
    /// Its transport (the bus holds it too, as a [`SyncBusDevice`]: no bus lock).
    pub transport: Arc<dyn VirtioSlot>,
    /// The budget of its error lines (a guest can make a device fail again after every
    /// reset).
    errors: Arc<RateLimit>,
}

/// How many errors of one device are logged before they are only counted (then every
/// 2^k-th, with the count suppressed: [`RateLimit`]).
pub const DEVICE_ERROR_LOG_LIMIT: u32 = 8;

impl core::fmt::Debug for PlacedDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} {} at {}",
            self.plan.kind.virtio_name(),
            self.label,
            self.plan
        )
    }
}

impl PlacedDevice {
    /// Log the device's pending error, if any, as one line.
    pub fn report_error(&self, log: &Log) {
        let failure = self.transport.take_error();
        self.log_error(failure, log);
    }

    /// Deliver a QueueNotify of `queue`, then log the device's pending error.
    pub fn notify(&self, queue: u16, log: &Log) {
        self.transport.notify(queue);
        self.log_error(self.transport.take_error(), log);
    }

    /// Let the device do work of its own (timeouts), then log its pending error.
    pub fn poll(&self, log: &Log) {
        self.transport.poll();
        self.log_error(self.transport.take_error(), log);
    }

    /// Deliver host event `token`, then log the device's pending error.
    pub fn handle_event(&self, token: EventToken, log: &Log) {
        self.transport.handle_event(token);
        self.log_error(self.transport.take_error(), log);
    }

    /// Errors of this device seen so far (logged or not).
    pub fn errors(&self) -> u32 {
        self.errors.seen()
    }

    fn log_error(&self, failure: Option<DeviceFailure>, log: &Log) {
        let Some(failure) = failure else { return };
        let allowed = self.errors.allow();
        if allowed.logs() {
            log.log(
                Level::Error,
                format_args!(
                    "{} {}: {}; device needs reset{}",
                    failure.device,
                    self.label,
                    failure.error,
                    allowed.suffix()
                ),
            );
        }
    }
}

/// The log label of a planned device.
pub fn label(plan: &VmPlan, device: &DevicePlan) -> String {
    match device.kind {
        DeviceKind::Block { disk } => {
            let id = plan.disks.get(disk).map(|d| d.id.as_str()).unwrap_or("");
            format!("{disk} (disk {id:?})")
        }
        DeviceKind::Console { port } => format!("{port} (console {port})"),
        DeviceKind::Net { nic } => match plan.nics.get(nic) {
            Some(n) => format!("{nic} (net {} on {:?})", n.mac, n.network_name),
            None => format!("{nic} (net)"),
        },
        DeviceKind::Rng => "0 (rng)".into(),
        DeviceKind::Doorbell => format!("{} (storage doorbell)", plan.serves.len()),
        DeviceKind::Vsock => match &plan.vsock {
            Some(v) => format!("0 (vsock cid {})", v.cid),
            None => "0 (vsock)".into(),
        },
    }
}

/// Build the model for `device` with its host resources, behind a virtio-mmio transport;
/// returns it and the same transport as a bus device (placed with `Bus::insert_sync`: the
/// bus takes no lock of its own for it).
pub fn build_device(
    plan: &VmPlan,
    device: &DevicePlan,
    backends: &mut dyn DeviceBackends,
    memory: GuestMemoryRef,
    irq: Arc<dyn IrqLine>,
) -> Result<(PlacedDevice, Arc<dyn SyncBusDevice>), BackendError> {
    fn placed<D: VirtioDevice + 'static>(
        plan: &VmPlan,
        device: &DevicePlan,
        model: D,
        memory: GuestMemoryRef,
        irq: Arc<dyn IrqLine>,
    ) -> (PlacedDevice, Arc<dyn SyncBusDevice>) {
        let transport = Arc::new(MmioTransport::new(model, memory, irq));
        let bus: Arc<dyn SyncBusDevice> = transport.clone();
        let placed = PlacedDevice {
            plan: *device,
            label: label(plan, device),
            transport,
            errors: Arc::new(RateLimit::new(DEVICE_ERROR_LOG_LIMIT)),
        };
        (placed, bus)
    }
    Ok(match device.kind {
        DeviceKind::Block { disk } => {
            let id = plan.disks.get(disk).map(|d| d.id.as_str()).unwrap_or("");
            match plan
                .disks
                .get(disk)
                .and_then(|d| Some((d, d.served.as_ref()?)))
            {
                Some((d, served)) => {
                    let link = backends.served_block(plan, disk)?;
                    let disk = ForwardDisk {
                        server: served.server.clone(),
                        geometry: ForwardGeometry {
                            slots: served.slots,
                            max_data: served.max_data as usize,
                        },
                        size: served.size,
                        read_only: d.read_only,
                        timeout_ms: served.timeout_ms,
                        serial: id.as_bytes().to_vec(),
                    };
                    placed(plan, device, ForwardBlock::new(disk, link), memory, irq)
                }
                None => {
                    let backend = backends.block(plan, disk)?;
                    placed(plan, device, Block::new(backend, id), memory, irq)
                }
            }
        }
        DeviceKind::Console { port } => {
            let out = backends.console(plan, port)?;
            match backends.console_input(plan, port)? {
                Some(input) => placed(
                    plan,
                    device,
                    Console::new(out).with_input(input),
                    memory,
                    irq,
                ),
                None => placed(plan, device, Console::new(out), memory, irq),
            }
        }
        DeviceKind::Net { nic } => {
            let backend = backends.net(plan, nic)?;
            let mac = plan.nics.get(nic).map(|n| n.mac.0).ok_or_else(|| {
                BackendError::Unavailable(format!("vm {:?}: no plan for net {nic}", plan.name))
            })?;
            placed(plan, device, Net::new(backend, mac), memory, irq)
        }
        DeviceKind::Rng => {
            let source = backends.entropy(plan)?;
            placed(plan, device, Rng::new(source), memory, irq)
        }
        DeviceKind::Doorbell => {
            let (out, input) = backends.doorbell(plan)?;
            placed(
                plan,
                device,
                Console::new(out).with_input(input),
                memory,
                irq,
            )
        }
        DeviceKind::Vsock => {
            let Some(v) = &plan.vsock else {
                return Err(BackendError::Unavailable(format!(
                    "vm {:?}: no plan for vsock",
                    plan.name
                )));
            };
            let mut model = Vsock::new(v.cid, backends.vsock_host(plan)?);
            for (i, peer) in v.peers.iter().enumerate() {
                model = model.with_peer(peer.cid, backends.vsock_peer(plan, i)?);
            }
            placed(plan, device, model, memory, irq)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_virtio::device::{DeviceError, DeviceFailure};

    /// A transport whose device fails at every event (a guest that sets up a bad queue
    /// again after every reset).
    struct AlwaysFailing;

    impl VirtioSlot for AlwaysFailing {
        fn notify(&self, _queue: u16) {}
        fn take_error(&self) -> Option<DeviceFailure> {
            Some(DeviceFailure {
                device: "virtio-console",
                error: DeviceError::NoSuchQueue { queue: 9, count: 2 },
            })
        }
        fn num_queues(&self) -> usize {
            2
        }
        fn reset(&self) {}
        fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
            Vec::new()
        }
        fn handle_event(&self, _token: EventToken) {}
        fn backlogged_event(&self) -> Option<EventToken> {
            None
        }
        fn set_notifier(&self, _notifier: Arc<dyn QueueNotifier>) {}
        fn counters(&self) -> Vec<(&'static str, u64)> {
            Vec::new()
        }
        fn poll(&self) {}
        fn poll_interval_ms(&self) -> Option<u32> {
            None
        }
    }

    #[test]
    fn device_error_flood_logs_first_n_then_a_dropped_count() {
        let log = Arc::new(crate::testing::RecordingLog::default());
        let sink: Log = log.clone();
        let device = PlacedDevice {
            plan: DevicePlan {
                kind: DeviceKind::Console { port: 0 },
                slot: 0,
                base: 0xd000_0000,
                size: 0x200,
                irq: 16,
            },
            label: "0 (console 0)".into(),
            transport: Arc::new(AlwaysFailing),
            errors: Arc::new(RateLimit::new(DEVICE_ERROR_LOG_LIMIT)),
        };

        for _ in 0..100 {
            device.notify(9, &sink);
        }

        let lines = log.0.lock().clone();
        // DEVICE_ERROR_LOG_LIMIT (8), then occurrences 16, 32 and 64.
        assert_eq!(lines.len(), DEVICE_ERROR_LOG_LIMIT as usize + 3);
        assert!(lines.last().unwrap().1.ends_with("(31 more suppressed)"));
        assert_eq!(device.errors(), 100);
    }

    /// A VM whose one device is disk 0, served by `store`.
    fn served_plan() -> VmPlan {
        VmPlan {
            name: "a".into(),
            arch: keel_spec::Arch::Aarch64,
            vcpus: 1,
            ram: alloc::vec![(0x4000_0000, 1 << 20)],
            cmdline: String::new(),
            serial: keel_spec::plan::serial(keel_spec::Arch::Aarch64),
            devices: alloc::vec![DevicePlan {
                kind: DeviceKind::Block { disk: 0 },
                slot: 0,
                base: 0x0a00_0000,
                size: 0x200,
                irq: 16,
            }],
            disks: alloc::vec![keel_spec::DiskPlan {
                read_only: true,
                id: "served0".into(),
                served: Some(keel_spec::plan::ServedDiskPlan {
                    link: 0,
                    server: "store".into(),
                    size: 1 << 20,
                    slots: 4,
                    max_data: 1024,
                    region_len: ForwardGeometry {
                        slots: 4,
                        max_data: 1024,
                    }
                    .region_len() as u64,
                    timeout_ms: 5000,
                }),
            }],
            cpus: keel_spec::plan::CpuPlan {
                vcpu_pcpus: None,
                priority: 100,
                budget_us: 1000,
                period_us: 1000,
            },
            nics: Vec::new(),
            shared: Vec::new(),
            serves: Vec::new(),
            passthrough: Vec::new(),
            vsock: None,
        }
    }

    fn memory() -> GuestMemoryRef {
        Arc::new(keel_core::GuestRam::anonymous(&[(0x4000_0000, 1 << 20)]).unwrap())
    }

    #[test]
    fn a_served_disk_is_refused_by_a_backend_without_forwarding() {
        let plan = served_plan();
        let mut backends = crate::testing::MemoryBackends::default();
        let irq = Arc::new(keel_core::irq::RecordingIrq::new());

        let got = build_device(&plan, &plan.devices[0], &mut backends, memory(), irq);

        let Err(e) = got else {
            panic!("a served disk was built without a link")
        };
        assert!(
            e.to_string()
                .contains("cannot use disks served by other VMs"),
            "{e}"
        );
    }

    /// Backends whose served disks are links over `region`.
    struct LinkBackends {
        inner: crate::testing::MemoryBackends,
        region: Vec<u64>,
    }

    struct Silent;
    impl keel_virtio::forward_blk::ForwardBell for Silent {
        fn ring(&mut self) {}
    }
    struct Still;
    impl keel_virtio::forward_blk::Clock for Still {
        fn now_ms(&self) -> u64 {
            0
        }
    }

    impl DeviceBackends for LinkBackends {
        fn block(
            &mut self,
            plan: &VmPlan,
            disk: usize,
        ) -> Result<Box<dyn BlockBackend>, BackendError> {
            self.inner.block(plan, disk)
        }
        fn console(
            &mut self,
            plan: &VmPlan,
            port: usize,
        ) -> Result<Box<dyn ConsoleOutput>, BackendError> {
            self.inner.console(plan, port)
        }
        fn entropy(
            &mut self,
            plan: &VmPlan,
        ) -> Result<Box<dyn keel_virtio::EntropySource>, BackendError> {
            self.inner.entropy(plan)
        }
        fn served_block(
            &mut self,
            _plan: &VmPlan,
            _disk: usize,
        ) -> Result<ForwardLink, BackendError> {
            let g = ForwardGeometry {
                slots: 4,
                max_data: 1024,
            };
            let len = self.region.len() * 8;
            // SAFETY: the region outlives the device (the test drops the device first), is
            // 8-aligned and reached only through the windows.
            let windows = unsafe { g.windows(self.region.as_mut_ptr().cast(), len) }.unwrap();
            Ok(ForwardLink {
                windows,
                bell: Box::new(Silent),
                wake: Some(EventSource(42)),
                clock: Box::new(Still),
                first_id: 1,
            })
        }
    }

    #[test]
    fn a_served_disk_becomes_a_forwarding_block_device_of_the_planned_size() {
        let plan = served_plan();
        let g = ForwardGeometry {
            slots: 4,
            max_data: 1024,
        };
        let mut backends = LinkBackends {
            inner: crate::testing::MemoryBackends::default(),
            region: alloc::vec![0; g.region_len() / 8],
        };
        let irq = Arc::new(keel_core::irq::RecordingIrq::new());

        let (placed, _bus) =
            build_device(&plan, &plan.devices[0], &mut backends, memory(), irq).unwrap();

        assert_eq!(
            placed.transport.event_sources(),
            [(EventToken(0), EventSource(42))]
        );
        assert_eq!(placed.transport.poll_interval_ms(), Some(500));
        assert_eq!(placed.label, "0 (disk \"served0\")");
        drop(placed);
        drop(_bus);
    }
}
