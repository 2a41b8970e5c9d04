//! Bounded exhaustive checks of the split virtqueue (docs/virtio.md "Bounded exhaustive
//! checks").
//!
//! 1. `descriptor_tables_*`: every descriptor table of the bounds below (every value of every
//!    descriptor the walk visits, every head index in and out of range, every indirect table
//!    the walk enters) is popped by `Queue::pop` and the verdict compared with a reference
//!    validator written here from the virtio 1.2 spec (§2.7.5, §2.7.5.3). The invariants are
//!    asserted on every table (see `check_table`).
//! 2. `used_notification_*` / `avail_kick_*`: every interleaving (all reachable states) of
//!    device completions and decisions with the driver's event index / NO_INTERRUPT settings,
//!    and of driver publications with device pops (avail_event), for queue sizes 2, 4, 8 and
//!    indices starting at 0 and just below the u16 wraparound.
//!
//! Release builds (`cargo test --release`, scripts/test.sh) run the full bounds; debug builds
//! a reduced bound so that `cargo test --workspace` stays quick. Miri skips these tests: they
//! run millions of pops.

use std::collections::HashSet;
use std::time::Instant;

use keel_core::{GuestAddress, GuestMemory, GuestRam};
use keel_virtio::queue::{
    MAX_INDIRECT_ENTRIES, Queue, QueueError, Segment, VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use keel_virtio::testing::{Desc, GuestQueue, ram, write_desc_at};

const NEXT: u16 = VIRTQ_DESC_F_NEXT;
const WRITE: u16 = VIRTQ_DESC_F_WRITE;
const INDIRECT: u16 = VIRTQ_DESC_F_INDIRECT;

// ---------------------------------------------------------------------------------------
// Part 1: descriptor chains.
// ---------------------------------------------------------------------------------------

/// Guest RAM for the descriptor checks: one region `[0, RAM_END)`, a little over 2 GiB so
/// that two in-RAM buffers of 2 GiB add up past the 32-bit used length (`ChainTooLarge`).
/// Heap-allocated zeroed (calloc): only the pages the test touches become resident.
const RAM_END: u64 = 0x8000_0000 + 0x10_0000;
/// The rings (a `GuestQueue`), the in-RAM indirect table and the in-RAM buffers.
const RINGS: u64 = 0x1000;
const TABLE: u64 = 0x4000;
const BUFFER: u64 = 0x8000;

/// Flags of a descriptor: every combination of NEXT, WRITE, INDIRECT but INDIRECT with both.
const FLAGS: [u16; 7] = [
    0,
    NEXT,
    WRITE,
    NEXT | WRITE,
    INDIRECT,
    INDIRECT | NEXT,
    INDIRECT | WRITE,
];

/// Buffer lengths: empty, one byte, a normal buffer, the two halves of 4 GiB (together
/// exactly `u32::MAX`, or 4 GiB with two of the larger: the total overflows), and the
/// largest length (never inside this RAM).
const LENGTHS: [u32; 6] = [0, 1, 16, 0x7fff_ffff, 0x8000_0000, u32::MAX];

/// Buffer addresses for a buffer of `len` bytes: inside RAM, ending exactly at the end of
/// RAM, straddling the end of RAM by one byte, wrapping around the 64-bit address space.
fn buffer_addresses(len: u32) -> [u64; 4] {
    let len = u64::from(len);
    [
        BUFFER,
        RAM_END.wrapping_sub(len),
        RAM_END.wrapping_sub(len).wrapping_add(1),
        u64::MAX - len / 2,
    ]
}

/// Indirect table lengths: zero, not a multiple of 16, 1..=`k_max` entries, one entry more
/// than the maximum, and the largest length.
fn table_lengths(k_max: u32) -> Vec<u32> {
    let mut v = vec![0, 8];
    v.extend((1..=k_max).map(|k| 16 * k));
    v.extend([16 * (MAX_INDIRECT_ENTRIES + 1), u32::MAX]);
    v
}

/// Indirect table addresses for a table of `len` bytes: the in-RAM table, ending exactly at
/// the end of RAM, straddling it by half an entry, wrapping around.
fn table_addresses(len: u32) -> [u64; 4] {
    let len = u64::from(len);
    [
        TABLE,
        RAM_END.wrapping_sub(len),
        RAM_END.wrapping_sub(len).wrapping_add(8),
        u64::MAX - 7,
    ]
}

/// Every value of one descriptor in a table of `table_len` entries: every flag combination,
/// every `next` in the table plus one past it, and for each flag combination every length
/// and address class (table classes for an INDIRECT descriptor).
fn descriptor_domain(table_len: u16, k_max: u32) -> Vec<Desc> {
    let mut v = Vec::new();
    for flags in FLAGS {
        for next in 0..=table_len {
            if flags & INDIRECT != 0 {
                for len in table_lengths(k_max) {
                    for addr in table_addresses(len) {
                        v.push(Desc {
                            addr,
                            len,
                            flags,
                            next,
                        });
                    }
                }
            } else {
                for len in LENGTHS {
                    for addr in buffer_addresses(len) {
                        v.push(Desc {
                            addr,
                            len,
                            flags,
                            next,
                        });
                    }
                }
            }
        }
    }
    v
}

/// What fills every descriptor the reference walk did not visit: all flags (INDIRECT with
/// NEXT), wild address and length. A `Queue` that read a descriptor the spec's walk does
/// not reach would see it and disagree with the reference.
const UNVISITED: Desc = Desc {
    addr: u64::MAX,
    len: u32::MAX,
    flags: 0xffff,
    next: 0xffff,
};

/// Whether `[addr, addr + len)` lies in `[0, RAM_END)` without wrapping.
fn in_ram(addr: u64, len: u32) -> bool {
    addr.checked_add(u64::from(len))
        .is_some_and(|end| end <= RAM_END)
}

/// The largest top-level table and indirect table the checks use.
const MAX_TOP: usize = 4;
const MAX_IND: usize = 4;

/// A partial assignment: the descriptors the walk has visited so far (the others are
/// `UNVISITED`, and no value of theirs can change the verdict).
#[derive(Clone, Debug)]
struct Tables {
    top: [Option<Desc>; MAX_TOP],
    ind: [Option<Desc>; MAX_IND],
}

/// A descriptor slot: the top-level table or the (single) indirect table of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Top(u16),
    Ind(u16),
}

