//! Fuzz target `virtqueue`: the split virtqueue (`keel_virtio::queue`) over mock guest
//! memory, against a reference model written from the virtio 1.2 spec (§2.7).
//!
//! Feeds: the queue's maximum and chosen size (valid and hostile), ring addresses (valid,
//! misaligned, at region ends, in the RAM hole, anywhere), EVENT_IDX and INDIRECT_DESC,
//! then a sequence of guest actions (raw descriptor-table entries, indirect-table entries,
//! well-formed chains, available-ring entries and index, avail flags, used_event, raw byte
//! stores anywhere, reconfiguration and reset) interleaved with device operations (`pop`,
//! `read_at`, `read_all`, `write_at` on a popped chain, `add_used` with a fuzzed head and
//! length, `needs_notification`).
//!
//! Invariants (each checked after every operation; where the real code enforces it):
//! - `pop` accepts exactly the chains the reference walk accepts, with the same segments
//!   (zero-length descriptors dropped): ring validation (`Queue::validate`), available-index
//!   runaway (`Queue::pending`), head/next index inside the table, at most table-size
//!   descriptors per table (loop-free), indirect rules, every buffer wholly in RAM, no
//!   readable after writable, total < 4 GiB (all in `Queue::read_chain`).
//! - every segment of an accepted chain lies wholly in guest RAM, readable ones first, and
//!   `readable_len`/`writable_len` are the sums of the segments (`DescriptorChain`).
//! - a rejected pop does not advance `next_avail` (`Queue::pop`), so a rejected chain is
//!   never handed to a device and the harness can never complete it.
//! - the device writes guest memory only: in `pop`, the used ring's `avail_event` (with
//!   EVENT_IDX); in `add_used`, one used element and the used index; in `write_at`, exactly
//!   the pieces of the chain's WRITE-flagged segments the offset/length select
//!   (`DescriptorChain::write_at`, `for_each_piece`); nothing in `read_at`/`read_all`/
//!   `needs_notification`. Every write is recorded by a wrapping `GuestMemory`.
//! - `read_at` returns exactly the guest bytes of the selected readable pieces; out-of-range
//!   accesses fail without touching memory (`check_part`).
//! - `add_used` refuses a head ≥ queue size (`Queue::add_used`) and otherwise writes the
//!   length it is given verbatim: the queue layer does NOT clamp a used length to the
//!   chain's writable length (it does not know the chain); that bound is the devices' job and
//!   is checked per device by the `virtio_devices` target.
//! - `needs_notification` equals the spec's rule: false when nothing was used since the last
//!   decision; with EVENT_IDX `vring_need_event(used_event, new, old)` (true on the first
//!   decision); without, `!(avail.flags & NO_INTERRUPT)`.
//! - no panic.

