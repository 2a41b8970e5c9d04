//! Fuzz target `virtio_devices`: each device model's request handling over a transport
//! already driven to DRIVER_OK (`keel_virtio::testing::GuestDriver`, queues of 16 entries,
//! a fuzzed subset of the offered features). The first byte picks block (writable or
//! read-only `MemoryBackend` behind a bounds-checking wrapper), console, rng or net
//! (`MockNet`, with or without an MTU); the rest publishes chains (well-formed requests
//! with arbitrary headers, types, sector numbers, discard segments, GET_ID, flush, console
//! tx/rx buffers, rng buffers, net tx frames with arbitrary virtio-net headers and rx
//! buffers; or free-form chains with hostile addresses and directions), rewrites buffer
//! contents, notifies queues, and delivers host input (console bytes, net frames).
//!
//! Invariants (where the code enforces them):
//! - the device writes guest memory only inside its used rings and the WRITE-flagged
//!   buffers of chains published and not yet completed (recording `GuestMemory`);
//! - completions are in order and only for published chains; a chain the queue must refuse
//!   (buffer outside RAM, readable after writable) is never completed
//!   (`Queue::read_chain`); every used length is ≤ the chain's writable length
//!   (each device's `add_used` call); after a notification of a queue the device drains
//!   (block, rng, console tx, net tx) nothing published stays pending unless the device
//!   went into DEVICE_NEEDS_RESET;
//! - block (`block.rs::Request`): every backend access lies inside the capacity
//!   (`disk_range`; checked by a wrapping backend that panics otherwise); a read-only disk is
//!   never written or discarded; a completed request's status is exactly the one the spec
//!   and the documented rules give (IN/OUT: OK iff whole sectors inside the capacity, OUT on
//!   a read-only disk IOERR, FLUSH OK, GET_ID OK with min(room, 20) serial bytes, DISCARD one
//!   of OK/IOERR/UNSUPP with UNSUPP on a read-only disk, anything else UNSUPP) with used
//!   length data + 1; data read equals a shadow of the disk, the disk after every operation
//!   equals the shadow updated by the completed OUT/DISCARD requests; a request without a
//!   16-byte header or a status byte is never completed;
//! - console (`console.rs`): output is exactly the readable bytes of the completed
//!   transmit chains, in order, at most `console::TRANSMIT_CHAIN_LIMIT` of each; a transmit
//!   chain with writable bytes is never completed; receive buffers get the pushed input
//!   bytes in order, used length ≥ 1;
//! - rng (`rng.rs`): used length = min(writable, 64 KiB), those bytes are the source's;
//!   a chain with readable bytes is never completed;
//! - net (`net.rs`): the backend is sent exactly the frames of completed transmit chains
//!   whose header has flags 0 / GSO_NONE and whose frame is 14..=max bytes (max = 65550,
//!   or MTU + 18), never a longer one; receive used lengths ≤ the buffer;
//! - no panic.

use std::collections::VecDeque;
use std::sync::Arc;

use arbitrary::Unstructured;
use keel_core::{GuestAddress, GuestMemory, GuestMemoryRef, GuestRam};
use keel_virtio::block::{
    BlockBackend, BlockError, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use keel_virtio::device::VirtioDevice;
use keel_virtio::mmio::reg;
use keel_virtio::testing::{GuestDriver, MockNet, PatternEntropy, RAM_SIZE, VERSION_1};
use keel_virtio::{Block, Console, MemoryBackend, Net, Rng};

use crate::virtio_common::{Recording, within};
use crate::virtio_mmio::Sink;

/// The console's cap on bytes taken from one transmit chain: the expected output of a
/// longer chain is its first `cap` bytes (the rest is dropped and counted).
const CONSOLE_TX_CAP: Option<usize> = Some(keel_virtio::console::TRANSMIT_CHAIN_LIMIT as usize);

/// Disk size: 128 sectors and a partial one the device must not use.
const DISK_LEN: usize = 128 * 512 + 100;
/// Bytes of whole sectors.
const CAPACITY: u64 = (DISK_LEN as u64 / SECTOR_SIZE) * SECTOR_SIZE;
/// Guest buffers are allocated from here up (never reused: chains never overlap).
const BUFFERS: u64 = 0x8_0000;
const SERIAL: &[u8] = b"keel-fuzz-serial-0123456789";

/// A `MemoryBackend` that panics on any access outside the capacity and on any write to a
/// read-only disk, before the backend's own checks could hide it.
struct Guarded(MemoryBackend<Vec<u8>>);

fn guard(op: &str, offset: u64, len: u64) {
    assert!(
        offset.checked_add(len).is_some_and(|e| e <= CAPACITY),
        "block device {op} at {offset:#x}+{len:#x}: outside the {CAPACITY:#x}-byte capacity"
    );
}

impl BlockBackend for Guarded {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        self.0.read_only()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        guard("read", offset, buf.len() as u64);
        self.0.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        guard("write", offset, data.len() as u64);
        assert!(!self.0.read_only(), "block device wrote a read-only disk");
        self.0.write_at(offset, data)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.0.flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        guard("discard", offset, len);
        assert!(
            !self.0.read_only(),
            "block device discarded on a read-only disk"
        );
        self.0.discard(offset, len)
    }
}

