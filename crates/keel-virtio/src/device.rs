//! The contract between a transport (virtio-mmio) and a device model.
//!
//! A device model sees guest memory, its virtqueues and its backend; nothing else. It never
//! calls the OS and never touches the interrupt line: it tells the transport whether the
//! guest should be interrupted, and the transport drives the line.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use keel_core::{GuestMemory, GuestMemoryRef};

use crate::queue::{ChainError, Queue, QueueError};

/// virtio device IDs (virtio 1.2 §5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// Feature bits shared by all devices (virtio 1.2 §6).
pub mod features {
    /// The driver may use indirect descriptors.
    pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression.
    pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
    /// A modern (virtio 1.x) device.
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
}

/// The name of a device type, for messages.
pub fn device_type_name(device_type: u32) -> &'static str {
    match device_type {
        device_type::NET => "virtio-net",
        device_type::BLOCK => "virtio-blk",
        device_type::CONSOLE => "virtio-console",
        device_type::RNG => "virtio-rng",
        device_type::VSOCK => "virtio-vsock",
        _ => "virtio",
    }
}

/// Why a device stopped: the guest's queue or request was malformed beyond what a status
/// code can report, or the device's backend failed. The transport answers with
/// DEVICE_NEEDS_RESET.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A virtqueue or one of its descriptor chains is malformed.
    #[error("queue {queue}: {source}")]
    Queue {
        /// The queue index.
        queue: u16,
        /// What was wrong.
        source: QueueError,
    },
    /// A chain does not have the shape the device protocol requires.
    #[error("queue {queue}: {source}")]
    Chain {
        /// The queue index.
        queue: u16,
        /// What was wrong.
        source: ChainError,
    },
    /// A request is malformed in a way the device cannot answer with a status.
    #[error("queue {queue}, descriptor chain at head {head}: {reason}")]
    BadRequest {
        /// The queue index.
        queue: u16,
        /// The chain's head.
        head: u16,
        /// What was wrong, with the offending value.
        reason: String,
    },
    /// The driver notified a queue the device does not have.
    #[error("queue {queue} does not exist (the device has {count})")]
    NoSuchQueue {
        /// The index notified.
        queue: u16,
        /// How many queues the device has.
        count: usize,
    },
    /// The device's backend failed in a way the guest cannot be told about.
    #[error("backend: {0}")]
    Backend(String),
    /// The VMM's heap could not hold a buffer of a guest request (`bytes` for `what`):
    /// the device fails (needs reset), the VMM and its other devices go on.
    #[error("no memory for {bytes} bytes of {what}")]
    OutOfMemory {
        /// What the buffer was for.
        what: &'static str,
        /// Its size.
        bytes: usize,
    },
    /// The VMM delivered an event the device did not declare in
    /// [`VirtioDevice::event_sources`] (a VMM bug, not the guest's).
    #[error("event token {token} is not one of the device's event sources")]
    NoSuchEvent {
        /// The token delivered.
        token: u32,
    },
}

impl DeviceError {
    /// Tag a [`QueueError`] with its queue.
    pub fn queue(queue: u16) -> impl FnOnce(QueueError) -> DeviceError {
        move |source| DeviceError::Queue { queue, source }
    }

    /// Tag a [`ChainError`] with its queue.
    pub fn chain(queue: u16) -> impl FnOnce(ChainError) -> DeviceError {
        move |source| DeviceError::Chain { queue, source }
    }
}

/// A device error with the name of the device it happened in: the one line the VMM logs
/// (`virtio-blk: queue 0: descriptor 3 buffer 0x1000+0x200 is not in guest RAM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFailure {
    /// The device's name (`virtio-blk`, …).
    pub device: &'static str,
    /// What went wrong.
    pub error: DeviceError,
}

impl fmt::Display for DeviceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.device, self.error)
    }
}

