//! Fuzz target `vsock`: the virtio-vsock device (guest CID 3, one peer link to CID 4) over
//! an active transport (`keel_virtio::testing::GuestDriver`, queues of 16 entries), against
//! a hostile guest, a host backend that accepts, refuses, stalls and ends connections, and
//! a hostile peer link. The fuzzer's bytes pick: transmit packets (arbitrary header fields,
//! CIDs biased to the guest's / the host's / the peer's / anything, ops biased to valid ones,
//! `len` consistent or not with the chain, payloads up to 8 KiB), receive buffers of
//! arbitrary sizes, host connections and host data, stalls of the host's writes, packets
//! arriving on the peer link (valid or garbage), and the host and peer events.
//!
//! Invariants (where the code enforces them):
//! - the device never holds more than `MAX_CONNECTIONS` host connections, and never keeps a
//!   connection the backend was told to close (`vsock.rs::Vsock::{reset, handle_host_packet}`);
//! - every packet the device writes into a receive buffer has the guest's CID as `dst_cid`,
//!   a `len` equal to the used length minus the header, and fits the buffer (`Vsock::fill`);
//! - per host connection, the RW bytes the guest receives never exceed the credit the guest
//!   announced in its last packet (`buf_alloc + fwd_cnt`, the guest consuming everything at
//!   once; `Vsock::host_data_into`);
//! - the backend is never asked to read, write, accept, shut down or close a connection it
//!   was told to close, nor to close one twice (`FuzzHost` panics);
//! - no panic.
//!
//! The order and integrity of the bytes themselves are unit-tested (`vsock::tests`,
//! keel-kvm `tests/vsock_unix.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use arbitrary::Unstructured;
use keel_core::GuestAddress;
use keel_virtio::device::{EventSource, EventToken};
use keel_virtio::mmio::reg;
use keel_virtio::testing::{GuestDriver, MockNet};
use keel_virtio::vsock::{
    ConnId, HDR_LEN, HOST_CID, HOST_EVENT, Header, HostRead, MAX_CONNECTIONS, PEER_EVENT_BASE, RXQ,
    TXQ, TYPE_STREAM, Vsock, VsockHost, VsockHostError, op,
};

const GUEST: u64 = 3;
const PEER: u64 = 4;
/// Guest buffers: transmit at 0x8_0000, receive buffers after it.
const TX: u64 = 0x8_0000;
const RX: u64 = 0xa_0000;
const RX_SLOT: u64 = 0x2000;

#[derive(Default)]
struct Conn {
    /// What the host sent (all of it) and how much the device has read.
    sent: Vec<u8>,
    read: usize,
    eof: bool,
    /// Bytes `write` takes per call (None: all).
    room: Option<usize>,
    closed: bool,
    refused_write: bool,
}

#[derive(Default)]
struct HostState {
    conns: Vec<Conn>,
    incoming: VecDeque<(ConnId, u32)>,
    listening: Vec<u32>,
}

#[derive(Clone, Default)]
struct FuzzHost(Arc<Mutex<HostState>>);

