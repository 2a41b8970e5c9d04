//! A single-producer / single-consumer byte ring over a shared memory window.
//!
//! Two parties that do not trust each other (on seL4: a VMM and the console protection
//! domain) share one window of memory; one of them only writes bytes into it, the other
//! only reads them. Neither side trusts what the other wrote: every index read from the
//! window is checked before use, every access stays inside the window, and every call does
//! a bounded amount of work.
//!
//! Layout of the window (offsets in bytes, integers little endian, native atomics):
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | `head`: bytes ever written (free-running `u64`) | producer |
//! | 8 | `flush`: the `head` at the producer's last [`Producer::flush`] | producer |
//! | 16 | `dropped`: bytes the producer dropped because the ring was full | producer |
//! | 128 | `tail`: bytes ever consumed (free-running `u64`) | consumer |
//! | 256 .. len | data: byte `i` of the stream is at `256 + i % capacity` | producer |
//!
//! The producer's and the consumer's fields are on separate cache lines (128 bytes apart,
//! enough for 64- and 128-byte lines), so neither side's writes bounce the other's line.
//! The window is only ever accessed through atomic operations on the header words and
//! relaxed atomic copies of the data area ([`crate::memory::copy`]: a hostile peer writing
//! the bytes being copied is no data race); no Rust reference to the shared memory exists
//! except the transient `&AtomicU64` of [`AtomicU64::from_ptr`], which permits concurrent
//! modification by the other side.
//!
//! Ordering: the producer writes data bytes, then publishes `head` with release ordering;
//! the consumer loads `head` with acquire ordering, copies the bytes out, then publishes
//! `tail` with release ordering, which the producer loads with acquire ordering before it
//! reuses that space.
//!
//! A full ring never blocks the producer: a write that does not fit whole is dropped whole
//! (so lines stay whole) and counted in `dropped`.
//!
//! The header layout and its index checks are shared with the ring of fixed-size slots in
//! [`slot`] (used for Ethernet frames by `keel-net`), which also uses the word at offset 136
//! (the consumer's "needs wakeup" flag) for notification suppression.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::memory::copy::{copy_from_shared, copy_to_shared};

pub mod forward;
pub mod slot;

/// Offset of the producer's index (`head`).
const HEAD: usize = 0;
/// Offset of the producer's flush mark.
const FLUSH: usize = 8;
/// Offset of the producer's count of dropped bytes.
const DROPPED: usize = 16;
/// Offset of the consumer's index (`tail`), on its own cache line.
const TAIL: usize = 128;
/// Offset of the consumer's "needs wakeup" flag (slot ring only; 0 in a byte ring).
const WAKEUP: usize = 136;
/// Bytes of header before the data area.
pub const HEADER_LEN: usize = 256;

/// What is wrong with a window or with an index the other side wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The window's base is not 8-byte aligned (the header holds `u64` atomics).
    #[error("ring window at {base:#x} is not 8-byte aligned")]
    Misaligned {
        /// The window's base address.
        base: usize,
    },
    /// The window has no room for data after the header.
    #[error("ring window of {len} bytes is too small (the header alone takes {HEADER_LEN})")]
    TooSmall {
        /// The window's length.
        len: usize,
    },
    /// The producer's index is more than the capacity ahead of the consumer's, or behind
    /// it: the producer is broken or hostile. The consumer stops reading this ring.
    #[error("producer index {head} is not within {capacity} bytes ahead of consumer index {tail}")]
    WildProducer {
        /// The producer index found.
        head: u64,
        /// The consumer's own index.
        tail: u64,
        /// The ring's capacity.
        capacity: u64,
    },
    /// The consumer's index is ahead of the producer's or more than the capacity behind:
    /// the consumer is broken or hostile. The producer treats the ring as full.
    #[error("consumer index {tail} is not within {capacity} bytes behind producer index {head}")]
    WildConsumer {
        /// The producer's own index.
        head: u64,
        /// The consumer index found.
        tail: u64,
        /// The ring's capacity.
        capacity: u64,
    },
    /// The consumer stopped reading this ring after an earlier [`RingError::WildProducer`].
    #[error("ring disabled after a wild producer index")]
    Disabled,
    /// A slot ring's geometry is unusable: slots must be a multiple of 8 bytes and at least
    /// 16, the slot count a power of two, and the window no larger than the address space.
    #[error("slot ring geometry of {slots} slots of {slot_size} bytes is unusable")]
    BadGeometry {
        /// The slot size asked for.
        slot_size: usize,
        /// The slot count asked for.
        slots: u64,
    },
    /// The window is shorter than the header plus the slots of a slot ring.
    #[error("ring window of {len} bytes is shorter than the {need} bytes its slots need")]
    WindowTooShort {
        /// The window's length.
        len: usize,
        /// The length the geometry needs.
        need: usize,
    },
    /// A record to write is empty or longer than a slot's payload (the caller's mistake;
    /// nothing was written or counted).
    #[error("record of {len} bytes does not fit a slot (1..={max} bytes)")]
    BadRecordLen {
        /// The record's length.
        len: usize,
        /// The largest record a slot holds.
        max: usize,
    },
}

