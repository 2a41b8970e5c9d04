//! A single-producer / single-consumer ring of fixed-size slots over a shared memory window,
//! each slot holding one length-prefixed record, with notification suppression.
//!
//! It shares the byte ring's header, index checks and trust rules (see [`super`]): the two
//! parties do not trust each other, every index and length read from the window is checked
//! before use, every access stays inside the window, every call does a bounded amount of
//! work, and the window is accessed only through atomics through raw pointers: single
//! words (header) and relaxed atomic copies of whole words ([`crate::memory::copy`], slots). `head` and `tail` count slots instead of bytes.
//!
//! Layout of the window (offsets in bytes, integers little endian, native atomics):
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | `head`: records ever published (free-running `u64`) | producer |
//! | 16 | `dropped`: records the producer dropped (ring full or wild `tail`) | producer |
//! | 128 | `tail`: records ever consumed (free-running `u64`) | consumer |
//! | 136 | `wakeup`: non-zero when the consumer sleeps and wants a notification | consumer |
//! | 256 + i × `slot_size` | slot `i` (record number `n` is in slot `n % slots`) | producer |
//!
//! A slot starts with the record's length (`u32`) and 4 reserved bytes (written as 0,
//! ignored), followed by the record (`slot_size - 8` bytes at most). Because slots have a
//! fixed size, a bad length costs only its own slot: the consumer skips it, counts it and
//! goes on with the next one, which starts where it always does.
//!
//! # What a hostile peer can do, and what it costs
//!
//! - Producer `head` behind `tail` or more than `slots` ahead: the consumer declares the
//!   ring broken ([`RingError::WildProducer`], then [`RingError::Disabled`] forever); only
//!   re-attaching a new [`SlotConsumer`] (a reset by whoever owns the window) revives it.
//! - A record length of 0 or more than [`SlotWindow::max_record`]: the slot is consumed,
//!   counted ([`SlotConsumer::bad_records`]) and reported as [`Pop::BadLength`].
//! - Record bytes changed while being copied: the consumer gets garbage of the announced
//!   length, still from inside the slot.
//! - Consumer `tail` ahead of `head` or more than `slots` behind: every write is dropped,
//!   counted in `dropped` and reported ([`RingError::WildConsumer`]) until `tail` is sane
//!   again; the producer does not block.
//! - A `wakeup` flag that is always set: the producer asks for a notification after every
//!   publication (bounded: one per [`SlotProducer::publish`]).
//!
//! # Notification suppression
//!
//! The producer tells the consumer about new records only when the consumer asked for it
//! by setting `wakeup` before going to sleep. Both sides use the classic "store, full
//! fence, load" handshake so that at least one of them sees the other's store and no
//! wake-up is lost. The step names below are the labels of the Promela model
//! `crates/keel-net/model/ring.pml` (keep both in step; docs/net.md explains it):
//!
//! - Producer: `p_write` (fill a free slot), `p_publish` (store `head`, release),
//!   `p_check` (full fence, load `wakeup`), `p_notify` (the caller signals the consumer
//!   when [`SlotProducer::publish`] returned `true`).
//! - Consumer: `c_poll` ([`SlotConsumer::pop`] until [`Pop::Empty`]), `c_arm` (store
//!   `wakeup` = 1, full fence), `c_recheck` (load `head`: records arrived meanwhile →
//!   clear `wakeup` and poll again), `c_sleep` (the caller waits for a notification),
//!   `c_wake` ([`SlotConsumer::disarm`], then poll again).
//!
//! ```text
//! consumer loop:                       producer, per batch:
//!   loop {                               p.stage(record)...    // p_write
//!     while let Pop::Record(n) = c.pop(buf)? { .. }   // c_poll
//!     if c.arm_wakeup()? {               if p.publish() {      // p_publish, p_check
//!       wait_for_notification();           notify_consumer();  // p_notify
//!       c.disarm();                      }
//!     }
//!   }
//! ```

use core::sync::atomic::{Ordering, fence};

use super::{DROPPED, HEAD, HEADER_LEN, RingError, Shared, TAIL, WAKEUP};
use crate::memory::copy::{copy_from_shared, copy_to_shared};

