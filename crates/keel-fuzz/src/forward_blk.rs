//! Fuzz target `forward_blk`: the asynchronous forwarding disk
//! (`keel_virtio::forward_blk::ForwardBlock`) of a client VMM facing a hostile storage VM.
//!
//! The guest is honest (well-formed requests: reads, writes, flushes, GET_ID, discards,
//! unknown types, inside and past the capacity; at most [`MAX_OUTSTANDING`] at once); the
//! fuzzer plays the storage VM and time: it takes request records, answers them rightly or
//! with any id, status, length and bytes, publishes garbage slots, writes wild `head`,
//! `tail` and `wakeup` words into either ring, delivers the wake-up, polls and advances the
//! clock. A small geometry (4 slots of 1 KiB) makes pieces, batches and full rings common.
//!
//! Invariants (where the code enforces them):
//! - no panic, and the device never asks for a reset (the guest's requests are well formed;
//!   nothing the storage VM does is the guest's fault: `ForwardBlock::answer`, `collect`);
//! - the device writes guest memory only inside its used ring and the device-writable
//!   buffers of chains posted and not completed (recording `GuestMemory`);
//! - a completion names a posted, not yet completed chain, once; its status is OK, IOERR or
//!   UNSUPP; its used length is 1, or data + 1 for an OK read and min(room, 20) + 1 for
//!   GET_ID; requests the device must refuse locally (past the capacity, a write or
//!   discard on a read-only disk) never complete OK, an unknown type is UNSUPP
//!   (`block::parse_request`);
//! - at most `slots` pieces in flight, at most `slots + 1` chains taken (`submit`);
//! - no hang: once the storage VM falls silent, every request the guest posted completes
//!   within a bounded number of timeouts (`expire`), whatever state the rings were left in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::Unstructured;
use keel_core::ring::slot::{Pop, SlotConsumer, SlotProducer, SlotWindow};
use keel_core::{GuestMemoryRef, GuestRam};
use keel_virtio::block::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use keel_virtio::device::EventSource;
use keel_virtio::forward::{ForwardGeometry, RESPONSE_HEADER_LEN};
use keel_virtio::forward_blk::{
    Clock, ForwardBell, ForwardBlock, ForwardDisk, ForwardLink, RESPONSE_EVENT,
};
use keel_virtio::testing::{GuestDriver, RAM_SIZE};

use crate::virtio_common::{Recording, within};

/// Operations per input at most.
const MAX_OPS: usize = 96;
/// Guest requests outstanding at most (3 descriptors each in a 16-entry queue).
const MAX_OUTSTANDING: usize = 4;
/// The geometry: 4 slots of 1 KiB.
const G: ForwardGeometry = ForwardGeometry {
    slots: 4,
    max_data: 1024,
};
/// The disk: 64 sectors.
const DISK_SECTORS: u64 = 64;
const TIMEOUT_MS: u32 = 5000;
const FIRST_ID: u64 = 1000;

struct Bell;
impl ForwardBell for Bell {
    fn ring(&mut self) {}
}

struct FakeClock(Arc<AtomicU64>);
impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A request the guest posted and the device has not completed.
struct Posted {
    head: u16,
    /// Descriptors it occupies.
    descs: u16,
    kind: u32,
    /// Device-writable data buffer (gpa, len) before the status byte.
    data_in: (u64, u32),
    status: u64,
    /// The device must refuse it locally.
    refused: bool,
}

/// The forwarding region: 8-aligned, outliving the device (declared after it where both
/// are held).
struct Region(Vec<u64>);

impl Region {
    fn windows(&mut self) -> (SlotWindow, SlotWindow) {
        let len = self.0.len() * 8;
        // SAFETY: the vector is 8-aligned, `len` bytes long and outlives every window (the
        // device and the hostile ends are dropped before it, in `run`); it is reached
        // only through the windows and the hostile word writes below, which are atomic.
        unsafe { G.windows(self.0.as_mut_ptr().cast(), len) }.expect("the region fits")
    }

