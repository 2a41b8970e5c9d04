//! `shared_rings`: the shared-ring protocols seen from a hostile peer.
//!
//! The first input byte chooses the scenario (`byte % 8`); the rest drives a sequence of
//! operations decoded with [`arbitrary::Unstructured`] (at most [`MAX_OPS`]; running out of
//! bytes stops the sequence). The fuzzer plays the hostile side by writing arbitrary words
//! and bytes into the shared window between the honest side's operations.
//!
//! Every window is backed by a heap buffer with guard words before and after it (filled
//! with [`GUARD`]), or, in the "exact" layout, by an allocation exactly the window's size so
//! that AddressSanitizer catches any access outside it. Scenarios and invariants:
//!
//! 0. keel-net frame ring, honest consumer ([`FrameConsumer`]) vs hostile producer. A
//!    returned frame is 1..=[`MAX_FRAME`] bytes, equals the length field and the bytes of
//!    the slot the consumer's tail points at (so it comes from inside the window); a producer
//!    index behind the tail or more than `slots` ahead breaks the ring (an error, then
//!    `Disabled` for ever, `is_broken`), a bad length skips one slot (`BadLength`, counted);
//!    the consumer writes only `tail` and `wakeup` (checked word by word); guards intact.
//!    Enforced in keel_core::ring::slot (`SlotConsumer::pop`, `Shared::consumer_avail`).
//! 1. keel-net frame ring, honest producer ([`FrameProducer`]) vs hostile consumer. A
//!    queued frame lands whole in the slot of the producer's head, and nothing else of the
//!    window but that slot, `head` and `dropped` changes; `Full` only when the tail read is
//!    exactly `slots` behind, `WildConsumer` only when it is ahead of head or further
//!    behind; drops are counted. Enforced in `SlotProducer::stage` / `Shared::producer_used`.
//! 2. keel-net frame ring, honest producer and honest consumer, interleaved by the fuzzer:
//!    frames come out in order, unchanged, none lost or duplicated, against a reference
//!    queue (a frame is missing only when `send` reported `Full`; the producer never
//!    overwrites a slot the consumer has not released).
//! 3. keel-core byte ring (console), honest consumer (the console PD) vs hostile VMM
//!    producer: a read returns at most `buf.len()` and at most the capacity, the bytes at
//!    the consumer's tail in the data area, a flush mark inside the bytes read; a wild head
//!    disables the ring for good; only `tail` is written. Enforced in
//!    keel_core::ring (`Consumer::read`).
//! 4. keel-core byte ring, honest producer (the VMM) vs hostile console tail: a write
//!    lands whole at the producer's head or is dropped whole and counted; nothing outside
//!    `[head, head + len)` of the data area, `head`, `flush` and `dropped` changes.
//!    Enforced in `Producer::write`.
//! 5. keel-core byte ring, honest vs honest: the byte stream read equals the bytes of the
//!    writes that returned `Ok(true)`, in order. The indices start below 2^62: the ring
//!    maps stream position `p` to `p % capacity`, which misplaces bytes around a crossing
//!    of 2^64 when the capacity is not a power of two (unreachable: 2^64 bytes).
//! 6. keel-net switch ([`Switch`]) fed frames from hostile ports (arbitrary MACs,
//!    broadcast, multicast, floods, uplinks) with time advancing: the MAC table never
//!    holds more fresh entries than its cap; a frame is never queued back to its input
//!    port; a unicast to a learned, allowed MAC is queued to that port only; a flood goes
//!    only to allowed ports; the verdict's count matches the queues; queues never exceed
//!    their depth. Enforced in keel_net::switch (`Switch::input`, `Switch::learn`).
//! 7. keel-net [`SwitchService`] over real port rings whose VMM sides are hostile (frames
//!    with arbitrary bytes, wild `head` on `to_switch`, wild `tail` on `from_switch`,
//!    garbage slot lengths): `service` takes at most `budget` frames per call (counted),
//!    never touches memory outside the ring windows (guards), never delivers a frame to the
//!    VM port whose declared MAC is its source (it came from there), delivers only frames of
//!    14..=`max_frame` bytes, and a VMM-written wild index breaks only that port's ring.
//!    Enforced in keel_net::port (`SwitchService::service`) and the ring and switch above.
//!
//! 8. keel-net [`VmmPort`] (the VMM's network backend) facing a hostile switch that
//!    publishes frames and garbage slots, wild `head`s on `from_switch` and wild `tail`s on
//!    `to_switch`: a `recv` into a buffer of `L` bytes returns at most `L` and at most
//!    [`MAX_FRAME`] bytes, exactly the bytes of the slot it took (never truncated: longer
//!    frames are counted in `rx_too_long`), takes at most [`RECV_STEPS`] slots per call,
//!    returns `None` for ever once the ring broke, and writes only `tail` and `wakeup` of
//!    `from_switch`; `send` reports a too-long frame as `TooLong`, a wild index as
//!    `Disconnected`. Enforced in keel_net::port (`VmmPort::recv`, `VmmPort::send`).
//!
//! The switch only ever sees ring windows and byte slices: it has no way to reach guest
//! memory (it holds no guest-memory type at all), which the types, not this target, show.

use alloc_free::{Shm, frame_window};
use arbitrary::Unstructured;
use keel_core::ring::{Consumer, HEADER_LEN, Producer, RingError, RingWindow};
use keel_net::port::{Doorbell, PortWindows, RECV_STEPS, Service, SwitchService, VmmPort};
use keel_net::ring::{
    FrameConsumer, FrameError, FrameProducer, MAX_FRAME, Recv, SLOT_SIZE, Sent, window_len,
};
use keel_net::switch::{Drop, Mac, PortId, Switch, SwitchConfig, Verdict};
use keel_virtio::net::{NetBackend, NetError};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Operations per input at most.
pub const MAX_OPS: usize = 512;
/// The byte guard words are filled with.
pub const GUARD: u8 = 0xa5;

const HEAD: usize = 0;
const FLUSH: usize = 8;
const DROPPED: usize = 16;
const TAIL: usize = 128;
const WAKEUP: usize = 136;

