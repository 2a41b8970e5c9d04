//! The ACPI power-management ports of Keel's hardware-reduced platform: the FADT's sleep
//! control, sleep status and reset registers, one byte each from
//! [`PM_PORT_BASE`](keel_core::arch::x86_64::acpi::PM_PORT_BASE).
//!
//! A guest powers off by writing `SLP_TYP = 5 | SLP_EN` (the `\_S5_` value the DSDT gives)
//! to the sleep control register, and resets by writing the FADT's reset value to the reset
//! register. Both stop the VM through the same [`StopSink`] as the debug-exit port.

use alloc::sync::Arc;

use keel_core::arch::x86_64::acpi::{
    RESET_OFFSET, RESET_VALUE, S5_SLP_TYP, SLEEP_CONTROL_OFFSET, requested_sleep_type,
};
use keel_core::{BusDevice, SystemEvent};

use crate::log::{Allowed, Level, Log, RateLimit};
use crate::stop::StopSink;

/// The power-management device.
pub struct AcpiPower {
    stop: Arc<dyn StopSink>,
    log: Log,
    /// Whether an unsupported sleep request has been logged (once: the guest controls
    /// how often it writes).
    warned: bool,
    /// Reset-register writes of other values: the guest controls how often, so only the
    /// first few are logged.
    bad_resets: RateLimit,
}

/// How many ignored reset-register writes are logged before they are only counted.
pub const BAD_RESET_LOG_LIMIT: u32 = 8;

impl core::fmt::Debug for AcpiPower {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AcpiPower")
    }
}

impl AcpiPower {
    /// A device that reports power-off and reset to `stop` and what it ignores to `log`.
    pub fn new(stop: Arc<dyn StopSink>, log: Log) -> AcpiPower {
        AcpiPower {
            stop,
            log,
            warned: false,
            bad_resets: RateLimit::new(BAD_RESET_LOG_LIMIT),
        }
    }
}

impl BusDevice for AcpiPower {
    /// Every register reads 0: the sleep status never shows `WAK_STS`, because Keel never
    /// sleeps and wakes; it only powers off.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET => {
                match requested_sleep_type(value) {
                    Some(S5_SLP_TYP) => self.stop.guest_event(SystemEvent::Shutdown),
                    Some(other) if !self.warned => {
                        self.warned = true;
                        self.log.log(Level::Warn, format_args!(
                        "guest asked for ACPI sleep type {other} (sleep control {value:#04x}); \
                         Keel offers only S5 (type {S5_SLP_TYP}); ignored (logged once)"
                    ));
                    }
                    // Other sleep types after the first warning, or SLP_EN clear (nothing
                    // happens, as on hardware).
                    Some(_) | None => {}
                }
            }
            RESET_OFFSET if value == RESET_VALUE => self.stop.guest_event(SystemEvent::Reset),
            RESET_OFFSET => {
                let more = match self.bad_resets.allow() {
                    Allowed::Yes => "",
                    Allowed::Last => " (further ones are only counted)",
                    Allowed::No => return,
                };
                self.log.log(
                    Level::Debug,
                    format_args!(
                        "ACPI reset register written with {value:#04x}, not the reset value \
                         {RESET_VALUE:#04x}; ignored{more}"
                    ),
                );
            }
            // The sleep status register: writes clear WAK_STS, which is never set.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::debug_exit::tests::Recorder;
    use keel_core::arch::x86_64::acpi::{SLEEP_STATUS_OFFSET, SLP_EN, SLP_TYP_SHIFT};

    fn device() -> (Arc<Recorder>, AcpiPower) {
        let rec = Arc::new(Recorder::default());
        let dev = AcpiPower::new(rec.clone(), Arc::new(crate::log::NullLog));
        (rec, dev)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (rec, mut dev) = device();
        // What Linux's acpi_hw_extended_sleep() writes for S5: (5 << 2) | SLP_EN = 0x34.
        dev.write(SLEEP_CONTROL_OFFSET, &[0x34]);
        assert_eq!(*rec.0.lock().unwrap(), [SystemEvent::Shutdown]);
    }

    #[test]
    fn sleep_type_without_slp_en_does_nothing() {
        let (rec, mut dev) = device();
        dev.write(SLEEP_CONTROL_OFFSET, &[S5_SLP_TYP << SLP_TYP_SHIFT]);
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn sleep_states_other_than_s5_are_ignored() {
        let (rec, mut dev) = device();
        for typ in [0u8, 1, 3, 4, 7] {
            dev.write(SLEEP_CONTROL_OFFSET, &[(typ << SLP_TYP_SHIFT) | SLP_EN]);
        }
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn clearing_wake_status_does_not_stop_the_vm() {
        let (rec, mut dev) = device();
        // Linux clears WAK_STS (bit 7) in the sleep status register before sleeping;
        // an S5 value there is not a sleep request either.
        dev.write(SLEEP_STATUS_OFFSET, &[0x80]);
        dev.write(SLEEP_STATUS_OFFSET, &[0x34]);
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn reset_value_on_the_reset_register_requests_a_reboot() {
        let (rec, mut dev) = device();
        dev.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(*rec.0.lock().unwrap(), [SystemEvent::Reset]);
    }

    #[test]
    fn other_reset_register_values_are_ignored() {
        let (rec, mut dev) = device();
        dev.write(RESET_OFFSET, &[0x00]);
        dev.write(RESET_OFFSET, &[0x0e]);
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn ignored_reset_values_are_logged_a_bounded_number_of_times() {
        let rec = Arc::new(Recorder::default());
        let log = Arc::new(crate::testing::RecordingLog::default());
        let mut dev = AcpiPower::new(rec, log.clone());

        for _ in 0..100 {
            dev.write(RESET_OFFSET, &[0x00]);
        }

        assert_eq!(log.0.lock().len(), BAD_RESET_LOG_LIMIT as usize);
    }

    #[test]
    fn registers_read_zero_so_wake_status_is_never_set() {
        let (_rec, mut dev) = device();
        let mut b = [0xffu8; 2];
        dev.read(SLEEP_STATUS_OFFSET, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn empty_write_is_ignored() {
        let (rec, mut dev) = device();
        dev.write(SLEEP_CONTROL_OFFSET, &[]);
        assert!(rec.0.lock().unwrap().is_empty());
    }
}
