//! Shared scaffolding of the virtio fuzz targets: a small two-region guest RAM with a gap,
//! a [`GuestMemory`] wrapper that records every range the device writes, and an
//! independent "is this range in RAM" for reference checks.

use std::sync::Mutex;

use arbitrary::Unstructured;
use keel_core::{GuestAddress, GuestMemory, GuestMemoryError, GuestRam};

/// The guest RAM regions (gpa, len): 32 KiB at 0, a 32 KiB hole, 32 KiB at 0x10000.
pub const REGIONS: [(u64, u64); 2] = [(0, 0x8000), (0x1_0000, 0x8000)];

/// Fresh zeroed guest RAM with [`REGIONS`].
pub fn ram() -> GuestRam {
    GuestRam::anonymous(&REGIONS).expect("the fuzz RAM layout is valid")
}

/// Whether `[gpa, gpa + len)` lies wholly inside one region (the regions are not adjacent,
/// so that is the same as "wholly in RAM"). Written from the layout, not from `GuestRam`.
pub fn in_ram(gpa: u64, len: u64) -> bool {
    let Some(end) = gpa.checked_add(len) else {
        return false;
    };
    REGIONS
        .iter()
        .any(|&(start, size)| gpa >= start && end <= start + size)
}

/// A guest address biased towards interesting places: inside a region, at the very end of
/// one, in the hole, or anywhere in the 64-bit space.
pub fn addr(u: &mut Unstructured<'_>) -> u64 {
    let mode: u8 = u.arbitrary().unwrap_or(0);
    let off: u16 = u.arbitrary().unwrap_or(0);
    let off = u64::from(off);
    match mode % 8 {
        0..=2 => off % 0x8000,
        3..=4 => 0x1_0000 + off % 0x8000,
        5 => 0x8000 - (off % 64),
        6 => 0x1_8000 - (off % 64),
        _ => u.arbitrary().unwrap_or(0),
    }
}

/// A [`GuestMemory`] over [`GuestRam`] that logs every write the device makes (`write`
/// and `store_u16_release`, the only two ways the trait writes). `mapped()` is `None`,
/// so devices cannot write around the log through a host mapping.
pub struct Recording {
    /// The memory written through.
    pub ram: GuestRam,
    /// Every `(gpa, len)` written, in order.
    pub log: Mutex<Vec<(u64, u64)>>,
}

impl Recording {
    /// Record the writes made to `ram`.
    pub fn new(ram: GuestRam) -> Recording {
        Recording {
            ram,
            log: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, u64)>> {
        // A panic while logging leaves a usable log: recover it.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writes logged since the last call.
    pub fn take(&self) -> Vec<(u64, u64)> {
        core::mem::take(&mut *self.lock())
    }
}

impl GuestMemory for Recording {
    fn read(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        self.ram.read(gpa, buf)
    }

    fn write(&self, gpa: GuestAddress, buf: &[u8]) -> Result<(), GuestMemoryError> {
        let r = self.ram.write(gpa, buf);
        if r.is_ok() && !buf.is_empty() {
            self.lock().push((gpa.0, buf.len() as u64));
        }
        r
    }

    fn load_u16_acquire(&self, gpa: GuestAddress) -> Result<u16, GuestMemoryError> {
        self.ram.load_u16_acquire(gpa)
    }

    fn store_u16_release(&self, gpa: GuestAddress, value: u16) -> Result<(), GuestMemoryError> {
        let r = self.ram.store_u16_release(gpa, value);
        if r.is_ok() {
            self.lock().push((gpa.0, 2));
        }
        r
    }

    fn contains(&self, gpa: GuestAddress, len: u64) -> bool {
        self.ram.contains(gpa, len)
    }
}

/// Whether `[a, a + alen)` lies inside `[b, b + blen)`.
pub fn within(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a >= b
        && a.checked_add(alen)
            .is_some_and(|e| e <= b.saturating_add(blen))
}

/// Read `len` bytes of guest RAM (zeros where the read fails: callers use it only on
/// ranges they checked).
pub fn peek(ram: &GuestRam, gpa: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let _ = ram.read(GuestAddress(gpa), &mut v);
    v
}

/// A little-endian u16 of guest RAM (0 outside RAM).
pub fn peek_u16(ram: &GuestRam, gpa: u64) -> u16 {
    let b = peek(ram, gpa, 2);
    u16::from_le_bytes([b[0], b[1]])
}

/// Guest writes `data` at `gpa` if the range is in RAM (a guest store elsewhere faults in
/// the guest, not in the VMM).
pub fn poke(ram: &GuestRam, gpa: u64, data: &[u8]) {
    if !data.is_empty() && in_ram(gpa, data.len() as u64) {
        ram.write(GuestAddress(gpa), data)
            .expect("in_ram said the range is guest RAM");
    }
}