/// Bytes at the start of every slot before the record: the length (`u32`) and 4 reserved
/// bytes.
pub const SLOT_HEADER_LEN: usize = 8;

/// A window of shared memory holding one slot ring.
#[derive(Debug)]
pub struct SlotWindow {
    sh: Shared,
    slot_size: usize,
    slots: u64,
}

impl SlotWindow {
    /// Bytes of window a ring of `slots` slots of `slot_size` bytes needs (`None` on
    /// overflow).
    pub const fn window_len(slot_size: usize, slots: u64) -> Option<usize> {
        if slots > usize::MAX as u64 {
            return None;
        }
        match slot_size.checked_mul(slots as usize) {
            Some(n) => n.checked_add(HEADER_LEN),
            None => None,
        }
    }

    /// The window `[base, base + len)`, holding `slots` slots of `slot_size` bytes after
    /// the header. `slot_size` must be a multiple of 8 and at least 16, `slots` a power of
    /// two, and `len` at least [`SlotWindow::window_len`] (bytes beyond it are unused).
    ///
    /// # Safety
    ///
    /// As for [`super::RingWindow::new`]: `base..base + len` stays mapped readable and
    /// writable while the window and every producer or consumer made from it live, no Rust
    /// reference points into it, and other parties access it only as this module's
    /// protocol does (or, if hostile, only by writing arbitrary bytes).
    pub unsafe fn new(
        base: *mut u8,
        len: usize,
        slot_size: usize,
        slots: u64,
    ) -> Result<SlotWindow, RingError> {
        let bad = RingError::BadGeometry { slot_size, slots };
        if slot_size % 8 != 0 || slot_size < 16 || !slots.is_power_of_two() {
            return Err(bad);
        }
        let need = SlotWindow::window_len(slot_size, slots).ok_or(bad)?;
        if len < need {
            return Err(RingError::WindowTooShort { len, need });
        }
        Ok(SlotWindow {
            sh: Shared::new(base, len)?,
            slot_size,
            slots,
        })
    }

    /// Slots in the ring (records it holds at most).
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Bytes per slot, header included.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// The longest record a slot holds.
    pub fn max_record(&self) -> usize {
        self.slot_size - SLOT_HEADER_LEN
    }

    /// Address of the slot of record number `pos`.
    fn slot(&self, pos: u64) -> *mut u8 {
        let index = (pos & (self.slots - 1)) as usize;
        // `index < slots` and `HEADER_LEN + slots * slot_size <= len` (checked in `new`):
        // the whole slot lies inside the window. Its address is 8-aligned (8-aligned base,
        // HEADER_LEN and slot_size multiples of 8).
        self.sh
            .base
            .wrapping_add(HEADER_LEN + index * self.slot_size)
    }

    /// Fill the slot of record `pos` with `rec` (`1..=max_record` bytes, checked by the
    /// caller). The words are written whole: the last one is padded with zeros.
    fn write_slot(&self, pos: u64, rec: &[u8]) {
        let slot = self.slot(pos);
        let head = rec.len() as u64; // length in the low half, reserved 0 in the high half
        let (whole, rest) = rec.split_at(rec.len() / 8 * 8);
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        // SAFETY: `slot` is the 8-aligned start of a slot inside the window (see `slot`);
        // the header word, the whole words of `rec` and the padded last word end at
        // `8 + rec.len()` rounded up to 8, `<= slot_size` (`rec.len() <= slot_size - 8`, a
        // multiple of 8), so all lie inside this slot. The consumer does not read the slot
        // before `head` passes it (free space); a hostile one touching it races only with
        // atomic copies. The window is valid and reached through no reference (`new`).
        unsafe {
            copy_to_shared(&head.to_le_bytes(), slot);
            copy_to_shared(whole, slot.add(SLOT_HEADER_LEN));
            if !rest.is_empty() {
                copy_to_shared(&last, slot.add(SLOT_HEADER_LEN + whole.len()));
            }
        }
    }

