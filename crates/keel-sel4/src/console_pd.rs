//! The console protection domain (seL4 only): drains each VMM's console ring and prints
//! whole lines on the seL4 debug console (see [`crate::console`]), and routes what is
//! typed on the board's UART to the VM that has the input focus (`@N` then Enter moves
//! it: [`keel_core::console_switch`], docs/console.md).
//!
//! It runs below every VMM's priority (the system file says so), so printing never delays
//! a VMM's fault handling; a VMM never waits for it either (a full ring drops bytes).

use alloc::vec::Vec;

use keel_core::console_switch::{self, ConsoleSwitch, Routed};
use keel_core::ring::{Consumer, Producer, RingWindow};

use crate::abi::microkit as mk;
use crate::console::{Console, ConsoleConfig, ConsoleUart, HEADER_LEN};
use crate::microkit::Event;
use crate::payload::PAYLOAD_VADDR;
use crate::syscall::{self as sys, debug_put_char, debug_puts};

/// The console's heap: its configuration and one line buffer per VM.
pub const HEAP_BYTES: usize = 1 << 20;

fn print(bytes: &[u8]) {
    for &b in bytes {
        debug_put_char(b);
    }
}

const PL011_DR: u64 = 0x000;
const PL011_FR: u64 = 0x018;
const PL011_FR_RXFE: u32 = 1 << 4;
const PL011_IMSC: u64 = 0x038;
const PL011_ICR: u64 = 0x044;
const PL011_RX_INTERRUPTS: u32 = (1 << 4) | (1 << 6); // RX, RX timeout

/// The board's PL011, mapped into this PD for console input.
struct InputUart(ConsoleUart);

impl InputUart {
    fn reg(&self, offset: u64) -> *mut u32 {
        (self.0.vaddr + offset) as *mut u32
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: `vaddr` is the PL011 page the Microkit tool mapped (uncached) into this
        // PD (console payload `uart`); `offset` is one of the register offsets above.
        unsafe { self.reg(offset).read_volatile() }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as in `read`.
        unsafe { self.reg(offset).write_volatile(value) }
    }

    /// Take what was typed (at most one FIFO's worth) and clear the receive interrupts.
    fn drain(&self, buf: &mut [u8; 64]) -> usize {
        let mut n = 0;
        while n < buf.len() && self.read(PL011_FR) & PL011_FR_RXFE == 0 {
            buf[n] = self.read(PL011_DR) as u8;
            n += 1;
        }
        self.write(PL011_ICR, PL011_RX_INTERRUPTS);
        n
    }
}

/// Console input: the UART, the focus, and each VM's input ring and channel.
struct Input {
    uart: InputUart,
    switch: ConsoleSwitch,
    names: Vec<alloc::string::String>,
    /// Per VM that takes input (the switch's indices): its input ring and channel.
    vms: Vec<(Option<Producer>, u32)>,
}

impl Input {
    /// Start console input from `cfg`'s UART to its VMs with input rings, if any.
    fn start(cfg: &ConsoleConfig, console: &mut Console) -> Option<Input> {
        let uart = InputUart(cfg.uart.clone()?);
        let mut names = Vec::new();
        let mut vms = Vec::new();
        for v in cfg.vms.iter().filter(|v| v.input_vaddr != 0) {
            // SAFETY: the system file maps this VM's ring region (its input ring at
            // `input_vaddr`, after its output ring) read-write into this PD and that VM's
            // VMM only, for the PD's whole life; no Rust reference points into it.
            let w = unsafe { RingWindow::new(v.input_vaddr as *mut u8, v.input_len as usize) };
            let ring = match w {
                Ok(w) => Some(Producer::attach(w)),
                Err(e) => {
                    console.own_line(
                        &alloc::format!("keel-console: vm {}: input ring: {e}", v.name),
                        &mut print,
                    );
                    None
                }
            };
            names.push(v.name.clone());
            vms.push((ring, v.channel));
        }
        if vms.is_empty() {
            return None;
        }
        // libmicrokit acknowledges every IRQ once at start (seL4 issue #1536).
        if let Err(e) = crate::pd::irq_ack(uart.0.channel) {
            console.own_line(
                &alloc::format!("keel-console: console input disabled: {e}"),
                &mut print,
            );
            return None;
        }
        uart.write(PL011_IMSC, uart.read(PL011_IMSC) | PL011_RX_INTERRUPTS);
        let switch = ConsoleSwitch::new(names.iter().map(alloc::string::String::as_str));
        Some(Input {
            uart,
            switch,
            names,
            vms,
        })
    }

