//! Local APIC (xAPIC MMIO at 0xfee00000), IOAPIC (0xfec00000) and the legacy
//! 8259 PIC (masked).

use crate::x86::{Deadline, outb};
use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

const LAPIC_BASE: usize = 0xfee0_0000;
const IOAPIC_BASE: usize = 0xfec0_0000;

const LAPIC_ID: usize = 0x020;
const LAPIC_TPR: usize = 0x080;
const LAPIC_EOI: usize = 0x0b0;
const LAPIC_SVR: usize = 0x0f0;
const LAPIC_ICR_LOW: usize = 0x300;
const LAPIC_ICR_HIGH: usize = 0x310;
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_TIMER_INITIAL: usize = 0x380;
const LAPIC_TIMER_DIVIDE: usize = 0x3e0;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;

/// Vector of the spurious-interrupt handler.
pub const SPURIOUS_VECTOR: u8 = 0xff;

fn lapic_read(offset: usize) -> u32 {
    // SAFETY: the xAPIC register page at 0xfee00000 is identity-mapped
    // (uncached) and `offset` is one of the 16-byte-aligned registers above.
    unsafe { read_volatile((LAPIC_BASE + offset) as *const u32) }
}

fn lapic_write(offset: usize, value: u32) {
    // SAFETY: as for lapic_read.
    unsafe { write_volatile((LAPIC_BASE + offset) as *mut u32, value) }
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only architectural MSRs (IA32_APIC_BASE) are read.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Enables this CPU's local APIC in xAPIC mode; fails if it is not at the
/// default base or is in x2APIC mode.
pub fn lapic_enable() -> Result<(), u64> {
    let base = rdmsr(0x1b);
    if base & 0xffff_f000 != LAPIC_BASE as u64 || base & (1 << 10) != 0 || base & (1 << 11) == 0 {
        return Err(base);
    }
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    Ok(())
}

/// This CPU's APIC ID.
pub fn lapic_id() -> u8 {
    (lapic_read(LAPIC_ID) >> 24) as u8
}

/// Signals end of interrupt.
pub fn eoi() {
    lapic_write(LAPIC_EOI, 0);
}

/// Sends an IPI (`icr_low` = vector | delivery mode | level ...) to `apic_id`
/// and waits (bounded) for delivery. Returns false if it stayed pending.
pub fn send_ipi(apic_id: u8, icr_low: u32) -> bool {
    lapic_write(LAPIC_ICR_HIGH, u32::from(apic_id) << 24);
    lapic_write(LAPIC_ICR_LOW, icr_low);
    let deadline = Deadline::after_ms(100);
    while lapic_read(LAPIC_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
        if deadline.expired() {
            return false;
        }
    }
    true
}

/// Starts the LAPIC timer in periodic mode: a wake-up source so that `hlt`
/// waits stay bounded even if the awaited interrupt never comes.
pub fn timer_start_periodic(vector: u8, initial_count: u32) {
    lapic_write(LAPIC_TIMER_DIVIDE, 0x3); // divide by 16
    lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | u32::from(vector));
    lapic_write(LAPIC_TIMER_INITIAL, initial_count);
}

/// Stops the LAPIC timer.
pub fn timer_stop() {
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    lapic_write(LAPIC_TIMER_INITIAL, 0);
}

/// Masks every line of both 8259 PICs (the IOAPIC delivers instead).
pub fn pic_mask_all() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

fn ioapic_read(reg: u32) -> u32 {
    // SAFETY: the IOAPIC's IOREGSEL (+0x00) and IOWIN (+0x10) are identity-
    // mapped MMIO; only the bootstrap CPU touches them.
    unsafe {
        write_volatile(IOAPIC_BASE as *mut u32, reg);
        read_volatile((IOAPIC_BASE + 0x10) as *const u32)
    }
}

fn ioapic_write(reg: u32, value: u32) {
    // SAFETY: as for ioapic_read.
    unsafe {
        write_volatile(IOAPIC_BASE as *mut u32, reg);
        write_volatile((IOAPIC_BASE + 0x10) as *mut u32, value);
    }
}

/// Number of IOAPIC redirection entries.
pub fn ioapic_entries() -> u32 {
    ((ioapic_read(1) >> 16) & 0xff) + 1
}

/// Routes `gsi` to `vector` on `dest_apic_id`: fixed delivery, physical
/// destination, active high, level- or edge-triggered, unmasked.
pub fn ioapic_route(gsi: u32, vector: u8, dest_apic_id: u8, level: bool) {
    let low = u32::from(vector) | if level { 1 << 15 } else { 0 };
    ioapic_write(0x10 + 2 * gsi + 1, u32::from(dest_apic_id) << 24);
    ioapic_write(0x10 + 2 * gsi, low);
}

/// Masks `gsi`.
pub fn ioapic_mask(gsi: u32) {
    ioapic_write(0x10 + 2 * gsi, 1 << 16);
}
