//! `mem-*` tests: plain loads and stores at a guest-physical address, to check what the
//! address space holds there (RAM, a shared region, a read-only mapping, nothing).

use crate::fail::TestResult;
use crate::x86::{self, Deadline};
use crate::{fail, say};

/// The word at `addr`, read once.
fn load(addr: u64) -> u32 {
    // SAFETY: the boot page tables identity-map the first 4 GiB (the parser refuses
    // higher or unaligned addresses); the access is a single aligned 32-bit load, which
    // the hypervisor serves from memory or emulates (an unmapped address reads all ones).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// `mem-write`: store `value` at `addr`.
pub fn write(addr: u64, value: u32) -> TestResult {
    // SAFETY: as in `load`: identity-mapped, aligned, one 32-bit store; the address is
    // outside this guest's own image and stacks by the test's contract (a shared region
    // or unmapped space), so no Rust object is overwritten.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) };
    say!("mem-write {addr:#x} = {value:#x}");
    Ok(())
}

/// `mem-read`: pass iff the word at `addr` reads `expect`.
pub fn read(addr: u64, expect: u32) -> TestResult {
    let got = load(addr);
    say!("mem-read {addr:#x} = {got:#x}");
    if got != expect {
        return fail!("mem-read: {addr:#x} reads {got:#x}, expected {expect:#x}");
    }
    Ok(())
}

/// `mem-wait`: poll the word at `addr` until it reads `expect`, for at most `ms`.
pub fn wait(addr: u64, expect: u32, ms: u32) -> TestResult {
    let deadline = Deadline::after_ms(u64::from(ms));
    loop {
        let got = load(addr);
        if got == expect {
            say!("mem-wait {addr:#x} = {got:#x}");
            return Ok(());
        }
        if deadline.expired() {
            return fail!(
                "mem-wait: {addr:#x} still reads {got:#x} after {ms} ms, expected {expect:#x}"
            );
        }
        x86::delay_us(1000);
    }
}
