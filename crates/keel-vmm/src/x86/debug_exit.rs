//! The debug-exit port (QEMU's `isa-debug-exit` at 0xf4): a byte V written here stops the
//! VM, and `keel run` exits with status V.

use alloc::sync::Arc;

use keel_core::{BusDevice, SystemEvent};

use crate::stop::StopSink;

/// The debug-exit device.
pub struct DebugExit {
    stop: Arc<dyn StopSink>,
}

impl core::fmt::Debug for DebugExit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DebugExit")
    }
}

impl DebugExit {
    /// A device that reports exits to `stop`.
    pub fn new(stop: Arc<dyn StopSink>) -> DebugExit {
        DebugExit { stop }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.stop.guest_event(SystemEvent::ExitCode(code));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct Recorder(pub Mutex<Vec<SystemEvent>>);
    impl StopSink for Recorder {
        fn guest_event(&self, event: SystemEvent) {
            self.0.lock().unwrap().push(event);
        }
        fn stopping(&self) -> bool {
            !self.0.lock().unwrap().is_empty()
        }
    }

    #[test]
    fn written_byte_becomes_the_exit_code() {
        let rec = Arc::new(Recorder::default());
        let mut dev = DebugExit::new(rec.clone());
        dev.write(0, &[42]);
        assert_eq!(*rec.0.lock().unwrap(), [SystemEvent::ExitCode(42)]);
    }
}