impl Tables {
    fn get(&self, s: Slot) -> Option<Desc> {
        match s {
            Slot::Top(i) => self.top[usize::from(i)],
            Slot::Ind(i) => self.ind[usize::from(i)],
        }
    }

    fn set(&mut self, s: Slot, d: Option<Desc>) {
        match s {
            Slot::Top(i) => self.top[usize::from(i)] = d,
            Slot::Ind(i) => self.ind[usize::from(i)] = d,
        }
    }
}

/// A chain the reference validator accepts.
#[derive(Debug)]
struct RefChain {
    segments: Vec<Segment>,
    readable_len: u64,
    writable_len: u64,
    /// Descriptors in walk order (the indirect descriptor included).
    visited: Vec<Slot>,
}

/// Where the reference walk ended.
#[derive(Debug)]
enum Walk {
    /// It needs descriptor `slot` (of a table of `table_len` entries), which is unassigned.
    Need { slot: Slot, table_len: u16 },
    /// Its verdict, and the indirect table it entered (address, entries).
    Done(Result<RefChain, QueueError>, Option<(u64, u16)>),
}

/// The reference validator, from the spec (virtio 1.2):
/// - a head or `next` index must be inside its table (§2.7.5.2: "next" names a descriptor
///   of the table), else `DescriptorIndexOutOfRange`;
/// - a chain is at most as long as its table (§2.7.5.2: "A driver MUST NOT create a
///   descriptor chain longer than the Queue Size"; inside an indirect table: its entry
///   count, the count starting again at the table's entry 0), else `ChainTooLong`: this is
///   also what stops a loop;
/// - §2.7.5.3.1: INDIRECT only with VIRTIO_F_INDIRECT_DESC, never inside an indirect table,
///   never together with NEXT; the table length a non-zero multiple of 16 of at most 32768
///   entries (the largest queue), wholly in RAM; the WRITE flag of the indirect descriptor is
///   ignored (§2.7.5.3.2); the walk goes on at entry 0 of the table; descriptors before it
///   in the top-level chain stay part of the chain;
/// - §2.7.4.2 / §2.7.5.2: device-writable descriptors come after every device-readable one:
///   a readable descriptor after any writable one (zero-length ones included) is rejected
///   (`ReadableAfterWritable`);
/// - each buffer of non-zero length lies wholly in guest RAM without wrapping (else
///   `DescriptorOutOfRange`); a zero-length buffer carries no bytes: it is not checked and
///   gives no segment;
/// - the chain's total length fits the 32-bit used length (§2.7.5.2: "The driver MUST NOT
///   add a descriptor chain longer than 2^32 bytes in total"), else `ChainTooLarge`.
///
/// Per descriptor the checks run in that order (index, count, indirect, direction, range,
/// total); the first violation in walk order is the verdict.
fn reference(t: &Tables, head: u16, queue_size: u16, indirect_ok: bool) -> Walk {
    let mut table_len = u32::from(queue_size);
    let mut in_indirect: Option<(u64, u16)> = None;
    let mut index = head;
    let mut count = 0u32;
    let mut seen_writable = false;
    let (mut readable_len, mut writable_len) = (0u64, 0u64);
    let mut segments = Vec::new();
    let mut visited = Vec::new();
    let done = |r, ind| Walk::Done(r, ind);
    loop {
        if u32::from(index) >= table_len {
            return done(
                Err(QueueError::DescriptorIndexOutOfRange { index, table_len }),
                in_indirect,
            );
        }
        count += 1;
        if count > table_len {
            return done(
                Err(QueueError::ChainTooLong {
                    head,
                    limit: table_len,
                }),
                in_indirect,
            );
        }
        let slot = if in_indirect.is_some() {
            Slot::Ind(index)
        } else {
            Slot::Top(index)
        };
        let Some(d) = t.get(slot) else {
            return Walk::Need {
                slot,
                table_len: table_len as u16,
            };
        };
        visited.push(slot);
        if d.flags & INDIRECT != 0 {
            let err = if in_indirect.is_some() {
                Some(QueueError::NestedIndirect { index })
            } else if !indirect_ok {
                Some(QueueError::IndirectNotNegotiated { index })
            } else if d.flags & NEXT != 0 {
                Some(QueueError::IndirectWithNext { index })
            } else if d.len == 0 || d.len % 16 != 0 || d.len / 16 > MAX_INDIRECT_ENTRIES {
                Some(QueueError::InvalidIndirectLength { index, len: d.len })
            } else if !in_ram(d.addr, d.len) {
                Some(QueueError::IndirectTableOutOfRange {
                    index,
                    addr: d.addr,
                    len: d.len,
                })
            } else {
                None
            };
            if let Some(e) = err {
                return done(Err(e), in_indirect);
            }
            table_len = d.len / 16;
            in_indirect = Some((d.addr, table_len as u16));
            index = 0;
            count = 0;
            continue;
        }
        let writable = d.flags & WRITE != 0;
        if !writable && seen_writable {
            return done(
                Err(QueueError::ReadableAfterWritable { index }),
                in_indirect,
            );
        }
        seen_writable |= writable;
        if d.len != 0 {
            if !in_ram(d.addr, d.len) {
                return done(
                    Err(QueueError::DescriptorOutOfRange {
                        index,
                        addr: d.addr,
                        len: d.len,
                    }),
                    in_indirect,
                );
            }
            if writable {
                writable_len += u64::from(d.len);
            } else {
                readable_len += u64::from(d.len);
            }
            if readable_len + writable_len > u64::from(u32::MAX) {
                return done(Err(QueueError::ChainTooLarge { head }), in_indirect);
            }
            segments.push(Segment {
                addr: GuestAddress(d.addr),
                len: d.len,
                writable,
            });
        }
        if d.flags & NEXT == 0 {
            return done(
                Ok(RefChain {
                    segments,
                    readable_len,
                    writable_len,
                    visited,
                }),
                in_indirect,
            );
        }
        index = d.next;
    }
}

