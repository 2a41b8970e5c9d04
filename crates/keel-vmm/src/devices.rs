//! The virtio devices of a VM, built from its plan: the one place where a device kind meets
//! its model. The backend supplies only host resources ([`DeviceBackends`]); which model
//! serves a [`DeviceKind`], its slot and its interrupt are the same on every hypervisor.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;

use keel_core::bus::SharedDevice;
use keel_core::{GuestRam, IrqLine};
use keel_spec::{DeviceKind, DevicePlan, VmPlan};
use keel_virtio::{
    Block, BlockBackend, Console, ConsoleOutput, DeviceFailure, EntropySource, MmioTransport, Rng,
    VirtioDevice,
};

use crate::log::{Level, Log};

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

/// The host side of a VM's devices: what each backend provides (files on Linux, payload
/// regions and the console component on seL4).
pub trait DeviceBackends {
    /// The storage of disk `disk` (`plan.disks[disk]`).
    fn block(&mut self, plan: &VmPlan, disk: usize) -> Result<Box<dyn BlockBackend>, BackendError>;
    /// Where console port `port` writes.
    fn console(
        &mut self,
        plan: &VmPlan,
        port: usize,
    ) -> Result<Box<dyn ConsoleOutput>, BackendError>;
    /// The rng's entropy.
    fn entropy(&mut self, plan: &VmPlan) -> Result<Box<dyn EntropySource>, BackendError>;
}

/// A virtio-mmio transport seen through what the VMM needs of it besides the bus.
pub trait VirtioSlot: Send {
    /// Deliver a queue notification.
    fn notify(&mut self, queue: u16);
    /// The error that put the device into NEEDS_RESET, once.
    fn take_error(&mut self) -> Option<DeviceFailure>;
    /// How many queues the device has.
    fn num_queues(&self) -> usize;
    /// Back to the power-on state (a VM reset): the backend keeps its data.
    fn reset(&mut self);
}

impl<D: VirtioDevice> VirtioSlot for MmioTransport<D> {
    fn notify(&mut self, queue: u16) {
        MmioTransport::notify(self, queue);
    }
    fn take_error(&mut self) -> Option<DeviceFailure> {
        MmioTransport::take_error(self)
    }
    fn num_queues(&self) -> usize {
        self.device().queue_max_sizes().len()
    }
    fn reset(&mut self) {
        MmioTransport::reset(self);
    }
}

/// A virtio device placed in the VM.
#[derive(Clone)]
pub struct PlacedDevice {
    /// Where the plan put it.
    pub plan: DevicePlan,
    /// `0 (disk "data")`-style name for logs, after the device kind.
    pub label: String,
    /// Its transport (the bus holds it too).
    pub transport: Arc<spin::Mutex<dyn VirtioSlot>>,
}

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
        let failure = self.transport.lock().take_error();
        self.log_error(failure, log);
    }

    /// Deliver a QueueNotify of `queue`, then log the device's pending error: one lock of
    /// the transport for both.
    pub fn notify(&self, queue: u16, log: &Log) {
        let failure = {
            let mut transport = self.transport.lock();
            transport.notify(queue);
            transport.take_error()
        };
        self.log_error(failure, log);
    }

    fn log_error(&self, failure: Option<DeviceFailure>, log: &Log) {
        if let Some(failure) = failure {
            log.log(
                Level::Error,
                format_args!(
                    "{} {}: {}; device needs reset",
                    failure.device, self.label, failure.error
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
        DeviceKind::Rng => "0 (rng)".into(),
    }
}

/// Build the model for `device` with its host resources, behind a virtio-mmio transport;
/// returns it and the same transport as a bus device.
pub fn build_device(
    plan: &VmPlan,
    device: &DevicePlan,
    backends: &mut dyn DeviceBackends,
    memory: GuestRam,
    irq: Arc<dyn IrqLine>,
) -> Result<(PlacedDevice, SharedDevice), BackendError> {
    fn placed<D: VirtioDevice + 'static>(
        plan: &VmPlan,
        device: &DevicePlan,
        model: D,
        memory: GuestRam,
        irq: Arc<dyn IrqLine>,
    ) -> (PlacedDevice, SharedDevice) {
        let transport = Arc::new(spin::Mutex::new(MmioTransport::new(model, memory, irq)));
        let bus: SharedDevice = transport.clone();
        let placed = PlacedDevice {
            plan: *device,
            label: label(plan, device),
            transport,
        };
        (placed, bus)
    }
    Ok(match device.kind {
        DeviceKind::Block { disk } => {
            let backend = backends.block(plan, disk)?;
            let id = plan.disks.get(disk).map(|d| d.id.as_str()).unwrap_or("");
            placed(plan, device, Block::new(backend, id), memory, irq)
        }
        DeviceKind::Console { port } => {
            let out = backends.console(plan, port)?;
            placed(plan, device, Console::new(out), memory, irq)
        }
        DeviceKind::Rng => {
            let source = backends.entropy(plan)?;
            placed(plan, device, Rng::new(source), memory, irq)
        }
    })
}
