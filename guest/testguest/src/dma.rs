//! A static, page-aligned region for virtqueues and request buffers.
//!
//! The guest runs identity-mapped, so a buffer's address is its guest-physical
//! address. Pages are handed out once (bump allocation, never freed): the
//! guest runs a handful of tests and exits.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Page size.
pub const PAGE: usize = 4096;
const PAGES: usize = 48;

#[repr(C, align(4096))]
struct Region(UnsafeCell<[u8; PAGES * PAGE]>);

// SAFETY: pages are handed out at most once each (NEXT only grows), so no two
// owners alias; only the bootstrap CPU allocates.
unsafe impl Sync for Region {}

static REGION: Region = Region(UnsafeCell::new([0; PAGES * PAGE]));
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// `count` zeroed, contiguous pages, or None when the region is used up.
pub fn alloc_pages(count: usize) -> Option<&'static mut [u8]> {
    let first = NEXT.load(Ordering::Relaxed);
    let end = first.checked_add(count).filter(|&e| e <= PAGES)?;
    NEXT.store(end, Ordering::Relaxed);
    let base = REGION.0.get().cast::<u8>();
    // SAFETY: [first, end) pages lie inside REGION and were never handed out
    // before (NEXT moved past them above), so this is the only reference.
    let pages = unsafe { core::slice::from_raw_parts_mut(base.add(first * PAGE), count * PAGE) };
    pages.fill(0);
    Some(pages)
}

/// Guest-physical address of a buffer (identity mapping).
pub fn paddr<T: ?Sized>(buffer: &T) -> u64 {
    core::ptr::from_ref(buffer).cast::<u8>() as u64
}