/// Bounds of one run of the descriptor check.
struct Bounds {
    /// Queue sizes (top-level tables), each with the largest indirect table entered
    /// (tables of 1..=k_max entries) and whether to explore it up to symmetry (below).
    queue_sizes: &'static [(u16, u32, bool)],
}

#[derive(Default, Debug)]
struct Counts {
    /// Partial tables popped (each stands for every table that agrees on the visited
    /// descriptors).
    partial_tables: u64,
    /// Full tables those stand for (top-level table and, if entered, the indirect table).
    full_tables: f64,
    /// Pops (with and without VIRTIO_F_INDIRECT_DESC).
    pops: u64,
    accepted: u64,
    rejected: u64,
    /// Accepted chains that went through an indirect table.
    accepted_indirect: u64,
}

struct Explorer {
    mem: GuestRam,
    gq: GuestQueue,
    size: u16,
    k_max: u32,
    /// Up to symmetry: descriptor indices are names (the spec gives them no other meaning),
    /// so renaming the descriptors of a table does not change its verdict. Then only head 0
    /// (and the out-of-range heads) is tried, and a `next` that leads to a descriptor not
    /// yet visited leads to the lowest such index: every table is a renaming of one
    /// explored.
    symmetric: bool,
    top_domain: Vec<Desc>,
    /// Domains of indirect-table entries, by table length (index k-1).
    ind_domains: Vec<Vec<Desc>>,
    counts: Counts,
}

impl Explorer {
    fn new(mem: GuestRam, size: u16, k_max: u32, symmetric: bool) -> Explorer {
        Explorer {
            mem,
            gq: GuestQueue::new(RINGS, size),
            size,
            k_max,
            symmetric,
            top_domain: descriptor_domain(size, k_max),
            ind_domains: (1..=k_max)
                .map(|k| descriptor_domain(k as u16, k_max))
                .collect(),
            counts: Counts::default(),
        }
    }

    fn domain(&self, slot: Slot, table_len: u16) -> &[Desc] {
        match slot {
            Slot::Top(_) => &self.top_domain,
            Slot::Ind(_) => &self.ind_domains[usize::from(table_len) - 1],
        }
    }

