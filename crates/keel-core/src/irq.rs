//! Interrupt lines from devices to the guest's interrupt controller.
//!
//! A device model holds an `Arc<dyn IrqLine>` and never learns how the interrupt travels:
//! on KVM it is an `irqfd` write or `KVM_IRQ_LINE`, on seL4 an injection into the software
//! GIC distributor and `seL4_ARM_VCPU_InjectIRQ`, in tests a counter.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// One interrupt input of the guest's interrupt controller.
pub trait IrqLine: Send + Sync {
    /// Raise (`true`) or lower (`false`) a level-triggered line. Devices whose interrupt
    /// condition persists until the guest acknowledges it (virtio-mmio's `InterruptStatus`,
    /// the 8250's IIR) drive the level; backends that only have edges send an edge on each
    /// rising transition.
    fn set_level(&self, high: bool);

    /// Send one edge (an MSI-style notification).
    fn trigger(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// An [`IrqLine`] that records what devices do with it: the mock of device tests.
#[derive(Debug, Default)]
pub struct RecordingIrq {
    level: AtomicBool,
    raised: AtomicU32,
}

impl RecordingIrq {
    /// A line that starts low.
    pub const fn new() -> RecordingIrq {
        RecordingIrq {
            level: AtomicBool::new(false),
            raised: AtomicU32::new(0),
        }
    }

    /// The current level.
    pub fn is_high(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }

    /// How many low→high transitions (and edges) the line has seen.
    pub fn raised_count(&self) -> u32 {
        self.raised.load(Ordering::SeqCst)
    }
}

impl IrqLine for RecordingIrq {
    fn set_level(&self, high: bool) {
        let was = self.level.swap(high, Ordering::SeqCst);
        if high && !was {
            self.raised.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_irq_counts_rising_edges_only() {
        let irq = RecordingIrq::new();
        irq.set_level(true);
        irq.set_level(true);
        irq.set_level(false);
        irq.trigger();
        assert_eq!(irq.raised_count(), 2);
        assert!(!irq.is_high());
    }
}