    /// The storage VM writes word `index` (atomically: the ring code reads it the same way).
    fn poke(&mut self, index: usize, value: u64) {
        if index < self.0.len() {
            // SAFETY: `index` is inside the vector, so the pointer is a valid, aligned u64
            // of the region (taken without a reference, as the windows' pointers are);
            // atomics are how both ring ends access these words.
            unsafe { AtomicU64::from_ptr(self.0.as_mut_ptr().add(index)) }
                .store(value, Ordering::SeqCst);
        }
    }
}

/// The fuzz target body.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let read_only: bool = u.arbitrary().unwrap_or(false);
    let mut region = Region(vec![0; G.region_len() / 8]);
    let clock = Arc::new(AtomicU64::new(0));
    let mem = Arc::new(Recording::new(
        GuestRam::anonymous(&[(0, RAM_SIZE)]).expect("a valid layout"),
    ));
    let memref: GuestMemoryRef = mem.clone();
    let disk = ForwardDisk {
        server: "store".into(),
        geometry: G,
        size: DISK_SECTORS * 512,
        read_only,
        timeout_ms: TIMEOUT_MS,
        serial: b"fuzz".to_vec(),
    };
    let link = ForwardLink {
        windows: region.windows(),
        bell: Box::new(Bell),
        wake: Some(EventSource(3)),
        clock: Box::new(FakeClock(clock.clone())),
        first_id: FIRST_ID,
    };
    let mut gd = GuestDriver::start_with_memory(ForwardBlock::new(disk, link), memref);
    let (req_w, resp_w) = region.windows();
    let mut storage_in = SlotConsumer::attach(req_w);
    let mut storage_out = SlotProducer::attach(resp_w);
    let mut posted: Vec<Posted> = Vec::new();
    let mut used_seen = 0u16;
    let mut next_desc = 0u16;
    let mut buf = vec![0u8; G.slot_size()];
    let mut last_ids: Vec<(u64, u8, u32)> = Vec::new();
    mem.take();

    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = u.arbitrary::<u8>() else { break };
        match op % 9 {
            0 | 1 if posted.len() < MAX_OUTSTANDING => {
                post(
                    &mut u,
                    &mut gd,
                    &mem,
                    &mut posted,
                    &mut next_desc,
                    read_only,
                );
            }
            2 => {
                // The storage VM takes a request; answers it rightly if told to.
                if let Ok(Pop::Record(n)) = storage_in.pop(&mut buf) {
                    if n >= 32 {
                        let id = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
                        let op = buf[4];
                        let len = u32::from_le_bytes(buf[24..28].try_into().expect("4 bytes"));
                        last_ids.push((id, op, len));
                    }
                }
            }
            3 => {
                // An answer: to a request taken (rightly or with a twist) or invented.
                let pick: u8 = u.arbitrary().unwrap_or(0);
                let (id, op, len) = match last_ids.get(usize::from(pick) % (last_ids.len() + 1)) {
                    Some(&t) => t,
                    None => (u.arbitrary().unwrap_or(FIRST_ID), 1, 512),
                };
                let twist: u8 = u.arbitrary().unwrap_or(0);
                let status: u32 = if twist & 1 == 0 {
                    0
                } else {
                    u.arbitrary().unwrap_or(1)
                };
                let data_len = if op == 1 && status == 0 {
                    len as usize
                } else {
                    0
                };
                let (hdr_len, body) = match twist >> 1 & 3 {
                    0 => (data_len as u32, data_len),
                    1 => (u.arbitrary().unwrap_or(0), data_len),
                    2 => (
                        data_len as u32,
                        usize::from(u.arbitrary::<u16>().unwrap_or(0)) % 1100,
                    ),
                    _ => (
                        u.arbitrary().unwrap_or(0),
                        usize::from(u.arbitrary::<u8>().unwrap_or(0)),
                    ),
                };
                let mut rec = vec![0u8; RESPONSE_HEADER_LEN + body];
                rec[..8].copy_from_slice(&id.to_le_bytes());
                rec[8..12].copy_from_slice(&status.to_le_bytes());
                rec[12..16].copy_from_slice(&hdr_len.to_le_bytes());
                let fill: u8 = u.arbitrary().unwrap_or(0);
                rec[16..].fill(fill);
                let cut = if twist & 0x40 != 0 {
                    rec.len().min(usize::from(twist & 15))
                } else {
                    rec.len()
                };
                let _ = storage_out.stage(&rec[..cut.max(1)]);
                if twist & 0x80 == 0 {
                    let _ = storage_out.publish();
                }
            }
            4 => {
                // A wild word in either ring's header: head, dropped, tail or wakeup.
                let which: u8 = u.arbitrary().unwrap_or(0);
                let value: u64 = match which >> 3 & 1 {
                    0 => u64::from(u.arbitrary::<u8>().unwrap_or(0)),
                    _ => u.arbitrary().unwrap_or(u64::MAX),
                };
                let ring = if which & 1 == 0 {
                    0
                } else {
                    G.response_offset() / 8
                };
                let field = [0usize, 2, 16, 17][usize::from(which >> 1 & 3)];
                region.poke(ring + field, value);
            }
            5 => gd.transport.handle_event(RESPONSE_EVENT),
            6 => gd.transport.poll(),
            7 => {
                let ms: u16 = u.arbitrary().unwrap_or(0);
                clock.fetch_add(u64::from(ms), Ordering::SeqCst);
            }
            _ => gd.write_reg(keel_virtio::mmio::reg::QUEUE_NOTIFY, 0),
        }
        check(&mut gd, &mem, &mut posted, &mut used_seen);
    }

    // The storage VM falls silent: everything posted completes within bounded timeouts.
    for _ in 0..MAX_OUTSTANDING + 3 {
        if posted.is_empty() {
            break;
        }
        clock.fetch_add(u64::from(TIMEOUT_MS), Ordering::SeqCst);
        gd.transport.poll();
        check(&mut gd, &mem, &mut posted, &mut used_seen);
    }
    assert!(
        posted.is_empty(),
        "{} guest requests never completed after the storage VM fell silent",
        posted.len()
    );
    // The device (and its windows) go before the region, declared first.
    drop(gd);
}

