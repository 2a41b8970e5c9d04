//! The geometry of a block-forwarding region: two slot rings (requests, responses) shared
//! by a client VMM and a storage VM. The protocol on top is `keel_virtio::forward`
//! (docs/driver-vms.md); the geometry is here so that the plan (keel-spec) and both ends
//! compute the same region size.

use super::RingError;
use super::slot::{SLOT_HEADER_LEN, SlotWindow};

/// First word of every request: `"KBF1"`.
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"KBF1");
/// Bytes of a request before its data.
pub const REQUEST_HEADER_LEN: usize = 32;
/// Bytes of a response before its data.
pub const RESPONSE_HEADER_LEN: usize = 16;
/// Data bytes per request by default ([`ForwardGeometry::DEFAULT`]).
pub const DEFAULT_MAX_DATA: usize = 64 * 1024;
/// Slots per ring by default: requests a client may have outstanding.
pub const DEFAULT_SLOTS: u64 = 16;
/// Largest zeroing (discard) one request asks for; longer discards are split.
pub const MAX_ZERO_LEN: u32 = 16 << 20;
/// Alignment of the response ring inside the region (a page: each ring may be mapped on
/// its own).
const RING_ALIGN: usize = 4096;

/// Why a forwarding region cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The geometry is unusable.
    #[error("forwarding geometry of {slots} slots of {max_data} data bytes is unusable: {why}")]
    Geometry {
        /// Slots per ring.
        slots: u64,
        /// Data bytes per request.
        max_data: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The region is shorter than the geometry needs.
    #[error("forwarding region of {len} bytes is too short: the geometry needs {need}")]
    RegionTooShort {
        /// The region's length.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A ring of the region could not be attached.
    #[error("forwarding ring: {0}")]
    Ring(#[from] RingError),
}

/// The shape of a forwarding region: slots per ring and data bytes per request. Both sides
/// must use the same (the plan gives it to both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardGeometry {
    /// Slots per ring (a power of two, 1..=1024).
    pub slots: u64,
    /// Data bytes per request (a multiple of 512, 512..=1 MiB).
    pub max_data: usize,
}

impl ForwardGeometry {
    /// 16 slots of 64 KiB: 1 MiB in flight per client, a region of ~2.1 MiB.
    pub const DEFAULT: ForwardGeometry = ForwardGeometry {
        slots: DEFAULT_SLOTS,
        max_data: DEFAULT_MAX_DATA,
    };

    /// Check the geometry.
    pub fn check(&self) -> Result<(), ForwardError> {
        let bad = |why| ForwardError::Geometry {
            slots: self.slots,
            max_data: self.max_data,
            why,
        };
        if !self.slots.is_power_of_two() || self.slots > 1024 {
            return Err(bad("slots must be a power of two up to 1024"));
        }
        if self.max_data < 512 || self.max_data > 1 << 20 || self.max_data % 512 != 0 {
            return Err(bad(
                "data bytes must be a multiple of 512 from 512 to 1 MiB",
            ));
        }
        Ok(())
    }

    /// Bytes per slot: the slot header, the larger record header and the data, rounded up
    /// to 8.
    pub fn slot_size(&self) -> usize {
        (SLOT_HEADER_LEN + REQUEST_HEADER_LEN + self.max_data).next_multiple_of(8)
    }

    /// Bytes of one ring's window.
    pub fn window_len(&self) -> usize {
        SlotWindow::window_len(self.slot_size(), self.slots).unwrap_or(usize::MAX)
    }

    /// Offset of the response ring in the region.
    pub fn response_offset(&self) -> usize {
        self.window_len().next_multiple_of(RING_ALIGN)
    }

    /// Bytes of the whole region (a multiple of 4 KiB).
    pub fn region_len(&self) -> usize {
        self.response_offset() + self.window_len().next_multiple_of(RING_ALIGN)
    }

    /// The two ring windows of the region `[base, base + len)`: (requests, responses).
    ///
    /// # Safety
    ///
    /// As for [`SlotWindow::new`]: the region stays mapped readable and writable while the
    /// windows and everything made from them live, no Rust reference points into it, and the
    /// peer accesses it only through the ring protocol (or, if hostile, by writing bytes).
    pub unsafe fn windows(
        &self,
        base: *mut u8,
        len: usize,
    ) -> Result<(SlotWindow, SlotWindow), ForwardError> {
        self.check()?;
        let need = self.region_len();
        if len < need {
            return Err(ForwardError::RegionTooShort { len, need });
        }
        let off = self.response_offset();
        // SAFETY: both windows lie inside the region (`need <= len`), do not overlap
        // (`off >= window_len`), and inherit the caller's guarantees.
        unsafe {
            let req = SlotWindow::new(base, self.window_len(), self.slot_size(), self.slots)?;
            let resp = SlotWindow::new(
                base.add(off),
                self.window_len(),
                self.slot_size(),
                self.slots,
            )?;
            Ok((req, resp))
        }
    }
}
