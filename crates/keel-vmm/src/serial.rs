//! The platform UART as a bus device: one 16550 model ([`crate::uart::Uart8250`]) for
//! every backend and architecture (COM1 on x86's port bus, the arm64 UART in MMIO), its
//! interrupt a level line that follows the model's pending state.

use alloc::boxed::Box;
use alloc::sync::Arc;

use keel_core::{BusDevice, IrqLine};

use crate::uart::Uart8250;

/// Where the guest's serial output goes.
pub trait SerialOutput: Send {
    /// The guest transmitted `byte`.
    fn write(&mut self, byte: u8);
    /// The guest stopped transmitting for now (flush buffered output).
    fn flush(&mut self) {}
}

/// The UART on a bus.
pub struct Serial8250 {
    uart: Uart8250,
    irq: Arc<dyn IrqLine>,
    level: bool,
    out: Box<dyn SerialOutput>,
}

impl core::fmt::Debug for Serial8250 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Serial8250")
            .field("uart", &self.uart)
            .finish()
    }
}

impl Serial8250 {
    /// A reset UART interrupting through `irq` and transmitting to `out`.
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn SerialOutput>) -> Serial8250 {
        Serial8250 {
            uart: Uart8250::new(),
            irq,
            level: false,
            out,
        }
    }

    /// Hand host input to the guest; returns the bytes accepted.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        let n = self.uart.push_input(bytes);
        self.sync_line();
        n
    }

    /// Back to the power-on state (a VM reset); the output stays.
    pub fn reset(&mut self) {
        self.uart = Uart8250::new();
        self.sync_line();
    }

    fn sync_line(&mut self) {
        let pending = self.uart.irq_pending();
        if pending != self.level {
            self.level = pending;
            self.irq.set_level(pending);
        }
    }
}

impl BusDevice for Serial8250 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.uart.read(offset);
        }
        self.sync_line();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            let out = &mut self.out;
            self.uart.write(offset, b, &mut |byte| out.write(byte));
        }
        self.sync_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use keel_core::irq::RecordingIrq;

    struct Collect(Arc<spin::Mutex<Vec<u8>>>);
    impl SerialOutput for Collect {
        fn write(&mut self, byte: u8) {
            self.0.lock().push(byte);
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let out = Arc::new(spin::Mutex::new(Vec::new()));
        let mut s = Serial8250::new(
            Arc::new(RecordingIrq::default()),
            Box::new(Collect(out.clone())),
        );

        s.write(0, b"h");
        s.write(0, b"i");

        assert_eq!(*out.lock(), b"hi");
    }

    #[test]
    fn input_raises_the_line_while_data_waits_when_enabled() {
        let irq = Arc::new(RecordingIrq::default());
        let mut s = Serial8250::new(irq.clone(), Box::new(Collect(Default::default())));
        s.write(1, &[0x01]); // IER: received-data interrupt

        s.input(b"x");
        assert!(irq.is_high());
        let mut b = [0u8];
        s.read(0, &mut b);

        assert_eq!(b, *b"x");
        assert!(!irq.is_high());
    }
}