    /// Every table reachable from `head`, by lazy assignment: each time the reference walk
    /// reaches a descriptor nobody assigned, every value of its domain is tried.
    fn explore(&mut self, t: &mut Tables, head: u16) {
        match reference(t, head, self.size, true) {
            Walk::Need { slot, table_len } => {
                if matches!(slot, Slot::Ind(0)) {
                    // Entering the indirect table: without the feature the chain is rejected
                    // at the indirect descriptor, whatever the table holds.
                    self.check_table(t, head, false, None);
                }
                let n = self.domain(slot, table_len).len();
                // Up to symmetry: the lowest descriptor index nobody visited (but `slot`).
                let fresh = match slot {
                    Slot::Top(s) if self.symmetric => {
                        (0..self.size).find(|&i| i != s && t.top[usize::from(i)].is_none())
                    }
                    _ => None,
                };
                for i in 0..n {
                    let d = self.domain(slot, table_len)[i];
                    if let (Some(fresh), Slot::Top(s)) = (fresh, slot) {
                        let follows = d.flags & NEXT != 0 && d.flags & INDIRECT == 0;
                        let unvisited = d.next < self.size
                            && d.next != s
                            && t.top[usize::from(d.next)].is_none();
                        if follows && unvisited && d.next != fresh {
                            continue;
                        }
                    }
                    t.set(slot, Some(d));
                    self.explore(t, head);
                }
                t.set(slot, None);
            }
            Walk::Done(_, ind) => {
                self.counts.partial_tables += 1;
                let top_free = t.top[..usize::from(self.size)]
                    .iter()
                    .filter(|d| d.is_none())
                    .count();
                let mut full = (self.top_domain.len() as f64).powi(top_free as i32);
                if let Some((_, k)) = ind {
                    let free = t.ind[..usize::from(k)]
                        .iter()
                        .filter(|d| d.is_none())
                        .count();
                    full *= (self.ind_domains[usize::from(k) - 1].len() as f64).powi(free as i32);
                }
                if !self.symmetric {
                    self.counts.full_tables += full;
                }
                self.check_table(t, head, true, ind);
                if ind.is_none() {
                    self.check_table(t, head, false, None);
                }
            }
        }
    }

    /// Lay the tables out in guest memory, make `head` available and pop it.
    fn check_table(&mut self, t: &Tables, head: u16, indirect_ok: bool, ind: Option<(u64, u16)>) {
        let expected = match reference(t, head, self.size, indirect_ok) {
            Walk::Done(r, _) => r,
            Walk::Need { slot, .. } => panic!("reference walk incomplete at {slot:?}"),
        };
        let mem = &self.mem;
        for i in 0..self.size {
            let d = t.top[usize::from(i)].unwrap_or(UNVISITED);
            self.gq.write_desc(mem, i, d);
        }
        // Both places an indirect table can be (and is entered from): in RAM and at its end.
        for base in [TABLE, RAM_END - 16 * u64::from(self.k_max)] {
            for i in 0..u64::from(self.k_max) {
                write_desc_at(mem, base + 16 * i, UNVISITED);
            }
        }
        if let Some((addr, k)) = ind {
            for i in 0..k {
                let d = t.ind[usize::from(i)].unwrap_or(UNVISITED);
                write_desc_at(mem, addr + 16 * u64::from(i), d);
            }
        }
        // A fresh ring: one entry, `head`, available; nothing used.
        let gq = &self.gq;
        mem.write_u16(GuestAddress(gq.avail), 0).unwrap();
        mem.write_u16(GuestAddress(gq.avail + 4), head).unwrap();
        mem.write_u16(GuestAddress(gq.avail + 2), 1).unwrap();
        mem.write_u16(GuestAddress(gq.used + 2), 0).unwrap();
        mem.write_u64(GuestAddress(gq.used + 4), 0).unwrap();
        let mut q = gq.device_queue();
        q.set_indirect(indirect_ok);

        // (f) no panic: a panic in pop/add_used fails the test here.
        let got = q.pop(mem);
        self.counts.pops += 1;
        let ctx = || {
            format!(
                "queue size {}, head {head}, indirect feature {indirect_ok}, tables {t:?}",
                self.size
            )
        };
        match (got, expected) {
            (Ok(Some(chain)), Ok(exp)) => {
                self.counts.accepted += 1;
                if ind.is_some() {
                    self.counts.accepted_indirect += 1;
                }
                assert_eq!(chain.head(), head, "{}", ctx());
                assert_eq!(chain.segments(), &exp.segments[..], "{}", ctx());
                assert_eq!(
                    u64::from(chain.readable_len()),
                    exp.readable_len,
                    "{}",
                    ctx()
                );
                assert_eq!(
                    u64::from(chain.writable_len()),
                    exp.writable_len,
                    "{}",
                    ctx()
                );
                // (a) every accepted segment lies wholly inside guest RAM.
                for s in chain.segments() {
                    assert!(s.len != 0 && in_ram(s.addr.0, s.len), "{s:?}: {}", ctx());
                    assert!(mem.contains(s.addr, u64::from(s.len)), "{s:?}: {}", ctx());
                }
                // (b) no descriptor twice; no more descriptors than the table has.
                let distinct: HashSet<Slot> = exp.visited.iter().copied().collect();
                assert_eq!(distinct.len(), exp.visited.len(), "loop: {}", ctx());
                let top = exp
                    .visited
                    .iter()
                    .filter(|s| matches!(s, Slot::Top(_)))
                    .count();
                assert!(top <= usize::from(self.size), "{}", ctx());
                if let Some((_, k)) = ind {
                    assert!(exp.visited.len() - top <= usize::from(k), "{}", ctx());
                }
                assert!(chain.segments().len() <= exp.visited.len(), "{}", ctx());
                // (c) readable segments, then writable ones.
                let first_w = chain
                    .segments()
                    .iter()
                    .position(|s| s.writable)
                    .unwrap_or(chain.segments().len());
                assert!(
                    chain.segments()[first_w..].iter().all(|s| s.writable),
                    "{}",
                    ctx()
                );
                assert_eq!(chain.readable().len(), first_w, "{}", ctx());
                assert_eq!(q.next_avail(), 1, "{}", ctx());
                // (e) the device can neither read nor write past its part of the chain, so
                // the used length it reports (bytes written) is at most `writable_len`.
                assert!(
                    chain
                        .write_at(mem, u64::from(chain.writable_len()), &[0])
                        .is_err(),
                    "{}",
                    ctx()
                );
                let mut b = [0u8];
                assert!(
                    chain
                        .read_at(mem, u64::from(chain.readable_len()), &mut b)
                        .is_err(),
                    "{}",
                    ctx()
                );
                q.add_used(mem, chain.head(), chain.writable_len()).unwrap();
                assert_eq!(mem.read_u16(GuestAddress(gq.used + 2)).unwrap(), 1);
                assert_eq!(
                    mem.read_u32(GuestAddress(gq.used + 4)).unwrap(),
                    u32::from(head)
                );
                let used_len = mem.read_u32(GuestAddress(gq.used + 8)).unwrap();
                assert!(used_len <= chain.writable_len(), "{}", ctx());
            }
            (Err(e), Err(exp)) => {
                self.counts.rejected += 1;
                assert_eq!(e, exp, "{}", ctx());
                // (d) a rejected chain is not taken and not completed: the device's position
                // did not move, nothing was used, and popping again gives the same error.
                assert_eq!(q.next_avail(), 0, "{}", ctx());
                assert_eq!(mem.read_u16(GuestAddress(gq.used + 2)).unwrap(), 0);
                assert_eq!(q.pop(mem), Err(exp), "{}", ctx());
                assert_eq!(mem.read_u16(GuestAddress(gq.used + 2)).unwrap(), 0);
            }
            (got, exp) => panic!(
                "Queue::pop gave {got:?}, the reference {:?}: {}",
                exp.map(|c| c.segments),
                ctx()
            ),
        }
    }
}

