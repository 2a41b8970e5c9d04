//! virtio-rng (device type 4): fills the guest's receive buffers from an entropy source.

use alloc::string::String;
use alloc::vec::Vec;

use keel_core::GuestRam;

use crate::device::{ActiveQueues, DeviceError, VirtioDevice, device_type};
use crate::queue::Queue;

/// Why an entropy source could not deliver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("entropy source failed: {0}")]
pub struct EntropyError(pub String);

/// Where the random bytes come from (the host's CSPRNG, a hardware RNG on seL4).
pub trait EntropySource: Send {
    /// Fill `buf` completely with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

/// The virtio-rng device.
#[derive(Debug)]
pub struct Rng<E: EntropySource> {
    source: E,
    active: Option<ActiveQueues>,
}

impl<E: EntropySource> Rng<E> {
    /// An rng device drawing from `source`.
    pub fn new(source: E) -> Rng<E> {
        Rng {
            source,
            active: None,
        }
    }
}

impl<E: EntropySource> VirtioDevice for Rng<E> {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        memory: GuestRam,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), DeviceError> {
        self.active = Some(ActiveQueues::new(memory, queues));
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, _queue: u16) -> Result<bool, DeviceError> {
        todo!()
    }
}