    /// The length field of the slot of record `pos` (untrusted).
    fn read_len(&self, pos: u64) -> u32 {
        let mut head = [0u8; 8];
        // SAFETY: first word of a slot inside the window, 8-aligned (see `slot`); the
        // producer published it (acquire load of `head` by the caller), and a hostile one
        // rewriting it races only with this atomic copy.
        unsafe { copy_from_shared(self.slot(pos), &mut head) };
        u64::from_le_bytes(head) as u32
    }

    /// Copy the first `out.len()` record bytes (`out.len() <= max_record`, checked by the
    /// caller) of the slot of record `pos` into `out`.
    fn read_record(&self, pos: u64, out: &mut [u8]) {
        debug_assert!(out.len() <= self.max_record());
        let slot = self.slot(pos);
        let whole = out.len() / 8 * 8;
        let (head, rest) = out.split_at_mut(whole);
        let mut last = [0u8; 8];
        // SAFETY: the whole words after the slot header, then the word holding the last
        // bytes: they end at `8 + out.len()` rounded up to 8, `<= slot_size` (`out.len() <=
        // slot_size - 8`, a multiple of 8), inside this slot, 8-aligned (see `slot`); the
        // producer published them (see `read_len`). Whole words are read, as the producer
        // writes them, so a hostile producer's racing word stores meet same-size atomics.
        unsafe {
            copy_from_shared(slot.add(SLOT_HEADER_LEN), head);
            if !rest.is_empty() {
                copy_from_shared(slot.add(SLOT_HEADER_LEN + whole), &mut last);
            }
        }
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// What [`SlotProducer::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The record is published. `notify`: the consumer asked to be woken up; signal it.
    Sent {
        /// Whether the caller must notify the consumer.
        notify: bool,
    },
    /// The ring was full: the record was dropped and counted.
    Full,
}

/// The writing side of a slot ring. It owns `head` and `dropped`.
#[derive(Debug)]
pub struct SlotProducer {
    w: SlotWindow,
    /// Records written, staged ones included.
    head: u64,
    /// Records published (the `head` in the window).
    published: u64,
    dropped: u64,
}

// SAFETY: the producer only holds the window's address; the memory behind it is shared by
// protocol (atomics for the header, atomic copies for the slots), so moving the
// producer to another thread is sound.
unsafe impl Send for SlotProducer {}

impl SlotProducer {
    /// Take the producer side of `w`, continuing from the `head` already there unless it
    /// is not consistent with the consumer's `tail` (then it starts over at `tail`).
    pub fn attach(w: SlotWindow) -> SlotProducer {
        let head = w.sh.attach_head(w.slots);
        let dropped = w.sh.word(DROPPED).load(Ordering::Relaxed);
        SlotProducer {
            w,
            head,
            published: head,
            dropped,
        }
    }

    /// The ring's window geometry.
    pub fn window(&self) -> &SlotWindow {
        &self.w
    }

    /// Records dropped so far because the ring was full or the consumer's index wild.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records written (staged ones included) and not yet consumed, as far as the
    /// (untrusted) consumer index says.
    pub fn pending(&self) -> Result<u64, RingError> {
        self.w.sh.producer_used(self.head, self.w.slots)
    }

    /// Write `rec` into the next free slot without publishing it (`p_write`); publish a
    /// batch with [`SlotProducer::publish`]. Returns `Ok(false)` when the ring is full
    /// (the record is dropped and counted), `Err` when the record is empty or too long
    /// (nothing counted: the caller's mistake) or the consumer's index is wild (dropped and
    /// counted).
    pub fn stage(&mut self, rec: &[u8]) -> Result<bool, RingError> {
        let max = self.w.max_record();
        if rec.is_empty() || rec.len() > max {
            return Err(RingError::BadRecordLen {
                len: rec.len(),
                max,
            });
        }
        let used = match self.pending() {
            Ok(used) => used,
            Err(e) => {
                self.count_drop();
                return Err(e);
            }
        };
        if used >= self.w.slots {
            self.count_drop();
            return Ok(false);
        }
        // model: p_write
        self.w.write_slot(self.head, rec);
        self.head = self.head.wrapping_add(1);
        Ok(true)
    }

