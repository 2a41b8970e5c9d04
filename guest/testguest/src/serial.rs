//! 8250/16550 UART on COM1 (I/O port 0x3f8), polled transmit.

use crate::x86::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3f8;
const THR: u16 = 0; // transmit holding (DLAB=0)
const IER: u16 = 1; // interrupt enable (DLAB=0)
const DLL: u16 = 0; // divisor latch low (DLAB=1)
const DLM: u16 = 1; // divisor latch high (DLAB=1)
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 0x20;

/// Programs 115200 8N1, FIFOs on, interrupts off.
pub fn init() {
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x80); // DLAB
    outb(COM1 + DLL, 1); // 115200 baud
    outb(COM1 + DLM, 0);
    outb(COM1 + LCR, 0x03); // 8N1, DLAB off
    outb(COM1 + FCR, 0x07); // enable + clear FIFOs
    outb(COM1 + MCR, 0x03); // DTR | RTS (OUT2 off: no UART interrupts)
}

fn put_byte(byte: u8) {
    // Bounded: an absent or stuck UART must not hang the guest.
    for _ in 0..100_000 {
        if inb(COM1 + LSR) & LSR_THR_EMPTY != 0 {
            break;
        }
    }
    outb(COM1 + THR, byte);
}

/// Writes `bytes`, turning "\n" into "\r\n".
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            put_byte(b'\r');
        }
        put_byte(b);
    }
}

/// `core::fmt` sink for the UART.
#[derive(Debug)]
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints one `keeltest: ...` line on the serial port.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::serial::Serial, "keeltest: ");
        let _ = write!($crate::serial::Serial, $($arg)*);
        let _ = write!($crate::serial::Serial, "\n");
    }};
}

const RBR: u16 = 0; // receive buffer (DLAB=0)
const LSR_DATA_READY: u8 = 0x01;
/// ACPI sleep control register (FADT, hardware-reduced) and the S5 | SLP_EN value.
const SLEEP_CONTROL: u16 = 0x600;
const S5_SLP_EN: u8 = (5 << 2) | (1 << 5);

/// `await-poweroff:<ms>`: poll the UART's input for up to `ms` ms; on the line `poweroff`
/// power off (ACPI S5). Passes when the time runs out without one.
pub fn await_poweroff(ms: u32) -> crate::fail::TestResult {
    crate::say!("awaiting poweroff for {ms} ms");
    let deadline = crate::x86::Deadline::after_ms(u64::from(ms));
    let mut line = [0u8; 16];
    let mut len = 0usize;
    while !deadline.expired() {
        if inb(COM1 + LSR) & LSR_DATA_READY == 0 {
            core::hint::spin_loop();
            continue;
        }
        match inb(COM1 + RBR) {
            b'\r' | b'\n' => {
                if line.get(..len) == Some(&b"poweroff"[..]) {
                    crate::say!("poweroff requested");
                    outb(SLEEP_CONTROL, S5_SLP_EN);
                }
                len = 0;
            }
            b => {
                if let Some(slot) = line.get_mut(len) {
                    *slot = b;
                    len += 1;
                }
            }
        }
    }
    Ok(())
}

/// `serial-echo:<ms>`: poll the UART's input for up to `ms` ms and print each line
/// received (`\r` or `\n` ends one; empty lines are skipped) as `keeltest: echo: <line>`.
/// Passes on the line `end`; fails when the time runs out without it.
pub fn echo(ms: u32) -> crate::fail::TestResult {
    crate::say!("serial-echo: ready for {ms} ms");
    let deadline = crate::x86::Deadline::after_ms(u64::from(ms));
    let mut line = [0u8; 80];
    let mut len = 0usize;
    while !deadline.expired() {
        if inb(COM1 + LSR) & LSR_DATA_READY == 0 {
            core::hint::spin_loop();
            continue;
        }
        match inb(COM1 + RBR) {
            b'\r' | b'\n' => {
                let got = &line[..len];
                len = 0;
                if got.is_empty() {
                    continue;
                }
                crate::say!(
                    "echo: {}",
                    core::str::from_utf8(got).unwrap_or("<not UTF-8>")
                );
                if got == b"end" {
                    return Ok(());
                }
            }
            b => {
                if let Some(slot) = line.get_mut(len) {
                    *slot = b;
                    len += 1;
                }
            }
        }
    }
    crate::fail!("echo: no line \"end\" within {ms} ms")
}
