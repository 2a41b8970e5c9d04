//! A stub i8042 keyboard controller: enough for guests to probe it and to reset the
//! machine with command 0xFE on port 0x64 (the usual x86 reboot path).
//!
//! Placed on the bus at 0x60 (data, offset 0) and 0x64 (command/status, offset 4) as one
//! 5-byte range.

use alloc::sync::Arc;

use keel_core::{BusDevice, SystemEvent};

use crate::stop::StopSink;

/// Offset of the data port (0x60) in the device's range.
pub const DATA: u64 = 0;
/// Offset of the command/status port (0x64).
pub const COMMAND: u64 = 4;
/// The command that pulses the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;
/// Status: "system flag" set (self-test passed), both buffers empty.
const STATUS_SYSTEM: u8 = 0x04;

/// The stub controller.
pub struct I8042 {
    stop: Arc<dyn StopSink>,
}

impl core::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("I8042")
    }
}

impl I8042 {
    /// A controller that reports resets to `stop`.
    pub fn new(stop: Arc<dyn StopSink>) -> I8042 {
        I8042 { stop }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = match offset {
                COMMAND => STATUS_SYSTEM,
                _ => 0,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND && data.first() == Some(&CMD_RESET_CPU) {
            self.stop.guest_event(SystemEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::debug_exit::tests::Recorder;

    #[test]
    fn reset_command_requests_a_reboot() {
        let rec = Arc::new(Recorder::default());
        let mut dev = I8042::new(rec.clone());
        dev.write(COMMAND, &[0xfe]);
        assert_eq!(*rec.0.lock().unwrap(), [SystemEvent::Reset]);
    }

    #[test]
    fn other_commands_are_ignored_and_status_reads_empty_buffers() {
        let rec = Arc::new(Recorder::default());
        let mut dev = I8042::new(rec.clone());
        dev.write(COMMAND, &[0xad]);
        dev.write(DATA, &[0xfe]);
        let mut s = [0xffu8];
        dev.read(COMMAND, &mut s);
        assert!(rec.0.lock().unwrap().is_empty());
        assert_eq!(s[0] & 0x03, 0);
    }
}