/// The fuzz body.
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    match sel % 9 {
        0 => frame_consumer_vs_hostile_producer(&mut u),
        1 => frame_producer_vs_hostile_consumer(&mut u),
        2 => frame_honest_pair(&mut u),
        3 => byte_consumer_vs_hostile_producer(&mut u),
        4 => byte_producer_vs_hostile_consumer(&mut u),
        5 => byte_honest_pair(&mut u),
        6 => switch_hostile_ports(&mut u),
        7 => service_hostile_vmms(&mut u),
        _ => vmm_port_vs_hostile_switch(&mut u),
    }
}

/// Shared memory with guards, accessed only through a raw pointer once windows exist.
mod alloc_free {
    use super::GUARD;
    use keel_net::ring::{FrameWindow, window_len};

    /// A window of `len` bytes (a multiple of 8) with `guard` guard bytes on each side.
    pub struct Shm {
        _mem: Vec<u64>,
        base: *mut u8,
        pub len: usize,
        guard: usize,
    }

    impl Shm {
        /// `exact`: no guard bytes (AddressSanitizer's redzones are the guards).
        pub fn new(len: usize, exact: bool, fill: u8) -> Shm {
            let guard = if exact { 0 } else { 64 };
            let words = (len + 2 * guard).div_ceil(8);
            let mut mem = vec![u64::from_ne_bytes([GUARD; 8]); words];
            let base = mem.as_mut_ptr().cast::<u8>();
            let shm = Shm {
                _mem: mem,
                base,
                len,
                guard,
            };
            // SAFETY: the window lies inside the allocation; nothing else uses it yet.
            unsafe { shm.ptr().write_bytes(fill, len) };
            shm
        }

        /// The window's first byte.
        pub fn ptr(&self) -> *mut u8 {
            self.base.wrapping_add(self.guard)
        }

        pub fn peek8(&self, off: usize) -> u8 {
            assert!(off < self.len);
            // SAFETY: `off < len`: inside the allocation; single-threaded, no reference.
            unsafe { self.ptr().add(off).read_volatile() }
        }

        pub fn poke8(&self, off: usize, v: u8) {
            assert!(off < self.len);
            // SAFETY: as in `peek8`.
            unsafe { self.ptr().add(off).write_volatile(v) }
        }

        pub fn peek64(&self, off: usize) -> u64 {
            assert!(off % 8 == 0 && off + 8 <= self.len);
            // SAFETY: inside the allocation, 8-aligned (the base is a `u64` allocation and
            // the guard a multiple of 8).
            unsafe { self.ptr().add(off).cast::<u64>().read_volatile() }
        }

        pub fn poke64(&self, off: usize, v: u64) {
            assert!(off % 8 == 0 && off + 8 <= self.len);
            // SAFETY: as in `peek64`.
            unsafe { self.ptr().add(off).cast::<u64>().write_volatile(v) }
        }

        /// A copy of the window's bytes.
        pub fn snapshot(&self) -> Vec<u8> {
            // SAFETY: the window lies inside the allocation; single-threaded, and no party
            // is inside a call, so nothing changes it while it is copied.
            unsafe { core::slice::from_raw_parts(self.ptr(), self.len) }.to_vec()
        }

        /// Panic if a guard byte changed.
        pub fn check_guards(&self) {
            for i in 0..self.guard {
                for at in [i, self.guard + self.len + i] {
                    // SAFETY: `at < len + 2 * guard`: inside the allocation.
                    let b = unsafe { self.base.add(at).read_volatile() };
                    assert_eq!(b, GUARD, "guard byte {at} around the window was written");
                }
            }
        }
    }

    /// A frame window of `slots` slots over `shm`.
    pub fn frame_window(shm: &Shm, slots: u64) -> FrameWindow {
        assert!(shm.len >= window_len(slots).unwrap());
        // SAFETY: `shm` outlives the window in every scenario (declared first, dropped
        // last), is 8-aligned and accessed otherwise only through `Shm`'s raw accesses
        // between the honest side's calls (single-threaded).
        unsafe { FrameWindow::new(shm.ptr(), shm.len, slots) }.expect("valid frame window")
    }
}

fn slot_off(pos: u64, slots: u64) -> usize {
    HEADER_LEN + (pos % slots) as usize * SLOT_SIZE
}

/// A frame window with geometry and layout chosen by the fuzzer; extra bytes past what the
/// slots need must stay unused.
fn frame_shm(u: &mut Unstructured) -> (Shm, u64) {
    let slots = 1u64 << u.int_in_range(0..=2u8).unwrap_or(0);
    let exact = u.arbitrary::<bool>().unwrap_or(false);
    let extra = if exact {
        0
    } else {
        8 * usize::from(u.int_in_range(0..=4u8).unwrap_or(0))
    };
    let fill = u.arbitrary::<u8>().unwrap_or(0);
    let shm = Shm::new(window_len(slots).unwrap() + extra, exact, fill);
    // Start from a consistent header (whatever the slots hold).
    for off in [HEAD, FLUSH, DROPPED, TAIL, WAKEUP] {
        shm.poke64(off, 0);
    }
    let start = u.arbitrary::<u64>().unwrap_or(0);
    if u.arbitrary::<bool>().unwrap_or(false) {
        shm.poke64(HEAD, start);
        shm.poke64(TAIL, start);
    }
    (shm, slots)
}

/// A hostile word: small deltas around `near` most of the time, anything otherwise.
fn wild_word(u: &mut Unstructured, near: u64) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => u.arbitrary::<u64>()?,
        1 => near.wrapping_sub(u64::from(u.arbitrary::<u8>()?)),
        _ => near.wrapping_add(u64::from(u.int_in_range(0..=20u8)?)),
    })
}

/// Bytes of a window other than the ones in `allowed` that changed between `before` and now.
fn assert_only_changed(shm: &Shm, before: &[u8], allowed: &[(usize, usize)], what: &str) {
    let mut now = shm.snapshot();
    for &(s, e) in allowed {
        now[s..e].copy_from_slice(&before[s..e]);
    }
    if now != before {
        let i = now
            .iter()
            .zip(before)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!("{what} wrote byte {i} of the window, outside its own fields");
    }
}