    /// Publish the staged records (`p_publish`) and say whether the consumer asked to be
    /// notified (`p_check`): if this returns `true` the caller must signal the consumer
    /// (`p_notify`). Returns `false` without touching the window when nothing was staged.
    pub fn publish(&mut self) -> bool {
        if self.head == self.published {
            return false;
        }
        // model: p_publish. Release: the slots written above are visible to a consumer that
        // sees this `head`.
        self.w.sh.word(HEAD).store(self.head, Ordering::Release);
        self.published = self.head;
        // model: p_check. The full fence orders the store of `head` before the load of
        // `wakeup`; the consumer does the mirror image (store `wakeup`, fence, load `head`),
        // so at least one of the two sees the other's store: either the consumer's recheck
        // sees the new record, or this load sees its request.
        fence(Ordering::SeqCst);
        self.w.sh.word(WAKEUP).load(Ordering::Relaxed) != 0
    }

    /// [`SlotProducer::stage`] then [`SlotProducer::publish`] one record.
    pub fn push(&mut self, rec: &[u8]) -> Result<Push, RingError> {
        if !self.stage(rec)? {
            return Ok(Push::Full);
        }
        Ok(Push::Sent {
            notify: self.publish(),
        })
    }

    fn count_drop(&mut self) {
        self.dropped = self.dropped.wrapping_add(1);
        self.w
            .sh
            .word(DROPPED)
            .store(self.dropped, Ordering::Relaxed);
    }
}

/// What one [`SlotConsumer::pop`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pop {
    /// A record of this many bytes was copied to the start of the buffer.
    Record(usize),
    /// The ring is empty.
    Empty,
    /// The next slot announced a length of 0 or more than a slot holds: it was skipped and
    /// counted.
    BadLength {
        /// The announced length.
        len: u32,
    },
}

/// The reading side of a slot ring. It owns `tail` and `wakeup`.
#[derive(Debug)]
pub struct SlotConsumer {
    w: SlotWindow,
    tail: u64,
    broken: bool,
    bad_records: u64,
}

// SAFETY: as for `SlotProducer`.
unsafe impl Send for SlotConsumer {}

impl SlotConsumer {
    /// Take the consumer side of `w`, continuing from the `tail` already there, awake
    /// (`wakeup` cleared).
    pub fn attach(w: SlotWindow) -> SlotConsumer {
        let tail = w.sh.word(TAIL).load(Ordering::Relaxed);
        w.sh.word(WAKEUP).store(0, Ordering::Relaxed);
        SlotConsumer {
            w,
            tail,
            broken: false,
            bad_records: 0,
        }
    }

    /// The ring's window geometry.
    pub fn window(&self) -> &SlotWindow {
        &self.w
    }

    /// Take over from a previous consumer without its backlog: every record published and
    /// not yet consumed is skipped (`tail` becomes the producer's `head`) and the ring is
    /// enabled again. For a port given to a new holder: what was queued for the previous
    /// one is not delivered to the next. Returns how many records were skipped. Indices
    /// that are not consistent (`head` more than `slots` ahead of `tail`: one side wrote
    /// garbage, and which one cannot be told) are left alone: `WildProducer`.
    pub fn skip_to_head(&mut self) -> Result<u64, RingError> {
        let skipped = self.w.sh.consumer_avail(self.tail, self.w.slots)?;
        self.tail = self.tail.wrapping_add(skipped);
        // Release: no slot is read after this; the producer may reuse them all.
        self.w.sh.word(TAIL).store(self.tail, Ordering::Release);
        self.broken = false;
        Ok(skipped)
    }

    /// Whether the consumer stopped reading after a wild producer index.
    pub fn is_disabled(&self) -> bool {
        self.broken
    }

    /// Slots skipped so far because their length was 0 or too large.
    pub fn bad_records(&self) -> u64 {
        self.bad_records
    }

    /// The producer's count of dropped records (an untrusted number, for reports only).
    pub fn producer_dropped(&self) -> u64 {
        self.w.sh.word(DROPPED).load(Ordering::Relaxed)
    }

