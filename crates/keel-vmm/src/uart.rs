//! The guest's 8250/16550A UART (`ns16550a` at `layout::UART_BASE`, byte registers): enough
//! of the chip for Linux's `earlycon=uart8250,mmio` and the `8250` driver (ttyS0).
//!
//! Transmission is instantaneous: every byte written to THR goes to the output at once, so
//! the transmitter is always empty and `THRE` interrupts fire whenever the guest enables
//! them (as on vm-superio's and QEMU's models). Input is queued by the VMM with
//! [`Uart8250::push_input`].

use alloc::collections::VecDeque;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IIR_NONE: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_FIFO: u8 = 0xc0;
const LCR_DLAB: u8 = 0x80;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const MCR_LOOP: u8 = 0x10;
const MSR_DEFAULT: u8 = 0xb0; // DCD, DSR, CTS
const INPUT_LIMIT: usize = 4096;

/// The UART's register file.
#[derive(Debug, Default)]
pub struct Uart8250 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    dll: u8,
    dlm: u8,
    thr_interrupt: bool,
    input: VecDeque<u8>,
}

impl Uart8250 {
    /// A reset UART.
    pub fn new() -> Uart8250 {
        Uart8250 {
            dll: 12,
            ..Uart8250::default()
        }
    }

    /// Queue bytes typed by the user; returns how many were taken.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes
            .len()
            .min(INPUT_LIMIT - self.input.len().min(INPUT_LIMIT));
        self.input.extend(&bytes[..n]);
        n
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fcr & 1 != 0 { IIR_FIFO } else { 0 };
        if self.ier & IER_RDI != 0 && !self.input.is_empty() {
            IIR_RDI | fifo
        } else if self.ier & IER_THRI != 0 && self.thr_interrupt {
            IIR_THRI | fifo
        } else {
            IIR_NONE | fifo
        }
    }

    /// Whether the interrupt line is asserted.
    pub fn irq_pending(&self) -> bool {
        self.iir() & IIR_NONE == 0
    }

    /// A read of register `offset` (0..=7).
    pub fn read(&mut self, offset: u64) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll,
            0 => self.input.pop_front().unwrap_or(0),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let v = self.iir();
                if v & 0x0f == IIR_THRI {
                    // Reading IIR acknowledges a THRE interrupt.
                    self.thr_interrupt = false;
                }
                v
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let dr = if self.input.is_empty() { 0 } else { LSR_DR };
                LSR_THRE | LSR_TEMT | dr
            }
            6 => {
                if self.mcr & MCR_LOOP != 0 {
                    // Loopback: the modem outputs read back as inputs.
                    ((self.mcr & 0x0c) << 4) | ((self.mcr & 0x01) << 5) | ((self.mcr & 0x02) << 3)
                } else {
                    MSR_DEFAULT
                }
            }
            7 => self.scr,
            _ => 0,
        }
    }

    /// A write of `value` to register `offset`; a transmitted byte is passed to `out`.
    pub fn write(&mut self, offset: u64, value: u8, out: &mut impl FnMut(u8)) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll = value,
            0 => {
                if self.mcr & MCR_LOOP != 0 {
                    let _ = self.push_input(&[value]);
                } else {
                    out(value);
                }
                self.thr_interrupt = true;
            }
            1 if dlab => self.dlm = value,
            1 => {
                let was = self.ier & IER_THRI;
                self.ier = value & 0x0f;
                if was == 0 && self.ier & IER_THRI != 0 {
                    // The transmitter is empty: enabling THRI raises it at once.
                    self.thr_interrupt = true;
                }
            }
            2 => {
                self.fcr = value;
                if value & 0x02 != 0 {
                    self.input.clear();
                }
            }
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            7 => self.scr = value,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thr_write_is_output() {
        let mut u = Uart8250::new();
        let mut out = alloc::vec::Vec::new();

        u.write(0, b'k', &mut |b| out.push(b));

        assert_eq!(out, b"k");
    }

    #[test]
    fn enabling_thri_raises_the_line_until_iir_is_read() {
        let mut u = Uart8250::new();

        u.write(1, IER_THRI, &mut |_| {});
        assert!(u.irq_pending());
        assert_eq!(u.read(2) & 0x0f, IIR_THRI);

        assert!(!u.irq_pending());
    }

    #[test]
    fn dlab_selects_the_divisor_latch() {
        let mut u = Uart8250::new();
        u.write(3, LCR_DLAB, &mut |_| {});
        u.write(0, 1, &mut |_| panic!("not a transmit"));

        assert_eq!(u.read(0), 1);
        assert_eq!(u.read(1), 0);
    }

    #[test]
    fn input_sets_data_ready_and_reads_in_order() {
        let mut u = Uart8250::new();
        u.push_input(b"ab");

        assert_eq!(u.read(5) & LSR_DR, LSR_DR);
        assert_eq!((u.read(0), u.read(0)), (b'a', b'b'));
        assert_eq!(u.read(5) & LSR_DR, 0);
    }
}