fn frame_consumer_vs_hostile_producer(u: &mut Unstructured) {
    let (shm, slots) = frame_shm(u);
    let mut c = FrameConsumer::attach(frame_window(&shm, slots));
    let mut tail = shm.peek64(TAIL);
    let mut broken = false;
    let mut buf = [0u8; MAX_FRAME];
    for _ in 0..MAX_OPS {
        let Ok(op) = u.int_in_range(0..=6u8) else {
            break;
        };
        let r: arbitrary::Result<()> = (|| {
            match op {
                0 => shm.poke64(HEAD, wild_word(u, tail)?),
                1 => {
                    // A slot's length field: plausible or not.
                    let pos = tail.wrapping_add(u64::from(u.int_in_range(0..=7u8)?));
                    let len = match u.int_in_range(0..=2u8)? {
                        0 => u.arbitrary::<u32>()?,
                        _ => u32::from(u.int_in_range(0..=1600u16)?),
                    };
                    let reserved = u64::from(u.arbitrary::<u32>()?) << 32;
                    shm.poke64(slot_off(pos, slots), u64::from(len) | reserved);
                }
                2 => {
                    let pos = tail.wrapping_add(u64::from(u.int_in_range(0..=7u8)?));
                    let off = slot_off(pos, slots) + 8 + usize::from(u.int_in_range(0..=2031u16)?);
                    let n = usize::from(u.int_in_range(1..=32u8)?);
                    for i in off..(off + n).min(slot_off(pos, slots) + SLOT_SIZE) {
                        shm.poke8(i, u.arbitrary()?);
                    }
                }
                3 => shm.poke64(TAIL, u.arbitrary()?),
                _ => {
                    let before = shm.snapshot();
                    let head = shm.peek64(HEAD);
                    let wild = head.wrapping_sub(tail) > slots;
                    let expect_len = shm.peek64(slot_off(tail, slots)) as u32;
                    let r = match op {
                        4 | 5 => c.recv(&mut buf).map(Some),
                        _ => c.arm_wakeup().map(|_| None),
                    };
                    if broken {
                        assert_eq!(
                            r,
                            Err(FrameError::Ring(RingError::Disabled)),
                            "a broken ring must stay broken"
                        );
                    } else if wild {
                        assert!(
                            matches!(r, Err(FrameError::Ring(RingError::WildProducer { .. }))),
                            "wild head {head} (tail {tail}, {slots} slots) not reported: {r:?}"
                        );
                        broken = true;
                    }
                    assert_eq!(c.is_broken(), broken, "is_broken disagrees");
                    match r {
                        Ok(Some(Recv::Frame(n))) => {
                            assert!((1..=MAX_FRAME).contains(&n), "frame of {n} bytes returned");
                            assert_eq!(n as u32, expect_len, "frame length is not the slot's");
                            let s = slot_off(tail, slots) + 8;
                            assert_eq!(
                                &buf[..n],
                                &before[s..s + n],
                                "frame bytes are not the slot's bytes"
                            );
                            tail = tail.wrapping_add(1);
                        }
                        Ok(Some(Recv::BadLength { len })) => {
                            assert_eq!(len, expect_len, "reported bad length is not the slot's");
                            assert!(
                                len == 0 || len as usize > MAX_FRAME,
                                "good length {len} skipped"
                            );
                            tail = tail.wrapping_add(1);
                        }
                        Ok(Some(Recv::Empty)) => assert_eq!(head, tail, "frames pending but Empty"),
                        Ok(None) | Err(_) => {}
                    }
                    if !broken && !matches!(r, Ok(Some(Recv::Empty)) | Ok(None)) {
                        assert_eq!(
                            shm.peek64(TAIL),
                            tail,
                            "published tail is not the consumer's"
                        );
                    }
                    assert_only_changed(
                        &shm,
                        &before,
                        &[(TAIL, TAIL + 8), (WAKEUP, WAKEUP + 8)],
                        "the consumer",
                    );
                }
            }
            Ok(())
        })();
        shm.check_guards();
        if r.is_err() {
            break;
        }
    }
}

fn frame_producer_vs_hostile_consumer(u: &mut Unstructured) {
    let (shm, slots) = frame_shm(u);
    let mut p = FrameProducer::attach(frame_window(&shm, slots));
    let mut head = shm.peek64(HEAD);
    for _ in 0..MAX_OPS {
        let Ok(op) = u.int_in_range(0..=4u8) else {
            break;
        };
        let r: arbitrary::Result<()> = (|| {
            match op {
                0 => shm.poke64(TAIL, wild_word(u, head.wrapping_sub(slots))?),
                1 => shm.poke64(WAKEUP, u64::from(u.int_in_range(0..=2u8)?)),
                2 => shm.poke64(HEAD, u.arbitrary()?),
                _ => {
                    let len = match u.int_in_range(0..=7u8)? {
                        0 => usize::from(u.int_in_range(0..=2000u16)?),
                        _ => usize::from(u.int_in_range(1..=64u8)?),
                    };
                    let fill: u8 = u.arbitrary()?;
                    let frame: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                    let before = shm.snapshot();
                    let tail = shm.peek64(TAIL);
                    let used = head.wrapping_sub(tail);
                    let was = p.counters();
                    let r = p.send(&frame);
                    let now = p.counters();
                    let s = slot_off(head, slots);
                    match r {
                        Err(FrameError::BadLength { .. }) => {
                            assert!(len == 0 || len > MAX_FRAME, "good frame of {len} refused");
                            assert_eq!(now.refused, was.refused + 1);
                            assert_only_changed(&shm, &before, &[], "a refused send");
                        }
                        _ if len == 0 || len > MAX_FRAME => {
                            panic!("bad frame of {len} bytes: {r:?}")
                        }
                        Ok(Sent::Queued { .. }) => {
                            assert!(used < slots, "queued into a full ring (used {used})");
                            assert_eq!(shm.peek64(s) as u32 as usize, len, "slot length");
                            for (i, &b) in frame.iter().enumerate() {
                                assert_eq!(shm.peek8(s + 8 + i), b, "slot byte {i}");
                            }
                            head = head.wrapping_add(1);
                            assert_eq!(shm.peek64(HEAD), head, "published head");
                            assert_only_changed(
                                &shm,
                                &before,
                                &[(HEAD, HEAD + 8), (s, s + SLOT_SIZE)],
                                "a send",
                            );
                        }
                        Ok(Sent::Full) => {
                            assert_eq!(used, slots, "Full with {used} of {slots} slots used");
                            assert_eq!(now.dropped_full, was.dropped_full + 1);
                            assert_only_changed(
                                &shm,
                                &before,
                                &[(DROPPED, DROPPED + 8)],
                                "a dropped send",
                            );
                        }
                        Err(FrameError::Ring(RingError::WildConsumer { .. })) => {
                            assert!(used > slots, "tail {tail} called wild (head {head})");
                            assert_eq!(now.dropped_wild, was.dropped_wild + 1);
                            assert_only_changed(
                                &shm,
                                &before,
                                &[(DROPPED, DROPPED + 8)],
                                "a dropped send",
                            );
                        }
                        Err(e) => panic!("unexpected send error {e:?}"),
                    }
                }
            }
            Ok(())
        })();
        shm.check_guards();
        if r.is_err() {
            break;
        }
    }
}

