//! The 8250/16550 UART on COM1: rust-vmm's `vm-superio` serial model on the port bus.

use std::io::Write;
use std::sync::Arc;

use keel_core::{BusDevice, IrqLine};
use vm_superio::{Serial, Trigger};

use crate::log;

/// vm-superio's interrupt trigger over a Keel interrupt line (an edge per interrupt, as
/// the ISA serial IRQ is edge-triggered).
pub struct IrqTrigger(pub Arc<dyn IrqLine>);

impl std::fmt::Debug for IrqTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IrqTrigger")
    }
}

impl Trigger for IrqTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.trigger();
        Ok(())
    }
}

/// COM1 as a bus device.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl SerialDevice {
    /// A UART interrupting through `irq` and writing the guest's output to `out`.
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> SerialDevice {
        SerialDevice {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Hand host input to the guest; returns the bytes accepted (the FIFO may be full).
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.serial.write(off, b) {
                log::debug(format_args!("serial output failed: {e:?}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::irq::RecordingIrq;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let out = Shared::default();
        let mut dev = SerialDevice::new(Arc::new(RecordingIrq::new()), Box::new(out.clone()));
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"ok\n");
    }

    #[test]
    fn input_raises_the_interrupt_when_enabled() {
        let irq = Arc::new(RecordingIrq::new());
        let mut dev = SerialDevice::new(irq.clone(), Box::new(std::io::sink()));
        dev.write(1, &[0x01]); // IER: received-data interrupt
        assert_eq!(dev.input(b"x"), 1);
        assert!(irq.raised_count() >= 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }
}