use arbitrary::Unstructured;
use keel_core::{GuestAddress, GuestRam};
use keel_virtio::queue::{
    DescriptorChain, Queue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

use crate::virtio_common::{Recording, addr, in_ram, peek, peek_u16, poke, ram, within};

/// Queue configuration as the harness (the driver) last wrote it.
#[derive(Clone, Copy, Debug)]
struct Cfg {
    max: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    indirect: bool,
}

impl Cfg {
    fn apply(&self, q: &mut Queue) {
        q.set_size(self.size);
        q.set_ready(self.ready);
        q.set_desc_table(GuestAddress(self.desc));
        q.set_avail_ring(GuestAddress(self.avail));
        q.set_used_ring(GuestAddress(self.used));
        q.set_event_idx(self.event_idx);
        q.set_indirect(self.indirect);
    }

    /// §2.7: size a power of two within the device maximum, rings aligned 16/2/4 and
    /// wholly in RAM for this size.
    fn valid(&self) -> bool {
        let n = u64::from(self.size);
        self.ready
            && self.size != 0
            && self.size.is_power_of_two()
            && self.size <= self.max
            && self.desc % 16 == 0
            && self.avail % 2 == 0
            && self.used % 4 == 0
            && in_ram(self.desc, 16 * n)
            && in_ram(self.avail, 6 + 2 * n)
            && in_ram(self.used, 6 + 8 * n)
    }
}

/// One buffer of a reference chain: (addr, len, writable).
type Seg = (u64, u32, bool);

/// The reference walk of the chain at `head` (§2.7.5, §2.7.5.3), over the guest's memory.
/// `None` when the chain must be refused.
fn reference_chain(ram: &GuestRam, cfg: &Cfg, head: u16) -> Option<Vec<Seg>> {
    let mut table = cfg.desc;
    let mut table_len = u32::from(cfg.size);
    let mut in_indirect = false;
    let mut index = u32::from(head);
    let mut seen = 0u32;
    let mut seen_writable = false;
    let mut total = 0u64;
    let mut segs = Vec::new();
    loop {
        if index >= table_len {
            return None; // not a descriptor of this table
        }
        seen += 1;
        if seen > table_len {
            return None; // more descriptors than the table has: a loop
        }
        let raw = peek(ram, table + 16 * u64::from(index), 16);
        let a = u64::from_le_bytes(raw[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            // §2.7.5.3.1: only with the feature, never with NEXT, never nested, a whole
            // number of descriptors; the table must be readable guest RAM.
            if in_indirect || !cfg.indirect || flags & VIRTQ_DESC_F_NEXT != 0 {
                return None;
            }
            if len == 0 || len % 16 != 0 || len / 16 > 32768 || !in_ram(a, u64::from(len)) {
                return None;
            }
            table = a;
            table_len = len / 16;
            in_indirect = true;
            index = 0;
            seen = 0;
            continue;
        }
        let writable = flags & VIRTQ_DESC_F_WRITE != 0;
        // §2.7.4.2: device-writable descriptors come after every device-readable one.
        if !writable && seen_writable {
            return None;
        }
        seen_writable |= writable;
        if len != 0 {
            if !in_ram(a, u64::from(len)) {
                return None;
            }
            total += u64::from(len);
            if total > u64::from(u32::MAX) {
                return None; // a used length could not describe it
            }
            segs.push((a, len, writable));
        }
        if flags & VIRTQ_DESC_F_NEXT == 0 {
            return Some(segs);
        }
        index = u32::from(next);
    }
}

/// What the reference expects of `pop`: Err, empty, or a chain (with its head).
enum Expect {
    Refuse,
    Empty,
    Chain(u16, Option<Vec<Seg>>),
}

fn reference_pop(ram: &GuestRam, cfg: &Cfg, next_avail: u16) -> Expect {
    if !cfg.valid() {
        return Expect::Refuse;
    }
    let idx = peek_u16(ram, cfg.avail + 2);
    let pending = idx.wrapping_sub(next_avail);
    if pending > cfg.size {
        return Expect::Refuse;
    }
    if pending == 0 {
        return Expect::Empty;
    }
    let slot = u64::from(next_avail % cfg.size);
    let head = peek_u16(ram, cfg.avail + 4 + 2 * slot);
    Expect::Chain(head, reference_chain(ram, cfg, head))
}

/// The pieces `(gpa, len)` of `[offset, offset + len)` of the concatenated segments, or
/// `None` if the range is not inside them.
fn pieces(segs: &[Seg], offset: u64, len: u64) -> Option<Vec<(u64, u64)>> {
    let total: u64 = segs.iter().map(|s| u64::from(s.1)).sum();
    if offset.checked_add(len)? > total {
        return None;
    }
    let mut out = Vec::new();
    let (mut off, mut left) = (offset, len);
    for &(a, l, _) in segs {
        let l = u64::from(l);
        if left == 0 {
            break;
        }
        if off >= l {
            off -= l;
            continue;
        }
        let n = left.min(l - off);
        out.push((a + off, n));
        left -= n;
        off = 0;
    }
    Some(out)
}

fn segs_of(chain: &DescriptorChain, writable: bool) -> Vec<Seg> {
    let part = if writable {
        chain.writable()
    } else {
        chain.readable()
    };
    part.iter().map(|s| (s.addr.0, s.len, s.writable)).collect()
}

/// A descriptor as 16 raw bytes.
fn desc_bytes(a: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&a.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    b
}

fn pick_cfg(u: &mut Unstructured<'_>) -> Cfg {
    let max = 1u16 << (u.arbitrary::<u8>().unwrap_or(3) % 9); // 1..=256
    let size = match u.arbitrary::<u8>().unwrap_or(0) {
        0..=199 => max >> (u.arbitrary::<u8>().unwrap_or(0) % 3),
        _ => u.arbitrary().unwrap_or(0),
    };
    let hostile = u.arbitrary::<u8>().unwrap_or(0);
    // The default layout: table at 0, available ring at 0x1000, used ring at 0x1400 (room
    // for 256 entries each); buffers live in the second region.
    let (mut desc, mut avail, mut used) = (0u64, 0x1000u64, 0x1400u64);
    if hostile & 1 != 0 {
        desc = addr(u);
    }
    if hostile & 2 != 0 {
        avail = addr(u);
    }
    if hostile & 4 != 0 {
        used = addr(u);
    }
    Cfg {
        max,
        size,
        ready: hostile & 8 == 0,
        desc,
        avail,
        used,
        event_idx: hostile & 16 != 0,
        indirect: hostile & 32 == 0,
    }
}

/// The fuzz target body.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mem = Recording::new(ram());
    let g = &mem.ram; // the guest's view: its stores are not device writes
    let mut cfg = pick_cfg(&mut u);
    let mut q = Queue::new(cfg.max);
    cfg.apply(&mut q);

    // Shadows of the device's positions, from the spec's rules.
    let mut next_avail = 0u16;
    let mut next_used = 0u16;
    let mut signalled: Option<u16> = None;
    // The guest driver's own available index.
    let mut guest_avail = 0u16;
    let mut chains: Vec<DescriptorChain> = Vec::new();

    for _ in 0..512 {
        if u.is_empty() {
            break;
        }
        let op: u8 = u.arbitrary().unwrap_or(0);
        match op % 16 {
            // ---- the guest ----
            0 => {
                // A raw descriptor-table entry.
                let i: u16 = u.arbitrary().unwrap_or(0);
                let a = addr(&mut u);
                let len: u32 = u.arbitrary::<u16>().unwrap_or(0).into();
                let flags: u16 = u.arbitrary::<u8>().unwrap_or(0).into();
                let next: u16 = u.arbitrary().unwrap_or(0);
                let slot = u64::from(i % cfg.size.max(1));
                poke(
                    g,
                    cfg.desc.wrapping_add(16 * slot),
                    &desc_bytes(a, len, flags, next),
                );
            }
            1 => {
                // An indirect table entry (or any 16 bytes) anywhere.
                let at = addr(&mut u) & !15;
                let a = addr(&mut u);
                let len: u32 = u.arbitrary::<u16>().unwrap_or(0).into();
                let flags: u16 = u.arbitrary::<u8>().unwrap_or(0).into();
                let next: u16 = u.arbitrary::<u8>().unwrap_or(0).into();
                poke(g, at, &desc_bytes(a, len, flags, next));
            }
            2 => {
                // A well-formed chain of n buffers, published (the fuzzer then perturbs it).
                let n = 1 + u.arbitrary::<u8>().unwrap_or(0) % 4;
                let first: u16 = u.arbitrary().unwrap_or(0);
                let size = cfg.size.max(1);
                let indirect = u.arbitrary::<u8>().unwrap_or(0) & 1 != 0;
                let base = 0x1_0000 + 0x100 * u64::from(u.arbitrary::<u8>().unwrap_or(0) % 64);
                let mut entries = Vec::new();
                for k in 0..n {
                    let len = 1 + u32::from(u.arbitrary::<u8>().unwrap_or(0));
                    let w = u.arbitrary::<u8>().unwrap_or(0) % 3 == 0 || k + 1 == n;
                    let last = k + 1 == n;
                    let idx = if indirect {
                        u16::from(k)
                    } else {
                        first.wrapping_add(u16::from(k)) % size
                    };
                    let next = if indirect {
                        u16::from(k + 1)
                    } else {
                        first.wrapping_add(u16::from(k + 1)) % size
                    };
                    let mut flags = if w { VIRTQ_DESC_F_WRITE } else { 0 };
                    if !last {
                        flags |= VIRTQ_DESC_F_NEXT;
                    }
                    entries.push((
                        idx,
                        desc_bytes(base + 0x400 * u64::from(k), len, flags, next),
                    ));
                }
                let head = first % size;
                if indirect {
                    let table = 0x1_7000 + 0x40 * u64::from(first % 32);
                    for (idx, d) in &entries {
                        poke(g, table + 16 * u64::from(*idx), d);
                    }
                    let d = desc_bytes(table, 16 * u32::from(n), VIRTQ_DESC_F_INDIRECT, 0);
                    poke(g, cfg.desc.wrapping_add(16 * u64::from(head)), &d);
                } else {
                    for (idx, d) in &entries {
                        poke(g, cfg.desc.wrapping_add(16 * u64::from(*idx)), d);
                    }
                }
                let slot = u64::from(guest_avail % size);
                poke(g, cfg.avail.wrapping_add(4 + 2 * slot), &head.to_le_bytes());
                guest_avail = guest_avail.wrapping_add(1);
                poke(g, cfg.avail.wrapping_add(2), &guest_avail.to_le_bytes());
            }
            3 => {
                // Publish an arbitrary head.
                let head: u16 = u.arbitrary().unwrap_or(0);
                let slot = u64::from(guest_avail % cfg.size.max(1));
                poke(g, cfg.avail.wrapping_add(4 + 2 * slot), &head.to_le_bytes());
                guest_avail = guest_avail.wrapping_add(1);
                poke(g, cfg.avail.wrapping_add(2), &guest_avail.to_le_bytes());
            }
            4 => {
                // An arbitrary available index.
                guest_avail = u.arbitrary().unwrap_or(0);
                poke(g, cfg.avail.wrapping_add(2), &guest_avail.to_le_bytes());
            }
            5 => {
                // Avail flags and used_event.
                let flags: u16 = u.arbitrary().unwrap_or(0);
                let used_event: u16 = u.arbitrary().unwrap_or(0);
                poke(g, cfg.avail, &flags.to_le_bytes());
                let at = cfg.avail.wrapping_add(4 + 2 * u64::from(cfg.size));
                poke(g, at, &used_event.to_le_bytes());
            }
            6 => {
                // Raw bytes anywhere.
                let at = addr(&mut u);
                let n = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 64);
                let bytes = u.bytes(n).unwrap_or(&[]).to_vec();
                poke(g, at, &bytes);
            }
            7 => {
                // Reconfigure (the transport lets the driver rewrite these while not ready)
                // or reset the queue.
                if u.arbitrary::<u8>().unwrap_or(0) & 1 == 0 {
                    cfg = Cfg {
                        max: cfg.max,
                        ..pick_cfg(&mut u)
                    };
                    cfg.apply(&mut q);
                } else {
                    q.reset();
                    cfg = Cfg {
                        max: cfg.max,
                        size: cfg.max,
                        ready: false,
                        desc: 0,
                        avail: 0,
                        used: 0,
                        event_idx: false,
                        indirect: false,
                    };
                    next_avail = 0;
                    next_used = 0;
                    signalled = None;
                }
            }
            // ---- the device ----
            8..=10 => {
                let r = q.pop(&mem);
                let writes = mem.take();
                // The reference runs on memory after pop: pop's only store (avail_event)
                // comes before it reads the index it acts on.
                let expect = reference_pop(g, &cfg, next_avail);
                let n = u64::from(cfg.size);
                for &(a, l) in &writes {
                    assert!(
                        cfg.event_idx && (a, l) == (cfg.used.wrapping_add(4 + 8 * n), 2),
                        "pop wrote guest memory at {a:#x}+{l:#x}: only avail_event may be written"
                    );
                }
                match (r, expect) {
                    (Err(_), Expect::Refuse) | (Ok(None), Expect::Empty) => {}
                    (Err(_), Expect::Chain(_, None)) => {}
                    (Ok(Some(chain)), Expect::Chain(head, Some(segs))) => {
                        assert_eq!(chain.head(), head, "pop returned the wrong head");
                        let got: Vec<Seg> = chain
                            .segments()
                            .iter()
                            .map(|s| (s.addr.0, s.len, s.writable))
                            .collect();
                        assert_eq!(got, segs, "pop's chain differs from the spec walk");
                        check_chain_shape(&chain);
                        next_avail = next_avail.wrapping_add(1);
                        if chains.len() < 16 {
                            chains.push(chain);
                        }
                    }
                    (r, Expect::Refuse) => {
                        panic!("pop must refuse (bad queue or runaway index): {r:?}")
                    }
                    (r, Expect::Empty) => panic!("pop of an empty ring returned {r:?}"),
                    (r, Expect::Chain(h, None)) => {
                        panic!("pop accepted chain at head {h} the spec refuses: {r:?}")
                    }
                    (r, Expect::Chain(h, Some(s))) => {
                        panic!("pop refused chain at head {h} the spec accepts ({s:?}): {r:?}")
                    }
                }
                assert_eq!(
                    q.next_avail(),
                    next_avail,
                    "next_avail moved without a chain"
                );
            }
            11 => {
                // read_at / read_all on a held chain.
                let Some(chain) = pick(&mut u, &chains) else {
                    continue;
                };
                let offset = u64::from(u.arbitrary::<u16>().unwrap_or(0));
                let len = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 4096);
                let segs = segs_of(chain, false);
                let want = pieces(&segs, offset, len as u64);
                let all = u.arbitrary::<u8>().unwrap_or(0) & 1 != 0;
                if all {
                    if chain.readable_len() <= 0x10_0000 {
                        let v = chain.read_all(&mem).expect("read_all of a popped chain");
                        let mut expect = Vec::new();
                        for (a, l) in pieces(&segs, 0, u64::from(chain.readable_len())).unwrap() {
                            expect.extend(peek(g, a, l as usize));
                        }
                        assert!(
                            v == expect,
                            "read_all returned other bytes than the segments hold"
                        );
                    }
                } else {
                    let mut buf = vec![0u8; len];
                    let r = chain.read_at(&mem, offset, &mut buf);
                    match want {
                        Some(p) => {
                            assert!(r.is_ok(), "read_at inside the readable part failed: {r:?}");
                            let mut expect = Vec::new();
                            for (a, l) in p {
                                expect.extend(peek(g, a, l as usize));
                            }
                            assert!(
                                buf == expect,
                                "read_at returned other bytes than the segments hold"
                            );
                        }
                        None => assert!(r.is_err(), "read_at past the readable part succeeded"),
                    }
                }
                let writes = mem.take();
                assert!(writes.is_empty(), "a read wrote guest memory: {writes:x?}");
            }
            12 => {
                // write_at on a held chain.
                let Some(chain) = pick(&mut u, &chains) else {
                    continue;
                };
                let offset = u64::from(u.arbitrary::<u16>().unwrap_or(0));
                let len = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 4096);
                let fill: u8 = u.arbitrary().unwrap_or(0);
                let want = pieces(&segs_of(chain, true), offset, len as u64);
                let r = chain.write_at(&mem, offset, &vec![fill; len]);
                let writes = mem.take();
                match want {
                    Some(p) => {
                        assert!(r.is_ok(), "write_at inside the writable part failed: {r:?}");
                        assert_eq!(
                            writes, p,
                            "write_at wrote other ranges than the writable pieces"
                        );
                        for &(a, l) in &writes {
                            assert!(
                                chain.writable().iter().any(|s| s.writable
                                    && within(a, l, s.addr.0, u64::from(s.len))),
                                "write_at wrote {a:#x}+{l:#x} outside every WRITE segment"
                            );
                        }
                    }
                    None => {
                        assert!(r.is_err(), "write_at past the writable part succeeded");
                        assert!(writes.is_empty(), "a refused write_at wrote {writes:x?}");
                    }
                }
            }
            13 => {
                // add_used with a held chain's head (or any head) and a fuzzed length.
                let sel: u8 = u.arbitrary().unwrap_or(0);
                let head = match pick(&mut u, &chains) {
                    Some(c) if sel & 1 == 0 => c.head(),
                    _ => u.arbitrary().unwrap_or(0),
                };
                let len: u32 = u.arbitrary().unwrap_or(0);
                let r = q.add_used(&mem, head, len);
                let writes = mem.take();
                let n = u64::from(cfg.size);
                if cfg.valid() && head < cfg.size {
                    assert!(
                        r.is_ok(),
                        "add_used of head {head} on a valid queue failed: {r:?}"
                    );
                    let elem = cfg.used + 4 + 8 * u64::from(next_used % cfg.size);
                    next_used = next_used.wrapping_add(1);
                    assert_eq!(
                        writes,
                        vec![(elem, 8), (cfg.used + 2, 2)],
                        "add_used wrote other ranges than one used element and the used index"
                    );
                    let e = peek(g, elem, 8);
                    assert_eq!(
                        u32::from_le_bytes(e[0..4].try_into().unwrap()),
                        u32::from(head)
                    );
                    assert_eq!(
                        u32::from_le_bytes(e[4..8].try_into().unwrap()),
                        len,
                        "add_used changed the length (the queue layer passes it verbatim)"
                    );
                    assert_eq!(
                        peek_u16(g, cfg.used + 2),
                        next_used,
                        "used index not published"
                    );
                } else {
                    assert!(
                        r.is_err(),
                        "add_used accepted head {head} (size {n}) or a bad queue"
                    );
                    assert!(writes.is_empty(), "a refused add_used wrote {writes:x?}");
                }
                assert_eq!(q.next_used(), next_used);
            }
            14 => {
                let r = q.needs_notification(&mem);
                let writes = mem.take();
                assert!(writes.is_empty(), "needs_notification wrote {writes:x?}");
                if !cfg.valid() {
                    assert!(r.is_err(), "needs_notification on a bad queue succeeded");
                    continue;
                }
                let new = next_used;
                let old = signalled.replace(new);
                let want = if old == Some(new) {
                    false
                } else if cfg.event_idx {
                    let event = peek_u16(g, cfg.avail + 4 + 2 * u64::from(cfg.size));
                    match old {
                        None => true,
                        // §2.7.10: vring_need_event(event_idx, new_idx, old_idx).
                        Some(old) => {
                            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
                        }
                    }
                } else {
                    peek_u16(g, cfg.avail) & 1 == 0
                };
                assert_eq!(
                    r.ok(),
                    Some(want),
                    "needs_notification disagrees with the spec"
                );
            }
            _ => {
                // The device forgets a chain.
                if !chains.is_empty() {
                    let i = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % chains.len();
                    chains.swap_remove(i);
                }
            }
        }
    }
}

