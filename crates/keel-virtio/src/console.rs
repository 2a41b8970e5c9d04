//! virtio-console (device type 3): one port, receiveq 0 and transmitq 1.
//!
//! Input reaches the guest two ways: bytes the VMM pushes ([`Console::push_input`], buffered
//! here up to [`INPUT_BUFFER_LIMIT`]) and a [`ConsoleInput`] backend the device reads itself
//! when its event source fires ([`VirtioDevice::handle_event`]) or the guest posts receive
//! buffers. The backend is read only for as many bytes as the posted buffers hold; the rest
//! stays in the backend.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::device::{
    ActiveQueues, DeviceError, EventSource, EventToken, VirtioDevice, check_single_event,
    device_type, read_config_bytes, single_event,
};
use crate::queue::DescriptorChain;

/// Feature bit: the configuration holds the console size.
pub const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
/// Input bytes buffered while the guest has posted no receive buffers; more are dropped.
pub const INPUT_BUFFER_LIMIT: usize = 64 * 1024;

/// Bytes taken from one transmit chain by default ([`Console::with_transmit_chain_limit`]).
/// A chain may describe up to 4 GiB - 1 (its buffers may even overlap); past this cap the
/// chain is completed with what was taken and the rest is dropped and counted
/// (`transmit_truncated_chains`, `transmit_dropped_bytes` in [`VirtioDevice::counters`]).
/// Completing, not failing, is what a driver expects of a console: its transmit buffers
/// are returned either way, and Linux sends at most a page or so per chain.
pub const TRANSMIT_CHAIN_LIMIT: u32 = 64 * 1024;

/// The receive queue (device → guest).
pub const RECEIVEQ: u16 = 0;
/// The transmit queue (guest → device).
pub const TRANSMITQ: u16 = 1;

/// The token of the input backend's event source in [`VirtioDevice::event_sources`].
pub const INPUT_EVENT: EventToken = EventToken(0);

/// Bytes copied between the input backend and guest memory per step.
const INPUT_CHUNK: usize = 1024;

/// Where the guest's console output goes (a terminal, a log, a socket).
pub trait ConsoleOutput: Send {
    /// The guest wrote `bytes`.
    fn write(&mut self, bytes: &[u8]);
}

/// Where the guest's console input comes from (a terminal, a pipe, a socket), read by the
/// device itself.
pub trait ConsoleInput: Send {
    /// The host event that fires when input arrives, if there is one (a file descriptor
    /// number on Linux, a channel on seL4). Without one the device still reads the backend
    /// when the guest posts receive buffers and on [`crate::MmioTransport::poll`].
    fn event_source(&self) -> Option<EventSource>;

    /// Copy up to `buf.len()` bytes of input that is available now into `buf`; never
    /// blocks. Returns how many: 0 when nothing is waiting (or the input has ended).
    fn read(&mut self, buf: &mut [u8]) -> usize;
}

/// No input backend: the console gets input only through [`Console::push_input`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInput;

impl ConsoleInput for NoInput {
    fn event_source(&self) -> Option<EventSource> {
        None
    }

    fn read(&mut self, _buf: &mut [u8]) -> usize {
        0
    }
}

impl<T: ConsoleInput + ?Sized> ConsoleInput for alloc::boxed::Box<T> {
    fn event_source(&self) -> Option<EventSource> {
        (**self).event_source()
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        (**self).read(buf)
    }
}

/// The virtio-console device.
#[derive(Debug)]
pub struct Console<O: ConsoleOutput, I: ConsoleInput = NoInput> {
    output: O,
    input_backend: I,
    input: VecDeque<u8>,
    /// A receive buffer popped when no input turned out to be waiting: filled first next
    /// time (a popped chain cannot be given back to the queue).
    held: Option<DescriptorChain>,
    size: Option<(u16, u16)>,
    active: Option<ActiveQueues>,
    /// Most bytes taken from one transmit chain.
    transmit_limit: u32,
    /// Transmit chains longer than `transmit_limit`, and the bytes dropped from them.
    truncated_chains: u64,
    dropped_bytes: u64,
}

impl<O: ConsoleOutput> Console<O> {
    /// A console writing the guest's output to `output`, without an input backend.
    pub fn new(output: O) -> Console<O> {
        Console {
            output,
            input_backend: NoInput,
            input: VecDeque::new(),
            held: None,
            size: None,
            active: None,
            transmit_limit: TRANSMIT_CHAIN_LIMIT,
            truncated_chains: 0,
            dropped_bytes: 0,
        }
    }
}

