//! Guest-physical memory as the VMM sees it: bounds-checked copies in and out, and the
//! atomic ring-index accesses virtqueues need.
//!
//! Guest memory is shared with a running, untrusted guest: any byte may change between two
//! reads. Code that parses guest structures therefore copies them out once and validates the
//! copy; it never keeps a Rust reference into guest memory. The copies themselves are
//! relaxed atomic copies ([`copy`]): a plain `memcpy` racing with a guest store is a data
//! race, undefined behaviour in Rust's memory model.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;
use core::sync::atomic::{AtomicU16, Ordering};

pub mod copy;

/// A guest-physical address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestAddress(pub u64);

impl GuestAddress {
    /// `self + offset`, or `None` on overflow. Guest-supplied offsets go through this.
    pub fn checked_add(self, offset: u64) -> Option<GuestAddress> {
        self.0.checked_add(offset).map(GuestAddress)
    }
}

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// What went wrong with a guest-memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestMemoryError {
    /// Some byte of `[gpa, gpa + len)` is not guest RAM (or the range wraps around).
    #[error("guest range {gpa:#x}+{len:#x} is not in guest RAM")]
    OutOfRange {
        /// Start of the access.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// An atomic access at an address that is not naturally aligned.
    #[error("guest address {gpa:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// The address.
        gpa: u64,
        /// The alignment required.
        align: u64,
    },
}