fn run_descriptor_check(bounds: &Bounds) -> Counts {
    let t0 = Instant::now();
    let mem = GuestRam::anonymous(&[(0, RAM_END)]).unwrap();
    let mut total = Counts::default();
    for &(size, k_max, symmetric) in bounds.queue_sizes {
        let mut ex = Explorer::new(mem.clone(), size, k_max, symmetric);
        // Every head in the table (up to symmetry: 0), the first one past it and the largest.
        let heads: Vec<u16> = if symmetric {
            vec![0, size, u16::MAX]
        } else {
            (0..=size).chain([u16::MAX]).collect()
        };
        for head in heads {
            let mut t = Tables {
                top: [None; MAX_TOP],
                ind: [None; MAX_IND],
            };
            ex.explore(&mut t, head);
        }
        let c = &ex.counts;
        println!(
            "queue size {size}{}, indirect tables of 1..={} entries: {} partial tables ({:.3e} full tables), {} pops: {} accepted ({} through an indirect table), {} rejected",
            if symmetric { " up to renaming" } else { "" },
            k_max,
            c.partial_tables,
            c.full_tables,
            c.pops,
            c.accepted,
            c.accepted_indirect,
            c.rejected
        );
        total.partial_tables += c.partial_tables;
        total.full_tables += c.full_tables;
        total.pops += c.pops;
        total.accepted += c.accepted;
        total.rejected += c.rejected;
        total.accepted_indirect += c.accepted_indirect;
    }
    println!(
        "descriptor tables: {} partial tables ({:.3e} full tables), {} pops, {} accepted, {} rejected in {:.1} s",
        total.partial_tables,
        total.full_tables,
        total.pops,
        total.accepted,
        total.rejected,
        t0.elapsed().as_secs_f64()
    );
    total
}

/// Split queue sizes are powers of two (3 is refused by `validate`): every table of size 1
/// and 2; in release also size 4 up to renaming of the descriptors, without entering an
/// indirect table (its INDIRECT descriptors take the invalid table lengths only).
#[cfg(not(debug_assertions))]
const DESCRIPTOR_BOUNDS: Bounds = Bounds {
    queue_sizes: &[(1, 3, false), (2, 2, false), (4, 0, true)],
};
#[cfg(debug_assertions)]
const DESCRIPTOR_BOUNDS: Bounds = Bounds {
    queue_sizes: &[(1, 2, false), (2, 1, false)],
};

#[test]
#[cfg_attr(miri, ignore = "millions of pops: far too slow under Miri")]
fn descriptor_tables_agree_with_the_spec_reference_exhaustively() {
    let c = run_descriptor_check(&DESCRIPTOR_BOUNDS);

    // The bounds reach every verdict: both accepted chains (direct and indirect) and
    // rejections.
    assert!(c.accepted > 0 && c.accepted_indirect > 0 && c.rejected > 0);
}

