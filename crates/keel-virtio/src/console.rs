//! virtio-console (device type 3): one port, receiveq 0 and transmitq 1.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use keel_core::GuestRam;

use crate::device::{ActiveQueues, DeviceError, VirtioDevice, device_type};
use crate::queue::Queue;

/// Feature bit: the configuration holds the console size.
pub const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
/// Input bytes buffered while the guest has posted no receive buffers; more are dropped.
pub const INPUT_BUFFER_LIMIT: usize = 64 * 1024;

/// Where the guest's console output goes (a terminal, a log, a socket).
pub trait ConsoleOutput: Send {
    /// The guest wrote `bytes`.
    fn write(&mut self, bytes: &[u8]);
}

/// The virtio-console device.
#[derive(Debug)]
pub struct Console<O: ConsoleOutput> {
    output: O,
    input: VecDeque<u8>,
    size: Option<(u16, u16)>,
    active: Option<ActiveQueues>,
}

impl<O: ConsoleOutput> Console<O> {
    /// A console writing the guest's output to `output`.
    pub fn new(output: O) -> Console<O> {
        Console {
            output,
            input: VecDeque::new(),
            size: None,
            active: None,
        }
    }

    /// Offer VIRTIO_CONSOLE_F_SIZE with this size in columns and rows.
    pub fn with_size(mut self, cols: u16, rows: u16) -> Console<O> {
        self.size = Some((cols, rows));
        self
    }

    /// The output backend.
    pub fn output(&self) -> &O {
        &self.output
    }

    /// Queue input for the guest; it is delivered when the guest has receive buffers (call
    /// [`crate::MmioTransport::poll`] afterwards). Returns how many bytes were accepted: at
    /// most [`INPUT_BUFFER_LIMIT`] bytes wait at a time, the rest is dropped.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(INPUT_BUFFER_LIMIT - self.input.len());
        self.input.extend(&bytes[..n]);
        n
    }

    /// Bytes waiting for receive buffers.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }
}

impl<O: ConsoleOutput> VirtioDevice for Console<O> {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256]
    }

    fn device_features(&self) -> u64 {
        if self.size.is_some() {
            VIRTIO_CONSOLE_F_SIZE
        } else {
            0
        }
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {
        todo!()
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

    fn poll(&mut self) -> Result<bool, DeviceError> {
        todo!()
    }
}