    /// The UART's interrupt: route what was typed, print what the commands did.
    fn typed(&mut self, console: &mut Console) {
        let mut buf = [0u8; 64];
        let n = self.uart.drain(&mut buf);
        let (vms, names) = (&mut self.vms, &self.names);
        self.switch.feed(&buf[..n], &mut |r| match r {
            Routed::Bytes { vm, bytes } => {
                if let Some((Some(ring), channel)) = vms.get_mut(vm) {
                    // A full ring drops the bytes (counted in the ring), as a UART
                    // drops what overflows its FIFO; a wild index disables nothing
                    // here: the VMM reports it.
                    let _ = ring.write(bytes);
                    let _ = crate::pd::notify(*channel);
                }
            }
            other => {
                if let Some(m) = console_switch::message(names, &other) {
                    console.own_line(&m, &mut print);
                }
            }
        });
        let _ = crate::pd::irq_ack(self.uart.0.channel);
    }
}

/// The console payload segment's configuration.
fn config() -> Result<ConsoleConfig, alloc::string::String> {
    // SAFETY: `keel sel4 build` appended the console payload as a segment at PAYLOAD_VADDR
    // of this ELF (mapped by the Microkit tool for the PD's whole life); its first
    // HEADER_LEN bytes are the header.
    let header = unsafe { core::slice::from_raw_parts(PAYLOAD_VADDR as *const u8, HEADER_LEN) };
    let total = ConsoleConfig::total_len(header)
        .map_err(|e| alloc::format!("console payload at {PAYLOAD_VADDR:#x}: {e}"))?;
    // SAFETY: the segment is `total` bytes long (the build wrote exactly the encoded
    // configuration, whose header records its length); nothing writes it.
    let bytes = unsafe { core::slice::from_raw_parts(PAYLOAD_VADDR as *const u8, total) };
    ConsoleConfig::decode(bytes).map_err(|e| alloc::format!("console payload: {e}"))
}

/// The protection domain's main function, called from `_start`.
pub extern "C" fn main() -> ! {
    let cfg = match config() {
        Ok(c) => c,
        Err(e) => {
            debug_puts(&alloc::format!("keel-console: cannot start: {e}\n"));
            idle();
        }
    };
    let mut console = Console::new(cfg.prefix, cfg.vms.iter().map(|v| v.name.as_str()));
    let mut rings: Vec<Option<Consumer>> = Vec::new();
    for v in &cfg.vms {
        // SAFETY: the system file `keel sel4 build` wrote maps this VM's ring region
        // read-write into this PD at `ring_vaddr` for the PD's whole life (and into that
        // VM's VMM, the producer, only); no Rust reference points into it.
        let w = unsafe { RingWindow::new(v.ring_vaddr as *mut u8, v.ring_len as usize) };
        match w {
            Ok(w) => rings.push(Some(Consumer::attach(w))),
            Err(e) => {
                console.own_line(
                    &alloc::format!("keel-console: vm {}: {e}", v.name),
                    &mut print,
                );
                rings.push(None);
            }
        }
    }
    let mut input = Input::start(&cfg, &mut console);
    // Start with every ring: VMMs may have written before this PD first ran.
    let all: u64 = (1u64 << rings.len().min(63)) - 1;
    let mut pending = all;
    loop {
        while pending != 0 {
            let mut more = 0u64;
            for (i, ring) in rings.iter_mut().enumerate().take(63) {
                if pending & (1 << i) == 0 {
                    continue;
                }
                if let Some(r) = ring {
                    if console.drain(i, r, &mut print) {
                        more |= 1 << i;
                    }
                }
            }
            // A ring with more than one budget's worth: the next round looks at every ring,
            // so that a flooding VMM does not hide the others' notifications.
            pending = if more != 0 { all } else { 0 };
        }
        let (badge, _) = sys::recv(mk::INPUT_CAP, mk::REPLY_CAP);
        if let Event::Notified { channels } = Event::from_badge(badge) {
            if let Some(i) = input.as_mut() {
                if channels & 1u64.checked_shl(i.uart.0.channel).unwrap_or(0) != 0 {
                    i.typed(&mut console);
                }
            }
            for ch in crate::microkit::channels(channels) {
                if let Some(i) = cfg
                    .vms
                    .iter()
                    .position(|v| v.channel == ch)
                    .filter(|&i| i < 63)
                {
                    pending |= 1 << i;
                }
            }
        }
    }
}

/// Wait forever (after a fatal error).
fn idle() -> ! {
    loop {
        let _ = sys::wait(mk::INPUT_CAP);
    }
}

/// The panic handler: report on the debug console, idle.
pub fn panic(info: &core::panic::PanicInfo) -> ! {
    debug_puts(&alloc::format!("\nkeel-console: panic: {info}\n"));
    idle()
}