fn frame_honest_pair(u: &mut Unstructured) {
    let (shm, slots) = frame_shm(u);
    let mut p = FrameProducer::attach(frame_window(&shm, slots));
    let mut c = FrameConsumer::attach(frame_window(&shm, slots));
    let mut reference: VecDeque<Vec<u8>> = VecDeque::new();
    let mut seq = 0u32;
    let mut buf = [0u8; MAX_FRAME];
    for _ in 0..MAX_OPS {
        let Ok(op) = u.int_in_range(0..=2u8) else {
            break;
        };
        if op == 0 {
            let Ok(len) = u.int_in_range(4..=MAX_FRAME as u16) else {
                break;
            };
            seq += 1;
            let mut f = vec![seq as u8; usize::from(len)];
            f[..4].copy_from_slice(&seq.to_le_bytes());
            match p.send(&f) {
                Ok(Sent::Queued { .. }) => reference.push_back(f),
                Ok(Sent::Full) => assert_eq!(reference.len() as u64, slots, "Full before full"),
                Err(e) => panic!("honest send failed: {e:?}"),
            }
        } else {
            match c.recv(&mut buf) {
                Ok(Recv::Frame(n)) => {
                    let want = reference
                        .pop_front()
                        .expect("a frame nobody sent (duplicate)");
                    assert_eq!(&buf[..n], &want[..], "frame lost, reordered or corrupted");
                }
                Ok(Recv::Empty) => assert!(reference.is_empty(), "frames lost"),
                r => panic!("honest ring misbehaved: {r:?}"),
            }
        }
        shm.check_guards();
    }
    while let Some(want) = reference.pop_front() {
        assert_eq!(
            c.recv(&mut buf),
            Ok(Recv::Frame(want.len())),
            "frame lost at the end"
        );
        assert_eq!(&buf[..want.len()], &want[..]);
    }
    assert_eq!(c.recv(&mut buf), Ok(Recv::Empty), "a frame too many");
}

/// Whether stream positions `pos..pos + len` cross 2^64 with a capacity that does not
/// divide 2^64. The byte ring maps position `p` to `p % capacity` at the start of each
/// copy and copies in contiguous runs (`keel_core::ring::RingWindow::runs`), so across
/// such a crossing the bytes land contiguously rather than at `p % capacity`. Only a side
/// whose own index starts within a few KiB of 2^64 gets there (a hostile peer can make
/// only its own stream start there); no stream of honest sizes does. The scenarios then
/// check only that the copy stays inside the data area.
fn crosses_2_64(pos: u64, len: usize, cap: u64) -> bool {
    !cap.is_power_of_two() && pos.checked_add(len as u64).is_none()
}

/// A byte ring window: header plus a capacity chosen by the fuzzer.
///
/// `far`: whether the indices may start anywhere. The byte ring maps stream position `p`
/// to `p % capacity`, so with a capacity that is not a power of two a stream crossing
/// 2^64 bytes would misplace the bytes around the crossing; no honest pair gets there
/// (2^64 bytes), so the honest-pair scenario starts below 2^62.
fn byte_shm(u: &mut Unstructured, far: bool) -> (Shm, u64) {
    let cap = u64::from(u.int_in_range(1..=96u8).unwrap_or(16));
    let exact = u.arbitrary::<bool>().unwrap_or(false);
    let len = HEADER_LEN + cap as usize;
    // The exact layout needs a multiple of 8 bytes of allocation: keep `len` itself
    // arbitrary (the ring may use any length) and let the allocation round up.
    let shm = Shm::new(len, exact, u.arbitrary::<u8>().unwrap_or(0));
    for off in [HEAD, FLUSH, DROPPED, TAIL, WAKEUP] {
        shm.poke64(off, 0);
    }
    if u.arbitrary::<bool>().unwrap_or(false) {
        let start = u.arbitrary::<u64>().unwrap_or(0);
        let start = if far { start } else { start >> 2 };
        shm.poke64(HEAD, start);
        shm.poke64(TAIL, start);
    }
    (shm, cap)
}

fn byte_window(shm: &Shm) -> RingWindow {
    // SAFETY: as in `frame_window`.
    unsafe { RingWindow::new(shm.ptr(), shm.len) }.expect("valid byte window")
}

