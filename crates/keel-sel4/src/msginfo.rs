//! `seL4_MessageInfo`: the word that travels with every IPC.
//!
//! Layout (aarch64): `label` in bits 63..12, `capsUnwrapped` in 11..9, `extraCaps` in 8..7,
//! `length` (message registers used) in 6..0.

/// An IPC message tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageInfo(pub u64);

impl MessageInfo {
    /// A tag with `label`, no capabilities and `length` message registers. The label is cut
    /// to its 52 bits and the length to 7 bits, as the kernel would read them.
    pub const fn new(label: u64, length: usize) -> MessageInfo {
        MessageInfo(((label & 0x000f_ffff_ffff_ffff) << 12) | (length as u64 & 0x7f))
    }

    /// The label: an invocation number in a request, a fault type in a fault message, an
    /// error code in a reply from the kernel.
    pub const fn label(self) -> u64 {
        self.0 >> 12
    }

    /// Number of message registers used.
    pub const fn length(self) -> usize {
        (self.0 & 0x7f) as usize
    }

    /// Extra capabilities sent.
    pub const fn extra_caps(self) -> u8 {
        ((self.0 >> 7) & 0x3) as u8
    }

    /// Capabilities unwrapped by the kernel (bit mask).
    pub const fn caps_unwrapped(self) -> u8 {
        ((self.0 >> 9) & 0x7) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_and_length_round_trip() {
        let m = MessageInfo::new(60, 1);

        assert_eq!(m.label(), 60);
        assert_eq!(m.length(), 1);
        assert_eq!(m.extra_caps(), 0);
        assert_eq!(m.0, (60 << 12) | 1);
    }

    #[test]
    fn length_above_127_is_cut_to_seven_bits() {
        assert_eq!(MessageInfo::new(0, 130).length(), 2);
    }

    #[test]
    fn caps_fields_are_decoded_from_their_bits() {
        let m = MessageInfo((5 << 12) | (0b101 << 9) | (0b10 << 7) | 3);

        assert_eq!(m.label(), 5);
        assert_eq!(m.caps_unwrapped(), 0b101);
        assert_eq!(m.extra_caps(), 2);
        assert_eq!(m.length(), 3);
    }
}