/// Access to guest-physical memory. Every method checks the whole range first: an access
/// that is partly outside guest RAM fails without touching anything.
pub trait GuestMemory {
    /// Copy `buf.len()` bytes from guest `gpa` into `buf`.
    fn read(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<(), GuestMemoryError>;

    /// Copy `buf` into guest memory at `gpa`.
    fn write(&self, gpa: GuestAddress, buf: &[u8]) -> Result<(), GuestMemoryError>;

    /// Load a 16-bit ring index with acquire ordering (pairs with the guest's release store).
    fn load_u16_acquire(&self, gpa: GuestAddress) -> Result<u16, GuestMemoryError>;

    /// Store a 16-bit ring index with release ordering: every earlier write to guest memory
    /// is visible to the guest before the index is.
    fn store_u16_release(&self, gpa: GuestAddress, value: u16) -> Result<(), GuestMemoryError>;

    /// Whether `[gpa, gpa + len)` lies wholly in guest RAM.
    fn contains(&self, gpa: GuestAddress, len: u64) -> bool;

    /// The optional zero-copy fast path: guest RAM mapped into the VMM behind this memory,
    /// if there is such a mapping, so that a backend can hand guest buffers to the host OS
    /// directly (one `preadv` into guest RAM). `None` by default: a memory without a host
    /// mapping (a shared window reached by copies, a bounce buffer, a test memory) is
    /// accessed through [`GuestMemory::read`] / [`GuestMemory::write`] only, and devices
    /// copy through bounded buffers of their own.
    ///
    /// A memory that returns `Some(ram)` promises that `ram` is the same guest memory as
    /// `self` for every address `ram` contains.
    fn mapped(&self) -> Option<&GuestRam> {
        None
    }

    /// Read a little-endian `u16`.
    fn read_u16(&self, gpa: GuestAddress) -> Result<u16, GuestMemoryError> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Read a little-endian `u32`.
    fn read_u32(&self, gpa: GuestAddress) -> Result<u32, GuestMemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Read a little-endian `u64`.
    fn read_u64(&self, gpa: GuestAddress) -> Result<u64, GuestMemoryError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write a little-endian `u16`.
    fn write_u16(&self, gpa: GuestAddress, v: u16) -> Result<(), GuestMemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Write a little-endian `u32`.
    fn write_u32(&self, gpa: GuestAddress, v: u32) -> Result<(), GuestMemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Write a little-endian `u64`.
    fn write_u64(&self, gpa: GuestAddress, v: u64) -> Result<(), GuestMemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

/// A shared handle to guest memory of any kind: what device models and virtqueues hold.
/// `Arc::new(ram)` makes one from [`GuestRam`].
pub type GuestMemoryRef = Arc<dyn GuestMemory + Send + Sync>;

/// One contiguous block of guest RAM mapped into the VMM.
#[derive(Clone, Copy)]
struct Region {
    gpa: u64,
    len: u64,
    host: *mut u8,
}

impl Region {
    fn end(&self) -> u64 {
        // Cannot overflow: checked when the region was added.
        self.gpa + self.len
    }
}

/// Guest RAM: a set of disjoint regions, each mapped at some host address of the VMM.
///
/// Cloning is cheap and every clone sees the same memory. The mapping is kept alive by an
/// owner object that the backend hands over (an `mmap` on Linux, nothing on seL4 where the
/// region is mapped into the protection domain for its whole life).
#[derive(Clone)]
pub struct GuestRam {
    regions: Arc<[Region]>,
    _owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: `GuestRam` only hands out copies of guest memory, never references into it, and
// every access goes through atomic copies ([`copy`]) or atomics that tolerate concurrent writers
// (the guest, other vCPU threads). The regions stay mapped while `_owner` lives.
unsafe impl Send for GuestRam {}
// SAFETY: as above; no method takes `&mut self`, and shared access is designed in.
unsafe impl Sync for GuestRam {}

/// A region description for [`GuestRam::from_raw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRegion {
    /// Guest-physical base.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the region is mapped in the VMM.
    pub host: *mut u8,
}

/// Why a set of regions cannot form guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Two regions overlap in guest-physical space.
    #[error("guest RAM regions at {a:#x} and {b:#x} overlap")]
    Overlap {
        /// Base of the first region.
        a: u64,
        /// Base of the second region.
        b: u64,
    },
    /// A region is empty or wraps past the end of the address space.
    #[error("guest RAM region at {gpa:#x} with size {len:#x} is empty or wraps around")]
    BadRegion {
        /// Its base.
        gpa: u64,
        /// Its size.
        len: u64,
    },
}

impl GuestRam {
    /// Guest RAM over memory the caller has mapped.
    ///
    /// # Safety
    /// Each `host` pointer must be valid for reads and writes of `len` bytes for as long as
    /// `owner` (and so any clone of the result) lives, and must not be accessed through Rust
    /// references anywhere else while it does.
    pub unsafe fn from_raw(
        regions: &[RawRegion],
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Result<GuestRam, LayoutError> {
        let mut v: Vec<Region> = Vec::with_capacity(regions.len());
        for r in regions {
            if r.len == 0 || r.gpa.checked_add(r.len).is_none() {
                return Err(LayoutError::BadRegion {
                    gpa: r.gpa,
                    len: r.len,
                });
            }
            v.push(Region {
                gpa: r.gpa,
                len: r.len,
                host: r.host,
            });
        }
        v.sort_by_key(|r| r.gpa);
        for w in v.windows(2) {
            if w[0].end() > w[1].gpa {
                return Err(LayoutError::Overlap {
                    a: w[0].gpa,
                    b: w[1].gpa,
                });
            }
        }
        Ok(GuestRam {
            regions: v.into(),
            _owner: owner,
        })
    }

    /// Zeroed guest RAM allocated on the heap: for tests (the mock guest memory of device
    /// tests) and for backends without a special allocator.
    pub fn anonymous(layout: &[(u64, u64)]) -> Result<GuestRam, LayoutError> {
        let mut owner = HeapRegions(Vec::with_capacity(layout.len()));
        let mut raw = Vec::with_capacity(layout.len());
        for &(gpa, len) in layout {
            let bad = LayoutError::BadRegion { gpa, len };
            // 8-byte host alignment, as a page mapping would give. An empty region gets no
            // allocation (zero-size allocations are not allowed): `from_raw` refuses it.
            let size = usize::try_from(len).map_err(|_| bad)?;
            if size == 0 {
                return Err(bad);
            }
            let layout = core::alloc::Layout::from_size_align(size, 8).map_err(|_| bad)?;
            // SAFETY: `layout` has a non-zero size (checked above).
            let host = unsafe { alloc::alloc::alloc_zeroed(layout) };
            if host.is_null() {
                alloc::alloc::handle_alloc_error(layout);
            }
            owner.0.push((host, layout));
            raw.push(RawRegion { gpa, len, host });
        }
        let owner: Arc<dyn Any + Send + Sync> = Arc::new(owner);
        // SAFETY: each pointer comes from an allocation of exactly `len` bytes that `owner`
        // frees only when dropped, i.e. after the last clone of the result; nothing else
        // holds a pointer or reference to it.
        unsafe { GuestRam::from_raw(&raw, owner) }
    }

    /// The regions as `(guest-physical base, size)`, sorted by base.
    pub fn layout(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions.iter().map(|r| (r.gpa, r.len))
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    /// The host address of `[gpa, gpa + len)` if it lies inside one region. For backends
    /// that hand guest buffers to the host OS directly (e.g. `pread` into guest RAM).
    /// The caller must treat the memory as shared with the guest.
    pub fn host_address(&self, gpa: GuestAddress, len: u64) -> Option<*mut u8> {
        let r = self.region_of(gpa.0)?;
        let off = gpa.0 - r.gpa;
        if len > r.len - off {
            return None;
        }
        // `off < r.len`, so the pointer stays inside the mapping.
        Some(r.host.wrapping_add(off as usize))
    }

    fn region_of(&self, gpa: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.end() <= gpa);
        self.regions.get(i).filter(|r| r.gpa <= gpa)
    }

    /// Split `[gpa, gpa+len)` into per-region chunks `(host pointer, len)`, or fail if any
    /// byte is outside RAM. Adjacent regions are crossed.
    fn for_each_chunk(
        &self,
        gpa: GuestAddress,
        len: usize,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), GuestMemoryError> {
        let err = GuestMemoryError::OutOfRange {
            gpa: gpa.0,
            len: len as u64,
        };
        // Almost every access lies in one region: one lookup, one chunk.
        if let Some(p) = self.host_address(gpa, len as u64) {
            f(p, 0, len);
            return Ok(());
        }
        if !self.contains(gpa, len as u64) {
            return Err(err);
        }
        let mut done = 0usize;
        while done < len {
            let at = gpa.0 + done as u64;
            let r = self.region_of(at).ok_or(err)?;
            let off = (at - r.gpa) as usize;
            let n = core::cmp::min(len - done, (r.len as usize) - off);
            f(r.host.wrapping_add(off), done, n);
            done += n;
        }
        Ok(())
    }

    fn atomic_u16(&self, gpa: GuestAddress) -> Result<&AtomicU16, GuestMemoryError> {
        if gpa.0 % 2 != 0 {
            return Err(GuestMemoryError::Misaligned {
                gpa: gpa.0,
                align: 2,
            });
        }
        let p = self
            .host_address(gpa, 2)
            .ok_or(GuestMemoryError::OutOfRange { gpa: gpa.0, len: 2 })?;
        if (p as usize) % 2 != 0 {
            // Only possible with a region whose host and guest bases differ in parity.
            return Err(GuestMemoryError::Misaligned {
                gpa: gpa.0,
                align: 2,
            });
        }
        // SAFETY: `p` is inside a live mapping for 2 bytes (checked above) and 2-aligned
        // (checked above). `AtomicU16` has the size of `u16`, and atomics are the right tool
        // for memory another agent (the guest) writes concurrently.
        Ok(unsafe { &*(p as *const AtomicU16) })
    }
}

/// The heap allocations behind [`GuestRam::anonymous`]: raw allocations rather than boxes,
/// so that no `Box` (which asserts unique access when moved) aliases the raw pointers the
/// regions keep. Freed on drop.
struct HeapRegions(Vec<(*mut u8, core::alloc::Layout)>);

// SAFETY: the allocations are plain bytes owned by this value; `HeapRegions` itself never
// accesses them except to free them in `drop`, which has `&mut self`.
unsafe impl Send for HeapRegions {}
// SAFETY: as above: no method reads or writes through the pointers.
unsafe impl Sync for HeapRegions {}

impl Drop for HeapRegions {
    fn drop(&mut self) {
        for &(p, layout) in &self.0 {
            // SAFETY: `p` was returned by `alloc_zeroed(layout)` in `GuestRam::anonymous`
            // and is freed once, here; the `GuestRam` clones that used it are gone, as they
            // hold the `Arc` this value lives in.
            unsafe { alloc::alloc::dealloc(p, layout) }
        }
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        self.for_each_chunk(gpa, buf.len(), |src, done, n| {
            // `done + n <= buf.len()` (for_each_chunk splits `0..buf.len()`).
            let Some(dst) = buf.get_mut(done..done + n) else {
                return;
            };
            // SAFETY: `src` is valid for `n` bytes of a live mapping (for_each_chunk) that no
            // Rust reference points into (contract of `from_raw`); the guest writes it
            // concurrently, which the atomic copy allows.
            unsafe { copy::copy_from_shared(src, dst) }
        })
    }