impl<O: ConsoleOutput, I: ConsoleInput> Console<O, I> {
    /// The same console reading the guest's input from `input` (its event source, if any,
    /// is declared in [`VirtioDevice::event_sources`] under [`INPUT_EVENT`]).
    pub fn with_input<J: ConsoleInput>(self, input: J) -> Console<O, J> {
        Console {
            output: self.output,
            input_backend: input,
            input: self.input,
            held: self.held,
            size: self.size,
            active: self.active,
            transmit_limit: self.transmit_limit,
            truncated_chains: self.truncated_chains,
            dropped_bytes: self.dropped_bytes,
        }
    }

    /// Take at most `bytes` from one transmit chain (default [`TRANSMIT_CHAIN_LIMIT`]); the
    /// rest of a longer chain is dropped and counted.
    pub fn with_transmit_chain_limit(mut self, bytes: u32) -> Console<O, I> {
        self.transmit_limit = bytes;
        self
    }

    /// Offer VIRTIO_CONSOLE_F_SIZE with this size in columns and rows.
    pub fn with_size(mut self, cols: u16, rows: u16) -> Console<O, I> {
        self.size = Some((cols, rows));
        self
    }

    /// The output backend.
    pub fn output(&self) -> &O {
        &self.output
    }

    /// The input backend.
    pub fn input(&self) -> &I {
        &self.input_backend
    }

    /// Queue input for the guest; it is delivered when the guest has receive buffers (call
    /// [`crate::MmioTransport::poll`] afterwards). Returns how many bytes were accepted: at
    /// most [`INPUT_BUFFER_LIMIT`] bytes wait at a time, the rest is dropped.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(INPUT_BUFFER_LIMIT - self.input.len());
        self.input.extend(&bytes[..n]);
        n
    }

    /// Bytes pushed with [`Console::push_input`] that wait for receive buffers (bytes
    /// still in the input backend are not counted).
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// Move input into the receive buffers the guest has posted, never reading more from
    /// the backend than they hold.
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
        let mut scratch = [0u8; INPUT_CHUNK];
        loop {
            let chain = match self.held.take() {
                Some(chain) => chain,
                None => match q.pop(mem).map_err(DeviceError::queue(RECEIVEQ))? {
                    Some(chain) => chain,
                    None => break,
                },
            };
            chain
                .require_writable_only()
                .map_err(DeviceError::chain(RECEIVEQ))?;
            let room = chain.writable_len() as usize;
            let mut filled = 0usize;
            while filled < room {
                let want = (room - filled).min(INPUT_CHUNK);
                let n = next_input(
                    &mut self.input,
                    &mut self.input_backend,
                    &mut scratch[..want],
                );
                if n == 0 {
                    break;
                }
                chain
                    .write_at(mem, filled as u64, &scratch[..n])
                    .map_err(DeviceError::chain(RECEIVEQ))?;
                filled += n;
            }
            if filled == 0 {
                // Nothing is waiting: keep the buffer for the next input.
                self.held = Some(chain);
                break;
            }
            // filled <= writable_len, a u32.
            q.add_used(mem, chain.head(), filled as u32)
                .map_err(DeviceError::queue(RECEIVEQ))?;
            used = true;
            if filled < room {
                // The input ran dry before the buffer was full.
                break;
            }
        }
        if used {
            active.needs_notification(RECEIVEQ)
        } else {
            Ok(false)
        }
    }

    /// Hand every transmit buffer to the output backend, at most `transmit_limit` bytes of
    /// each (in 1 KiB steps: nothing is allocated for it).
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
            let len = chain.readable_len();
            let total = u64::from(len.min(self.transmit_limit));
            if len > self.transmit_limit {
                self.truncated_chains += 1;
                self.dropped_bytes += u64::from(len - self.transmit_limit);
            }
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

/// Up to `buf.len()` bytes of input: pushed bytes first, then the backend's. (A function,
/// not a method: the caller holds `Console::active` borrowed.)
fn next_input(pushed: &mut VecDeque<u8>, backend: &mut impl ConsoleInput, buf: &mut [u8]) -> usize {
    if pushed.is_empty() {
        // A backend claiming more than it was given is not believed.
        return backend.read(buf).min(buf.len());
    }
    let n = buf.len().min(pushed.len());
    for (dst, src) in buf.iter_mut().zip(pushed.drain(..n)) {
        *dst = src;
    }
    n
}

