//! A protection domain's heap: power-of-two size classes with per-class free lists, over a
//! static arena of `ARENA` bytes ([`Heap`]: the VMM's, the console's) or over a memory
//! region the system file maps, sized at plan time ([`RegionHeap`]: the switch's). Simple and fragmentation-bounded (at most 2x), which suits a VMM whose
//! allocations are a few long-lived device models plus short request buffers.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

const MIN_CLASS: usize = 4; // 16 bytes
const CLASSES: usize = 26; // up to 512 MiB
const MAX_ALIGN: usize = 4096;

#[repr(C, align(4096))]
struct Arena<const ARENA: usize>(UnsafeCell<[u8; ARENA]>);

struct State {
    next: usize,
    free: [usize; CLASSES],
}

/// The global allocator of a protection domain, over an arena of `ARENA` bytes (declared
/// by `pd_entry!`).
pub struct Heap<const ARENA: usize> {
    arena: Arena<ARENA>,
    state: spin::Mutex<State>,
}

// SAFETY: all access to the arena goes through `state`'s lock; blocks are handed out to
// one owner each.
unsafe impl<const ARENA: usize> Sync for Heap<ARENA> {}

impl<const ARENA: usize> Heap<ARENA> {
    /// An empty heap.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Heap<ARENA> {
        Heap {
            arena: Arena(UnsafeCell::new([0; ARENA])),
            state: spin::Mutex::new(State {
                next: 0,
                free: [0; CLASSES],
            }),
        }
    }
}

impl<const ARENA: usize> Heap<ARENA> {
    /// Make the whole arena free again, releasing the lock whoever held it (a protection
    /// domain restarted at its entry point: the VMM PD after a fault).
    ///
    /// # Safety
    ///
    /// No block handed out before is used again (nor freed): the caller forgot every
    /// value that owns one, and nothing is running inside `alloc` or `dealloc`.
    pub unsafe fn reset(&self) {
        // SAFETY: the caller's guarantee: whoever held the lock is gone.
        unsafe { self.state.force_unlock() };
        let mut s = self.state.lock();
        s.next = 0;
        s.free = [0; CLASSES];
    }

    /// Bytes handed out so far (the high-water mark).
    pub fn used(&self) -> usize {
        self.state.lock().next
    }
}

impl<const ARENA: usize> core::fmt::Debug for Heap<ARENA> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Heap").field("arena", &ARENA).finish()
    }
}

fn class(layout: Layout) -> Option<(usize, usize)> {
    if layout.align() > MAX_ALIGN {
        return None;
    }
    let size = layout
        .size()
        .max(layout.align())
        .max(1 << MIN_CLASS)
        .checked_next_power_of_two()?;
    let k = size.trailing_zeros() as usize - MIN_CLASS;
    (k < CLASSES).then_some((k, size))
}

/// Allocate a block for `layout` from the arena `[base, base + len)` (`base` 4 KiB-aligned).
///
/// # Safety
///
/// `[base, base + len)` is memory this allocator alone hands out, and `state` belongs to it.
unsafe fn alloc_in(
    state: &spin::Mutex<State>,
    base: *mut u8,
    len: usize,
    layout: Layout,
) -> *mut u8 {
    let Some((k, size)) = class(layout) else {
        return core::ptr::null_mut();
    };
    let mut s = state.lock();
    if s.free[k] != 0 {
        let block = s.free[k] as *mut usize;
        // SAFETY: a free block of class k holds the address of the next one.
        s.free[k] = unsafe { block.read() };
        return block.cast();
    }
    let start = s.next.next_multiple_of(size.min(MAX_ALIGN));
    match start.checked_add(size) {
        Some(end) if end <= len => {
            s.next = end;
            base.wrapping_add(start)
        }
        _ => core::ptr::null_mut(),
    }
}

