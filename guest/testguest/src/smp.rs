//! SMP bring-up: find CPUs in the Intel MP table, start each AP with
//! INIT-SIPI-SIPI into the real-mode trampoline, count them in.

use crate::boot::{self, AP_TRAMPOLINE_BASE, MAX_APS};
use crate::fail::TestResult;
use crate::pvh::StartInfo;
use crate::x86::{self, Deadline};
use crate::{apic, fail, say};
use core::ptr::read_volatile;
use core::sync::atomic::{AtomicU32, Ordering};

/// Most CPUs tracked (BSP + MAX_APS).
const MAX_CPUS: usize = MAX_APS + 1;

/// APs that reached long mode and `ap_main`.
static APS_UP: AtomicU32 = AtomicU32::new(0);

/// Entered by each AP in long mode on its own stack (boot.rs).
#[unsafe(no_mangle)]
extern "C" fn ap_main(_slot: u32) -> ! {
    APS_UP.fetch_add(1, Ordering::SeqCst);
    loop {
        x86::cli();
        // SAFETY: parks this AP with interrupts off; it has nothing else to do.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}

/// CPUs described by the MP table.
#[derive(Debug)]
pub struct MpTable {
    apic_ids: [u8; MAX_CPUS],
    count: usize,
    /// Enabled processor entries beyond MAX_CPUS (not started).
    pub dropped: usize,
    /// Physical address of the floating pointer.
    pub floating_at: u64,
}

impl MpTable {
    /// APIC IDs of the enabled processors.
    pub fn apic_ids(&self) -> &[u8] {
        &self.apic_ids[..self.count]
    }
}

fn phys8(addr: u64) -> u8 {
    // SAFETY: callers pass addresses below 1 MiB or within an MP table they
    // checked lies below 4 GiB: identity-mapped; a volatile byte read of
    // RAM/ROM has no side effects.
    unsafe { read_volatile(addr as *const u8) }
}

fn phys16(addr: u64) -> u16 {
    u16::from_le_bytes([phys8(addr), phys8(addr + 1)])
}

fn phys32(addr: u64) -> u32 {
    u32::from_le_bytes([
        phys8(addr),
        phys8(addr + 1),
        phys8(addr + 2),
        phys8(addr + 3),
    ])
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(phys8(addr + i))) == 0
}

/// "_MP_" floating pointer in [start, start+len), 16-byte aligned, checksummed.
fn scan_floating(start: u64, len: u64) -> Option<u64> {
    let mut addr = start;
    while addr + 16 <= start + len {
        if phys32(addr) == u32::from_le_bytes(*b"_MP_") {
            let paragraphs = u64::from(phys8(addr + 8));
            if paragraphs >= 1 && checksum_ok(addr, paragraphs * 16) {
                return Some(addr);
            }
        }
        addr += 16;
    }
    None
}

/// Finds and parses the MP table (EBDA, top of base memory, BIOS ROM area).
pub fn find_mp_table() -> Option<MpTable> {
    let ebda = u64::from(phys16(0x40e)) << 4;
    let floating = (0x8_0000..0xa_0000)
        .contains(&ebda)
        .then(|| scan_floating(ebda, 1024))
        .flatten()
        .or_else(|| scan_floating(0x9_fc00, 1024))
        .or_else(|| scan_floating(0xf_0000, 0x1_0000))?;
    let config = u64::from(phys32(floating + 4));
    if config == 0 || config + 44 > 1 << 32 || phys32(config) != u32::from_le_bytes(*b"PCMP") {
        return None;
    }
    let base_len = u64::from(phys16(config + 4));
    if base_len < 44 || config + base_len > 1 << 32 || !checksum_ok(config, base_len) {
        return None;
    }
    // qboot leaves the entry count 0: then the base table length alone bounds the walk.
    let entries = match phys16(config + 34) {
        0 => u16::MAX,
        n => n,
    };
    let mut table = MpTable {
        apic_ids: [0; MAX_CPUS],
        count: 0,
        dropped: 0,
        floating_at: floating,
    };
    let mut at = config + 44;
    let end = config + base_len;
    for _ in 0..entries {
        if at >= end {
            break;
        }
        let size = match phys8(at) {
            0 => {
                // Processor: [1] APIC ID, [3] flags (bit 0 enabled).
                if at + 20 <= end && phys8(at + 3) & 1 != 0 {
                    match table.apic_ids.get_mut(table.count) {
                        Some(slot) => {
                            *slot = phys8(at + 1);
                            table.count += 1;
                        }
                        None => table.dropped += 1,
                    }
                }
                20
            }
            1..=4 => 8,
            _ => break, // unknown entry type: its size is unknown
        };
        at += size;
    }
    Some(table)
}

/// Starts every other CPU and checks they all arrive. `cpus_hint` is used
/// when there is no MP table (APIC IDs are then assumed to be 0..N).
pub fn run(start_info: &StartInfo, cpus_hint: Option<u32>) -> TestResult {
    let mut ids = [0u8; MAX_CPUS];
    let count = match find_mp_table() {
        Some(table) => {
            say!(
                "smp: MP table at {:#x}, {} cpus",
                table.floating_at,
                table.apic_ids().len()
            );
            if table.dropped != 0 {
                return fail!(
                    "smp: MP table lists {} cpus more than the {MAX_CPUS} supported",
                    table.dropped
                );
            }
            ids[..table.apic_ids().len()].copy_from_slice(table.apic_ids());
            table.apic_ids().len()
        }
        None => {
            let Some(n) = cpus_hint else {
                return fail!("smp: no MP table found and no keeltest.cpus=N given");
            };
            if n as usize > MAX_CPUS {
                return fail!("smp: keeltest.cpus={n} exceeds the {MAX_CPUS} supported");
            }
            say!("smp: no MP table, keeltest.cpus={n}");
            for (i, id) in ids.iter_mut().enumerate().take(n as usize) {
                *id = i as u8;
            }
            n as usize
        }
    };
    if let Err(base) = apic::lapic_enable() {
        return fail!(
            "smp: local APIC not usable in xAPIC mode at 0xfee00000 (IA32_APIC_BASE {base:#x})"
        );
    }
    let bsp = apic::lapic_id();
    let trampoline = boot::ap_trampoline();
    if !start_info.is_ram(AP_TRAMPOLINE_BASE as u64, trampoline.len() as u64) {
        return fail!("smp: trampoline area {AP_TRAMPOLINE_BASE:#x} is not RAM in the memory map");
    }
    // SAFETY: the trampoline page below 1 MiB is RAM (checked above when the
    // loader gave a memory map) that nothing else in this guest uses: the
    // start info was copied out at boot and the image lives at 1 MiB.
    unsafe {
        core::ptr::copy_nonoverlapping(
            trampoline.as_ptr(),
            AP_TRAMPOLINE_BASE as *mut u8,
            trampoline.len(),
        )
    };
    let sipi = 0x0000_4600 | (AP_TRAMPOLINE_BASE >> 12) as u32;
    let mut up = 1u32;
    for &id in ids[..count].iter().filter(|&&id| id != bsp) {
        let before = APS_UP.load(Ordering::SeqCst);
        let sent = apic::send_ipi(id, 0x0000_c500) // INIT, level assert
            && {
                x86::delay_us(10_000);
                apic::send_ipi(id, sipi)
            }
            && {
                x86::delay_us(200);
                APS_UP.load(Ordering::SeqCst) != before || apic::send_ipi(id, sipi)
            };
        if !sent {
            return fail!("smp: IPI to APIC ID {id} stayed pending");
        }
        let deadline = Deadline::after_ms(2000);
        while APS_UP.load(Ordering::SeqCst) == before && !deadline.expired() {
            core::hint::spin_loop();
        }
        if APS_UP.load(Ordering::SeqCst) != before {
            up += 1;
        }
    }
    say!("smp {up}/{count} cpus up");
    if up as usize != count {
        return fail!("smp: only {up} of {count} cpus came up");
    }
    Ok(())
}