/// The header words and the index checks shared by the byte ring and the slot ring
/// ([`slot`]): a raw base address and a length, checked once.
#[derive(Debug)]
struct Shared {
    base: *mut u8,
    len: usize,
}

impl Shared {
    /// Check `base` and `len` (see [`RingWindow::new`] for the contract).
    fn new(base: *mut u8, len: usize) -> Result<Shared, RingError> {
        if base as usize % 8 != 0 {
            return Err(RingError::Misaligned {
                base: base as usize,
            });
        }
        if len <= HEADER_LEN {
            return Err(RingError::TooSmall { len });
        }
        Ok(Shared { base, len })
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset < HEADER_LEN);
        // SAFETY: `offset` is one of the header offsets of this module (< HEADER_LEN < len),
        // a multiple of 8 from an 8-aligned base, so the word lies inside the window and is
        // aligned. The window is valid for the window's life (contract of the windows'
        // `new`) and is only accessed atomically at these offsets; `AtomicU64` allows the
        // other side to modify it concurrently.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast::<u64>()) }
    }

    /// The producer's view: how many units (bytes or slots) between its own `head` and the
    /// consumer's published `tail` are in use, or [`RingError::WildConsumer`] when `tail`
    /// is ahead of `head` or more than `capacity` behind it.
    fn producer_used(&self, head: u64, capacity: u64) -> Result<u64, RingError> {
        let tail = self.word(TAIL).load(Ordering::Acquire);
        let used = head.wrapping_sub(tail);
        if used > capacity {
            return Err(RingError::WildConsumer {
                head,
                tail,
                capacity,
            });
        }
        Ok(used)
    }

    /// The consumer's view: how many units the producer published past the consumer's own
    /// `tail`, or [`RingError::WildProducer`] when the published `head` is behind `tail` or
    /// more than `capacity` ahead of it.
    fn consumer_avail(&self, tail: u64, capacity: u64) -> Result<u64, RingError> {
        let head = self.word(HEAD).load(Ordering::Acquire);
        let avail = head.wrapping_sub(tail);
        if avail > capacity {
            return Err(RingError::WildProducer {
                head,
                tail,
                capacity,
            });
        }
        Ok(avail)
    }

    /// The `head` a (re)attaching producer continues from: the one in the window when it is
    /// consistent with the consumer's `tail`, else `tail` (start over). Publishes it.
    fn attach_head(&self, capacity: u64) -> u64 {
        let head = self.word(HEAD).load(Ordering::Relaxed);
        let tail = self.word(TAIL).load(Ordering::Acquire);
        let head = if head.wrapping_sub(tail) <= capacity {
            head
        } else {
            tail
        };
        self.word(HEAD).store(head, Ordering::Release);
        head
    }
}

/// A window of shared memory holding one ring: a raw base address and a length.
#[derive(Debug)]
pub struct RingWindow {
    sh: Shared,
}