// ---------------------------------------------------------------------------------------
// Part 2: notifications.
// ---------------------------------------------------------------------------------------
//
// The device side is `Queue::add_used` + `Queue::needs_notification` (used ring, driver's
// `used_event` or VIRTQ_AVAIL_F_NO_INTERRUPT) and `Queue::pop` (which, with EVENT_IDX,
// publishes `avail_event` when it finds the ring empty; the device never sets
// VIRTQ_USED_F_NO_NOTIFY). The driver side is modelled here as Linux drives it: it consumes
// used entries, re-arms (`used_event = last seen + d`, or clears NO_INTERRUPT) and then
// re-checks the used index before it waits. Each exploration visits every state reachable
// by any interleaving of these steps (depth-first, states deduplicated on the queue's whole
// state plus the driver's), with the number of completions bounded.
//
// Indices are u16 in the rings; the test keeps absolute (u64) counts, so that "passed index
// k" is plain arithmetic and the 16-bit wraparound is the code's business.

/// Queue sizes and first used indices (0, and just below the 16-bit wraparound so that
/// every run crosses it).
#[cfg(not(debug_assertions))]
const NOTIFY_SIZES: &[u16] = &[2, 4, 8];
#[cfg(debug_assertions)]
const NOTIFY_SIZES: &[u16] = &[2, 4];

fn notify_starts(n: u16) -> [u16; 3] {
    [0, 0u16.wrapping_sub(n), u16::MAX]
}

/// Completions per run: enough to fill the ring twice and cross the wraparound.
fn completions_bound(n: u16) -> u64 {
    #[cfg(not(debug_assertions))]
    return 2 * u64::from(n) + 1;
    #[cfg(debug_assertions)]
    return u64::from(n) + 1;
}

/// Shared state of one used-ring exploration: the device queue plus the driver.
#[derive(Clone, Debug)]
struct UsedState {
    q: Queue,
    event_idx: bool,
    /// Completions so far (absolute: start + this is the used index).
    used: u64,
    /// Entries the driver has consumed.
    seen: u64,
    /// The index the driver's `used_event` names (absolute), event_idx only.
    event: u64,
    /// VIRTQ_AVAIL_F_NO_INTERRUPT set (no event_idx only).
    no_interrupt: bool,
    /// The used index at the device's last decision (None: none yet).
    decided: Option<u64>,
    /// The driver is asleep waiting for a notification: with event_idx, once entry `k` is
    /// used (`Some(k)`); without, for any new entry after `k` entries.
    waiting: Option<u64>,
    /// Notifications since the driver last armed.
    since_arm: u32,
}

#[derive(Clone, Copy, Debug)]
enum UsedStep {
    /// The device completes one chain (add_used).
    Complete,
    /// The device decides whether to interrupt (needs_notification).
    Decide,
    /// The driver consumes every used entry.
    Consume,
    /// event_idx: `used_event = seen + d`, then re-check; otherwise: clear NO_INTERRUPT, then
    /// re-check.
    Arm(u16),
    /// Without event_idx: set NO_INTERRUPT (the driver polls).
    Disable,
}

struct UsedExplorer {
    mem: GuestRam,
    gq: GuestQueue,
    n: u16,
    start: u16,
    bound: u64,
    states: u64,
    notifications: u64,
}

impl UsedExplorer {
    fn abs16(&self, abs: u64) -> u16 {
        self.start.wrapping_add(abs as u16)
    }

    /// Put the driver-written fields of `s` in guest memory (the device wrote the used
    /// index itself: checked, not restored).
    fn load(&self, s: &UsedState) {
        let at = GuestAddress(self.gq.avail + 4 + 2 * u64::from(self.n));
        self.mem.write_u16(at, self.abs16(s.event)).unwrap();
        let flags = if s.no_interrupt {
            VIRTQ_AVAIL_F_NO_INTERRUPT
        } else {
            0
        };
        self.mem
            .write_u16(GuestAddress(self.gq.avail), flags)
            .unwrap();
        self.mem
            .write_u16(GuestAddress(self.gq.used + 2), self.abs16(s.used))
            .unwrap();
    }

    fn steps(&self, s: &UsedState) -> Vec<UsedStep> {
        let mut v = Vec::new();
        // The device completes only chains the driver can have made available: at most n
        // used entries the driver has not consumed.
        if s.used < self.bound && s.used - s.seen < u64::from(self.n) {
            v.push(UsedStep::Complete);
        }
        v.push(UsedStep::Decide);
        v.push(UsedStep::Consume);
        if s.event_idx {
            v.extend((0..self.n).map(UsedStep::Arm));
        } else {
            v.push(UsedStep::Arm(0));
            v.push(UsedStep::Disable);
        }
        v
    }