    /// Take the next record (`c_poll`): copy it into `buf` and release its slot. `buf`
    /// bounds the records accepted: one announcing a length of 0 or more than
    /// `min(buf.len(), max_record)` is skipped, counted and reported as [`Pop::BadLength`],
    /// so pass a buffer as long as the longest record the protocol on top allows. A wild
    /// producer index disables the ring: this call and every later one return an error.
    pub fn pop(&mut self, buf: &mut [u8]) -> Result<Pop, RingError> {
        // model: c_poll (the acquire load of `head` is in `avail`)
        if self.avail()? == 0 {
            return Ok(Pop::Empty);
        }
        let max = self.w.max_record().min(buf.len());
        let len = self.w.read_len(self.tail);
        let got = match usize::try_from(len) {
            Ok(n) if (1..=max).contains(&n) => {
                self.w.read_record(self.tail, &mut buf[..n]);
                Pop::Record(n)
            }
            _ => {
                self.bad_records = self.bad_records.wrapping_add(1);
                Pop::BadLength { len }
            }
        };
        self.tail = self.tail.wrapping_add(1);
        // Release: the slot's bytes were read before the producer may reuse it.
        self.w.sh.word(TAIL).store(self.tail, Ordering::Release);
        Ok(got)
    }

    /// Records published and not yet consumed; a wild producer index disables the ring.
    pub fn avail(&mut self) -> Result<u64, RingError> {
        if self.broken {
            return Err(RingError::Disabled);
        }
        self.w
            .sh
            .consumer_avail(self.tail, self.w.slots)
            .inspect_err(|_| self.broken = true)
    }

    /// Ask for a notification before sleeping (`c_arm`, `c_recheck`). Returns `Ok(true)`
    /// when the ring is still empty: the caller may sleep until notified (`c_sleep`) and
    /// must call [`SlotConsumer::disarm`] when woken (`c_wake`). Returns `Ok(false)` (with
    /// the request withdrawn) when records arrived meanwhile: poll again instead.
    pub fn arm_wakeup(&mut self) -> Result<bool, RingError> {
        if self.broken {
            return Err(RingError::Disabled);
        }
        // model: c_arm. The full fence orders this store before the load of `head` below
        // (the mirror image of the producer's `p_check`).
        self.w.sh.word(WAKEUP).store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // model: c_recheck
        match self.avail() {
            Ok(0) => Ok(true),
            Ok(_) => {
                self.disarm();
                Ok(false)
            }
            Err(e) => {
                self.disarm();
                Err(e)
            }
        }
    }