impl FuzzHost {
    fn with<R>(&self, f: impl FnOnce(&mut HostState) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl VsockHost for FuzzHost {
    fn event_source(&self) -> Option<EventSource> {
        Some(EventSource(5))
    }
    fn accept(&mut self) -> Option<(ConnId, u32)> {
        self.with(|s| s.incoming.pop_front())
    }
    fn accepted(&mut self, conn: ConnId, _host_port: u32) -> Result<(), VsockHostError> {
        self.with(|s| match s.conns.get(conn as usize) {
            Some(c) if !c.closed => Ok(()),
            _ => panic!("accepted() of connection {conn}, which is closed or unknown"),
        })
    }
    fn connect(&mut self, port: u32) -> Result<ConnId, VsockHostError> {
        self.with(|s| {
            if !s.listening.contains(&port) {
                return Err(VsockHostError::Refused { port });
            }
            s.conns.push(Conn::default());
            Ok((s.conns.len() - 1) as ConnId)
        })
    }
    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<HostRead, VsockHostError> {
        self.with(|s| {
            let c = &mut s.conns[conn as usize];
            assert!(!c.closed, "read() of closed connection {conn}");
            let left = c.sent.len() - c.read;
            if left == 0 {
                return Ok(if c.eof {
                    HostRead::Eof
                } else {
                    HostRead::WouldBlock
                });
            }
            let n = left.min(buf.len());
            buf[..n].copy_from_slice(&c.sent[c.read..c.read + n]);
            c.read += n;
            Ok(HostRead::Data(n))
        })
    }
    fn write(&mut self, conn: ConnId, buf: &[u8]) -> Result<usize, VsockHostError> {
        self.with(|s| {
            let c = &mut s.conns[conn as usize];
            assert!(!c.closed, "write() to closed connection {conn}");
            if c.refused_write {
                return Err(VsockHostError::Gone { conn });
            }
            let n = c.room.map_or(buf.len(), |r| r.min(buf.len()));
            if let Some(r) = c.room.as_mut() {
                *r -= n;
            }
            Ok(n)
        })
    }
    fn shutdown_write(&mut self, conn: ConnId) {
        self.with(|s| assert!(!s.conns[conn as usize].closed));
    }
    fn close(&mut self, conn: ConnId) {
        self.with(|s| {
            let c = &mut s.conns[conn as usize];
            assert!(!c.closed, "connection {conn} closed twice");
            c.closed = true;
        });
    }
}

/// What the guest side knows of one host connection (by guest port, host port).
#[derive(Default)]
struct Shadow {
    /// RW bytes received on the current connection of this key.
    received: u64,
    /// The credit it announced last: buf_alloc, fwd_cnt.
    buf_alloc: u32,
    fwd_cnt: u32,
}

struct Harness {
    d: GuestDriver<Vsock<FuzzHost>>,
    host: FuzzHost,
    peer: MockNet,
    /// Receive buffers posted and not used: head → (gpa, len).
    rx_posted: BTreeMap<u16, (u64, u32)>,
    rx_seen: u16,
    next_rx: u64,
    shadows: BTreeMap<(u32, u32), Shadow>,
}

/// Run one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let host = FuzzHost::default();
    let peer = MockNet::default();
    let device =
        Vsock::new(GUEST as u32, host.clone()).with_peer(PEER as u32, Box::new(peer.clone()));
    let mut h = Harness {
        d: GuestDriver::start(device),
        host,
        peer,
        rx_posted: BTreeMap::new(),
        rx_seen: 0,
        next_rx: 0,
        shadows: BTreeMap::new(),
    };
    h.host.with(|s| s.listening = vec![1, 2, 1024]);
    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        let action: u8 = u.arbitrary().unwrap_or(0);
        match action % 10 {
            0..=3 => h.transmit(&mut u),
            4 => h.post_rx(&mut u),
            5 => {
                let port = [1u32, 2, 1024, 5000][usize::from(u.arbitrary::<u8>().unwrap_or(0) % 4)];
                h.host.with(|s| {
                    s.conns.push(Conn::default());
                    let id = (s.conns.len() - 1) as ConnId;
                    s.incoming.push_back((id, port));
                });
                h.d.transport.handle_event(HOST_EVENT);
            }
            6 => {
                let len: u16 = u.arbitrary().unwrap_or(0);
                let pick: u8 = u.arbitrary().unwrap_or(0);
                let eof: bool = u.arbitrary().unwrap_or(false);
                let fill: u8 = u.arbitrary().unwrap_or(0);
                h.host.with(|s| {
                    let n = s.conns.len();
                    if let Some(c) = s.conns.get_mut(usize::from(pick) % n.max(1)) {
                        let start = c.sent.len();
                        c.sent
                            .extend((0..usize::from(len % 9000)).map(|i| fill ^ (start + i) as u8));
                        c.eof |= eof;
                    }
                });
                h.d.transport.handle_event(HOST_EVENT);
            }
            7 => {
                let pick: u8 = u.arbitrary().unwrap_or(0);
                let room: Option<u16> = u.arbitrary().unwrap_or(None);
                let refuse: bool = u.arbitrary().unwrap_or(false);
                h.host.with(|s| {
                    let n = s.conns.len();
                    if let Some(c) = s.conns.get_mut(usize::from(pick) % n.max(1)) {
                        c.room = room.map(usize::from);
                        c.refused_write = refuse && pick % 7 == 0;
                    }
                });
                h.d.transport.handle_event(HOST_EVENT);
            }
            8 => {
                let packet = peer_packet(&mut u);
                h.peer.arrive(&packet);
                h.d.transport.handle_event(EventToken(PEER_EVENT_BASE));
            }
            _ => h.d.transport.handle_event(HOST_EVENT),
        }
        h.check();
    }
}