impl core::error::Error for DeviceFailure {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A host event a device waits on, as the host names it: an opaque handle the device's
/// backend was given (a file descriptor number on Linux, a Microkit channel number on seL4).
/// The device never interprets it; the VMM's I/O loop waits on it and calls
/// [`VirtioDevice::handle_event`] with the matching [`EventToken`] when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventSource(pub u64);

/// Which of a device's event sources fired: chosen by the device in
/// [`VirtioDevice::event_sources`], handed back to [`VirtioDevice::handle_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventToken(pub u32);

/// The event sources of a device that has at most one: `source` under `token`.
pub(crate) fn single_event(
    token: EventToken,
    source: Option<EventSource>,
) -> Vec<(EventToken, EventSource)> {
    source.map(|source| (token, source)).into_iter().collect()
}

/// Whether `got` is the one event token of a device whose only source is `source` under
/// `token`; [`DeviceError::NoSuchEvent`] otherwise.
pub(crate) fn check_single_event(
    got: EventToken,
    token: EventToken,
    source: Option<EventSource>,
) -> Result<(), DeviceError> {
    if got != token || source.is_none() {
        return Err(DeviceError::NoSuchEvent { token: got.0 });
    }
    Ok(())
}

/// A virtio device model, driven by a transport.
///
/// Life cycle: the transport negotiates features and queue configuration with the driver,
/// then calls [`VirtioDevice::activate`] once with guest memory and the validated queues;
/// [`VirtioDevice::process_queue`] on each notification; [`VirtioDevice::reset`] when the
/// driver writes status 0 (after which `activate` may come again).
pub trait VirtioDevice: Send {
    /// The virtio device ID (see [`device_type`]).
    fn device_type(&self) -> u32;

    /// The name used in messages; by default derived from the device type.
    fn name(&self) -> &'static str {
        device_type_name(self.device_type())
    }

    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The device-specific feature bits offered (the transport adds VERSION_1 and the ring
    /// features it implements).
    fn device_features(&self) -> u64;

    /// Read `data.len()` bytes of the device configuration space at `offset`. Bytes past the
    /// end of the configuration read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Write the device configuration space. Ignored by default (read-only config).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// Where the device keeps guest memory and its queues while active: `None` before
    /// [`VirtioDevice::activate`] and after [`VirtioDevice::reset`].
    fn active_queues(&mut self) -> &mut Option<ActiveQueues>;

    /// Start the device: the driver has set DRIVER_OK. `queues` has one entry per
    /// [`VirtioDevice::queue_max_sizes`] entry, configured and with ring features applied;
    /// queues the driver did not set ready are present with `ready() == false`.
    ///
    /// By default the device keeps `memory` and `queues` in [`VirtioDevice::active_queues`];
    /// a device whose activation depends on the acked features overrides this.
    fn activate(
        &mut self,
        memory: GuestMemoryRef,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), DeviceError> {
        let _ = acked_features;
        *self.active_queues() = Some(ActiveQueues::new(memory, queues));
        Ok(())
    }

    /// Return to the state before activation (drop queues and memory, keep the backend).
    fn reset(&mut self) {
        *self.active_queues() = None;
    }

    /// The driver notified `queue`. Returns whether the guest should be interrupted (used
    /// buffers were added and the driver did not suppress the notification).
    fn process_queue(&mut self, queue: u16) -> Result<bool, DeviceError>;

    /// Device-side work that does not come from a notification (console input arrived).
    /// Returns whether the guest should be interrupted.
    fn poll(&mut self) -> Result<bool, DeviceError> {
        Ok(false)
    }

    /// How often the VMM must call [`VirtioDevice::poll`] even when nothing happens, in
    /// milliseconds (a device with deadlines of its own: a forwarded disk's timeouts).
    /// `None` (the default): only after the device's own events.
    fn poll_interval_ms(&self) -> Option<u32> {
        None
    }

    /// The host events the device waits on, each with the token [`VirtioDevice::handle_event`]
    /// gets when it fires. Fixed for the device's life (the backends are given at
    /// construction): a VMM asks once when it wires the device. None by default.
    fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        Vec::new()
    }