impl RingWindow {
    /// The window `[base, base + len)`.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be memory that stays mapped readable and writable for as
    /// long as the window and every [`Producer`] or [`Consumer`] made from it live, that
    /// no Rust reference points into, and that other parties access only as the ring
    /// protocol of this module does (or, if hostile, only by writing arbitrary bytes).
    pub unsafe fn new(base: *mut u8, len: usize) -> Result<RingWindow, RingError> {
        Ok(RingWindow {
            sh: Shared::new(base, len)?,
        })
    }

    /// Bytes of data the ring holds at most.
    pub fn capacity(&self) -> u64 {
        (self.sh.len - HEADER_LEN) as u64
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        self.sh.word(offset)
    }

    /// Address of stream position `pos` in the data area.
    fn data(&self, pos: u64) -> *mut u8 {
        let off = (pos % self.capacity()) as usize;
        // `off < capacity = len - HEADER_LEN`: the byte lies inside the window.
        self.sh.base.wrapping_add(HEADER_LEN + off)
    }

    /// Stream positions `pos..pos + n` (`n <= capacity`) as at most two runs of the data
    /// area, `(address, length)`: up to the end of the area, then the rest from its start
    /// (empty unless the positions wrap).
    fn runs(&self, pos: u64, n: usize) -> [(*mut u8, usize); 2] {
        let off = (pos % self.capacity()) as usize;
        let first = n.min(self.capacity() as usize - off);
        [
            (self.data(pos), first),
            (self.data(pos.wrapping_add(first as u64)), n - first),
        ]
    }
}

/// The writing side of a ring. It owns `head`, `flush` and `dropped`.
#[derive(Debug)]
pub struct Producer {
    w: RingWindow,
    head: u64,
    dropped: u64,
}

// SAFETY: the producer only holds the window's address; the memory behind it is shared by
// protocol (atomics for the header, atomic copies for the data), so moving the producer
// to another thread is sound.
unsafe impl Send for Producer {}

impl Producer {
    /// Take the producer side of `w`, continuing from the `head` already there (0 in a
    /// fresh, zeroed window; a restarted producer goes on where it stopped) unless it is
    /// not consistent with the consumer's `tail`, in which case it starts over at `tail`.
    pub fn attach(w: RingWindow) -> Producer {
        let head = w.sh.attach_head(w.capacity());
        let dropped = w.word(DROPPED).load(Ordering::Relaxed);
        Producer { w, head, dropped }
    }

    /// Bytes of data the ring holds at most.
    pub fn capacity(&self) -> u64 {
        self.w.capacity()
    }

    /// Bytes dropped so far because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes written and not yet consumed, as far as the (untrusted) consumer index says.
    pub fn pending(&self) -> Result<u64, RingError> {
        self.w.sh.producer_used(self.head, self.capacity())
    }

    /// Append `bytes` whole, or drop them whole and count them when they do not fit
    /// (never blocks). Returns whether they were written; `Err` when the consumer's index
    /// is wild (the bytes are dropped and counted then too).
    pub fn write(&mut self, bytes: &[u8]) -> Result<bool, RingError> {
        let free = match self.pending() {
            Ok(used) => self.capacity() - used,
            Err(e) => {
                self.drop_bytes(bytes.len());
                return Err(e);
            }
        };
        if bytes.len() as u64 > free {
            self.drop_bytes(bytes.len());
            return Ok(false);
        }
        let [(a, first), (b, _)] = self.w.runs(self.head, bytes.len());
        let (x, y) = bytes.split_at(first);
        // SAFETY: `runs` keeps both pieces inside the window's data area (`bytes.len() <=
        // free <= capacity`); the consumer does not read them until `head` is published
        // below (free space), and a hostile one touching them races only with these atomic
        // copies; the window is valid and reached through no Rust reference (contract of
        // `RingWindow::new`).
        unsafe {
            copy_to_shared(x, a);
            copy_to_shared(y, b);
        }
        self.head = self.head.wrapping_add(bytes.len() as u64);
        self.w.word(HEAD).store(self.head, Ordering::Release);
        Ok(true)
    }

    /// Ask the consumer to pass on everything written so far even if it does not end a
    /// line.
    pub fn flush(&mut self) {
        self.w.word(FLUSH).store(self.head, Ordering::Release);
    }

