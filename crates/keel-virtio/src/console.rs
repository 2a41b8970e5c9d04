//! virtio-console (device type 3): one port, receiveq 0 and transmitq 1.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::device::{ActiveQueues, DeviceError, VirtioDevice, device_type, read_config_bytes};

/// Feature bit: the configuration holds the console size.
pub const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
/// Input bytes buffered while the guest has posted no receive buffers; more are dropped.
pub const INPUT_BUFFER_LIMIT: usize = 64 * 1024;

/// The receive queue (device → guest).
pub const RECEIVEQ: u16 = 0;
/// The transmit queue (guest → device).
pub const TRANSMITQ: u16 = 1;

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

impl<O: ConsoleOutput> Console<O> {
    /// Move buffered input into the receive buffers the guest has posted.
    fn deliver_input(&mut self) -> Result<bool, DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let (mem, q) = active.get(RECEIVEQ)?;
        if !q.ready() {
            // The driver has not set up input (yet): keep the bytes.
            return Ok(false);
        }
        let mut used = false;
        while !self.input.is_empty() {
            let Some(chain) = q.pop(mem).map_err(DeviceError::queue(RECEIVEQ))? else {
                break;
            };
            chain
                .require_writable_only()
                .map_err(DeviceError::chain(RECEIVEQ))?;
            let n = (chain.writable_len() as usize).min(self.input.len());
            let bytes: Vec<u8> = self.input.drain(..n).collect();
            chain
                .write_at(mem, 0, &bytes)
                .map_err(DeviceError::chain(RECEIVEQ))?;
            // n <= writable_len, a u32.
            q.add_used(mem, chain.head(), n as u32)
                .map_err(DeviceError::queue(RECEIVEQ))?;
            used = true;
        }
        if used {
            active.needs_notification(RECEIVEQ)
        } else {
            Ok(false)
        }
    }

    /// Hand every transmit buffer to the output backend.
    fn transmit(&mut self) -> Result<bool, DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let (mem, q) = active.get(TRANSMITQ)?;
        let mut buf = [0u8; 1024];
        let mut used = false;
        while let Some(chain) = q.pop(mem).map_err(DeviceError::queue(TRANSMITQ))? {
            chain
                .require_readable_only()
                .map_err(DeviceError::chain(TRANSMITQ))?;
            let total = u64::from(chain.readable_len());
            let mut done = 0u64;
            while done < total {
                let n = (total - done).min(buf.len() as u64) as usize;
                chain
                    .read_at(mem, done, &mut buf[..n])
                    .map_err(DeviceError::chain(TRANSMITQ))?;
                self.output.write(&buf[..n]);
                done += n as u64;
            }
            q.add_used(mem, chain.head(), 0)
                .map_err(DeviceError::queue(TRANSMITQ))?;
            used = true;
        }
        if used {
            active.needs_notification(TRANSMITQ)
        } else {
            Ok(false)
        }
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

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_console_config { cols: u16, rows: u16, max_nr_ports: u32, emerg_wr: u32 }
        let mut config = [0u8; 12];
        let (cols, rows) = self.size.unwrap_or((0, 0));
        config[0..2].copy_from_slice(&cols.to_le_bytes());
        config[2..4].copy_from_slice(&rows.to_le_bytes());
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn active_queues(&mut self) -> &mut Option<ActiveQueues> {
        &mut self.active
    }

    fn process_queue(&mut self, queue: u16) -> Result<bool, DeviceError> {
        match queue {
            RECEIVEQ => self.deliver_input(),
            TRANSMITQ => self.transmit(),
            _ => Err(DeviceError::NoSuchQueue { queue, count: 2 }),
        }
    }

    fn poll(&mut self) -> Result<bool, DeviceError> {
        self.deliver_input()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::GuestDriver;
    use alloc::sync::Arc;
    use spin::Mutex;

    /// Output captured where the test can see it after the device took the backend.
    #[derive(Clone, Debug, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl ConsoleOutput for Captured {
        fn write(&mut self, bytes: &[u8]) {
            self.0.lock().extend_from_slice(bytes);
        }
    }

    fn console() -> (GuestDriver<Console<Captured>>, Captured) {
        let out = Captured::default();
        (GuestDriver::start(Console::new(out.clone())), out)
    }

    #[test]
    fn console_output_reaches_backend() {
        let (mut d, out) = console();
        let a = d.buffer(b"hello, ");
        let b = d.buffer(b"world\n");

        d.submit(TRANSMITQ, &[(a, 7, false), (b, 6, false)]);

        assert_eq!(out.0.lock().as_slice(), b"hello, world\n");
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
    }

    #[test]
    fn console_transmit_with_writable_buffer_sets_needs_reset() {
        let (mut d, out) = console();
        let a = d.alloc(4);

        d.submit(TRANSMITQ, &[(a, 4, true)]);

        assert!(d.needs_reset());
        assert!(out.0.lock().is_empty());
    }

    #[test]
    fn console_input_waits_for_receive_buffers() {
        let (mut d, _out) = console();
        d.transport.device_mut().push_input(b"ls\n");
        d.transport.poll();
        assert_eq!(d.transport.device().pending_input(), 3);
        let a = d.alloc(16);

        d.submit(RECEIVEQ, &[(a, 16, true)]);

        assert_eq!(d.read_mem(a, 3), b"ls\n");
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 3)));
        assert_eq!(d.transport.device().pending_input(), 0);
    }

    #[test]
    fn console_input_fills_posted_buffer_on_poll() {
        let (mut d, _out) = console();
        let a = d.alloc(2);
        let b = d.alloc(2);
        d.submit(RECEIVEQ, &[(a, 2, true)]);
        d.submit(RECEIVEQ, &[(b, 2, true)]);
        assert!(!d.irq.is_high());

        d.transport.device_mut().push_input(b"abc");
        d.transport.poll();

        assert_eq!(d.read_mem(a, 2), b"ab");
        assert_eq!(d.read_mem(b, 1), b"c");
        assert_eq!(d.last_used(RECEIVEQ), Some((1, 1)));
        assert!(d.irq.is_high());
    }

    #[test]
    fn console_input_is_bounded() {
        let mut c = Console::new(Captured::default());
        let big = alloc::vec![b'x'; INPUT_BUFFER_LIMIT + 10];

        let accepted = c.push_input(&big);

        assert_eq!(accepted, INPUT_BUFFER_LIMIT);
        assert_eq!(c.push_input(b"y"), 0);
    }

    #[test]
    fn console_size_is_in_config_with_f_size() {
        let mut d = GuestDriver::start(Console::new(Captured::default()).with_size(80, 25));
        assert_ne!(d.device_features() & VIRTIO_CONSOLE_F_SIZE, 0);
        assert_eq!(d.config::<4>(0), [80, 0, 25, 0]);
    }

    #[test]
    fn console_without_size_does_not_offer_f_size() {
        let (mut d, _out) = console();
        assert_eq!(d.device_features() & VIRTIO_CONSOLE_F_SIZE, 0);
    }
}