/// The guest posts one well-formed request.
fn post(
    u: &mut Unstructured<'_>,
    gd: &mut GuestDriver<ForwardBlock>,
    mem: &Recording,
    posted: &mut Vec<Posted>,
    next_desc: &mut u16,
    read_only: bool,
) {
    let kind = match u.arbitrary::<u8>().unwrap_or(0) % 7 {
        0 | 1 => VIRTIO_BLK_T_IN,
        2 | 3 => VIRTIO_BLK_T_OUT,
        4 => VIRTIO_BLK_T_FLUSH,
        5 => VIRTIO_BLK_T_GET_ID,
        _ => [VIRTIO_BLK_T_DISCARD, 99][usize::from(u.arbitrary::<bool>().unwrap_or(false))],
    };
    let sector = u64::from(u.arbitrary::<u8>().unwrap_or(0)) % (DISK_SECTORS + 8);
    let sectors = 1 + u32::from(u.arbitrary::<u8>().unwrap_or(0) % 8);
    let len = sectors * 512;
    let past = sector + u64::from(sectors) > DISK_SECTORS;
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    let header = gd.buffer(&h);
    let status = gd.buffer(&[0xff]);
    let mut bufs = vec![(header, 16, false)];
    let mut data_in = (0, 0);
    let refused = match kind {
        VIRTIO_BLK_T_IN => {
            let at = gd.alloc(len);
            bufs.push((at, len, true));
            data_in = (at, len);
            past
        }
        VIRTIO_BLK_T_OUT => {
            let fill: u8 = u.arbitrary().unwrap_or(0);
            bufs.push((gd.buffer(&vec![fill; len as usize]), len, false));
            past || read_only
        }
        VIRTIO_BLK_T_GET_ID => {
            let room = u32::from(u.arbitrary::<u8>().unwrap_or(20) % 32) + 1;
            let at = gd.alloc(room);
            bufs.push((at, room, true));
            data_in = (at, room);
            false
        }
        VIRTIO_BLK_T_DISCARD => {
            let mut seg = [0u8; 16];
            seg[..8].copy_from_slice(&sector.to_le_bytes());
            seg[8..12].copy_from_slice(&sectors.to_le_bytes());
            bufs.push((gd.buffer(&seg), 16, false));
            past || read_only
        }
        _ => false,
    };
    bufs.push((status, 1, true));
    // The test driver hands out descriptors in a circle: never over a chain still posted.
    let size = gd.queues[0].size;
    let n = bufs.len() as u16;
    let uses = |start: u16, len: u16| (0..len).map(move |i| (start + i) % size);
    if posted
        .iter()
        .any(|p| uses(p.head, p.descs).any(|d| uses(*next_desc, n).any(|e| e == d)))
    {
        mem.take();
        return;
    }
    let head = gd.post(0, &bufs);
    assert_eq!(head, *next_desc, "the test driver's descriptors");
    *next_desc = (head + n) % size;
    // The guest's own writes (buffers, descriptors, avail ring) are not the device's.
    mem.take();
    gd.write_reg(keel_virtio::mmio::reg::QUEUE_NOTIFY, 0);
    posted.push(Posted {
        head,
        descs: n,
        kind,
        data_in,
        status,
        refused,
    });
}

