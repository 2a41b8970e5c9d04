//! A protection domain's heap (the VMM's, the console's): power-of-two size classes with
//! per-class free lists over a static arena of `ARENA` bytes. Simple and fragmentation-bounded (at most 2x), which suits a VMM whose
//! allocations are a few long-lived device models plus short request buffers.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

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

// SAFETY: blocks are disjoint ranges of the arena, aligned to min(size, 4096) >= align,
// at least `layout.size()` long; a freed block goes back to the list of its own class.
unsafe impl<const ARENA: usize> GlobalAlloc for Heap<ARENA> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((k, size)) = class(layout) else {
            return core::ptr::null_mut();
        };
        let base = self.arena.0.get().cast::<u8>();
        let mut s = self.state.lock();
        if s.free[k] != 0 {
            let block = s.free[k] as *mut usize;
            // SAFETY: a free block of class k holds the address of the next one.
            s.free[k] = unsafe { block.read() };
            return block.cast();
        }
        let start = s.next.next_multiple_of(size.min(MAX_ALIGN));
        match start.checked_add(size) {
            Some(end) if end <= ARENA => {
                s.next = end;
                base.wrapping_add(start)
            }
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((k, _)) = class(layout) else { return };
        let mut s = self.state.lock();
        // SAFETY: `ptr` is a block of class k (same layout as at allocation), at least 16
        // bytes and 16-aligned: room for the free-list link.
        unsafe { ptr.cast::<usize>().write(s.free[k]) };
        s.free[k] = ptr as usize;
    }
}