/// A chain the guest published and the device has not completed.
struct Pending {
    head: u16,
    bufs: Vec<(u64, u32, bool)>,
    /// Whether the queue must accept it (the spec's rules, written here).
    valid: bool,
    /// Its readable bytes, as the guest memory held them before the last device operation.
    readable: Vec<u8>,
}

impl Pending {
    fn writable_len(&self) -> u64 {
        self.bufs
            .iter()
            .filter(|b| b.2)
            .map(|b| u64::from(b.1))
            .sum()
    }
    fn readable_len(&self) -> u64 {
        self.bufs
            .iter()
            .filter(|b| !b.2)
            .map(|b| u64::from(b.1))
            .sum()
    }
    /// The guest-physical pieces of `[off, off + len)` of the writable part.
    fn writable_bytes(&self, g: &GuestRam, off: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut off, mut left) = (off, len);
        for &(a, l, w) in &self.bufs {
            if !w || left == 0 {
                continue;
            }
            let l = u64::from(l);
            if off >= l {
                off -= l;
                continue;
            }
            let n = left.min(l - off);
            let mut b = vec![0u8; n as usize];
            g.read(GuestAddress(a + off), &mut b)
                .expect("a valid chain's buffer is RAM");
            out.extend(b);
            left -= n;
            off = 0;
        }
        out
    }
}

fn chain_valid(bufs: &[(u64, u32, bool)]) -> bool {
    let mut seen_w = false;
    for &(a, l, w) in bufs {
        if !w && seen_w {
            return false;
        }
        seen_w |= w;
        if l != 0 && a.checked_add(u64::from(l)).is_none_or(|e| e > RAM_SIZE) {
            return false;
        }
    }
    true
}

/// Which device, with the host-side handles the checks need.
enum Kind {
    Block {
        read_only: bool,
        shadow: Vec<u8>,
    },
    Console {
        output: Sink,
        seen: usize,
        input: Vec<u8>,
        delivered: usize,
    },
    Rng,
    Net {
        backend: MockNet,
        max_frame: usize,
        seen: usize,
    },
}

struct Harness<D: VirtioDevice> {
    gd: GuestDriver<D>,
    mem: Arc<Recording>,
    pending: Vec<VecDeque<Pending>>,
    used_seen: Vec<u16>,
    next_buf: u64,
    kind: Kind,
}

/// The fuzz target body.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let pick: u8 = u.arbitrary().unwrap_or(0);
    let mem = Arc::new(Recording::new(
        GuestRam::anonymous(&[(0, RAM_SIZE)]).expect("a valid layout"),
    ));
    let memref: GuestMemoryRef = mem.clone();
    let features: u64 = u.arbitrary().unwrap_or(u64::MAX);
    match pick % 4 {
        0 => {
            let read_only = pick & 4 != 0;
            let disk: Vec<u8> = (0..DISK_LEN).map(|i| (i / 512) as u8 ^ (i as u8)).collect();
            let shadow = disk.clone();
            let backend = if read_only {
                MemoryBackend::read_only(disk)
            } else {
                MemoryBackend::new(disk)
            };
            let dev = Block::new(Guarded(backend), SERIAL);
            drive(
                &mut u,
                dev,
                mem,
                memref,
                features,
                Kind::Block { read_only, shadow },
            );
        }
        1 => {
            let output = Sink::default();
            let dev = Console::new(output.clone());
            let kind = Kind::Console {
                output,
                seen: 0,
                input: Vec::new(),
                delivered: 0,
            };
            drive(&mut u, dev, mem, memref, features, kind);
        }
        2 => drive(
            &mut u,
            Rng::new(PatternEntropy::default()),
            mem,
            memref,
            features,
            Kind::Rng,
        ),
        _ => {
            let backend = MockNet::default();
            let mtu = (pick & 4 != 0).then(|| 68 + u16::from(u.arbitrary::<u8>().unwrap_or(0)) * 8);
            let mut dev = Net::new(backend.clone(), [2, 0, 0, 0, 0, 7]);
            let mut max_frame = 65550;
            if let Some(m) = mtu {
                dev = dev.with_mtu(m).expect("MTU >= 68");
                max_frame = usize::from(m) + 18;
            }
            let kind = Kind::Net {
                backend,
                max_frame,
                seen: 0,
            };
            drive(&mut u, dev, mem, memref, features, kind);
        }
    }
}

