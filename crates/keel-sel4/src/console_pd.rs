//! The console protection domain (seL4 only): drains each VMM's console ring and prints
//! whole lines on the seL4 debug console (see [`crate::console`]).
//!
//! It runs below every VMM's priority (the system file says so), so printing never delays
//! a VMM's fault handling; a VMM never waits for it either (a full ring drops bytes).

use alloc::vec::Vec;

use keel_core::ring::{Consumer, RingWindow};

use crate::abi::microkit as mk;
use crate::console::{Console, ConsoleConfig, HEADER_LEN};
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
