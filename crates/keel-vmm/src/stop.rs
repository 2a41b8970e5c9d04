//! How devices and vCPU loops learn that the VM stops.

use keel_core::SystemEvent;

/// Where devices and vCPU loops report that the VM must stop, and learn that it does.
pub trait StopSink: Send + Sync {
    /// The guest asked to stop (power-off, reset, exit code, crash).
    fn guest_event(&self, event: SystemEvent);
    /// Whether a stop has been requested (vCPU loops look after every exit).
    fn stopping(&self) -> bool;
}