    /// Withdraw the request for notifications (`c_wake`: the consumer is awake and polls).
    pub fn disarm(&mut self) {
        // model: c_wake
        self.w.sh.word(WAKEUP).store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::sync::atomic::AtomicU64;

    const SLOT: usize = 32;
    const MAX: usize = SLOT - SLOT_HEADER_LEN;

    /// A zeroed, 8-aligned heap window for `slots` slots of `SLOT` bytes.
    struct Mem(Vec<u64>);

    impl Mem {
        fn new(slots: u64) -> Mem {
            let len = SlotWindow::window_len(SLOT, slots).unwrap();
            Mem(vec![0; len / 8])
        }
        fn window(&mut self, slots: u64) -> SlotWindow {
            let len = self.0.len() * 8;
            // SAFETY: the vector outlives every window of a test, is only accessed through
            // windows (and `poke` between calls), and is 8-aligned.
            unsafe { SlotWindow::new(self.0.as_mut_ptr().cast(), len, SLOT, slots) }.unwrap()
        }
        /// Write the 8-aligned word at byte `offset` as a hostile party would.
        fn poke(&mut self, offset: usize, v: u64) {
            self.0[offset / 8] = v;
        }
        fn peek(&self, offset: usize) -> u64 {
            self.0[offset / 8]
        }
    }

    fn pair(slots: u64) -> (Mem, SlotProducer, SlotConsumer) {
        let mut m = Mem::new(slots);
        let p = SlotProducer::attach(m.window(slots));
        let c = SlotConsumer::attach(m.window(slots));
        (m, p, c)
    }

    fn pop(c: &mut SlotConsumer) -> Result<Option<Vec<u8>>, RingError> {
        let mut buf = [0u8; MAX];
        Ok(match c.pop(&mut buf)? {
            Pop::Record(n) => Some(buf[..n].to_vec()),
            Pop::Empty => None,
            Pop::BadLength { len } => panic!("bad length {len}"),
        })
    }

    #[test]
    fn records_come_out_whole_and_in_order_across_the_end() {
        let (_m, mut p, mut c) = pair(4);
        let mut got = Vec::new();

        for i in 0..11u8 {
            let rec: Vec<u8> = (0..=i % 5 + 9).map(|b| b ^ i).collect();
            p.push(&rec).unwrap();
            got.push((rec, pop(&mut c).unwrap()));
        }

        assert!(got.iter().all(|(sent, recv)| Some(sent) == recv.as_ref()));
    }

    #[test]
    fn record_filling_a_slot_exactly_round_trips() {
        let (_m, mut p, mut c) = pair(2);
        let rec: Vec<u8> = (0..MAX as u8).collect();

        p.push(&rec).unwrap();

        assert_eq!(pop(&mut c).unwrap(), Some(rec));
    }

    #[test]
    fn full_ring_drops_records_and_counts_them() {
        let (_m, mut p, mut c) = pair(2);
        p.push(b"a").unwrap();
        p.push(b"b").unwrap();

        let third = p.push(b"c");

        assert_eq!(third, Ok(Push::Full));
        assert_eq!((p.dropped(), c.producer_dropped()), (1, 1));
        assert_eq!(pop(&mut c).unwrap(), Some(b"a".to_vec()));
        assert_eq!(pop(&mut c).unwrap(), Some(b"b".to_vec()));
        assert_eq!(pop(&mut c).unwrap(), None);
    }

    #[test]
    fn empty_or_oversized_records_are_refused_without_counting() {
        let (_m, mut p, _c) = pair(2);

        let empty = p.push(b"");
        let long = p.push(&[0; MAX + 1]);

        assert_eq!(empty, Err(RingError::BadRecordLen { len: 0, max: MAX }));
        assert_eq!(
            long,
            Err(RingError::BadRecordLen {
                len: MAX + 1,
                max: MAX
            })
        );
        assert_eq!(p.dropped(), 0);
    }

    #[test]
    fn staged_records_are_invisible_until_published() {
        let (_m, mut p, mut c) = pair(4);
        p.stage(b"x").unwrap();

        let before = pop(&mut c).unwrap();
        p.publish();

        assert_eq!(before, None);
        assert_eq!(pop(&mut c).unwrap(), Some(b"x".to_vec()));
    }

    #[test]
    fn hostile_lengths_cost_only_their_own_slot() {
        let (mut m, mut p, mut c) = pair(4);
        p.push(b"one").unwrap();
        p.push(b"two").unwrap();
        p.push(b"three").unwrap();
        m.poke(HEADER_LEN, 0); // slot 0: length 0
        m.poke(HEADER_LEN + SLOT, u64::from(u32::MAX)); // slot 1: far too long
        let mut buf = [0u8; MAX];

        let first = c.pop(&mut buf).unwrap();
        let second = c.pop(&mut buf).unwrap();
        let third = pop(&mut c).unwrap();

        assert_eq!(first, Pop::BadLength { len: 0 });
        assert_eq!(second, Pop::BadLength { len: u32::MAX });
        assert_eq!(third, Some(b"three".to_vec()));
        assert_eq!(c.bad_records(), 2);
    }

    #[test]
    fn length_one_past_the_slot_is_bad() {
        let (mut m, mut p, mut c) = pair(2);
        p.push(b"x").unwrap();
        m.poke(HEADER_LEN, MAX as u64 + 1);
        let mut buf = [0u8; MAX];

        let r = c.pop(&mut buf);

        assert_eq!(
            r,
            Ok(Pop::BadLength {
                len: MAX as u32 + 1
            })
        );
    }

    #[test]
    fn producer_index_too_far_ahead_breaks_only_that_ring() {
        let (mut m, mut p, mut c) = pair(4);
        let (_m2, mut p2, mut c2) = pair(4);
        p.push(b"ok").unwrap();
        p2.push(b"fine").unwrap();
        m.poke(HEAD, 5);

        let e = pop(&mut c);

        assert_eq!(
            e,
            Err(RingError::WildProducer {
                head: 5,
                tail: 0,
                capacity: 4
            })
        );
        assert!(c.is_disabled());
        assert_eq!(pop(&mut c), Err(RingError::Disabled));
        assert_eq!(pop(&mut c2).unwrap(), Some(b"fine".to_vec()));
    }

    #[test]
    fn producer_index_going_backwards_breaks_the_ring() {
        let (mut m, mut p, mut c) = pair(4);
        p.push(b"a").unwrap();
        p.push(b"b").unwrap();
        pop(&mut c).unwrap();
        pop(&mut c).unwrap();
        m.poke(HEAD, 1);

        let e = c.arm_wakeup();

        assert!(matches!(
            e,
            Err(RingError::WildProducer {
                head: 1,
                tail: 2,
                ..
            })
        ));
        assert_eq!(m.peek(WAKEUP), 0);
    }

    #[test]
    fn consumer_index_ahead_of_the_producer_makes_pushes_drop() {
        let (mut m, mut p, _c) = pair(4);
        p.push(b"a").unwrap();
        m.poke(TAIL, 3);

        let e = p.push(b"b");

        assert!(matches!(
            e,
            Err(RingError::WildConsumer {
                head: 1,
                tail: 3,
                ..
            })
        ));
        assert_eq!(p.dropped(), 1);
    }

    #[test]
    fn consumer_index_far_behind_makes_pushes_drop() {
        let (mut m, mut p, _c) = pair(4);
        p.push(b"a").unwrap();
        m.poke(TAIL, u64::MAX - 10);

        let e = p.push(b"b");

        assert!(matches!(e, Err(RingError::WildConsumer { .. })));
        assert_eq!(p.dropped(), 1);
    }

    #[test]
    fn a_consumer_skipping_to_head_gets_only_records_published_after_it() {
        let (mut m, mut p, _old) = pair(4);
        p.push(b"old 1").unwrap();
        p.push(b"old 2").unwrap();
        let mut c = SlotConsumer::attach(m.window(4));

        let skipped = c.skip_to_head().unwrap();
        p.push(b"new").unwrap();

        assert_eq!(skipped, 2);
        assert_eq!(pop(&mut c).unwrap(), Some(b"new".to_vec()));
        assert_eq!(pop(&mut c).unwrap(), None);
    }

    #[test]
    fn skipping_to_head_leaves_inconsistent_indices_alone() {
        let (mut m, mut p, _old) = pair(4);
        p.push(b"a").unwrap();
        m.poke(TAIL, u64::MAX - 10);
        let mut c = SlotConsumer::attach(m.window(4));

        let e = c.skip_to_head();

        assert!(matches!(e, Err(RingError::WildProducer { .. })), "{e:?}");
        assert_eq!(m.peek(TAIL), u64::MAX - 10);
    }

    #[test]
    fn producer_recovers_when_the_consumer_index_is_sane_again() {
        let (mut m, mut p, mut c) = pair(4);
        p.push(b"a").unwrap();
        m.poke(TAIL, 9);
        let _ = p.push(b"lost");
        m.poke(TAIL, 0);

        p.push(b"b").unwrap();

        assert_eq!(pop(&mut c).unwrap(), Some(b"a".to_vec()));
        assert_eq!(pop(&mut c).unwrap(), Some(b"b".to_vec()));
    }

    #[test]
    fn producer_notifies_only_an_armed_consumer() {
        let (_m, mut p, mut c) = pair(4);
        let awake = p.push(b"a").unwrap();
        pop(&mut c).unwrap();

        let may_sleep = c.arm_wakeup().unwrap();
        let asleep = p.push(b"b").unwrap();

        assert_eq!(awake, Push::Sent { notify: false });
        assert!(may_sleep);
        assert_eq!(asleep, Push::Sent { notify: true });
    }

    #[test]
    fn arming_with_records_pending_refuses_sleep_and_withdraws_the_request() {
        let (m, mut p, mut c) = pair(4);
        p.push(b"a").unwrap();

        let may_sleep = c.arm_wakeup().unwrap();

        assert!(!may_sleep);
        assert_eq!(m.peek(WAKEUP), 0);
    }

    #[test]
    fn disarmed_consumer_is_not_notified() {
        let (_m, mut p, mut c) = pair(4);
        assert!(c.arm_wakeup().unwrap());
        c.disarm();

        let pushed = p.push(b"a").unwrap();

        assert_eq!(pushed, Push::Sent { notify: false });
    }

    #[test]
    fn record_longer_than_the_buffer_is_skipped_as_bad() {
        let (_m, mut p, mut c) = pair(2);
        p.push(b"abcd").unwrap();
        p.push(b"abc").unwrap();
        let mut small = [0u8; 3];

        let first = c.pop(&mut small);
        let second = c.pop(&mut small);

        assert_eq!(first, Ok(Pop::BadLength { len: 4 }));
        assert_eq!(second, Ok(Pop::Record(3)));
        assert_eq!(&small, b"abc");
    }

    #[test]
    fn unusable_geometries_are_refused() {
        let mut m = Mem::new(4);
        let base = m.0.as_mut_ptr().cast::<u8>();
        let len = m.0.len() * 8;

        // SAFETY: inside `m`, which outlives the (never used) windows.
        let odd_slot = unsafe { SlotWindow::new(base, len, 20, 4) };
        // SAFETY: as above.
        let three = unsafe { SlotWindow::new(base, len, SLOT, 3) };
        // SAFETY: as above.
        let short = unsafe { SlotWindow::new(base, len, SLOT, 8) };

        assert!(matches!(odd_slot, Err(RingError::BadGeometry { .. })));
        assert!(matches!(three, Err(RingError::BadGeometry { .. })));
        assert_eq!(
            short.unwrap_err(),
            RingError::WindowTooShort {
                len,
                need: HEADER_LEN + 8 * SLOT
            }
        );
    }

    /// A hostile producer rewriting published slots while the consumer copies them out: the
    /// consumer's copies are atomic, so under Miri (scripts/miri.sh) this is no data race
    /// (with volatile copies it was), and every pop still yields a record of a length it
    /// accepts or a counted bad slot.
    #[test]
    fn consumer_copying_slots_a_peer_rewrites_is_no_data_race() {
        extern crate std;
        const ROUNDS: usize = if cfg!(miri) { 10 } else { 1_000 };
        let slots = 4;
        let (mut m, mut p, mut c) = pair(slots);
        let words = SlotWindow::window_len(SLOT, slots).unwrap() / 8;
        // SAFETY: the window's words, alive until `drop(m)` below; atomics may be shared
        // and written through `&` (the slots are what a hostile producer may rewrite).
        let shared: &[AtomicU64] =
            unsafe { core::slice::from_raw_parts(m.0.as_mut_ptr().cast::<AtomicU64>(), words) };
        for i in 0..slots {
            p.push(&[i as u8; MAX]).unwrap();
        }

        let popped = std::thread::scope(|s| {
            s.spawn(|| {
                for r in 0..ROUNDS {
                    for slot_word in &shared[HEADER_LEN / 8..] {
                        slot_word.store(u64::from_ne_bytes([r as u8; 8]), Ordering::Relaxed);
                    }
                }
            });
            let mut buf = [0u8; MAX];
            let mut popped = Vec::new();
            for _ in 0..slots {
                popped.push(c.pop(&mut buf).unwrap());
            }
            popped
        });

        assert_eq!(popped.len(), slots as usize);
        assert!(popped.iter().all(|p| match p {
            Pop::Record(n) => (1..=MAX).contains(n),
            Pop::BadLength { len } => *len == 0 || *len as usize > MAX,
            Pop::Empty => false,
        }));
        drop(m);
    }
}