    fn apply(&mut self, s: &UsedState, step: UsedStep) -> UsedState {
        self.load(s);
        let mut s = s.clone();
        let mem = &self.mem;
        let ctx = format!(
            "queue size {}, start {}, {step:?} from {s:?}",
            self.n, self.start
        );
        match step {
            UsedStep::Complete => {
                s.q.add_used(mem, 0, 0).unwrap();
                s.used += 1;
                let idx = mem.read_u16(GuestAddress(self.gq.used + 2)).unwrap();
                assert_eq!(idx, self.abs16(s.used), "used index: {ctx}");
            }
            UsedStep::Decide => {
                let notify = s.q.needs_notification(mem).unwrap();
                let old = s.decided.replace(s.used);
                // What the spec asks for, in absolute indices: with event_idx, interrupt
                // when the used index moved past `used_event` since the last decision (and
                // at the first decision, which has no "last"); without, when anything was
                // used since then and NO_INTERRUPT is clear.
                let expected = if s.event_idx {
                    match old {
                        None => true,
                        Some(old) => old <= s.event && s.event < s.used,
                    }
                } else {
                    old != Some(s.used) && !s.no_interrupt
                };
                assert_eq!(notify, expected, "decision: {ctx}");
                // No lost notification: a sleeping driver whose condition holds is woken.
                if let Some(k) = s.waiting {
                    assert!(s.used <= k || notify, "lost notification: {ctx}");
                }
                // No storm: none while the driver suppresses them, none without a new
                // used entry, and with event_idx at most one per arming (the first
                // decision on a queue, which has nothing to compare with, aside).
                if notify {
                    assert!(s.event_idx || !s.no_interrupt, "suppressed: {ctx}");
                    assert!(old != Some(s.used), "nothing new: {ctx}");
                    if s.event_idx && old.is_some() {
                        s.since_arm += 1;
                        assert!(s.since_arm <= 1, "second notification: {ctx}");
                    }
                    s.waiting = None;
                    self.notifications += 1;
                }
            }
            UsedStep::Consume => s.seen = s.used,
            UsedStep::Arm(d) => {
                if s.event_idx {
                    s.event = s.seen + u64::from(d);
                    let at = GuestAddress(self.gq.avail + 4 + 2 * u64::from(self.n));
                    mem.write_u16(at, self.abs16(s.event)).unwrap();
                } else {
                    s.no_interrupt = false;
                    mem.write_u16(GuestAddress(self.gq.avail), 0).unwrap();
                }
                s.since_arm = 0;
                // Re-check after arming (virtqueue_enable_cb_delayed / virtqueue_poll): sleep
                // only if the awaited entry is not there yet.
                let idx = mem.read_u16(GuestAddress(self.gq.used + 2)).unwrap();
                let pending = idx.wrapping_sub(self.abs16(s.seen));
                assert_eq!(u64::from(pending), s.used - s.seen, "re-check: {ctx}");
                s.waiting = if s.event_idx {
                    (s.used <= s.event).then_some(s.event)
                } else {
                    (s.used == s.seen).then_some(s.seen)
                };
            }
            UsedStep::Disable => {
                s.no_interrupt = true;
                s.waiting = None;
            }
        }
        s
    }

    /// Every state reachable from `init`.
    fn explore(&mut self, init: UsedState) {
        let mut seen = HashSet::new();
        let mut stack = vec![init];
        while let Some(s) = stack.pop() {
            if !seen.insert(format!("{s:?}")) {
                continue;
            }
            self.states += 1;
            for step in self.steps(&s) {
                let next = self.apply(&s, step);
                stack.push(next);
            }
        }
    }
}

fn run_used_check(event_idx: bool) -> (u64, u64) {
    let t0 = Instant::now();
    let (mut states, mut notifications) = (0, 0);
    for &n in NOTIFY_SIZES {
        // One queue brought forward through the starts (in increasing order).
        let gq = GuestQueue::new(RINGS, n);
        let mut base = gq.device_queue();
        base.set_event_idx(event_idx);
        let base_mem = ram();
        for start in notify_starts(n) {
            // Bring the used index to `start` (the test's used_event follows it).
            while base.next_used() != start {
                base.add_used(&base_mem, 0, 0).unwrap();
            }
            let mem = ram();
            let gq = GuestQueue::new(RINGS, n);
            let q = base.clone();
            let mut ex = UsedExplorer {
                mem,
                gq,
                n,
                start,
                bound: completions_bound(n),
                states: 0,
                notifications: 0,
            };
            let mut init = UsedState {
                q,
                event_idx,
                used: 0,
                seen: 0,
                event: 0,
                no_interrupt: false,
                decided: None,
                waiting: None,
                since_arm: 0,
            };
            if start != 0 {
                // A queue that has decided before (at `start`), and a fresh one at 0.
                ex.load(&init);
                init.q.needs_notification(&ex.mem).unwrap();
                init.decided = Some(0);
            }
            ex.explore(init);
            states += ex.states;
            notifications += ex.notifications;
        }
    }
    println!(
        "used ring, event_idx {event_idx}: queue sizes {NOTIFY_SIZES:?}, starts 0 / size below / 1 below the wraparound: {states} states, {notifications} notifications checked in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    (states, notifications)
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds of thousands of states: far too slow under Miri"
)]
fn used_notification_with_event_idx_is_never_lost_nor_repeated() {
    let (states, notifications) = run_used_check(true);

    assert!(states > 0 && notifications > 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds of thousands of states: far too slow under Miri"
)]
fn used_notification_with_no_interrupt_flag_is_never_lost_nor_sent_when_suppressed() {
    let (states, notifications) = run_used_check(false);

    assert!(states > 0 && notifications > 0);
}

