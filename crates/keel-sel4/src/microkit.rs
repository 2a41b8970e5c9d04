//! The Microkit protection-domain ABI: what a received badge means, and the capability
//! slots a PD's channels, IRQs and vCPUs live in.

use crate::abi::microkit as mk;

/// Why the PD's receive returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A child (for a VMM: vCPU `child`) faulted; the reply object holds its reply.
    Fault {
        /// Child id (the `id` of `<vcpu>` in the system file).
        child: u8,
    },
    /// A protected procedure call on `channel`; the reply object holds the caller's reply.
    ProtectedCall {
        /// Channel id.
        channel: u8,
    },
    /// Notifications: bit `n` set means channel `n` signalled (or its IRQ fired).
    Notified {
        /// Channel bit mask.
        channels: u64,
    },
}

impl Event {
    /// Decode a badge as libmicrokit's event loop does: bit 63 marks a protected call,
    /// bit 62 a fault, anything else is a notification word.
    pub const fn from_badge(badge: u64) -> Event {
        if badge >> mk::BADGE_ENDPOINT_BIT != 0 {
            Event::ProtectedCall {
                channel: (badge & mk::CHANNEL_MASK) as u8,
            }
        } else if (badge >> mk::BADGE_FAULT_BIT) & 1 != 0 {
            Event::Fault {
                child: (badge & mk::PD_MASK) as u8,
            }
        } else {
            Event::Notified { channels: badge }
        }
    }
}

/// The channels set in a notification word, lowest first.
pub fn channels(mut word: u64) -> impl Iterator<Item = u32> {
    core::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let ch = word.trailing_zeros();
        word &= word - 1;
        Some(ch)
    })
}

/// Capability slot of the notification for output `channel`.
pub const fn notification_cap(channel: u32) -> u64 {
    mk::BASE_OUTPUT_NOTIFICATION_CAP + channel as u64
}

/// Capability slot of the IRQ handler on `channel`.
pub const fn irq_cap(channel: u32) -> u64 {
    mk::BASE_IRQ_CAP + channel as u64
}

/// Capability slot of the endpoint for protected calls on `channel`.
pub const fn endpoint_cap(channel: u32) -> u64 {
    mk::BASE_ENDPOINT_CAP + channel as u64
}

/// Capability slot of child PD `id`'s thread (TCB), in its parent (`BASE_TCB_CAP + id`).
pub const fn child_tcb_cap(id: u32) -> u64 {
    mk::BASE_TCB_CAP + id as u64
}

/// Capability slot of vCPU `id`'s thread (TCB).
pub const fn vm_tcb_cap(id: u32) -> u64 {
    mk::BASE_VM_TCB_CAP + id as u64
}

/// Capability slot of vCPU `id`'s ARM VCPU object.
pub const fn vcpu_cap(id: u32) -> u64 {
    mk::BASE_VCPU_CAP + id as u64
}

/// Whether `channel` is set in one of the bit masks the Microkit tool patches into the PD
/// (`microkit_irqs`, `microkit_notifications`, `microkit_pps`).
pub const fn channel_allowed(mask: u64, channel: u32) -> bool {
    channel < mk::MAX_CHANNELS && mask & (1 << channel) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_badge_names_the_child() {
        assert_eq!(Event::from_badge((1 << 62) | 1), Event::Fault { child: 1 });
    }

    #[test]
    fn endpoint_bit_wins_over_fault_bit() {
        assert_eq!(
            Event::from_badge((1 << 63) | (1 << 62) | 5),
            Event::ProtectedCall { channel: 5 }
        );
    }

    #[test]
    fn plain_badge_is_a_notification_word() {
        assert_eq!(
            Event::from_badge(0b1010),
            Event::Notified { channels: 0b1010 }
        );
    }

    #[test]
    fn channels_lists_each_set_bit() {
        let v: alloc::vec::Vec<u32> = channels((1 << 61) | 0b101).collect();

        assert_eq!(v, [0, 2, 61]);
    }

    #[test]
    fn capability_slots_follow_the_bases() {
        assert_eq!(vm_tcb_cap(1), 267);
        assert_eq!(vcpu_cap(0), 330);
        assert_eq!(irq_cap(3), 141);
        assert_eq!(notification_cap(2), 12);
    }

    #[test]
    fn channel_above_61_is_never_allowed() {
        assert!(channel_allowed(1 << 3, 3));
        assert!(!channel_allowed(u64::MAX, 62));
    }
}