fn byte_consumer_vs_hostile_producer(u: &mut Unstructured) {
    let (shm, cap) = byte_shm(u, true);
    let mut c = Consumer::attach(byte_window(&shm));
    assert_eq!(c.capacity(), cap);
    let mut tail = shm.peek64(TAIL);
    let mut broken = false;
    let mut buf = [0u8; 128];
    for _ in 0..MAX_OPS {
        let Ok(op) = u.int_in_range(0..=5u8) else {
            break;
        };
        let r: arbitrary::Result<()> = (|| {
            match op {
                0 => shm.poke64(HEAD, wild_word(u, tail)?),
                1 => shm.poke64(FLUSH, wild_word(u, tail)?),
                2 => {
                    let off = HEADER_LEN + usize::from(u.arbitrary::<u8>()?) % cap as usize;
                    shm.poke8(off, u.arbitrary()?);
                }
                3 => shm.poke64(DROPPED, u.arbitrary()?),
                _ => {
                    let n = usize::from(u.int_in_range(0..=128u8)?);
                    let before = shm.snapshot();
                    let head = shm.peek64(HEAD);
                    let flush = shm.peek64(FLUSH);
                    let avail = head.wrapping_sub(tail);
                    let r = c.read(&mut buf[..n]);
                    if broken {
                        assert_eq!(r, Err(RingError::Disabled), "a disabled ring read again");
                    } else if avail > cap {
                        assert!(
                            matches!(r, Err(RingError::WildProducer { .. })),
                            "wild head {head} not reported: {r:?}"
                        );
                        broken = true;
                    }
                    assert_eq!(c.is_disabled(), broken);
                    if let Ok(read) = r {
                        assert_eq!(read.len as u64, avail.min(n as u64), "read length");
                        for (i, &b) in buf[..read.len].iter().enumerate() {
                            if crosses_2_64(tail, read.len, cap) {
                                break; // see `crosses_2_64`
                            }
                            let at = HEADER_LEN + (tail.wrapping_add(i as u64) % cap) as usize;
                            assert_eq!(b, before[at], "byte {i} read is not the ring's");
                        }
                        let mark = flush.wrapping_sub(tail);
                        let inside = (1..=read.len as u64).contains(&mark);
                        assert_eq!(
                            read.flush_at.map(|f| f as u64),
                            inside.then_some(mark),
                            "flush mark"
                        );
                        tail = tail.wrapping_add(read.len as u64);
                        assert_eq!(shm.peek64(TAIL), tail, "published tail");
                    }
                    assert_only_changed(&shm, &before, &[(TAIL, TAIL + 8)], "the console consumer");
                }
            }
            Ok(())
        })();
        shm.check_guards();
        if r.is_err() {
            break;
        }
    }
}

fn byte_producer_vs_hostile_consumer(u: &mut Unstructured) {
    let (shm, cap) = byte_shm(u, true);
    let mut p = Producer::attach(byte_window(&shm));
    let mut head = shm.peek64(HEAD);
    for _ in 0..MAX_OPS {
        let Ok(op) = u.int_in_range(0..=4u8) else {
            break;
        };
        let r: arbitrary::Result<()> = (|| {
            match op {
                0 => shm.poke64(TAIL, wild_word(u, head.wrapping_sub(cap))?),
                1 => shm.poke64(HEAD, u.arbitrary()?),
                2 => {
                    let before = shm.snapshot();
                    p.flush();
                    assert_eq!(shm.peek64(FLUSH), head, "flush mark");
                    assert_only_changed(&shm, &before, &[(FLUSH, FLUSH + 8)], "flush");
                }
                _ => {
                    let len = usize::from(u.int_in_range(0..=120u8)?);
                    let fill: u8 = u.arbitrary()?;
                    let bytes: Vec<u8> = (0..len).map(|i| fill ^ i as u8).collect();
                    let before = shm.snapshot();
                    let tail = shm.peek64(TAIL);
                    let used = head.wrapping_sub(tail);
                    let dropped = p.dropped();
                    let r = p.write(&bytes);
                    match r {
                        Ok(true) => {
                            assert!(
                                used <= cap && len as u64 <= cap - used,
                                "wrote {len} into {used}/{cap}"
                            );
                            let mut allowed = vec![(HEAD, HEAD + 8)];
                            for (i, &b) in bytes.iter().enumerate() {
                                let at = HEADER_LEN + (head.wrapping_add(i as u64) % cap) as usize;
                                if crosses_2_64(head, len, cap) {
                                    // Positions past 2^64 are not `p % capacity` here:
                                    // only the data area may change.
                                    allowed.push((HEADER_LEN, HEADER_LEN + cap as usize));
                                    break;
                                }
                                assert_eq!(shm.peek8(at), b, "byte {i} written");
                                allowed.push((at, at + 1));
                            }
                            head = head.wrapping_add(len as u64);
                            assert_eq!(shm.peek64(HEAD), head, "published head");
                            assert_only_changed(&shm, &before, &allowed, "a write");
                        }
                        Ok(false) | Err(_) => {
                            match r {
                                Ok(false) => assert!(
                                    used <= cap && len as u64 > cap - used,
                                    "fitting write dropped"
                                ),
                                Err(RingError::WildConsumer { .. }) => {
                                    assert!(used > cap, "sane tail called wild")
                                }
                                _ => panic!("unexpected write result {r:?}"),
                            }
                            assert_eq!(
                                p.dropped(),
                                dropped.wrapping_add(len as u64),
                                "drop not counted"
                            );
                            assert_only_changed(
                                &shm,
                                &before,
                                &[(DROPPED, DROPPED + 8)],
                                "a dropped write",
                            );
                        }
                    }
                }
            }
            Ok(())
        })();
        shm.check_guards();
        if r.is_err() {
            break;
        }
    }
}

fn byte_honest_pair(u: &mut Unstructured) {
    let (shm, cap) = byte_shm(u, false);
    let mut p = Producer::attach(byte_window(&shm));
    let mut c = Consumer::attach(byte_window(&shm));
    let mut reference: VecDeque<u8> = VecDeque::new();
    let mut n = 0u8;
    let mut buf = [0u8; 128];
    for _ in 0..MAX_OPS {
        let Ok(op) = u.int_in_range(0..=2u8) else {
            break;
        };
        let Ok(len) = u.int_in_range(0..=100u8) else {
            break;
        };
        if op == 0 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    n = n.wrapping_add(1);
                    n
                })
                .collect();
            let fits = bytes.len() + reference.len() <= cap as usize;
            assert_eq!(
                p.write(&bytes),
                Ok(fits),
                "write of {len} with {} of {cap} used",
                reference.len()
            );
            if fits {
                reference.extend(bytes);
            }
        } else {
            let r = c.read(&mut buf[..usize::from(len)]).expect("honest read");
            assert_eq!(r.len, reference.len().min(usize::from(len)), "read length");
            for &b in &buf[..r.len] {
                assert_eq!(
                    Some(b),
                    reference.pop_front(),
                    "byte lost, reordered or duplicated"
                );
            }
        }
        shm.check_guards();
    }
}