    /// The event source of `token` fired (see `docs/virtio.md` for the contract: sources
    /// are edge-triggered, and the device takes only what the guest has room for). Returns
    /// whether the guest should be interrupted. A token the device did not declare is
    /// [`DeviceError::NoSuchEvent`]; by default the device declares none.
    fn handle_event(&mut self, token: EventToken) -> Result<bool, DeviceError> {
        Err(DeviceError::NoSuchEvent { token: token.0 })
    }

    /// An event source the device stopped serving early, after its per-call batch limit
    /// (so one flood cannot monopolise the VMM), with work maybe left in the backend that an
    /// edge-triggered source will not announce again: the VMM delivers this token to
    /// [`VirtioDevice::handle_event`] again, after its other pending work, as if it had
    /// fired. None by default (the device takes all it can in one call).
    fn backlogged_event(&self) -> Option<EventToken> {
        None
    }

    /// What the device has counted so far (frames moved, drops by reason), by name, for a
    /// VMM's run-time report. None by default.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// What an activated device holds: guest memory and its queues. Shared by the device models
/// so that each does not re-implement queue lookup and interrupt decisions.
pub struct ActiveQueues {
    /// Guest memory: mapped RAM, a shared window or a bounce buffer (see
    /// [`GuestMemory::mapped`] for the zero-copy fast path).
    pub memory: GuestMemoryRef,
    /// The queues, by index.
    pub queues: Vec<Queue>,
}

impl ActiveQueues {
    /// Wrap what [`VirtioDevice::activate`] received.
    pub fn new(memory: GuestMemoryRef, queues: Vec<Queue>) -> ActiveQueues {
        ActiveQueues { memory, queues }
    }

    /// Guest memory and queue `index`, or [`DeviceError::NoSuchQueue`].
    pub fn get(&mut self, index: u16) -> Result<(&dyn GuestMemory, &mut Queue), DeviceError> {
        let count = self.queues.len();
        let q = self
            .queues
            .get_mut(usize::from(index))
            .ok_or(DeviceError::NoSuchQueue {
                queue: index,
                count,
            })?;
        Ok((&*self.memory, q))
    }

    /// Whether queue `index` should interrupt the guest for the used entries added since
    /// the last decision.
    pub fn needs_notification(&mut self, index: u16) -> Result<bool, DeviceError> {
        let (mem, q) = self.get(index)?;
        q.needs_notification(mem).map_err(DeviceError::queue(index))
    }
}

impl fmt::Debug for ActiveQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveQueues")
            .field("mapped", &self.memory.mapped().is_some())
            .field("queues", &self.queues)
            .finish()
    }
}

/// Copy the part of a device configuration image `config` at `offset` into `data`; bytes
/// past its end read as zero. Every device's `read_config` goes through this.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(rest) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
        return;
    };
    let n = data.len().min(rest.len());
    data[..n].copy_from_slice(&rest[..n]);
}

/// A boxed device is a device: lets a VMM keep `MmioTransport<Box<dyn VirtioDevice>>`.
impl<T: VirtioDevice + ?Sized> VirtioDevice for alloc::boxed::Box<T> {
    fn device_type(&self) -> u32 {
        (**self).device_type()
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        (**self).queue_max_sizes()
    }
    fn device_features(&self) -> u64 {
        (**self).device_features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        (**self).read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        (**self).write_config(offset, data)
    }
    fn active_queues(&mut self) -> &mut Option<ActiveQueues> {
        (**self).active_queues()
    }
    fn activate(
        &mut self,
        memory: GuestMemoryRef,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), DeviceError> {
        (**self).activate(memory, queues, acked_features)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn process_queue(&mut self, queue: u16) -> Result<bool, DeviceError> {
        (**self).process_queue(queue)
    }
    fn poll(&mut self) -> Result<bool, DeviceError> {
        (**self).poll()
    }
    fn poll_interval_ms(&self) -> Option<u32> {
        (**self).poll_interval_ms()
    }
    fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        (**self).event_sources()
    }
    fn handle_event(&mut self, token: EventToken) -> Result<bool, DeviceError> {
        (**self).handle_event(token)
    }
    fn backlogged_event(&self) -> Option<EventToken> {
        (**self).backlogged_event()
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        (**self).counters()
    }
}
