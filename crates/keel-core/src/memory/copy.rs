//! Copies to and from memory that another party writes concurrently: guest RAM (a running
//! guest, other vCPU threads) and shared-memory rings (a peer VMM, a switch, a console
//! protection domain).
//!
//! # Why atomics, and not `copy_nonoverlapping` or volatile accesses
//!
//! In Rust's memory model (C++'s, plus Rust's aliasing rules) a non-atomic access that
//! races with a write by another thread is a data race, and a data race is undefined
//! behaviour, whatever the hardware would do. `core::ptr::copy_nonoverlapping` and
//! `read_volatile`/`write_volatile` are non-atomic accesses: volatile only stops the
//! compiler from removing or merging them, it does not make a racing access defined (Miri
//! reports a volatile read racing with another thread's write as a data race). Guest
//! memory is written by the guest at any time, and a hostile ring peer may rewrite any byte
//! of the ring while this side copies it, so copies of that memory must be atomic.
//!
//! The functions here copy with **relaxed atomic** loads and stores: `AtomicU8` for the
//! bytes before and after the word-aligned middle, `AtomicUsize` for the aligned words of the
//! middle (aligned on the shared side; the private buffer is accessed unaligned). A relaxed
//! atomic load or store of a naturally aligned word compiles to a plain load or store on
//! every target Keel supports (x86-64, aarch64): no fence, no lock prefix. The cost against
//! `memcpy` is that the compiler may not widen or vectorise the accesses (one word per
//! instruction instead of 16 or 32 bytes); see `examples/copy_bench.rs` and
//! docs/security.md for the figures. This is what the `vm-memory` crate does for the same
//! reason.
//!
//! Relaxed means no ordering: a copy may see a mix of old and new bytes of a buffer the
//! other side is writing (each aligned word is seen whole). The protocols that need order
//! (virtqueue indices, ring `head`/`tail`) use acquire/release accesses on their index words;
//! those order the relaxed copies around them.
//!
//! Miri checks this: the tests of `memory.rs` and `ring/slot.rs` run a writer thread that
//! stores into the memory while the other side copies (see scripts/miri.sh).
//!
//! Miri also reports *mixed-size* atomic accesses that race (a byte load racing with a word
//! store of the same bytes); a real guest is no Rust code and the hardware makes each
//! aligned access single-copy atomic, so this only constrains the tests: their concurrent
//! writers use the same granularity as the copy they race with. (The nightly Miri used by
//! scripts/miri.sh also panics in its weak-memory emulation on mixed-size atomic stores to
//! the same bytes, even without a race; the script turns that emulation off.)

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

const WORD: usize = core::mem::size_of::<usize>();

/// Copy `dst.len()` bytes from the shared memory at `src` into `dst`.
///
/// # Safety
///
/// `src..src + dst.len()` must be valid for reads (mapped, and allocated for the whole
/// call) and must not be reachable through any Rust reference (`&`/`&mut`) while this
/// runs; other parties may write it concurrently, but in Rust only through atomic
/// accesses (this module, `Atomic*` types).
pub unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let head = src.align_offset(WORD).min(len);
    let words = (len - head) / WORD;
    let d = dst.as_mut_ptr();
    for i in 0..head {
        // SAFETY: `i < len`: inside the source range (caller's contract); `AtomicU8` has no
        // alignment requirement; `dst` has `len` bytes.
        unsafe { *d.add(i) = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Ordering::Relaxed) };
    }
    for w in 0..words {
        let off = head + w * WORD;
        // SAFETY: `off + WORD <= len`, and `src + head` is word-aligned, so `src + off` is
        // an aligned word inside the source range; `dst` is a distinct buffer of `len`
        // bytes, written unaligned.
        unsafe {
            let v = AtomicUsize::from_ptr(src.add(off).cast::<usize>().cast_mut())
                .load(Ordering::Relaxed);
            d.add(off).cast::<usize>().write_unaligned(v);
        }
    }
    for i in head + words * WORD..len {
        // SAFETY: as for the head bytes.
        unsafe { *d.add(i) = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Ordering::Relaxed) };
    }
}

/// Copy `src` into the shared memory at `dst`.
///
/// # Safety
///
/// `dst..dst + src.len()` must be valid for writes (mapped, and allocated for the whole
/// call) and must not be reachable through any Rust reference while this runs; other
/// parties may read or write it concurrently, but in Rust only through atomic accesses.
pub unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
    let len = src.len();
    let head = dst.align_offset(WORD).min(len);
    let words = (len - head) / WORD;
    let s = src.as_ptr();
    for i in 0..head {
        // SAFETY: `i < len`: inside the destination range (caller's contract) and `src`.
        unsafe { AtomicU8::from_ptr(dst.add(i)).store(*s.add(i), Ordering::Relaxed) };
    }
    for w in 0..words {
        let off = head + w * WORD;
        // SAFETY: `off + WORD <= len`; `dst + off` is an aligned word inside the
        // destination range (`dst + head` is aligned); `src` is read unaligned.
        unsafe {
            let v = s.add(off).cast::<usize>().read_unaligned();
            AtomicUsize::from_ptr(dst.add(off).cast::<usize>()).store(v, Ordering::Relaxed);
        }
    }
    for i in head + words * WORD..len {
        // SAFETY: as for the head bytes.
        unsafe { AtomicU8::from_ptr(dst.add(i)).store(*s.add(i), Ordering::Relaxed) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Every (offset, length) of a small shared buffer, copied in and out, lands exactly.
    #[test]
    fn copies_round_trip_at_every_alignment_and_length() {
        let mut shared: Vec<u64> = vec![0; 8];
        let base = shared.as_mut_ptr().cast::<u8>();
        for off in 0..WORD + 1 {
            for len in 0..3 * WORD + 2 {
                let src: Vec<u8> = (0..len).map(|i| (i * 7 + off + 1) as u8).collect();
                let mut back = vec![0u8; len];
                // SAFETY: `off + len <= 9 + 3 * 8 + 1 < 64` bytes of `shared`, reached only
                // through raw pointers here.
                unsafe {
                    copy_to_shared(&src, base.add(off));
                    copy_from_shared(base.add(off), &mut back);
                }
                assert_eq!(back, src, "offset {off}, length {len}");
            }
        }
    }

    /// A copy writes only its own bytes: the neighbours on both sides stay as they were.
    #[test]
    fn copy_to_shared_leaves_neighbouring_bytes_alone() {
        let mut shared: Vec<u64> = vec![u64::MAX; 4];
        let base = shared.as_mut_ptr().cast::<u8>();

        // SAFETY: bytes 3..22 of the 32-byte buffer, reached only through raw pointers.
        unsafe { copy_to_shared(&[0u8; 19], base.add(3)) };

        let mut all = [0u8; 32];
        // SAFETY: the whole buffer, as above.
        unsafe { copy_from_shared(base, &mut all) };
        assert!(all[..3].iter().all(|&b| b == 0xff));
        assert!(all[3..22].iter().all(|&b| b == 0));
        assert!(all[22..].iter().all(|&b| b == 0xff));
    }
}