    fn write(&self, gpa: GuestAddress, buf: &[u8]) -> Result<(), GuestMemoryError> {
        self.for_each_chunk(gpa, buf.len(), |dst, done, n| {
            let Some(src) = buf.get(done..done + n) else {
                return;
            };
            // SAFETY: as in `read`, with source and destination swapped.
            unsafe { copy::copy_to_shared(src, dst) }
        })
    }

    fn load_u16_acquire(&self, gpa: GuestAddress) -> Result<u16, GuestMemoryError> {
        Ok(u16::from_le(self.atomic_u16(gpa)?.load(Ordering::Acquire)))
    }

    fn store_u16_release(&self, gpa: GuestAddress, value: u16) -> Result<(), GuestMemoryError> {
        self.atomic_u16(gpa)?
            .store(value.to_le(), Ordering::Release);
        Ok(())
    }

    fn contains(&self, gpa: GuestAddress, len: u64) -> bool {
        let Some(end) = gpa.0.checked_add(len) else {
            return false;
        };
        let mut at = gpa.0;
        while at < end {
            match self.region_of(at) {
                Some(r) => at = r.end(),
                None => return false,
            }
        }
        // A zero-length access is in range only at an address inside RAM.
        len != 0 || self.region_of(gpa.0).is_some()
    }