/// One avail-ring exploration state: the device queue and the driver's publications.
#[derive(Clone, Debug)]
struct AvailState {
    q: Queue,
    /// Chains the driver published (absolute).
    published: u64,
    /// Chains the device took.
    taken: u64,
    /// The device found the ring empty (after publishing avail_event and looking again)
    /// and waits for a kick.
    idle: bool,
    /// Value of avail_event in guest memory, as the device last wrote it.
    avail_event: u16,
}

/// Every interleaving of driver publications (with the driver's EVENT_IDX kick decision,
/// `vring_need_event(avail_event, new, old)`) and device pops: the device is never left idle
/// with chains pending (no lost kick) and is kicked only when idle (no kick storm).
fn run_avail_check() -> u64 {
    let t0 = Instant::now();
    let mut total = 0;
    for &n in NOTIFY_SIZES {
        for start in notify_starts(n) {
            let mem = ram();
            let mut gq = GuestQueue::new(RINGS, n);
            let mut q = gq.device_queue();
            q.set_event_idx(true);
            for i in 0..n {
                gq.write_desc(
                    &mem,
                    i,
                    Desc {
                        addr: BUFFER,
                        len: 8,
                        flags: 0,
                        next: 0,
                    },
                );
            }
            // Every ring slot names descriptor `slot`: the ring's contents never change.
            for slot in 0..n {
                mem.write_u16(GuestAddress(gq.avail + 4 + 2 * u64::from(slot)), slot)
                    .unwrap();
            }
            // Bring both indices to `start`.
            for i in 0..start {
                gq.set_avail_idx(&mem, i.wrapping_add(1));
                assert!(q.pop(&mem).unwrap().is_some());
            }
            assert_eq!(q.next_avail(), start);
            // The device finds the ring empty, publishes avail_event and waits.
            assert!(q.pop(&mem).unwrap().is_none());
            let avail_event_at = GuestAddress(gq.used + 4 + 8 * u64::from(n));
            let init = AvailState {
                q,
                published: 0,
                taken: 0,
                idle: true,
                avail_event: mem.read_u16(avail_event_at).unwrap(),
            };
            let bound = completions_bound(n);
            let mut seen = HashSet::new();
            let mut stack = vec![init];
            while let Some(s) = stack.pop() {
                if !seen.insert(format!("{s:?}")) {
                    continue;
                }
                total += 1;
                let ctx = format!("queue size {n}, start {start}, from {s:?}");
                let avail16 = |abs: u64| start.wrapping_add(abs as u16);
                // Driver: publish one chain, fence, read avail_event, kick if it was passed.
                if s.published < bound && s.published - s.taken < u64::from(n) {
                    let mut t = s.clone();
                    mem.write_u16(avail_event_at, s.avail_event).unwrap();
                    let old = avail16(t.published);
                    t.published += 1;
                    let new = avail16(t.published);
                    mem.store_u16_release(GuestAddress(gq.avail + 2), new)
                        .unwrap();
                    let event = mem.read_u16(avail_event_at).unwrap();
                    let kick = new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old);
                    assert_eq!(kick, s.idle, "kick only, and always, when idle: {ctx}");
                    if kick {
                        t.idle = false;
                    }
                    stack.push(t);
                }
                // Device: pop (only when awake: an idle device waits for the kick).
                if !s.idle {
                    let mut t = s.clone();
                    mem.write_u16(avail_event_at, s.avail_event).unwrap();
                    mem.store_u16_release(GuestAddress(gq.avail + 2), avail16(s.published))
                        .unwrap();
                    match t.q.pop(&mem).unwrap() {
                        Some(_) => {
                            assert!(t.taken < t.published, "took an unpublished chain: {ctx}");
                            t.taken += 1;
                        }
                        None => {
                            assert_eq!(t.taken, t.published, "missed a pending chain: {ctx}");
                            t.idle = true;
                        }
                    }
                    t.avail_event = mem.read_u16(avail_event_at).unwrap();
                    // No lost kick: an idle device has nothing pending.
                    assert!(!t.idle || t.taken == t.published, "lost kick: {ctx}");
                    stack.push(t);
                }
            }
        }
    }
    println!(
        "avail ring (avail_event): queue sizes {NOTIFY_SIZES:?}: {total} states in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    total
}

#[test]
#[cfg_attr(miri, ignore = "thousands of states: far too slow under Miri")]
fn avail_kick_with_event_idx_is_never_lost_nor_sent_to_a_busy_device() {
    let states = run_avail_check();

    assert!(states > 0);
}