fn pick<'a>(
    u: &mut Unstructured<'_>,
    chains: &'a [DescriptorChain],
) -> Option<&'a DescriptorChain> {
    if chains.is_empty() {
        return None;
    }
    let i = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % chains.len();
    chains.get(i)
}

/// Every segment wholly in RAM and non-empty, readable ones first, lengths the sums.
fn check_chain_shape(chain: &DescriptorChain) {
    let mut seen_writable = false;
    for s in chain.segments() {
        assert!(s.len != 0, "an empty segment was kept");
        assert!(
            in_ram(s.addr.0, u64::from(s.len)),
            "segment {:#x}+{:#x} is not wholly in guest RAM",
            s.addr.0,
            s.len
        );
        assert!(
            !seen_writable || s.writable,
            "a readable segment follows a writable one"
        );
        seen_writable |= s.writable;
    }
    let sum = |w: bool| -> u64 {
        chain
            .segments()
            .iter()
            .filter(|s| s.writable == w)
            .map(|s| u64::from(s.len))
            .sum()
    };
    assert_eq!(
        u64::from(chain.readable_len()),
        sum(false),
        "readable_len is not the sum"
    );
    assert_eq!(
        u64::from(chain.writable_len()),
        sum(true),
        "writable_len is not the sum"
    );
    assert_eq!(
        chain.readable().len() + chain.writable().len(),
        chain.segments().len()
    );
    assert!(chain.readable().iter().all(|s| !s.writable));
    assert!(chain.writable().iter().all(|s| s.writable));
}