    fn mapped(&self) -> Option<&GuestRam> {
        Some(self)
    }
}

impl fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.regions.iter().map(|r| (GuestAddress(r.gpa), r.len)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU64;

    fn ram() -> GuestRam {
        GuestRam::anonymous(&[(0x1000, 0x1000), (0x2000, 0x1000), (0x10000, 0x100)]).unwrap()
    }

    #[test]
    fn write_then_read_round_trips() {
        let m = ram();
        m.write(GuestAddress(0x1800), b"keel").unwrap();
        let mut b = [0u8; 4];
        m.read(GuestAddress(0x1800), &mut b).unwrap();
        assert_eq!(&b, b"keel");
    }

    #[test]
    fn access_crosses_adjacent_regions() {
        let m = ram();
        m.write(GuestAddress(0x1ffe), &[1, 2, 3, 4]).unwrap();
        assert_eq!(m.read_u32(GuestAddress(0x1ffe)).unwrap(), 0x0403_0201);
    }

    #[test]
    fn access_into_a_hole_is_rejected_without_writing() {
        let m = ram();
        let err = m.write(GuestAddress(0x2ffe), &[9, 9, 9, 9]).unwrap_err();
        assert_eq!(
            err,
            GuestMemoryError::OutOfRange {
                gpa: 0x2ffe,
                len: 4
            }
        );
        assert_eq!(m.read_u16(GuestAddress(0x2ffe)).unwrap(), 0);
    }

    #[test]
    fn wrapping_range_is_rejected() {
        let m = ram();
        assert!(!m.contains(GuestAddress(u64::MAX - 1), 4));
        assert!(m.read_u32(GuestAddress(u64::MAX - 1)).is_err());
    }

    #[test]
    fn misaligned_ring_index_is_rejected() {
        let m = ram();
        assert_eq!(
            m.load_u16_acquire(GuestAddress(0x1001)),
            Err(GuestMemoryError::Misaligned {
                gpa: 0x1001,
                align: 2
            })
        );
    }

    #[test]
    fn ring_index_is_stored_as_little_endian_bytes() {
        let m = ram();
        m.store_u16_release(GuestAddress(0x1002), 0x1234).unwrap();
        let mut bytes = [0u8; 2];
        m.read(GuestAddress(0x1002), &mut bytes).unwrap();
        assert_eq!(bytes, [0x34, 0x12]);
        assert_eq!(m.load_u16_acquire(GuestAddress(0x1002)).unwrap(), 0x1234);
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let err = GuestRam::anonymous(&[(0x1000, 0x2000), (0x2000, 0x1000)]).unwrap_err();
        assert_eq!(
            err,
            LayoutError::Overlap {
                a: 0x1000,
                b: 0x2000
            }
        );
    }

    #[test]
    fn host_address_refuses_ranges_spanning_regions() {
        let m = ram();
        assert!(m.host_address(GuestAddress(0x1ff0), 0x10).is_some());
        assert!(m.host_address(GuestAddress(0x1ff0), 0x20).is_none());
    }

    /// What a guest vCPU does to its RAM while the VMM copies it: aligned 8-byte stores,
    /// `rounds` times over the 64 bytes at `host`, each word with all its bytes equal to
    /// a value in `0x80..=0xff`.
    fn guest_stores(host: *mut u8, rounds: usize) {
        for r in 0..rounds {
            let v = 0x0101_0101_0101_0101u64 * (0x80 + (r % 0x80) as u64);
            for w in 0..8 {
                // SAFETY: `host` is the 8-aligned start of 64 bytes of live guest RAM (the
                // caller's `host_address`), accessed by the VMM only through `GuestRam`.
                unsafe { AtomicU64::from_ptr(host.cast::<u64>().add(w)) }
                    .store(v, Ordering::Relaxed);
            }
        }
    }

    /// The Rust memory model allows the VMM to copy guest RAM that a guest vCPU writes at the
    /// same time: under Miri (scripts/miri.sh) this test is a data race with
    /// `copy_nonoverlapping` copies and passes with the atomic copies. Each aligned word comes
    /// out whole (all its bytes from one store), whoever wrote it.
    #[test]
    fn copies_racing_with_a_guest_writer_are_no_data_race_and_see_whole_words() {
        extern crate std;
        const ROUNDS: usize = if cfg!(miri) { 20 } else { 2_000 };
        let m = GuestRam::anonymous(&[(0x1000, 0x1000)]).unwrap();
        let word = core::mem::size_of::<usize>();
        let mut torn = 0usize;

        std::thread::scope(|s| {
            let guest =
                s.spawn(|| guest_stores(m.host_address(GuestAddress(0x1000), 64).unwrap(), ROUNDS));
            let mut buf = [0u8; 64];
            for r in 0..ROUNDS {
                m.write(GuestAddress(0x1000), &[(r % 0x80) as u8; 64])
                    .unwrap();
                m.read(GuestAddress(0x1000), &mut buf).unwrap();
                torn += buf
                    .chunks(word)
                    .filter(|w| w.iter().any(|&b| b != w[0]))
                    .count();
            }
            guest.join().unwrap();
        });

        assert_eq!(torn, 0);
    }
}