/// A packet on the peer link: a plausible one for the guest, or garbage.
fn peer_packet(u: &mut Unstructured<'_>) -> Vec<u8> {
    let garbage: bool = u.arbitrary().unwrap_or(false);
    if garbage {
        let len: u16 = u.arbitrary().unwrap_or(0);
        return (0..usize::from(len % 1600)).map(|i| i as u8).collect();
    }
    let len: u16 = u.arbitrary().unwrap_or(0);
    let len = usize::from(len) % (keel_virtio::vsock::PEER_PACKET_MAX - HDR_LEN + 1);
    let h = Header {
        src_cid: u.arbitrary().unwrap_or(PEER),
        dst_cid: if u.arbitrary().unwrap_or(true) {
            GUEST
        } else {
            u.arbitrary().unwrap_or(0)
        },
        src_port: u.arbitrary().unwrap_or(0),
        dst_port: u.arbitrary().unwrap_or(0),
        len: if u.arbitrary().unwrap_or(true) {
            len as u32
        } else {
            u.arbitrary().unwrap_or(0)
        },
        kind: if u.arbitrary().unwrap_or(true) {
            TYPE_STREAM
        } else {
            u.arbitrary().unwrap_or(0)
        },
        op: u.arbitrary::<u16>().unwrap_or(0) % 9,
        flags: u.arbitrary().unwrap_or(0),
        buf_alloc: u.arbitrary().unwrap_or(0),
        fwd_cnt: u.arbitrary().unwrap_or(0),
    };
    let mut p = h.encode().to_vec();
    p.extend((0..len).map(|i| i as u8));
    p
}