    fn drop_bytes(&mut self, n: usize) {
        self.dropped = self.dropped.wrapping_add(n as u64);
        self.w.word(DROPPED).store(self.dropped, Ordering::Relaxed);
    }
}

/// What one [`Consumer::read`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// The producer's flush mark fell inside these bytes: everything before this index of
    /// the buffer should be passed on even if it does not end a line.
    pub flush_at: Option<usize>,
}

/// The reading side of a ring. It owns `tail`.
#[derive(Debug)]
pub struct Consumer {
    w: RingWindow,
    tail: u64,
    broken: bool,
}

// SAFETY: as for `Producer`.
unsafe impl Send for Consumer {}

impl Consumer {
    /// Take the consumer side of `w`, continuing from the `tail` already there.
    pub fn attach(w: RingWindow) -> Consumer {
        let tail = w.word(TAIL).load(Ordering::Relaxed);
        Consumer {
            w,
            tail,
            broken: false,
        }
    }

    /// Bytes of data the ring holds at most.
    pub fn capacity(&self) -> u64 {
        self.w.capacity()
    }

    /// Whether the consumer stopped reading after a wild producer index.
    pub fn is_disabled(&self) -> bool {
        self.broken
    }

    /// The producer's count of dropped bytes (an untrusted number, for reports only).
    pub fn producer_dropped(&self) -> u64 {
        self.w.word(DROPPED).load(Ordering::Relaxed)
    }

