//! The switch protection domain (seL4 only): runs one network's switch over the frame rings
//! of its ports ([`crate::switch`], [`keel_net::port::SwitchService`]).
//!
//! Start: read the payload's fixed header (where the heap region is; nothing is allocated
//! yet), hand that region to the allocator, decode the configuration, build the switch
//! from the network's plan (`keel_net::plan::build_switch`: ports with their MACs, the
//! allowed pairs, sizes, storm control) and attach to every port's rings. Then: serve
//! until the service says `Idle` (every input ring empty with its wake-up armed), wait for
//! a notification from any port's VMM, serve again. A port's doorbell is a Microkit
//! notification on its channel.
//!
//! Time: the generic timer's physical count in milliseconds ([`crate::clock`]), for MAC
//! ageing and storm control, as the Linux switch uses its monotonic clock: a storming port
//! floods at most `flood_rate` frames a second beyond its burst. On seL4 every port declares
//! its MAC (no uplink), so ageing only forgets entries of ports that fell silent; it never
//! changes where a frame goes. Only if the firmware left the counter's frequency at 0 is the
//! time the number of service rounds, one millisecond each (the switch says so at start):
//! then storm control holds a storm to about `flood_rate / 1000` flooded frames per round.
//!
//! The switch prints nothing unless it cannot start (the console PD owns the console).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt::Write;

use keel_net::port::{Doorbell, PortWindows, Service, SwitchService};
use keel_net::ring::FrameWindow;

use crate::abi::microkit as mk;
use crate::heap::RegionHeap;
use crate::payload::PAYLOAD_VADDR;
use crate::switch::{HEADER_LEN, SERVICE_BUDGET, SwitchPdConfig};
use crate::syscall::{self as sys, debug_put_char};

/// The switch's heap: the region the plan sized (`keel_spec::microkit::switch_heap_bytes`).
pub static HEAP: RegionHeap = RegionHeap::new();

/// Formatted output on the debug console, allocating nothing.
struct DebugOut;

impl Write for DebugOut {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            debug_put_char(b);
        }
        Ok(())
    }
}

macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(DebugOut, $($t)*);
    }};
}

/// A port's doorbell: a notification to its VMM on the port's channel.
struct ChannelBell(u32);

impl Doorbell for ChannelBell {
    fn ring(&self) {
        // The channel is in the system file by construction; a refusal can only mean a
        // mismatched image, and a doorbell must not fail: the VMM sees the frames later.
        let _ = crate::pd::notify(self.0);
    }
}

/// The payload's configuration, with the heap set up first.
fn config() -> Result<SwitchPdConfig, alloc::string::String> {
    // SAFETY: `keel sel4 build` appended the switch payload as a segment at PAYLOAD_VADDR
    // of this ELF (mapped by the Microkit tool for the PD's whole life); its first
    // HEADER_LEN bytes are the fixed header.
    let header = unsafe { core::slice::from_raw_parts(PAYLOAD_VADDR as *const u8, HEADER_LEN) };
    let h = match SwitchPdConfig::header(header) {
        Ok(h) => h,
        Err(e) => {
            say!("keel-switch: payload at {PAYLOAD_VADDR:#x}: {e}");
            idle();
        }
    };
    // SAFETY: the system file maps this switch's heap region read-write at `heap_vaddr`
    // (`heap_len` bytes, the header says so) into this PD only, for its whole life.
    unsafe { HEAP.init(h.heap_vaddr, h.heap_len) };
    // SAFETY: the segment is `total` bytes long (the build wrote exactly the encoded
    // configuration, whose header records its length); nothing writes it.
    let bytes = unsafe { core::slice::from_raw_parts(PAYLOAD_VADDR as *const u8, h.total) };
    SwitchPdConfig::decode(bytes).map_err(|e| alloc::format!("{e}"))
}

/// The service: the switch and every port's rings and doorbell.
fn start(cfg: &SwitchPdConfig) -> Result<SwitchService, alloc::string::String> {
    let switch = cfg.build_switch().map_err(|e| alloc::format!("{e}"))?;
    let mut ports: Vec<(PortWindows, Box<dyn Doorbell>)> = Vec::new();
    for p in &cfg.ports {
        let len = usize::try_from(p.ring_len)
            .map_err(|_| alloc::format!("ring length {:#x} does not fit", p.ring_len))?;
        let window = |vaddr: u64| {
            // SAFETY: the system file maps this port's ring region read-write at `vaddr`
            // (`ring_len` bytes at least) into this PD and into the port's VMM only, for
            // the PD's whole life; no Rust reference points into it, and the VMM is held
            // to the ring protocol only (a hostile VMM costs only its own port).
            unsafe { FrameWindow::new(vaddr as *mut u8, len, u64::from(p.slots)) }
                .map_err(|e| alloc::format!("vm {} ring at {vaddr:#x}: {e}", p.vm))
        };
        ports.push((
            PortWindows {
                to_switch: window(p.to_switch)?,
                from_switch: window(p.from_switch)?,
            },
            Box::new(ChannelBell(p.channel)),
        ));
    }
    SwitchService::new(switch, ports).map_err(|e| alloc::format!("{e}"))
}

/// The protection domain's main function, called from `_start`.
pub extern "C" fn main() -> ! {
    let cfg = match config() {
        Ok(c) => c,
        Err(e) => {
            say!("keel-switch: cannot start: {e}");
            idle();
        }
    };
    let mut service = match start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            say!("keel-switch: network {}: cannot start: {e}", cfg.plan.name);
            idle();
        }
    };
    // The switch's time (see the module doc): the counter, else service rounds.
    let counter = crate::clock::Counter::new();
    if counter.is_none() {
        say!(
            "keel-switch: network {}: the generic timer's frequency (CNTFRQ_EL0) is 0: time is counted in service rounds",
            cfg.plan.name
        );
    }
    let mut now: u64 = 0;
    loop {
        // Serve until every input ring is empty with its wake-up armed. Start with a round:
        // VMMs may have sent before this PD first ran.
        loop {
            now = match counter {
                Some(c) => c.now_ms().max(now),
                None => now.wrapping_add(1),
            };
            if service.service(now, SERVICE_BUDGET) == Service::Idle {
                break;
            }
        }
        // Any notification (from any port's VMM) means: serve again.
        let _ = sys::recv(mk::INPUT_CAP, mk::REPLY_CAP);
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
    say!("\nkeel-switch: panic: {info}");
    idle()
}