impl Harness {
    fn transmit(&mut self, u: &mut Unstructured<'_>) {
        let dst = match u.arbitrary::<u8>().unwrap_or(0) % 8 {
            0..=4 => HOST_CID,
            5 => PEER,
            6 => GUEST,
            _ => u.arbitrary().unwrap_or(0),
        };
        let src = if u.arbitrary::<u8>().unwrap_or(0) % 8 == 0 {
            u.arbitrary().unwrap_or(0)
        } else {
            GUEST
        };
        let ops = [
            op::REQUEST,
            op::RESPONSE,
            op::RST,
            op::SHUTDOWN,
            op::RW,
            op::RW,
            op::RW,
            op::CREDIT_UPDATE,
            op::CREDIT_REQUEST,
        ];
        let pick: u8 = u.arbitrary().unwrap_or(0);
        let opcode = if pick == 255 {
            u.arbitrary().unwrap_or(0)
        } else {
            ops[usize::from(pick) % ops.len()]
        };
        // Ports: guest ports 1..4, host ports the known ones or the device's (2^30 + n).
        let src_port = 1 + u32::from(u.arbitrary::<u8>().unwrap_or(0) % 4);
        let dst_port = match u.arbitrary::<u8>().unwrap_or(0) % 4 {
            0 => 1024,
            1 => 1,
            2 => (1 << 30) + u32::from(u.arbitrary::<u8>().unwrap_or(0) % 8),
            _ => u.arbitrary().unwrap_or(0),
        };
        let payload_len = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 8192);
        let fill: u8 = u.arbitrary().unwrap_or(0);
        let payload: Vec<u8> = (0..payload_len)
            .map(|i| fill.wrapping_add(i as u8))
            .collect();
        let honest_len: bool = u.arbitrary().unwrap_or(true);
        let len = if honest_len {
            payload_len as u32
        } else {
            u.arbitrary().unwrap_or(0)
        };
        let kind = if u.arbitrary::<u8>().unwrap_or(0) % 16 == 0 {
            u.arbitrary().unwrap_or(0)
        } else {
            TYPE_STREAM
        };
        let buf_alloc = u32::from(u.arbitrary::<u16>().unwrap_or(0));
        let key = (src_port, dst_port);
        // A new connection from the guest starts the key's count again. (Nothing the guest
        // receives does: a hostile guest may answer a REQUEST still waiting in the device's
        // control queue, or reuse a key before its RST arrived. A host-initiated connection
        // always has a key never used before: the device counts host ports up.)
        let short: bool = u.arbitrary::<u8>().unwrap_or(0) % 32 == 0;
        // Exactly the packets `Vsock::read_packet` and `handle_guest_packet` pass on to a
        // host connection (their header's credit is taken).
        let to_host = dst == HOST_CID
            && src == GUEST
            && !short
            && kind == TYPE_STREAM
            && len <= keel_virtio::vsock::MAX_PACKET_PAYLOAD
            && len as usize <= payload_len;
        if to_host && opcode == op::REQUEST {
            self.shadows.remove(&key);
        }
        // An honest guest's fwd_cnt: what it has consumed (all it received).
        let fwd_cnt = self.shadows.get(&key).map_or(0, |s| s.received as u32);
        let h = Header {
            src_cid: src,
            dst_cid: dst,
            src_port,
            dst_port,
            len,
            kind,
            op: opcode,
            flags: u.arbitrary().unwrap_or(0),
            buf_alloc,
            fwd_cnt,
        };
        self.d
            .mem
            .write(GuestAddress(TX), &h.encode())
            .expect("tx header in RAM");
        self.d
            .mem
            .write(GuestAddress(TX + HDR_LEN as u64), &payload)
            .expect("tx payload in RAM");
        let total = (HDR_LEN + payload_len) as u32;
        let chain_len = if short { total.min(10) } else { total };
        self.d.submit(TXQ, &[(TX, chain_len, false)]);
        // The credit the device now knows for this key.
        if to_host {
            let s = self.shadows.entry(key).or_default();
            s.buf_alloc = buf_alloc;
            s.fwd_cnt = fwd_cnt;
        }
    }

    fn post_rx(&mut self, u: &mut Unstructured<'_>) {
        let count = 1 + usize::from(u.arbitrary::<u8>().unwrap_or(0) % 4);
        for _ in 0..count {
            if self.rx_posted.len() >= 8 {
                break;
            }
            let len = match u.arbitrary::<u8>().unwrap_or(0) % 4 {
                0 => u32::from(u.arbitrary::<u8>().unwrap_or(0)),
                1 => HDR_LEN as u32,
                _ => RX_SLOT as u32,
            };
            let at = RX + RX_SLOT * (self.next_rx % 16);
            self.next_rx += 1;
            let head = self.d.post(RXQ, &[(at, len, true)]);
            self.rx_posted.insert(head, (at, len));
        }
        self.d.write_reg(reg::QUEUE_NOTIFY, u32::from(RXQ));
    }

    fn check(&mut self) {
        if self.d.needs_reset() {
            return;
        }
        let dev = self.d.transport.lock_device();
        assert!(dev.connections() <= MAX_CONNECTIONS);
        drop(dev);
        let q = &self.d.queues[usize::from(RXQ)];
        let idx = q.used_idx(&*self.d.mem);
        while self.rx_seen != idx {
            let (id, used) = q.used_elem(&*self.d.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let (at, len) = self
                .rx_posted
                .remove(&(id as u16))
                .expect("a used receive buffer was posted");
            assert!(used <= len, "used length {used} > buffer {len}");
            if used == 0 {
                continue;
            }
            assert!(used as usize >= HDR_LEN, "used length {used} < the header");
            let bytes = self.d.read_mem(at, used as usize);
            let h = Header::decode(bytes[..HDR_LEN].try_into().expect("header"));
            assert_eq!(h.dst_cid, GUEST, "{h:?}");
            assert_eq!(h.len as usize, used as usize - HDR_LEN, "{h:?}");
            let key = (h.dst_port, h.src_port);
            if h.src_cid == HOST_CID && h.op == op::RW {
                let s = self.shadows.entry(key).or_default();
                let credit = u64::from(s.buf_alloc) + u64::from(s.fwd_cnt);
                s.received += u64::from(h.len);
                assert!(
                    s.received <= credit,
                    "{} bytes received on {key:?} beyond the credit {credit}",
                    s.received
                );
            }
        }
    }
}
