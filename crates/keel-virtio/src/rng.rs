//! virtio-rng (device type 4): fills the guest's receive buffers from an entropy source.

use alloc::string::{String, ToString};

use crate::device::{ActiveQueues, DeviceError, VirtioDevice, device_type};

/// Most bytes given for one request: a guest asking for more gets this many (the used
/// length tells it), so a huge buffer cannot keep the VMM busy.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;

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

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        crate::device::read_config_bytes(&[], offset, data);
    }

    fn active_queues(&mut self) -> &mut Option<ActiveQueues> {
        &mut self.active
    }

    fn process_queue(&mut self, queue: u16) -> Result<bool, DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let (mem, q) = active.get(queue)?;
        let mut buf = [0u8; 256];
        let mut used = false;
        while let Some(chain) = q.pop(mem).map_err(DeviceError::queue(queue))? {
            // Validate the whole chain before writing any of it.
            chain
                .require_writable_only()
                .map_err(DeviceError::chain(queue))?;
            let total = chain.writable_len().min(MAX_BYTES_PER_REQUEST);
            let mut done = 0u32;
            while done < total {
                let n = (total - done).min(buf.len() as u32) as usize;
                let piece = &mut buf[..n];
                self.source
                    .fill(piece)
                    .map_err(|e| DeviceError::Backend(e.to_string()))?;
                chain
                    .write_at(mem, u64::from(done), piece)
                    .map_err(DeviceError::chain(queue))?;
                done += n as u32;
            }
            q.add_used(mem, chain.head(), total)
                .map_err(DeviceError::queue(queue))?;
            used = true;
        }
        if used {
            active.needs_notification(queue)
        } else {
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{GuestDriver, PatternEntropy, rng_driver};

    #[test]
    fn rng_fills_all_writable_descriptors() {
        let mut d = rng_driver();
        let a = d.alloc(16);
        let b = d.alloc(48);

        d.submit(0, &[(a, 16, true), (b, 48, true)]);

        assert_eq!(d.read_mem(a, 16), [0xa5; 16]);
        assert_eq!(d.read_mem(b, 48), [0xa5; 48]);
        assert_eq!(d.last_used(0), Some((0, 64)));
        assert!(d.irq.is_high());
    }

    #[test]
    fn rng_chain_with_readable_descriptor_sets_needs_reset_without_writing() {
        let mut d = rng_driver();
        let a = d.alloc(16);
        let b = d.alloc(16);

        d.submit(0, &[(a, 16, false), (b, 16, true)]);

        assert!(d.needs_reset());
        assert_eq!(d.read_mem(b, 16), [0; 16]);
        assert_eq!(d.last_used(0), None);
    }

    #[test]
    fn rng_request_is_capped() {
        let mut d = rng_driver();
        let a = d.alloc(MAX_BYTES_PER_REQUEST + 16);

        d.submit(0, &[(a, MAX_BYTES_PER_REQUEST + 16, true)]);

        assert_eq!(d.last_used(0), Some((0, MAX_BYTES_PER_REQUEST)));
        assert_eq!(
            d.read_mem(a + u64::from(MAX_BYTES_PER_REQUEST), 16),
            [0; 16]
        );
    }

    #[test]
    fn rng_entropy_failure_sets_needs_reset() {
        let mut d = GuestDriver::start(Rng::new(PatternEntropy { fail: true }));
        let a = d.alloc(16);

        d.submit(0, &[(a, 16, true)]);

        assert!(d.needs_reset());
        let failure = d.transport.take_error().unwrap();
        assert_eq!(
            alloc::format!("{failure}"),
            "virtio-rng: backend: entropy source failed: test source is broken"
        );
    }
}