/// Give back a block [`alloc_in`] handed out for `layout`.
///
/// # Safety
///
/// `ptr` came from [`alloc_in`] with the same `state` and `layout`.
unsafe fn dealloc_in(state: &spin::Mutex<State>, ptr: *mut u8, layout: Layout) {
    let Some((k, _)) = class(layout) else { return };
    let mut s = state.lock();
    // SAFETY: `ptr` is a block of class k (same layout as at allocation), at least 16
    // bytes and 16-aligned: room for the free-list link.
    unsafe { ptr.cast::<usize>().write(s.free[k]) };
    s.free[k] = ptr as usize;
}

// SAFETY: blocks are disjoint ranges of the arena, aligned to min(size, 4096) >= align,
// at least `layout.size()` long; a freed block goes back to the list of its own class.
unsafe impl<const ARENA: usize> GlobalAlloc for Heap<ARENA> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.arena.0.get().cast::<u8>();
        // SAFETY: the arena is this heap's own static memory, 4 KiB-aligned.
        unsafe { alloc_in(&self.state, base, ARENA, layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with this layout.
        unsafe { dealloc_in(&self.state, ptr, layout) }
    }
}

/// A heap over a memory region given at run time ([`RegionHeap::init`]): the switch PD's,
/// whose size the plan decides. Every allocation fails before `init`.
pub struct RegionHeap {
    /// The region's base (valid once `len` is non-zero).
    base: AtomicUsize,
    /// The region's length (0 until initialised).
    len: AtomicUsize,
    state: spin::Mutex<State>,
}

impl RegionHeap {
    /// A heap with no memory yet.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> RegionHeap {
        RegionHeap {
            base: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            state: spin::Mutex::new(State {
                next: 0,
                free: [0; CLASSES],
            }),
        }
    }

    /// Hand out `[base, base + len)` from now on (the first call wins; later calls are
    /// ignored). `base` is rounded up to 4 KiB.
    ///
    /// # Safety
    ///
    /// `[base, base + len)` is mapped readable and writable for the rest of the program,
    /// and nothing else uses it.
    pub unsafe fn init(&self, base: u64, len: u64) {
        let start = base.next_multiple_of(MAX_ALIGN as u64);
        let len = len.saturating_sub(start - base);
        let (Ok(start), Ok(len)) = (usize::try_from(start), usize::try_from(len)) else {
            return;
        };
        // Under the state lock, so that two calls cannot interleave.
        let _s = self.state.lock();
        if self.len.load(Ordering::Acquire) == 0 {
            self.base.store(start, Ordering::Relaxed);
            self.len.store(len, Ordering::Release);
        }
    }

    /// Bytes handed out so far (the high-water mark; freed blocks are reused, not counted
    /// back).
    pub fn used(&self) -> usize {
        self.state.lock().next
    }
}

impl core::fmt::Debug for RegionHeap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RegionHeap")
            .field("base", &self.base.load(Ordering::Relaxed))
            .field("len", &self.len.load(Ordering::Relaxed))
            .finish()
    }
}

// SAFETY: as for `Heap`, over the region given to `init` (none before: every allocation
// fails).
unsafe impl GlobalAlloc for RegionHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let len = self.len.load(Ordering::Acquire);
        if len == 0 {
            return core::ptr::null_mut();
        }
        let base = self.base.load(Ordering::Relaxed);
        // SAFETY: `init`'s contract: the region is ours alone, and `base` is 4 KiB-aligned.
        unsafe { alloc_in(&self.state, base as *mut u8, len, layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with this layout.
        unsafe { dealloc_in(&self.state, ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_frees_the_whole_arena_even_with_the_lock_held() {
        let heap: alloc::boxed::Box<Heap<16384>> = alloc::boxed::Box::new(Heap::new());
        let layout = Layout::from_size_align(4096, 16).unwrap();
        // SAFETY: a valid non-zero layout; the block is never used.
        let first = unsafe { heap.alloc(layout) };
        // SAFETY: as above.
        let _second = unsafe { heap.alloc(layout) };
        // A run that stopped inside the allocator: the lock stays held.
        core::mem::forget(heap.state.lock());

        // SAFETY: neither block is used again.
        unsafe { heap.reset() };

        assert_eq!(heap.used(), 0);
        // SAFETY: as above.
        assert_eq!(unsafe { heap.alloc(layout) }, first);
    }
}