fn drive<D: VirtioDevice + 'static>(
    u: &mut Unstructured<'_>,
    dev: D,
    mem: Arc<Recording>,
    memref: GuestMemoryRef,
    features: u64,
    kind: Kind,
) {
    let mut gd = GuestDriver::with_memory(dev, memref);
    let offered = gd.device_features();
    assert!(
        gd.negotiate((offered & features) | VERSION_1),
        "FEATURES_OK refused"
    );
    gd.setup_queues();
    gd.driver_ok();
    assert!(gd.transport.is_active(), "device did not activate");
    mem.take();
    let nq = gd.queues.len();
    let mut h = Harness {
        gd,
        mem,
        pending: (0..nq).map(|_| VecDeque::new()).collect(),
        used_seen: vec![0; nq],
        next_buf: BUFFERS,
        kind,
    };
    for _ in 0..128 {
        if u.is_empty() {
            break;
        }
        let op: u8 = u.arbitrary().unwrap_or(0);
        let q = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % nq;
        match op % 8 {
            0..=2 => h.publish(u, q, op & 0x80 == 0),
            3 | 4 => {
                h.device_op(|gd| gd.write_reg(reg::QUEUE_NOTIFY, q as u32));
                let drains = match h.kind {
                    Kind::Block { .. } | Kind::Rng => true,
                    Kind::Console { .. } | Kind::Net { .. } => q == 1,
                };
                if drains && !h.gd.needs_reset() {
                    assert!(
                        h.pending[q].is_empty(),
                        "queue {q}: {} published chains left after a notification",
                        h.pending[q].len()
                    );
                }
            }
            5 => {
                // The guest rewrites bytes of its buffers (headers, payloads) before a
                // notification.
                if h.next_buf > BUFFERS {
                    let span = h.next_buf - BUFFERS;
                    let at = BUFFERS + u64::from(u.arbitrary::<u32>().unwrap_or(0)) % span;
                    let n = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 32);
                    let bytes = u.bytes(n).unwrap_or(&[]).to_vec();
                    let end = (at + bytes.len() as u64).min(RAM_SIZE);
                    let _ = h
                        .mem
                        .ram
                        .write(GuestAddress(at), &bytes[..(end - at) as usize]);
                }
            }
            6 => {
                // Host input: console bytes or a network frame.
                let n = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 2048);
                let first: u8 = u.arbitrary().unwrap_or(0);
                match &mut h.kind {
                    Kind::Console { input, .. } => {
                        let bytes: Vec<u8> = (0..n).map(|i| first.wrapping_add(i as u8)).collect();
                        input.extend_from_slice(&bytes);
                        // The device keeps at most INPUT_BUFFER_LIMIT bytes; the fuzzer
                        // cannot push more than 128 * 2047 in all, and checks only order.
                        let took = h.gd.transport.device_mut_push(&bytes);
                        input.truncate(input.len() - (bytes.len() - took));
                        h.device_op(|gd| gd.transport.poll());
                    }
                    Kind::Net { backend, .. } => {
                        let frame: Vec<u8> = (0..n).map(|i| first.wrapping_add(i as u8)).collect();
                        backend.arrive(&frame);
                        h.device_op(|gd| gd.transport.handle_event(keel_virtio::net::RX_EVENT));
                    }
                    _ => {}
                }
            }
            _ => {
                let is = h.gd.read_reg(reg::INTERRUPT_STATUS);
                h.gd.write_reg(reg::INTERRUPT_ACK, is);
            }
        }
        if h.gd.needs_reset() {
            // Nothing more happens until the driver resets the device.
            let before = h.mem.take();
            for q in 0..nq {
                h.device_op(|gd| gd.write_reg(reg::QUEUE_NOTIFY, q as u32));
            }
            assert!(
                before.is_empty() && h.mem.take().is_empty(),
                "a failed device wrote memory"
            );
            break;
        }
    }
}