/// The invariants after each operation.
fn check(
    gd: &mut GuestDriver<ForwardBlock>,
    mem: &Recording,
    posted: &mut Vec<Posted>,
    used_seen: &mut u16,
) {
    assert!(
        !gd.needs_reset(),
        "the device asked for a reset: {:?}",
        gd.transport.take_error()
    );
    let q = &gd.queues[0];
    let used_ring = (q.used, 4 + 8 * u64::from(q.size) + 2);
    for (gpa, len) in mem.take() {
        let ok = within(gpa, len, used_ring.0, used_ring.1)
            || posted.iter().any(|p| {
                within(gpa, len, p.data_in.0, u64::from(p.data_in.1))
                    || within(gpa, len, p.status, 1)
            });
        assert!(
            ok,
            "device wrote {len} bytes at {gpa:#x}, outside its buffers"
        );
    }
    let dev = gd.transport.device();
    assert!(
        dev.in_flight() <= G.slots as usize,
        "{} in flight",
        dev.in_flight()
    );
    assert!(
        dev.pending() <= G.slots as usize + 1,
        "{} chains taken",
        dev.pending()
    );
    let used_idx = q.used_idx(&*gd.mem);
    while *used_seen != used_idx {
        let (id, len) = q.used_elem(&*gd.mem, *used_seen);
        *used_seen = used_seen.wrapping_add(1);
        let Some(at) = posted.iter().position(|p| u32::from(p.head) == id) else {
            panic!("completed chain {id}, not posted or completed twice");
        };
        let p = posted.remove(at);
        let status = gd.read_mem(p.status, 1)[0];
        assert!(
            [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP].contains(&status),
            "status {status}"
        );
        let want_len = match (p.kind, status) {
            (VIRTIO_BLK_T_IN, VIRTIO_BLK_S_OK) => p.data_in.1 + 1,
            (VIRTIO_BLK_T_GET_ID, _) => p.data_in.1.min(20) + 1,
            _ => 1,
        };
        assert_eq!(len, want_len, "used length of a type {} request", p.kind);
        if p.refused {
            assert_ne!(status, VIRTIO_BLK_S_OK, "a request to refuse completed OK");
        }
        if p.kind == 99 {
            assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
        }
    }
}