/// A MAC from a small alphabet (so that the fuzzer reuses them), or any MAC.
fn fuzz_mac(u: &mut Unstructured, declared: &[Option<Mac>]) -> arbitrary::Result<Mac> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => Mac(u.arbitrary()?),
        1 => Mac::BROADCAST,
        2 => Mac([0x01, 0x00, 0x5e, 0, 0, u.int_in_range(0..=3u8)?]),
        3 | 4 => {
            let i = usize::from(u.arbitrary::<u8>()?) % declared.len().max(1);
            declared
                .get(i)
                .copied()
                .flatten()
                .unwrap_or(Mac([2, 0, 0, 0, 0, 0x40 + i as u8]))
        }
        _ => Mac([0x02, 0, 0, 0, 0, 0x40 + u.int_in_range(0..=15u8)?]),
    })
}

fn switch_config(u: &mut Unstructured) -> arbitrary::Result<SwitchConfig> {
    let queue_depth = usize::from(u.int_in_range(1..=6u8)?);
    Ok(SwitchConfig {
        max_ports: usize::from(u.int_in_range(1..=6u8)?),
        mac_table: usize::from(u.int_in_range(1..=8u8)?),
        queue_depth,
        flood_depth: usize::from(u.int_in_range(1..=queue_depth as u8)?),
        max_frame: usize::from(u.int_in_range(14..=MAX_FRAME as u16)?),
        ageing_ms: u64::from(u.int_in_range(0..=1000u16)?),
        flood_rate: u32::from(u.int_in_range(1..=2000u16)?),
        flood_burst: u32::from(u.int_in_range(1..=8u8)?),
    })
}

/// Ports (VMs with a MAC, or uplinks) and allowed pairs chosen by the fuzzer.
fn build_switch(u: &mut Unstructured) -> arbitrary::Result<(Switch, Vec<Option<Mac>>)> {
    let cfg = switch_config(u)?;
    let mut sw = Switch::new(cfg).expect("config within the documented ranges");
    let mut macs = Vec::new();
    for i in 0..u.int_in_range(1..=cfg.max_ports as u8)? {
        let r = if u.int_in_range(0..=4u8)? == 0 {
            sw.add_uplink().map(|p| (p, None))
        } else {
            let mac = Mac([0x02, 0, 0, 0, 0, i + 1]);
            sw.add_port(mac).map(|p| (p, Some(mac)))
        };
        let (p, m) = r.expect("distinct unicast MACs within max_ports");
        assert_eq!(usize::from(p.0), macs.len());
        macs.push(m);
    }
    let n = macs.len() as u16;
    for _ in 0..u.int_in_range(0..=12u8)? {
        let a = PortId(u.int_in_range(0..=n - 1)?);
        let b = PortId(u.int_in_range(0..=n - 1)?);
        sw.allow(a, b).expect("ports exist");
    }
    Ok((sw, macs))
}

fn fuzz_frame(
    u: &mut Unstructured,
    macs: &[Option<Mac>],
    src_port: usize,
) -> arbitrary::Result<Vec<u8>> {
    let dst = fuzz_mac(u, macs)?;
    let src = if u.int_in_range(0..=3u8)? == 0 {
        fuzz_mac(u, macs)?
    } else {
        macs[src_port].unwrap_or(Mac([0x02, 0, 0, 0, 0x77, u.int_in_range(0..=9u8)?]))
    };
    let len = match u.int_in_range(0..=7u8)? {
        0 => usize::from(u.int_in_range(0..=1600u16)?),
        _ => usize::from(u.int_in_range(14..=80u8)?),
    };
    let mut f = vec![0u8; len.max(12)];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f.truncate(len);
    for (i, b) in f.iter_mut().enumerate().skip(12) {
        *b = i as u8;
    }
    Ok(f)
}

/// The MACs of `alphabet` the switch currently maps to a port: never more than its table.
fn assert_table_bounded(sw: &Switch, alphabet: &[Mac], now: u64) {
    let fresh = alphabet
        .iter()
        .filter(|&&m| sw.lookup(m, now).is_some())
        .count();
    assert!(
        fresh <= sw.config().mac_table,
        "{fresh} MACs mapped with a table of {}",
        sw.config().mac_table
    );
}

fn switch_hostile_ports(u: &mut Unstructured) {
    let Ok((mut sw, macs)) = build_switch(u) else {
        return;
    };
    let n = macs.len();
    let mut now = 0u64;
    let mut seen: Vec<Mac> = Vec::new();
    for _ in 0..MAX_OPS {
        let r: arbitrary::Result<()> = (|| {
            match u.int_in_range(0..=5u8)? {
                0 => now = now.saturating_add(u64::from(u.arbitrary::<u16>()?)),
                1 => {
                    let p = PortId(u.int_in_range(0..=n as u16)?);
                    let before = sw.queued(p).ok();
                    let f = sw.peek_output(p).map(<[u8]>::len);
                    assert_eq!(sw.pop_output(p), f, "pop_output is not the peeked frame");
                    if let (Some(b), Some(_)) = (before, f) {
                        assert_eq!(sw.queued(p), Ok(b - 1));
                    }
                }
                _ => {
                    let from = usize::from(u.int_in_range(0..=n as u16 - 1)?);
                    let frame = fuzz_frame(u, &macs, from)?;
                    let id = PortId(from as u16);
                    let before: Vec<usize> = (0..n)
                        .map(|p| sw.queued(PortId(p as u16)).unwrap())
                        .collect();
                    let valid = (14..=sw.config().max_frame).contains(&frame.len());
                    let (dst, src) = if valid {
                        (
                            Mac(frame[..6].try_into().unwrap()),
                            Mac(frame[6..12].try_into().unwrap()),
                        )
                    } else {
                        (Mac::default(), Mac::default())
                    };
                    if valid {
                        seen.extend([dst, src]);
                        seen.sort_by_key(|m| m.0);
                        seen.dedup();
                    }
                    let v = sw.input(id, &frame, now).expect("port exists");
                    // Learning the source is all `input` changes in the table before it
                    // looks the destination up, so the lookup now is the one it made.
                    let routed = !matches!(
                        v,
                        Verdict::Dropped(Drop::TooShort | Drop::TooLong | Drop::Spoofed)
                    );
                    let known = (routed && !dst.is_multicast() && dst != src)
                        .then(|| sw.lookup(dst, now))
                        .flatten();
                    let after: Vec<usize> = (0..n)
                        .map(|p| sw.queued(PortId(p as u16)).unwrap())
                        .collect();
                    let mut grew = 0;
                    for p in 0..n {
                        let d = after[p] - before[p];
                        assert!(d <= 1, "port {p} got {d} copies of one frame");
                        assert!(
                            after[p] <= sw.config().queue_depth,
                            "queue {p} over its depth"
                        );
                        if d == 1 {
                            grew += 1;
                            assert_ne!(p, from, "frame queued back to its input port {from}");
                            assert!(
                                sw.is_allowed(id, PortId(p as u16)),
                                "frame {from}->{p} not allowed"
                            );
                            if let Some(to) = known {
                                assert_eq!(
                                    p,
                                    usize::from(to.0),
                                    "unicast to a learned MAC went to another port"
                                );
                            }
                        }
                    }
                    match v {
                        Verdict::Queued(k) => assert_eq!(k, grew, "verdict count vs queues"),
                        Verdict::Dropped(why) => {
                            assert_eq!(grew, 0, "dropped ({why:?}) yet queued");
                            if !valid {
                                assert!(
                                    matches!(why, Drop::TooShort | Drop::TooLong),
                                    "invalid frame: {why:?}"
                                );
                            }
                        }
                    }
                    if !valid {
                        assert!(
                            matches!(v, Verdict::Dropped(Drop::TooShort | Drop::TooLong)),
                            "bad frame length accepted: {v:?}"
                        );
                    }
                    if let (Some(to), Verdict::Queued(k)) = (known, v) {
                        assert_eq!(k, 1, "known unicast to {to:?} flooded");
                    }
                    let spoofed = match macs[from] {
                        Some(declared) => src != declared,
                        None => src.is_multicast() || macs.contains(&Some(src)),
                    };
                    if valid && spoofed {
                        assert_eq!(
                            v,
                            Verdict::Dropped(Drop::Spoofed),
                            "spoofed source {src} accepted"
                        );
                    }
                }
            }
            assert_table_bounded(&sw, &seen, now);
            Ok(())
        })();
        if r.is_err() {
            break;
        }
    }
}

