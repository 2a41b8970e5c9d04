//! Time for protection domains: the ARM generic timer's physical count (`CNTPCT_EL0`) as a
//! millisecond clock.
//!
//! Microkit builds seL4 for every aarch64 board with `KernelArmExportPCNTUser`, so a native
//! thread at EL0 may read `CNTPCT_EL0` and `CNTFRQ_EL0`: seL4 sets `CNTKCTL_EL1.EL0PCTEN` at
//! boot and sets it again whenever a core switches from a vCPU to a native thread (a guest
//! kernel's own `CNTKCTL_EL1` is saved with its vCPU), and `CNTHCTL_EL2.EL1PCTEN` in
//! hypervisor mode. The *virtual* count (`CNTVCT_EL0`) is not exported and traps: do not
//! read it. The count is system-wide and monotonic (the generic timer's); the frequency is
//! the firmware's (`CNTFRQ_EL0`, 62.5 MHz on QEMU's `virt` board).
//!
//! The conversion is plain logic, tested on the host; the register reads are seL4-only.

/// `ticks` of a counter running at `freq_hz`, in whole milliseconds (rounded down; exact
/// for any count: the product is taken in 128 bits). `None` when `freq_hz` is 0 (a
/// firmware that never set the frequency: no clock).
pub fn ticks_to_ms(ticks: u64, freq_hz: u64) -> Option<u64> {
    if freq_hz == 0 {
        return None;
    }
    let ms = u128::from(ticks) * 1000 / u128::from(freq_hz);
    // At most u64::MAX * 1000 / 1: saturate (a count that far out is ~584 years at 1 GHz).
    Some(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The physical count as a millisecond clock.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[derive(Debug, Clone, Copy)]
pub struct Counter {
    freq_hz: u64,
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
impl Counter {
    /// The counter, or `None` when the firmware left `CNTFRQ_EL0` at 0 (then there is no
    /// way to tell time from it).
    pub fn new() -> Option<Counter> {
        let freq_hz: u64;
        // SAFETY: reads a system register that EL0 may read in every Microkit kernel
        // configuration (see the module's documentation); no memory is touched.
        unsafe {
            core::arch::asm!("mrs {}, cntfrq_el0", out(reg) freq_hz, options(nomem, nostack))
        };
        // Only the low 32 bits are the frequency.
        let freq_hz = freq_hz & 0xffff_ffff;
        (freq_hz != 0).then_some(Counter { freq_hz })
    }

    /// The counter's frequency in Hz.
    pub fn frequency(&self) -> u64 {
        self.freq_hz
    }

    /// The raw count.
    pub fn ticks(&self) -> u64 {
        let ticks: u64;
        // SAFETY: as in `new`: an EL0-readable system register, no memory touched. The ISB
        // keeps the read from being taken early (before the instructions that precede it).
        unsafe {
            core::arch::asm!("isb", "mrs {}, cntpct_el0", out(reg) ticks, options(nomem, nostack))
        };
        ticks
    }

    /// Milliseconds since the counter started (the system's boot).
    pub fn now_ms(&self) -> u64 {
        ticks_to_ms(self.ticks(), self.freq_hz).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::ticks_to_ms;

    #[test]
    fn ticks_convert_to_whole_milliseconds_at_the_counters_frequency() {
        // QEMU's virt board: 62.5 MHz.
        assert_eq!(ticks_to_ms(62_500_000, 62_500_000), Some(1000));
        assert_eq!(ticks_to_ms(62_499, 62_500_000), Some(0));
        assert_eq!(ticks_to_ms(62_500, 62_500_000), Some(1));
        assert_eq!(ticks_to_ms(5 * 24_000_000, 24_000_000), Some(5000));
    }

    #[test]
    fn large_counts_do_not_overflow_the_conversion() {
        // ticks * 1000 overflows u64 here; the 128-bit product does not.
        let ticks = u64::MAX / 10;
        assert_eq!(
            ticks_to_ms(ticks, 1_000_000_000),
            Some(u64::try_from(u128::from(ticks) * 1000 / 1_000_000_000).unwrap())
        );
        assert_eq!(ticks_to_ms(u64::MAX, 1), Some(u64::MAX));
    }

    #[test]
    fn a_zero_frequency_is_no_clock() {
        assert_eq!(ticks_to_ms(12345, 0), None);
    }
}
