//! x86 primitives: port I/O, TSC, CPUID, deadlines and leaving the VM.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Writes one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the ports this
    // guest touches (UART, PIC, PIT, debug exit, i8042) are side-effect-only.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads one byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`: reading a port does not touch Rust-visible memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the TSC into EDX:EAX.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// CPUID leaf `leaf`, subleaf 0: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Disables interrupts.
pub fn cli() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Enables interrupts and halts until one arrives (the STI shadow makes the
/// pair atomic), then disables them again.
pub fn sti_hlt_cli() {
    // SAFETY: the IDT is loaded before interrupts are ever enabled
    // (interrupts::init); the handlers preserve all registers.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Assumed TSC frequency when none can be determined: a high guess, so
/// timeouts err on the long side.
const FALLBACK_TSC_HZ: u64 = 4_000_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Where the TSC frequency estimate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID leaf 0x15 (crystal ratio).
    Cpuid15,
    /// CPUID leaf 0x16 (base frequency, MHz).
    Cpuid16,
    /// Hypervisor leaf 0x40000010 (kHz).
    Hypervisor,
    /// Counted against the i8254 PIT.
    Pit,
    /// Unknown; the fallback guess is used for timeouts.
    Unknown,
}

/// Determines the TSC frequency once (CPUID, then the PIT) and remembers it
/// for deadlines. Returns (Hz, source); Hz is 0 when unknown.
pub fn calibrate_tsc() -> (u64, TscSource) {
    let (hz, source) = tsc_from_cpuid()
        .or_else(tsc_from_pit)
        .unwrap_or((0, TscSource::Unknown));
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, source)
}

fn tsc_from_cpuid() -> Option<(u64, TscSource)> {
    let (max_leaf, ..) = cpuid(0);
    if max_leaf >= 0x15 {
        let (den, num, crystal, _) = cpuid(0x15);
        if den != 0 && num != 0 && crystal != 0 {
            return Some((
                u64::from(crystal) * u64::from(num) / u64::from(den),
                TscSource::Cpuid15,
            ));
        }
    }
    if max_leaf >= 0x16 {
        let (mhz, ..) = cpuid(0x16);
        if mhz != 0 {
            return Some((u64::from(mhz) * 1_000_000, TscSource::Cpuid16));
        }
    }
    let (_, _, ecx, _) = cpuid(1);
    if ecx & (1 << 31) != 0 {
        let (hv_max, ..) = cpuid(0x4000_0000);
        if (0x4000_0010..0x4001_0000).contains(&hv_max) {
            let (khz, ..) = cpuid(0x4000_0010);
            if khz != 0 {
                return Some((u64::from(khz) * 1000, TscSource::Hypervisor));
            }
        }
    }
    None
}

/// Counts TSC ticks over ~10 ms of i8254 PIT channel 0 (rate generator,
/// counter latched and read back; IRQ 0 stays masked at the PIC/IOAPIC).
fn tsc_from_pit() -> Option<(u64, TscSource)> {
    const PIT_HZ: u64 = 1_193_182;
    const TICKS: u64 = 11_932; // ~10 ms
    let read_counter = || {
        outb(0x43, 0x00); // latch channel 0
        u16::from_le_bytes([inb(0x40), inb(0x40)])
    };
    outb(0x43, 0x34); // channel 0, lobyte/hibyte, mode 2
    outb(0x40, 0x00); // reload 65536
    outb(0x40, 0x00);
    let first = read_counter();
    let start = rdtsc();
    let mut last = first;
    let mut elapsed_ticks = 0u64;
    let mut unchanged = 0;
    // Bounded: an absent PIT reads as a constant: give up after 100 reads.
    for _ in 0..100_000 {
        let now = read_counter();
        if now == last {
            unchanged += 1;
            if unchanged > 100 {
                return None;
            }
        } else {
            unchanged = 0;
        }
        // Down-counter: ticks since the previous read, modulo the 16-bit wrap.
        elapsed_ticks += u64::from(last.wrapping_sub(now));
        last = now;
        if elapsed_ticks >= TICKS {
            let hz = rdtsc().wrapping_sub(start) * PIT_HZ / elapsed_ticks;
            return (50_000_000..20_000_000_000)
                .contains(&hz)
                .then_some((hz, TscSource::Pit));
        }
    }
    None
}

/// TSC ticks per second used for timeouts.
fn tsc_hz_for_timeouts() -> u64 {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => FALLBACK_TSC_HZ,
        hz => hz,
    }
}

/// A point in time (TSC) after which a wait gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// A deadline `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self(rdtsc().saturating_add(tsc_hz_for_timeouts() / 1000 * ms))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        rdtsc() >= self.0
    }

    /// The earlier of two deadlines.
    pub fn sooner(self, other: Self) -> Self {
        Self(self.0.min(other.0))
    }
}

/// TSC cycles in microseconds (with the 4 GHz guess if the frequency is unknown).
pub fn tsc_to_us(cycles: u64) -> u64 {
    cycles / (tsc_hz_for_timeouts() / 1_000_000).max(1)
}

/// Busy-waits about `us` microseconds.
pub fn delay_us(us: u64) {
    let end = rdtsc().saturating_add(tsc_hz_for_timeouts() / 1_000_000 * us);
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Halts for good with interrupts off: the vCPU sleeps (no CPU time) until the host
/// stops the VM.
pub fn halt() -> ! {
    loop {
        // SAFETY: halting with interrupts off parks the CPU; nothing follows.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Resets the machine: the i8042 "pulse reset line" command (0xfe to port 0x64), which
/// Keel (and QEMU) turn into a system reset; halts if nothing happens.
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    loop {
        // SAFETY: halting with interrupts off parks the CPU; nothing follows.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Leaves the VM with `code`: debug-exit port 0xf4 (Keel and QEMU), then an
/// i8042 reset, then halts forever.
pub fn exit(code: u8) -> ! {
    outb(0xf4, code);
    // Still running: no debug-exit device. Ask the keyboard controller to reset.
    outb(0x64, 0xfe);
    loop {
        // SAFETY: halting with interrupts off parks the CPU; nothing follows.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