/// Push console input through the transport's device (a tiny extension trait so that
/// `drive` stays generic).
trait PushInput {
    fn device_mut_push(&mut self, bytes: &[u8]) -> usize;
}

impl<D: VirtioDevice + 'static> PushInput for keel_virtio::MmioTransport<D> {
    fn device_mut_push(&mut self, bytes: &[u8]) -> usize {
        let d: &mut dyn std::any::Any = self.device_mut() as &mut dyn std::any::Any;
        match d.downcast_mut::<Console<Sink>>() {
            Some(c) => c.push_input(bytes),
            None => 0,
        }
    }
}

impl<D: VirtioDevice + 'static> Harness<D> {
    fn alloc(&mut self, len: u32) -> Option<u64> {
        let at = self.next_buf;
        let end = (at + u64::from(len) + 15) & !15;
        if end > RAM_SIZE {
            return None;
        }
        self.next_buf = end;
        Some(at)
    }

    /// Publish a chain on queue `q`: a well-formed request for the device (`shaped`) or a
    /// free-form one.
    fn publish(&mut self, u: &mut Unstructured<'_>, q: usize, shaped: bool) {
        let mut specs: Vec<(u32, bool, Vec<u8>)> = Vec::new(); // (len, writable, contents)
        if shaped {
            match (&self.kind, q) {
                (Kind::Block { .. }, _) => {
                    let t = match u.arbitrary::<u8>().unwrap_or(0) % 8 {
                        0 | 1 => VIRTIO_BLK_T_IN,
                        2 | 3 => VIRTIO_BLK_T_OUT,
                        4 => VIRTIO_BLK_T_FLUSH,
                        5 => VIRTIO_BLK_T_GET_ID,
                        6 => VIRTIO_BLK_T_DISCARD,
                        _ => u.arbitrary().unwrap_or(0),
                    };
                    let sector: u64 = match u.arbitrary::<u8>().unwrap_or(0) {
                        0..=200 => u64::from(u.arbitrary::<u8>().unwrap_or(0) % 130),
                        _ => u.arbitrary().unwrap_or(0),
                    };
                    let mut hdr = Vec::new();
                    hdr.extend(t.to_le_bytes());
                    hdr.extend(u.arbitrary::<u32>().unwrap_or(0).to_le_bytes());
                    hdr.extend(sector.to_le_bytes());
                    specs.push((16, false, hdr));
                    let sectors = u32::from(u.arbitrary::<u8>().unwrap_or(1) % 5);
                    let odd = u.arbitrary::<u8>().unwrap_or(0) % 8 == 0;
                    let len = sectors * 512 + if odd { 7 } else { 0 };
                    if t == VIRTIO_BLK_T_DISCARD {
                        let nseg = 1 + u.arbitrary::<u8>().unwrap_or(0) % 3;
                        let mut segs = Vec::new();
                        for _ in 0..nseg {
                            let s = u64::from(u.arbitrary::<u8>().unwrap_or(0) % 140);
                            let n = u32::from(u.arbitrary::<u8>().unwrap_or(0) % 16);
                            let f: u32 = if u.arbitrary::<u8>().unwrap_or(0) % 8 == 0 {
                                1
                            } else {
                                0
                            };
                            segs.extend(s.to_le_bytes());
                            segs.extend(n.to_le_bytes());
                            segs.extend(f.to_le_bytes());
                        }
                        specs.push((segs.len() as u32, false, segs));
                    } else if t == VIRTIO_BLK_T_OUT {
                        let fill: u8 = u.arbitrary().unwrap_or(0);
                        specs.push((len, false, vec![fill; len as usize]));
                    } else if t != VIRTIO_BLK_T_FLUSH {
                        let len = if t == VIRTIO_BLK_T_GET_ID {
                            len % 40
                        } else {
                            len
                        };
                        specs.push((len, true, Vec::new()));
                    }
                    specs.push((1, true, vec![0xee]));
                }
                (Kind::Console { .. }, 1) | (Kind::Net { .. }, 1) => {
                    let n = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 1600);
                    let mut bytes = vec![0u8; n];
                    // A zeroed virtio-net header (the console takes any bytes), then data.
                    for (i, b) in bytes.iter_mut().enumerate().skip(12) {
                        *b = i as u8;
                    }
                    if u.arbitrary::<u8>().unwrap_or(0) % 4 == 0 && n > 2 {
                        bytes[0] = u.arbitrary().unwrap_or(0);
                        bytes[1] = u.arbitrary().unwrap_or(0);
                    }
                    let split = u.arbitrary::<u8>().unwrap_or(0) as usize % (n + 1);
                    specs.push((split as u32, false, bytes[..split].to_vec()));
                    specs.push(((n - split) as u32, false, bytes[split..].to_vec()));
                }
                _ => {
                    let n = u32::from(u.arbitrary::<u16>().unwrap_or(0) % 2048);
                    let k = 1 + u.arbitrary::<u8>().unwrap_or(0) % 3;
                    for _ in 0..k {
                        specs.push((n / u32::from(k), true, Vec::new()));
                    }
                }
            }
        } else {
            let k = 1 + u.arbitrary::<u8>().unwrap_or(0) % 4;
            for _ in 0..k {
                let len = u32::from(u.arbitrary::<u16>().unwrap_or(0) % 1024);
                let w = u.arbitrary::<u8>().unwrap_or(0) & 1 != 0;
                let n = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 24).min(len as usize);
                let c = u.bytes(n).unwrap_or(&[]).to_vec();
                specs.push((len, w, c));
            }
        }
        let size = usize::from(self.gd.queues[q].size);
        let outstanding: usize = self.pending[q].iter().map(|p| p.bufs.len()).sum();
        if specs.is_empty() || outstanding + specs.len() > size {
            return;
        }
        let mut bufs = Vec::new();
        for (len, w, contents) in specs {
            let hostile: u8 = u.arbitrary().unwrap_or(0);
            let at = match hostile {
                0 => RAM_SIZE - u64::from(len / 2), // straddles the end of RAM
                1 => u.arbitrary::<u64>().unwrap_or(0) | 0x8000_0000_0000_0000,
                _ => match self.alloc(len) {
                    Some(a) => a,
                    None => return,
                },
            };
            if !contents.is_empty()
                && at
                    .checked_add(contents.len() as u64)
                    .is_some_and(|e| e <= RAM_SIZE)
            {
                self.mem
                    .ram
                    .write(GuestAddress(at), &contents)
                    .expect("checked to be RAM");
            }
            bufs.push((at, len, w));
        }
        let valid = chain_valid(&bufs);
        let head = self.gd.queues[q].add_chain(&self.mem.ram, &bufs);
        self.pending[q].push_back(Pending {
            head,
            bufs,
            valid,
            readable: Vec::new(),
        });
    }

    /// Run a device operation and check everything it did.
    fn device_op(&mut self, f: impl FnOnce(&mut GuestDriver<D>)) {
        // What the device may write, and what readable bytes it will find.
        let mut allowed = Vec::new();
        for (qi, gq) in self.gd.queues.iter().enumerate() {
            allowed.push((gq.used + 2, 4 + 8 * u64::from(gq.size)));
            for p in self.pending[qi].iter_mut() {
                p.readable.clear();
                for &(a, l, w) in &p.bufs {
                    if w && p.valid {
                        allowed.push((a, u64::from(l)));
                    } else if !w && p.valid && l != 0 {
                        let mut b = vec![0u8; l as usize];
                        self.mem
                            .ram
                            .read(GuestAddress(a), &mut b)
                            .expect("valid chain");
                        p.readable.extend(b);
                    }
                }
            }
        }
        let _ = self.mem.take();
        f(&mut self.gd);
        for (a, l) in self.mem.take() {
            assert!(
                allowed.iter().any(|&(b, bl)| within(a, l, b, bl)),
                "device wrote {a:#x}+{l:#x}: not a used ring nor a writable buffer of a pending chain"
            );
        }
        // Completions, in order, per queue.
        let mut console_expect = Vec::new();
        let mut net_expect: Vec<Vec<u8>> = Vec::new();
        let mem = self.mem.clone();
        for qi in 0..self.pending.len() {
            let g = &mem.ram;
            let idx = self.gd.queues[qi].used_idx(g);
            while self.used_seen[qi] != idx {
                let (id, len) = self.gd.queues[qi].used_elem(g, self.used_seen[qi]);
                self.used_seen[qi] = self.used_seen[qi].wrapping_add(1);
                let p = self.pending[qi].pop_front().unwrap_or_else(|| {
                    panic!("queue {qi}: used entry {id} for no published chain")
                });
                assert_eq!(id, u32::from(p.head), "queue {qi}: completed out of order");
                assert!(
                    p.valid,
                    "queue {qi}: a chain the queue must refuse was completed: {:x?}",
                    p.bufs
                );
                let wl = p.writable_len();
                assert!(
                    u64::from(len) <= wl,
                    "queue {qi}: used length {len} > writable {wl}"
                );
                self.check_completion(qi, &p, len, &mut console_expect, &mut net_expect);
            }
        }
        match &mut self.kind {
            Kind::Console { output, seen, .. } => {
                let out = output.0.lock().unwrap_or_else(|e| e.into_inner());
                assert!(
                    out[*seen..] == console_expect[..],
                    "console output is not the bytes of the completed transmit chains"
                );
                *seen = out.len();
            }
            Kind::Net {
                backend,
                seen,
                max_frame,
            } => {
                let sent = backend.sent();
                for f in &sent[*seen..] {
                    assert!(
                        f.len() <= *max_frame,
                        "net sent a {}-byte frame (max {max_frame})",
                        f.len()
                    );
                }
                assert!(
                    sent[*seen..] == net_expect[..],
                    "net sent other frames than the accepted chains'"
                );
                *seen = sent.len();
            }
            Kind::Block { shadow, .. } => {
                let disk = self.gd.transport.device_bytes();
                assert!(
                    disk == shadow[..],
                    "disk contents differ from the completed requests"
                );
            }
            Kind::Rng => {}
        }
    }

    fn check_completion(
        &mut self,
        qi: usize,
        p: &Pending,
        len: u32,
        console_expect: &mut Vec<u8>,
        net_expect: &mut Vec<Vec<u8>>,
    ) {
        let g = &self.mem.ram;
        let (rl, wl) = (p.readable_len(), p.writable_len());
        match &mut self.kind {
            Kind::Block { read_only, shadow } => {
                assert!(
                    rl >= 16 && wl >= 1,
                    "block completed a request without header/status"
                );
                let h = &p.readable;
                let t = u32::from_le_bytes(h[0..4].try_into().unwrap());
                let sector = u64::from_le_bytes(h[8..16].try_into().unwrap());
                let status = p.writable_bytes(g, wl - 1, 1)[0];
                assert!(
                    [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP].contains(&status),
                    "block status byte {status}"
                );
                assert!(
                    len >= 1,
                    "block used length 0 (the status byte is always written)"
                );
                let range = |n: u64| -> Option<(usize, usize)> {
                    let off = sector.checked_mul(SECTOR_SIZE)?;
                    let end = off.checked_add(n)?;
                    (n % SECTOR_SIZE == 0 && end <= CAPACITY)
                        .then_some((off as usize, end as usize))
                };
                match t {
                    VIRTIO_BLK_T_IN => match range(wl - 1) {
                        Some((a, b)) => {
                            assert_eq!(status, VIRTIO_BLK_S_OK, "read of sectors in range failed");
                            assert_eq!(u64::from(len), wl, "read used length");
                            assert!(
                                p.writable_bytes(g, 0, wl - 1) == shadow[a..b],
                                "read returned other data than the disk"
                            );
                        }
                        None => assert_eq!(
                            status, VIRTIO_BLK_S_IOERR,
                            "read outside the disk not IOERR"
                        ),
                    },
                    VIRTIO_BLK_T_OUT => {
                        match (*read_only, range(rl - 16)) {
                            (false, Some((a, b))) => {
                                assert_eq!(
                                    status, VIRTIO_BLK_S_OK,
                                    "write of sectors in range failed"
                                );
                                shadow[a..b].copy_from_slice(&p.readable[16..]);
                            }
                            _ => assert_eq!(
                                status, VIRTIO_BLK_S_IOERR,
                                "write refused must be IOERR"
                            ),
                        }
                        assert_eq!(len, 1, "write used length");
                    }
                    VIRTIO_BLK_T_FLUSH => assert_eq!((status, len), (VIRTIO_BLK_S_OK, 1)),
                    VIRTIO_BLK_T_GET_ID => {
                        assert_eq!(status, VIRTIO_BLK_S_OK);
                        let n = (wl - 1).min(20);
                        assert_eq!(u64::from(len), n + 1, "GET_ID used length");
                        let mut want = [0u8; 20];
                        let k = SERIAL.len().min(20);
                        want[..k].copy_from_slice(&SERIAL[..k]);
                        assert!(
                            p.writable_bytes(g, 0, n) == want[..n as usize],
                            "GET_ID serial"
                        );
                    }
                    VIRTIO_BLK_T_DISCARD => {
                        assert_eq!(len, 1);
                        if *read_only {
                            assert_eq!(status, VIRTIO_BLK_S_UNSUPP, "discard on a read-only disk");
                        } else if status == VIRTIO_BLK_S_OK {
                            for seg in p.readable[16..].chunks_exact(16) {
                                let s = u64::from_le_bytes(seg[0..8].try_into().unwrap());
                                let n =
                                    u64::from(u32::from_le_bytes(seg[8..12].try_into().unwrap()));
                                let off = s.checked_mul(512).expect("an accepted discard segment");
                                let (a, b) = (off as usize, (off + n * 512) as usize);
                                assert!(
                                    (b as u64) <= CAPACITY,
                                    "discard accepted past the capacity"
                                );
                                shadow[a..b].fill(0);
                            }
                        }
                    }
                    _ => assert_eq!((status, len), (VIRTIO_BLK_S_UNSUPP, 1), "unknown type {t}"),
                }
            }
            Kind::Console {
                input, delivered, ..
            } => {
                if qi == 1 {
                    assert_eq!(
                        wl, 0,
                        "console completed a transmit chain with writable bytes"
                    );
                    assert_eq!(len, 0);
                    let n = CONSOLE_TX_CAP.map_or(p.readable.len(), |c| c.min(p.readable.len()));
                    console_expect.extend_from_slice(&p.readable[..n]);
                } else {
                    assert_eq!(
                        rl, 0,
                        "console completed a receive chain with readable bytes"
                    );
                    assert!(len >= 1, "console completed an empty receive buffer");
                    let got = p.writable_bytes(g, 0, u64::from(len));
                    let end = *delivered + got.len();
                    assert!(
                        end <= input.len() && got == input[*delivered..end],
                        "console delivered other input than pushed"
                    );
                    *delivered = end;
                }
            }
            Kind::Rng => {
                assert_eq!(rl, 0, "rng completed a chain with readable bytes");
                assert_eq!(u64::from(len), wl.min(64 * 1024), "rng used length");
                assert!(
                    p.writable_bytes(g, 0, u64::from(len))
                        .iter()
                        .all(|&b| b == 0xa5),
                    "rng bytes"
                );
            }
            Kind::Net { max_frame, .. } => {
                if qi == 1 {
                    assert_eq!(wl, 0, "net completed a transmit chain with writable bytes");
                    assert_eq!(len, 0);
                    let b = &p.readable;
                    if b.len() >= 12
                        && b[0] == 0
                        && b[1] == 0
                        && (14..=*max_frame).contains(&(b.len() - 12))
                    {
                        net_expect.push(b[12..].to_vec());
                    }
                } else {
                    assert_eq!(rl, 0, "net completed a receive chain with readable bytes");
                }
            }
        }
    }
}

/// The disk bytes behind a block transport (empty for other devices).
trait DiskBytes {
    fn device_bytes(&mut self) -> Vec<u8>;
}

impl<D: VirtioDevice + 'static> DiskBytes for keel_virtio::MmioTransport<D> {
    fn device_bytes(&mut self) -> Vec<u8> {
        let d: &mut dyn std::any::Any = self.device_mut() as &mut dyn std::any::Any;
        d.downcast_mut::<Block<Guarded>>()
            .map(|b| b.backend().0.bytes().to_vec())
            .unwrap_or_default()
    }
}