impl<O: ConsoleOutput, I: ConsoleInput> VirtioDevice for Console<O, I> {
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

    fn reset(&mut self) {
        self.active = None;
        self.held = None;
    }

    fn poll(&mut self) -> Result<bool, DeviceError> {
        self.deliver_input()
    }

    fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        single_event(INPUT_EVENT, self.input_backend.event_source())
    }

    fn handle_event(&mut self, token: EventToken) -> Result<bool, DeviceError> {
        check_single_event(token, INPUT_EVENT, self.input_backend.event_source())?;
        self.deliver_input()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        alloc::vec![
            ("transmit_truncated_chains", self.truncated_chains),
            ("transmit_dropped_bytes", self.dropped_bytes),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::GuestDriver;
    use alloc::sync::Arc;
    use keel_core::GuestAddress;
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

    /// Input waiting in a host backend whose event source is 7; the test keeps a handle to
    /// add bytes and see what the device has not taken.
    #[derive(Clone, Debug, Default)]
    struct MockInput(Arc<Mutex<VecDeque<u8>>>);

    impl MockInput {
        fn arrive(&self, bytes: &[u8]) {
            self.0.lock().extend(bytes);
        }

        fn left(&self) -> Vec<u8> {
            self.0.lock().iter().copied().collect()
        }
    }

    impl ConsoleInput for MockInput {
        fn event_source(&self) -> Option<EventSource> {
            Some(EventSource(7))
        }

        fn read(&mut self, buf: &mut [u8]) -> usize {
            let mut q = self.0.lock();
            let n = buf.len().min(q.len());
            for (dst, src) in buf.iter_mut().zip(q.drain(..n)) {
                *dst = src;
            }
            n
        }
    }

    fn console_with_input() -> (GuestDriver<Console<Captured, MockInput>>, MockInput) {
        let input = MockInput::default();
        let console = Console::new(Captured::default()).with_input(input.clone());
        (GuestDriver::start(console), input)
    }

    #[test]
    fn console_declares_its_input_backends_event_source() {
        let (d, _input) = console_with_input();

        assert_eq!(d.transport.event_sources(), [(INPUT_EVENT, EventSource(7))]);
    }

    #[test]
    fn console_without_input_backend_declares_no_event_source() {
        let (d, _out) = console();

        assert!(d.transport.event_sources().is_empty());
    }

    #[test]
    fn input_event_delivers_bytes_into_posted_buffers_only() {
        let (mut d, input) = console_with_input();
        let (a, b) = (d.alloc(4), d.alloc(4));
        d.mem.write(GuestAddress(b + 2), &[0xee; 2]).unwrap();
        d.post(RECEIVEQ, &[(a, 4, true)]);
        d.post(RECEIVEQ, &[(b, 2, true)]);
        input.arrive(b"abcdef");

        d.transport.handle_event(INPUT_EVENT);

        assert_eq!(d.read_mem(a, 4), b"abcd");
        assert_eq!(d.read_mem(b, 4), b"ef\xee\xee");
        let q = &d.queues[usize::from(RECEIVEQ)];
        assert_eq!(q.used_elem(&*d.mem, 0), (0, 4));
        assert_eq!(q.used_elem(&*d.mem, 1), (1, 2));
        assert!(d.irq.is_high());
    }

    #[test]
    fn input_event_with_nothing_to_read_uses_no_buffer_and_does_not_interrupt() {
        let (mut d, _input) = console_with_input();
        let a = d.alloc(4);
        d.post(RECEIVEQ, &[(a, 4, true)]);

        d.transport.handle_event(INPUT_EVENT);

        assert_eq!(d.last_used(RECEIVEQ), None);
        assert!(!d.irq.is_high());
        assert!(!d.needs_reset());
    }

    #[test]
    fn input_event_without_posted_buffers_leaves_the_input_in_the_backend() {
        let (d, input) = console_with_input();
        input.arrive(b"xyz");

        d.transport.handle_event(INPUT_EVENT);

        assert_eq!(input.left(), b"xyz");
        assert!(!d.irq.is_high());
    }

    #[test]
    fn input_beyond_the_posted_buffers_arrives_on_the_next_event() {
        let (mut d, input) = console_with_input();
        let (a, b) = (d.alloc(4), d.alloc(16));
        d.post(RECEIVEQ, &[(a, 4, true)]);
        input.arrive(b"0123456789");
        d.transport.handle_event(INPUT_EVENT);
        assert_eq!(input.left(), b"456789");
        d.post(RECEIVEQ, &[(b, 16, true)]);

        d.transport.handle_event(INPUT_EVENT);

        assert_eq!(d.read_mem(a, 4), b"0123");
        assert_eq!(d.read_mem(b, 6), b"456789");
        assert_eq!(d.last_used(RECEIVEQ), Some((1, 6)));
        assert!(input.left().is_empty());
    }

    #[test]
    fn buffer_posted_before_input_arrived_is_filled_on_the_event() {
        let (mut d, input) = console_with_input();
        let a = d.alloc(8);
        d.submit(RECEIVEQ, &[(a, 8, true)]);
        assert_eq!(d.last_used(RECEIVEQ), None);
        input.arrive(b"hi");

        d.transport.handle_event(INPUT_EVENT);

        assert_eq!(d.read_mem(a, 2), b"hi");
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 2)));
    }

    #[test]
    fn posting_receive_buffers_drains_input_left_in_the_backend() {
        let (mut d, input) = console_with_input();
        input.arrive(b"late");
        d.transport.handle_event(INPUT_EVENT);
        let a = d.alloc(8);

        d.submit(RECEIVEQ, &[(a, 8, true)]);

        assert_eq!(d.read_mem(a, 4), b"late");
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 4)));
    }

    #[test]
    fn pushed_input_goes_before_the_backends() {
        let (mut d, input) = console_with_input();
        let a = d.alloc(8);
        d.post(RECEIVEQ, &[(a, 8, true)]);
        input.arrive(b"cd");
        d.transport.device_mut().push_input(b"ab");

        d.transport.handle_event(INPUT_EVENT);

        assert_eq!(d.read_mem(a, 4), b"abcd");
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 4)));
    }

    #[test]
    fn undeclared_event_token_is_a_device_error() {
        let (d, _out) = console();

        d.transport.handle_event(INPUT_EVENT);

        let failure = d.transport.take_error().expect("no error recorded");
        assert_eq!(failure.error, DeviceError::NoSuchEvent { token: 0 });
    }

    #[test]
    fn boxed_console_forwards_event_sources_and_events() {
        let input = MockInput::default();
        let console = Console::new(Captured::default()).with_input(input.clone());
        let boxed: alloc::boxed::Box<dyn VirtioDevice> = alloc::boxed::Box::new(console);
        let mut d = GuestDriver::start(boxed);
        let a = d.alloc(4);
        d.post(RECEIVEQ, &[(a, 4, true)]);
        input.arrive(b"ok");

        let sources = d.transport.event_sources();
        d.transport.handle_event(INPUT_EVENT);

        assert_eq!(sources, [(INPUT_EVENT, EventSource(7))]);
        assert_eq!(d.read_mem(a, 2), b"ok");
        assert!(d.irq.is_high());
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
    fn console_transmit_chain_over_cap_is_truncated_and_counted() {
        let out = Captured::default();
        let console = Console::new(out.clone()).with_transmit_chain_limit(8);
        let mut d = GuestDriver::start(console);
        let a = d.buffer(b"0123456789abcdef");
        let b = d.buffer(b"ok");

        d.submit(TRANSMITQ, &[(a, 16, false)]);
        d.submit(TRANSMITQ, &[(b, 2, false)]);

        assert_eq!(out.0.lock().as_slice(), b"01234567ok");
        assert_eq!(d.last_used(TRANSMITQ), Some((1, 0)));
        assert!(!d.needs_reset());
        assert_eq!(
            VirtioDevice::counters(&*d.transport.lock_device()),
            [
                ("transmit_truncated_chains", 1),
                ("transmit_dropped_bytes", 8)
            ]
        );
    }

    #[test]
    fn console_transmit_chain_of_overlapping_buffers_is_cut_at_the_default_cap() {
        let (mut d, out) = console();
        let a = d.alloc(0x8_0000);
        // 255 descriptors of 512 KiB on the same buffer: 127.5 MiB described.
        let bufs: Vec<_> = (0..255).map(|_| (a, 0x8_0000u32, false)).collect();

        d.submit(TRANSMITQ, &bufs);

        assert_eq!(out.0.lock().len(), TRANSMIT_CHAIN_LIMIT as usize);
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