/// A doorbell that counts its rings.
#[derive(Clone, Default)]
struct CountBell(Arc<AtomicU64>);

impl Doorbell for CountBell {
    fn ring(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl CountBell {
    fn rings(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One port's two rings; the hostile VMM side is the fuzzer plus an honest producer and
/// consumer it may use.
struct VmSide {
    to_switch: Shm,
    from_switch: Shm,
    tx: FrameProducer,
    rx: FrameConsumer,
}

fn service_hostile_vmms(u: &mut Unstructured) {
    let Ok((sw, macs)) = build_switch(u) else {
        return;
    };
    let max_frame = sw.config().max_frame;
    let slots = 1u64 << u.int_in_range(0..=2u8).unwrap_or(1);
    let len = window_len(slots).unwrap();
    let mut vms = Vec::new();
    let mut bells = Vec::new();
    let mut windows: Vec<(PortWindows, Box<dyn Doorbell>)> = Vec::new();
    for _ in &macs {
        let bell = CountBell::default();
        bells.push(bell.clone());
        let (a, b) = (Shm::new(len, false, 0), Shm::new(len, false, 0));
        windows.push((
            PortWindows {
                to_switch: frame_window(&a, slots),
                from_switch: frame_window(&b, slots),
            },
            Box::new(bell),
        ));
        let tx = FrameProducer::attach(frame_window(&a, slots));
        let rx = FrameConsumer::attach(frame_window(&b, slots));
        vms.push(VmSide {
            to_switch: a,
            from_switch: b,
            tx,
            rx,
        });
    }
    let mut svc = SwitchService::new(sw, windows).expect("one window pair per port");
    let n = macs.len();
    let mut now = 0u64;
    let mut buf = [0u8; MAX_FRAME];
    let mut wild_to_switch = vec![false; n];
    for _ in 0..MAX_OPS {
        let r: arbitrary::Result<()> = (|| {
            let p = usize::from(u.int_in_range(0..=n as u16 - 1)?);
            match u.int_in_range(0..=7u8)? {
                0 => {
                    let head = vms[p].to_switch.peek64(HEAD);
                    let w = wild_word(u, head)?;
                    vms[p].to_switch.poke64(HEAD, w);
                }
                1 => {
                    let tail = vms[p].from_switch.peek64(TAIL);
                    let w = wild_word(u, tail)?;
                    vms[p].from_switch.poke64(TAIL, w);
                }
                2 => {
                    // A garbage length in the next slot of to_switch.
                    let head = vms[p].to_switch.peek64(HEAD);
                    let l = u.arbitrary::<u32>()?;
                    vms[p].to_switch.poke64(slot_off(head, slots), u64::from(l));
                    vms[p].to_switch.poke64(HEAD, head.wrapping_add(1));
                }
                3 => now = now.saturating_add(u64::from(u.arbitrary::<u8>()?)),
                4 => {
                    let _ = vms[p].rx.recv(&mut buf);
                }
                5 => {
                    let budget = usize::from(u.int_in_range(1..=8u8)?);
                    let rx_before: u64 = (0..n)
                        .map(|i| svc.counters(PortId(i as u16)).unwrap().switch.rx_frames)
                        .sum();
                    let rung: Vec<u64> = bells.iter().map(CountBell::rings).collect();
                    let s = svc.service(now, budget);
                    for (i, b) in bells.iter().enumerate() {
                        assert!(
                            b.rings() - rung[i] <= 1,
                            "port {i}'s doorbell rung more than once in one call"
                        );
                    }
                    let rx_after: u64 = (0..n)
                        .map(|i| svc.counters(PortId(i as u16)).unwrap().switch.rx_frames)
                        .sum();
                    assert!(
                        rx_after - rx_before <= budget as u64,
                        "service took more than its budget"
                    );
                    for (i, wild) in wild_to_switch.iter_mut().enumerate() {
                        let rep = svc.counters(PortId(i as u16)).unwrap();
                        *wild |= rep.to_switch_broken;
                        assert!(
                            rep.to_switch.wild_index <= 1,
                            "a broken ring was read again"
                        );
                    }
                    if s == Service::Idle {
                        for (i, vm) in vms.iter().enumerate() {
                            let head = vm.to_switch.peek64(HEAD);
                            let tail = vm.to_switch.peek64(TAIL);
                            assert!(
                                wild_to_switch[i] || head == tail,
                                "Idle with frames pending on port {i}"
                            );
                        }
                    }
                    // Every frame now in a from_switch ring: drain and check as the VMM.
                    for (i, vm) in vms.iter_mut().enumerate() {
                        for _ in 0..slots {
                            match vm.rx.recv(&mut buf) {
                                Ok(Recv::Frame(len)) => {
                                    assert!(
                                        (14..=max_frame).contains(&len),
                                        "switch delivered {len} bytes"
                                    );
                                    let src = Mac(buf[6..12].try_into().unwrap());
                                    if let Some(m) = macs[i] {
                                        assert_ne!(src, m, "port {i} got its own frame back");
                                    }
                                }
                                _ => break,
                            }
                        }
                    }
                }
                _ => {
                    let frame = fuzz_frame(u, &macs, p)?;
                    let _ = vms[p].tx.send(&frame);
                }
            }
            for vm in &vms {
                vm.to_switch.check_guards();
                vm.from_switch.check_guards();
            }
            Ok(())
        })();
        if r.is_err() {
            break;
        }
    }
}

fn vmm_port_vs_hostile_switch(u: &mut Unstructured) {
    let (to_switch, slots) = frame_shm(u);
    let from_switch = Shm::new(to_switch.len, u.arbitrary().unwrap_or(false), 0);
    let mut port = VmmPort::new(
        PortWindows {
            to_switch: frame_window(&to_switch, slots),
            from_switch: frame_window(&from_switch, slots),
        },
        Box::new(CountBell::default()),
        None,
    );
    // The switch's sides, which the fuzzer also bypasses.
    let mut sw_tx = FrameProducer::attach(frame_window(&from_switch, slots));
    let mut sw_rx = FrameConsumer::attach(frame_window(&to_switch, slots));
    let tail0 = from_switch.peek64(TAIL);
    let mut scratch = [0u8; MAX_FRAME];
    let mut big = vec![0u8; 2 * MAX_FRAME];
    for _ in 0..MAX_OPS {
        let r: arbitrary::Result<()> = (|| {
            match u.int_in_range(0..=7u8)? {
                0 => {
                    let head = from_switch.peek64(HEAD);
                    from_switch.poke64(HEAD, wild_word(u, head)?);
                }
                1 => {
                    let tail = to_switch.peek64(TAIL);
                    to_switch.poke64(TAIL, wild_word(u, tail)?);
                }
                2 => {
                    // A garbage slot published by the switch.
                    let head = from_switch.peek64(HEAD);
                    let len = match u.int_in_range(0..=2u8)? {
                        0 => u.arbitrary::<u32>()?,
                        _ => u32::from(u.int_in_range(0..=1600u16)?),
                    };
                    from_switch.poke64(slot_off(head, slots), u64::from(len));
                    from_switch.poke64(HEAD, head.wrapping_add(1));
                }
                3 => {
                    let len = usize::from(u.int_in_range(1..=MAX_FRAME as u16)?);
                    let fill: u8 = u.arbitrary()?;
                    let f: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                    let _ = sw_tx.send(&f);
                }
                4 => {
                    let _ = sw_rx.recv(&mut scratch);
                }
                5 => {
                    let len = match u.int_in_range(0..=3u8)? {
                        0 => 0,
                        1 => MAX_FRAME + 1 + usize::from(u.arbitrary::<u8>()?),
                        _ => usize::from(u.int_in_range(1..=MAX_FRAME as u16)?),
                    };
                    let f = vec![0x5a; len];
                    let was = port.counters().to_switch;
                    match port.send(&f) {
                        Err(NetError::TooLong { len: l, max }) => {
                            assert!(
                                len > MAX_FRAME && l == len && max == MAX_FRAME,
                                "TooLong for {len}"
                            )
                        }
                        _ if len > MAX_FRAME => panic!("a {len}-byte frame was not refused"),
                        Err(NetError::Disconnected) => {
                            assert_eq!(port.counters().to_switch.dropped_wild, was.dropped_wild + 1)
                        }
                        Err(NetError::Full { .. }) => {
                            assert_eq!(port.counters().to_switch.dropped_full, was.dropped_full + 1)
                        }
                        Ok(()) => assert!(len >= 1, "empty frame sent"),
                        Err(e) => assert!(len == 0, "send of {len} bytes failed: {e}"),
                    }
                }
                _ => {
                    let l = match u.int_in_range(0..=3u8)? {
                        0 => usize::from(u.int_in_range(0..=64u8)?),
                        1 => usize::from(u.int_in_range(0..=MAX_FRAME as u16)?),
                        2 => MAX_FRAME,
                        _ => 2 * MAX_FRAME,
                    };
                    let before = from_switch.snapshot();
                    let was = port.counters();
                    let taken = |c: &keel_net::port::VmmPortCounters| {
                        c.from_switch.frames + c.from_switch.bad_length
                    };
                    let got = port.recv(&mut big[..l]);
                    let now = port.counters();
                    let steps = taken(&now) - taken(&was);
                    assert!(steps <= RECV_STEPS as u64, "recv took {steps} slots");
                    if was.rx_broken {
                        assert_eq!(got, None, "a broken ring delivered");
                        assert_eq!(steps, 0, "a broken ring was read");
                    }
                    if let Some(n) = got {
                        assert!(
                            n >= 1 && n <= l && n <= MAX_FRAME,
                            "recv of {n} bytes into {l}"
                        );
                        let pos = tail0.wrapping_add(taken(&now)).wrapping_sub(1);
                        let s = slot_off(pos, slots) + 8;
                        assert_eq!(
                            &big[..n],
                            &before[s..s + n],
                            "frame is not the slot's bytes"
                        );
                    }
                    assert!(
                        !port.backlogged() || got.is_none(),
                        "backlogged after delivering a frame"
                    );
                    assert_only_changed(
                        &from_switch,
                        &before,
                        &[(TAIL, TAIL + 8), (WAKEUP, WAKEUP + 8)],
                        "the VMM's recv",
                    );
                }
            }
            to_switch.check_guards();
            from_switch.check_guards();
            Ok(())
        })();
        if r.is_err() {
            break;
        }
    }
}