    /// Copy up to `buf.len()` of the bytes written so far into `buf` and release their
    /// space to the producer. A wild producer index disables the ring: this call and every
    /// later one return an error and read nothing.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Read, RingError> {
        if self.broken {
            return Err(RingError::Disabled);
        }
        let avail = match self.w.sh.consumer_avail(self.tail, self.capacity()) {
            Ok(avail) => avail,
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        };
        let n = (avail as usize).min(buf.len());
        let [(a, first), (b, _)] = self.w.runs(self.tail, n);
        let (x, y) = buf[..n].split_at_mut(first);
        // SAFETY: `runs` keeps both pieces inside the window's data area (`n <= avail <=
        // capacity`); the producer published these positions (acquire load of `head` above)
        // and does not reuse them before `tail` passes them (release store below); a hostile
        // one writing them anyway races only with these atomic copies.
        unsafe {
            copy_from_shared(a, x);
            copy_from_shared(b, y);
        }
        let flush = self.w.word(FLUSH).load(Ordering::Acquire);
        let to_flush = flush.wrapping_sub(self.tail);
        let flush_at = (to_flush >= 1 && to_flush <= n as u64).then_some(to_flush as usize);
        self.tail = self.tail.wrapping_add(n as u64);
        self.w.word(TAIL).store(self.tail, Ordering::Release);
        Ok(Read { len: n, flush_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// A zeroed, 8-aligned heap window of `len` bytes (rounded up to 8).
    struct Mem(Vec<u64>);

    impl Mem {
        fn new(len: usize) -> Mem {
            Mem(vec![0; len.div_ceil(8)])
        }
        fn window(&mut self) -> RingWindow {
            let len = self.0.len() * 8;
            // SAFETY: the vector outlives every window of a test (dropped last), is only
            // accessed through windows (and `poke` between calls), and is 8-aligned.
            unsafe { RingWindow::new(self.0.as_mut_ptr().cast(), len) }.unwrap()
        }
        /// Write header word `offset` as a hostile party would.
        fn poke(&mut self, offset: usize, v: u64) {
            self.0[offset / 8] = v;
        }
    }

    fn pair(len: usize) -> (Mem, Producer, Consumer) {
        let mut m = Mem::new(len);
        let p = Producer::attach(m.window());
        let c = Consumer::attach(m.window());
        (m, p, c)
    }

    fn read_all(c: &mut Consumer) -> Vec<u8> {
        let mut buf = [0u8; 4096];
        let r = c.read(&mut buf).unwrap();
        buf[..r.len].to_vec()
    }

    #[test]
    fn bytes_written_are_read_in_order() {
        let (_m, mut p, mut c) = pair(HEADER_LEN + 64);

        assert_eq!(p.write(b"hello\n"), Ok(true));

        assert_eq!(read_all(&mut c), b"hello\n");
    }

    #[test]
    fn stream_wraps_around_the_end_of_the_data_area() {
        let (_m, mut p, mut c) = pair(HEADER_LEN + 16);
        p.write(b"0123456789").unwrap();
        read_all(&mut c);

        p.write(b"abcdefghijkl").unwrap();

        assert_eq!(read_all(&mut c), b"abcdefghijkl");
    }

    #[test]
    fn full_ring_drops_whole_writes_and_counts_them() {
        let (_m, mut p, mut c) = pair(HEADER_LEN + 16);
        p.write(b"0123456789").unwrap();

        let fitted = p.write(b"abcdefg");

        assert_eq!(fitted, Ok(false));
        assert_eq!(p.dropped(), 7);
        assert_eq!(c.producer_dropped(), 7);
        assert_eq!(read_all(&mut c), b"0123456789");
    }

    #[test]
    fn ring_can_be_filled_exactly() {
        let (_m, mut p, mut c) = pair(HEADER_LEN + 8);

        assert_eq!(p.write(b"12345678"), Ok(true));

        assert_eq!(read_all(&mut c), b"12345678");
    }

    #[test]
    fn small_buffer_reads_in_pieces() {
        let (_m, mut p, mut c) = pair(HEADER_LEN + 64);
        p.write(b"abcdef").unwrap();
        let mut buf = [0u8; 4];

        let first = c.read(&mut buf).unwrap().len;
        let second = c.read(&mut buf).unwrap().len;

        assert_eq!((first, second), (4, 2));
        assert_eq!(&buf[..2], b"ef");
    }

    #[test]
    fn flush_mark_is_reported_where_it_falls() {
        let (_m, mut p, mut c) = pair(HEADER_LEN + 64);
        p.write(b"prompt> ").unwrap();
        p.flush();
        p.write(b"more").unwrap();
        let mut buf = [0u8; 64];

        let r = c.read(&mut buf).unwrap();

        assert_eq!(
            r,
            Read {
                len: 12,
                flush_at: Some(8)
            }
        );
    }

    #[test]
    fn flush_mark_already_passed_is_not_reported_again() {
        let (_m, mut p, mut c) = pair(HEADER_LEN + 64);
        p.write(b"x").unwrap();
        p.flush();
        read_all(&mut c);
        p.write(b"y").unwrap();
        let mut buf = [0u8; 64];

        let r = c.read(&mut buf).unwrap();

        assert_eq!(r.flush_at, None);
    }

    #[test]
    fn producer_index_more_than_capacity_ahead_disables_only_that_ring() {
        let (mut m, mut p, mut c) = pair(HEADER_LEN + 16);
        let (_m2, mut p2, mut c2) = pair(HEADER_LEN + 16);
        p.write(b"ok").unwrap();
        m.poke(HEAD, 1000);
        p2.write(b"fine").unwrap();
        let mut buf = [0u8; 64];

        let e = c.read(&mut buf);

        assert_eq!(
            e,
            Err(RingError::WildProducer {
                head: 1000,
                tail: 0,
                capacity: 16
            })
        );
        assert!(c.is_disabled());
        assert_eq!(c.read(&mut buf), Err(RingError::Disabled));
        assert_eq!(read_all(&mut c2), b"fine");
    }

    #[test]
    fn producer_index_behind_the_consumer_is_wild() {
        let (mut m, mut p, mut c) = pair(HEADER_LEN + 16);
        p.write(b"abcd").unwrap();
        read_all(&mut c);
        m.poke(HEAD, 2);
        let mut buf = [0u8; 64];

        let e = c.read(&mut buf);

        assert!(matches!(
            e,
            Err(RingError::WildProducer {
                head: 2,
                tail: 4,
                ..
            })
        ));
    }

    #[test]
    fn wild_flush_mark_is_ignored() {
        let (mut m, mut p, mut c) = pair(HEADER_LEN + 16);
        p.write(b"abc").unwrap();
        m.poke(FLUSH, u64::MAX);
        let mut buf = [0u8; 64];

        let r = c.read(&mut buf).unwrap();

        assert_eq!(
            r,
            Read {
                len: 3,
                flush_at: None
            }
        );
    }

    #[test]
    fn consumer_index_ahead_of_the_producer_makes_writes_drop() {
        let (mut m, mut p, _c) = pair(HEADER_LEN + 16);
        p.write(b"ab").unwrap();
        m.poke(TAIL, 50);

        let e = p.write(b"cd");

        assert!(matches!(
            e,
            Err(RingError::WildConsumer {
                head: 2,
                tail: 50,
                ..
            })
        ));
        assert_eq!(p.dropped(), 2);
    }

    #[test]
    fn consumer_index_far_behind_makes_writes_drop() {
        let (mut m, mut p, _c) = pair(HEADER_LEN + 16);
        p.write(b"ab").unwrap();
        m.poke(TAIL, u64::MAX - 100);

        let e = p.write(b"cd");

        assert!(matches!(e, Err(RingError::WildConsumer { .. })));
        assert_eq!(p.dropped(), 2);
    }

    #[test]
    fn restarted_producer_continues_after_what_it_wrote() {
        let mut m = Mem::new(HEADER_LEN + 64);
        let mut c = Consumer::attach(m.window());
        Producer::attach(m.window()).write(b"first ").unwrap();

        Producer::attach(m.window()).write(b"second").unwrap();

        assert_eq!(read_all(&mut c), b"first second");
    }

    #[test]
    fn producer_attaching_to_an_inconsistent_ring_starts_at_the_consumer() {
        let mut m = Mem::new(HEADER_LEN + 16);
        m.poke(HEAD, 999);
        m.poke(TAIL, 5);
        let mut c = Consumer::attach(m.window());

        let mut p = Producer::attach(m.window());
        p.write(b"new").unwrap();

        assert_eq!(read_all(&mut c), b"new");
    }

    #[test]
    fn misaligned_or_tiny_windows_are_refused() {
        let mut m = Mem::new(1024);
        let base = m.0.as_mut_ptr().cast::<u8>();

        // SAFETY: inside `m`, which outlives the (never used) windows.
        let odd = unsafe { RingWindow::new(base.wrapping_add(1), 512) };
        // SAFETY: as above.
        let tiny = unsafe { RingWindow::new(base, HEADER_LEN) };

        assert_eq!(
            odd.unwrap_err(),
            RingError::Misaligned {
                base: base as usize + 1
            }
        );
        assert_eq!(tiny.unwrap_err(), RingError::TooSmall { len: HEADER_LEN });
    }

    #[test]
    fn concurrent_producer_and_consumer_lose_and_duplicate_nothing() {
        extern crate std;
        // Miri interprets every byte access: a shorter stream still wraps many times.
        const TOTAL: usize = if cfg!(miri) { 2_000 } else { 200_000 };
        let mut m = Mem::new(HEADER_LEN + 61); // an odd capacity: wraps at varying points
        let mut p = Producer::attach(m.window());
        let mut c = Consumer::attach(m.window());
        let byte = |i: usize| (i % 251) as u8;

        let got = std::thread::scope(|s| {
            s.spawn(move || {
                let mut i = 0;
                while i < TOTAL {
                    let n = (i % 13 + 1).min(TOTAL - i);
                    let chunk: Vec<u8> = (i..i + n).map(byte).collect();
                    if p.write(&chunk).unwrap() {
                        i += n;
                    } else {
                        std::thread::yield_now();
                    }
                }
            });
            let reader = s.spawn(move || {
                let mut got = Vec::with_capacity(TOTAL);
                let mut buf = [0u8; 17];
                while got.len() < TOTAL {
                    let r = c.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..r.len]);
                    if r.len == 0 {
                        std::thread::yield_now();
                    }
                }
                got
            });
            reader.join().unwrap()
        });

        assert_eq!(got.len(), TOTAL);
        assert!(got.iter().enumerate().all(|(i, &b)| b == byte(i)));
        drop(m);
    }
}
