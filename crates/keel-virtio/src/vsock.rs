//! virtio-vsock (device type 19, virtio 1.2 §5.10): rxq 0, txq 1, eventq 2; stream sockets
//! only (no feature bits offered: the driver must not use SEQPACKET).
//!
//! The device speaks for everything outside the guest, in two ways:
//!
//! - **The host (CID 2)**: the device terminates the vsock protocol itself. Each host
//!   connection is a byte stream of a [`VsockHost`] backend (Unix sockets on Linux; any
//!   stream service on seL4), and the device keeps the per-connection state machine and the
//!   credit-based flow control of both directions: the guest may have at most
//!   [`CONN_BUF`] bytes in flight to the host per connection (they wait here until the
//!   backend takes them), and the device sends the guest no more than the credit the guest
//!   announced (`buf_alloc - (tx_cnt - fwd_cnt)`).
//! - **Peer guests** (the other VM of each allowed pair): packets are relayed as they are,
//!   split to at most [`PEER_PACKET_MAX`] bytes, over a packet link per peer (a
//!   [`NetBackend`]: on Linux and seL4 a pair of shared slot rings, keel-net's `VmmPort`).
//!   Flow control is end to end between the two guests. The receiving device stamps the
//!   source CID with the peer's (a guest cannot pose as another) and drops packets that are
//!   not addressed to its own guest.
//!
//! A connection to any other CID is answered with RST by this device.
//!
//! What a hostile guest can do (each is counted, see [`VirtioDevice::counters`]): a chain
//! shorter than the header or a length beyond the chain or [`MAX_PACKET_PAYLOAD`], a wrong
//! source CID, an unknown op or socket type, data beyond the device's credit, data on a
//! connection it shut down: the packet is dropped, and the connection it names (if it is a
//! host connection) is reset. At most [`MAX_CONNECTIONS`] host connections exist at a time
//! (more are refused with RST), each buffers at most [`CONN_BUF`] bytes, and at most
//! [`CONTROL_QUEUE_LIMIT`] control packets wait for receive buffers (more are dropped). A
//! malformed *queue* (not packet) makes the device need a reset, as for every device.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

use crate::device::{
    ActiveQueues, DeviceError, EventSource, EventToken, VirtioDevice, device_type,
    read_config_bytes,
};
use crate::net::NetBackend;
use crate::queue::DescriptorChain;

/// The receive queue (device → guest).
pub const RXQ: u16 = 0;
/// The transmit queue (guest → device).
pub const TXQ: u16 = 1;
/// The event queue (transport events; the device never sends one).
pub const EVENTQ: u16 = 2;
/// Size offered for each queue.
pub const QUEUE_SIZE: u16 = 256;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// Longest payload of one packet the guest may send (Linux sends at most 64 KiB).
pub const MAX_PACKET_PAYLOAD: u32 = 64 * 1024;
/// Longest packet (header and payload) on a peer link: what a slot of keel-net's frame
/// rings carries.
pub const PEER_PACKET_MAX: usize = 1514;
/// Most host connections of one device at a time.
pub const MAX_CONNECTIONS: usize = 64;
/// The device's receive buffer per host connection (`buf_alloc` it announces): bytes the
/// guest may send before the backend has taken them.
pub const CONN_BUF: u32 = 128 * 1024;
/// Most control packets (RESPONSE, RST, SHUTDOWN, CREDIT_*) waiting for receive buffers.
pub const CONTROL_QUEUE_LIMIT: usize = 4 * MAX_CONNECTIONS;
/// Most packets handled per call on each path, so a flood cannot monopolise the VMM.
pub const BATCH: usize = 256;

/// `type`: stream socket.
pub const TYPE_STREAM: u16 = 1;

/// The packet operations (`op`).
pub mod op {
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Reset (refused, or the connection is gone).
    pub const RST: u16 = 3;
    /// The sender will receive / send no more (`flags`).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's credit changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// The token of the host backend's event source.
pub const HOST_EVENT: EventToken = EventToken(0);
/// The token of peer link `i`'s event source is `PEER_EVENT_BASE + i`.
pub const PEER_EVENT_BASE: u32 = 1;

/// A host backend's handle of one connection.
pub type ConnId = u32;

/// Why a host backend could not do what the device asked: the connection is reset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VsockHostError {
    /// Nothing listens on the host port (or it refused).
    #[error("host port {port}: connection refused")]
    Refused {
        /// The host port.
        port: u32,
    },
    /// The backend has no room for another connection.
    #[error("no room for another host connection")]
    NoRoom,
    /// The connection is gone (closed by the host, or failed).
    #[error("host connection {conn} is gone")]
    Gone {
        /// The connection.
        conn: ConnId,
    },
}

/// What a read from a host connection found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRead {
    /// This many bytes (at least 1).
    Data(usize),
    /// Nothing now; the event source fires when more comes.
    WouldBlock,
    /// The host will send no more.
    Eof,
}

/// The host side of a vsock device: byte streams, one per connection. Nothing may block.
/// The backend's event source fires (edge-triggered) when a host connection arrives, or a
/// connection becomes readable or writable; the device then looks at everything.
pub trait VsockHost: Send {
    /// The host event to wait on, if any.
    fn event_source(&self) -> Option<EventSource>;
    /// A connection the host opened and that asks for guest port `.1`, if one is ready
    /// (on Linux: accepted, and its `CONNECT <port>` line read).
    fn accept(&mut self) -> Option<(ConnId, u32)>;
    /// The guest accepted host connection `conn`, the device calls its end host port
    /// `host_port` (on Linux: `OK <host_port>` is written to it).
    fn accepted(&mut self, conn: ConnId, host_port: u32) -> Result<(), VsockHostError>;
    /// The guest connects to host port `port`.
    fn connect(&mut self, port: u32) -> Result<ConnId, VsockHostError>;
    /// Read what `conn` has, up to `buf.len()` bytes.
    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<HostRead, VsockHostError>;
    /// Write up to `buf.len()` bytes to `conn`; how many it took (0: full now, its event
    /// source fires when it takes more).
    fn write(&mut self, conn: ConnId, buf: &[u8]) -> Result<usize, VsockHostError>;
    /// The guest will send no more on `conn` (the host reads an end).
    fn shutdown_write(&mut self, conn: ConnId);
    /// Forget `conn` (the guest reset or closed it, or the device did).
    fn close(&mut self, conn: ConnId);
    /// The event source fired while the device cannot serve it (not activated): quiet it
    /// without taking anything. Host connections wait; the device looks for them when the
    /// driver posts receive buffers. Nothing to do by default.
    fn drain_event(&mut self) {}
}

impl<T: VsockHost + ?Sized> VsockHost for Box<T> {
    fn event_source(&self) -> Option<EventSource> {
        (**self).event_source()
    }
    fn accept(&mut self) -> Option<(ConnId, u32)> {
        (**self).accept()
    }
    fn accepted(&mut self, conn: ConnId, host_port: u32) -> Result<(), VsockHostError> {
        (**self).accepted(conn, host_port)
    }
    fn connect(&mut self, port: u32) -> Result<ConnId, VsockHostError> {
        (**self).connect(port)
    }
    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<HostRead, VsockHostError> {
        (**self).read(conn, buf)
    }
    fn write(&mut self, conn: ConnId, buf: &[u8]) -> Result<usize, VsockHostError> {
        (**self).write(conn, buf)
    }
    fn shutdown_write(&mut self, conn: ConnId) {
        (**self).shutdown_write(conn)
    }
    fn close(&mut self, conn: ConnId) {
        (**self).close(conn)
    }
    fn drain_event(&mut self) {
        (**self).drain_event()
    }
}

/// No host side: every connection to the host is refused, none comes from it.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHost;

impl VsockHost for NoHost {
    fn event_source(&self) -> Option<EventSource> {
        None
    }
    fn accept(&mut self) -> Option<(ConnId, u32)> {
        None
    }
    fn accepted(&mut self, conn: ConnId, _host_port: u32) -> Result<(), VsockHostError> {
        Err(VsockHostError::Gone { conn })
    }
    fn connect(&mut self, port: u32) -> Result<ConnId, VsockHostError> {
        Err(VsockHostError::Refused { port })
    }
    fn read(&mut self, conn: ConnId, _buf: &mut [u8]) -> Result<HostRead, VsockHostError> {
        Err(VsockHostError::Gone { conn })
    }
    fn write(&mut self, conn: ConnId, _buf: &[u8]) -> Result<usize, VsockHostError> {
        Err(VsockHostError::Gone { conn })
    }
    fn shutdown_write(&mut self, _conn: ConnId) {}
    fn close(&mut self, _conn: ConnId) {}
}

/// `struct virtio_vsock_hdr` (all little endian, packed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub kind: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Flags (SHUTDOWN's).
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed of this connection.
    pub fwd_cnt: u32,
}

impl Header {
    /// Decode the first [`HDR_LEN`] bytes.
    pub fn decode(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encode into [`HDR_LEN`] bytes.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST answering this packet (ports and CIDs swapped).
    fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            kind: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }
}

/// What the device has counted since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockCounters {
    /// Packets taken from the transmit queue.
    pub tx_packets: u64,
    /// Data bytes the guest sent (to the host and to peers).
    pub tx_bytes: u64,
    /// Packets put in the receive queue.
    pub rx_packets: u64,
    /// Data bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Packets with a bad header (chain shorter than the header, length beyond the chain
    /// or the cap) or an unknown op or type.
    pub bad_packets: u64,
    /// Packets whose source CID was not the guest's.
    pub wrong_src_cid: u64,
    /// Data beyond the device's credit, or after the guest shut its sending side.
    pub credit_violations: u64,
    /// Connections to a CID that is neither the host nor an allowed peer.
    pub refused_cid: u64,
    /// Connections refused by the host backend or for want of room.
    pub refused_host: u64,
    /// Control packets dropped because too many waited for receive buffers.
    pub control_dropped: u64,
    /// Packets from peers dropped (malformed, not for this guest, no room).
    pub peer_rx_dropped: u64,
    /// Packets to peers the link did not take (the connection is reset).
    pub peer_tx_dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The host connected; the device sent REQUEST and waits for the guest's answer.
    AwaitResponse,
    /// Data flows.
    Established,
}

/// One host connection, keyed by (guest port, host port).
#[derive(Debug)]
struct Conn {
    id: ConnId,
    state: State,
    /// Bytes the guest sent that the backend has not taken yet (at most [`CONN_BUF`]).
    pending: VecDeque<u8>,
    /// Bytes received from the guest (wrapping).
    rx_cnt: u32,
    /// Bytes handed to the backend (wrapping): the device's `fwd_cnt`.
    fwd_cnt: u32,
    /// The `fwd_cnt` last told to the guest.
    fwd_reported: u32,
    /// Bytes sent to the guest (wrapping).
    tx_cnt: u32,
    /// The guest's `buf_alloc` and `fwd_cnt` as last announced.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The guest will send no more (the backend is told once `pending` is empty).
    guest_done_sending: bool,
    /// The backend was told.
    write_shut: bool,
    /// The guest will receive no more.
    guest_done_receiving: bool,
    /// The host will send no more (the guest was told).
    host_eof: bool,
}

impl Conn {
    fn new(id: ConnId, state: State) -> Conn {
        Conn {
            id,
            state,
            pending: VecDeque::new(),
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_reported: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            guest_done_sending: false,
            write_shut: false,
            guest_done_receiving: false,
            host_eof: false,
        }
    }

    /// What the guest may still be sent.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// What the guest may still send.
    fn own_credit(&self) -> u32 {
        CONN_BUF.saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt))
    }

    /// Whether the guest should be told its credit grew: the backend took a quarter of the
    /// buffer since the guest was last told, or took everything while the guest sees half
    /// the buffer or more in flight (so a guest waiting for credit always hears of it).
    fn wants_credit_update(&self) -> bool {
        let gained = self.fwd_cnt.wrapping_sub(self.fwd_reported);
        let seen_in_flight = self.rx_cnt.wrapping_sub(self.fwd_reported);
        gained >= CONN_BUF / 4
            || (gained > 0 && self.pending.is_empty() && seen_in_flight >= CONN_BUF / 2)
    }
}

/// A link to one allowed peer guest.
struct Peer {
    cid: u64,
    link: Box<dyn NetBackend>,
}

impl core::fmt::Debug for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Peer").field("cid", &self.cid).finish()
    }
}

type Key = (u32, u32);

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock<H: VsockHost> {
    cid: u64,
    host: H,
    peers: Vec<Peer>,
    conns: BTreeMap<Key, Conn>,
    /// Control packets for the guest, waiting for receive buffers.
    control: VecDeque<Header>,
    /// A receive buffer popped when nothing turned out to be waiting.
    held: Option<DescriptorChain>,
    /// Where the next round-robin pass over host connections starts.
    next_key: Key,
    /// The host port the next host-initiated connection gets (then counts up).
    next_host_port: u32,
    /// A reusable buffer of [`MAX_PACKET_PAYLOAD`] bytes.
    scratch: Vec<u8>,
    /// A call stopped after its batch with work possibly left.
    backlog: bool,
    counters: VsockCounters,
    active: Option<ActiveQueues>,
}

impl<H: VsockHost> Vsock<H> {
    /// A device for the guest with CID `cid`, its host side `host`.
    pub fn new(cid: u32, host: H) -> Vsock<H> {
        Vsock {
            cid: u64::from(cid),
            host,
            peers: Vec::new(),
            conns: BTreeMap::new(),
            control: VecDeque::new(),
            held: None,
            next_key: (0, 0),
            next_host_port: 1 << 30,
            scratch: Vec::new(),
            backlog: false,
            counters: VsockCounters::default(),
            active: None,
        }
    }

    /// Let the guest reach the guest with CID `cid` through `link` (packets of at most
    /// [`PEER_PACKET_MAX`] bytes each way). Its event source is declared under
    /// `PEER_EVENT_BASE + <index of this call>`.
    pub fn with_peer(mut self, cid: u32, link: Box<dyn NetBackend>) -> Vsock<H> {
        self.peers.push(Peer {
            cid: u64::from(cid),
            link,
        });
        self
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The host backend.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// What the device has counted.
    pub fn vsock_counters(&self) -> VsockCounters {
        self.counters
    }

    /// Host connections open now (in any state).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn push_control(&mut self, h: Header) {
        if self.control.len() >= CONTROL_QUEUE_LIMIT {
            self.counters.control_dropped += 1;
            return;
        }
        self.control.push_back(h);
    }

    /// A header from the host end of `key`'s connection.
    fn host_header(&self, key: Key, conn: &Conn, op: u16, flags: u32, len: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.1,
            dst_port: key.0,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: conn.fwd_cnt,
        }
    }

    /// Send `op` on `key`'s connection (recording the credit it tells).
    fn send_on(&mut self, key: Key, op: u16, flags: u32) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let h = self.host_header(key, conn, op, flags, 0);
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.fwd_reported = conn.fwd_cnt;
        }
        self.push_control(h);
    }

    /// Reset `key`'s connection: the guest gets RST, the backend forgets it.
    fn reset(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.host.close(conn.id);
        }
        self.push_control(Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.1,
            dst_port: key.0,
            kind: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    /// Guest memory, if the device is active.
    fn memory(&self) -> Option<keel_core::GuestMemoryRef> {
        self.active.as_ref().map(|a| a.memory.clone())
    }

    /// Queue `index` of the active device, if it is ready.
    fn ready_queue(&mut self, index: u16) -> Result<Option<&mut crate::Queue>, DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(None);
        };
        let (_, q) = active.get(index)?;
        Ok(q.ready().then_some(q))
    }

    /// Whether queue `index` should interrupt the guest for what was just used.
    fn notify(&mut self, index: u16) -> Result<bool, DeviceError> {
        match self.active.as_mut() {
            Some(a) => a.needs_notification(index),
            None => Ok(false),
        }
    }

    /// Take every transmit chain (up to [`BATCH`]), then serve the guest what follows.
    fn transmit(&mut self) -> Result<bool, DeviceError> {
        let Some(mem) = self.memory() else {
            return Ok(false);
        };
        let mut used = false;
        for done in 0.. {
            if done == BATCH {
                self.backlog = true;
                break;
            }
            let Some(q) = self.ready_queue(TXQ)? else {
                break;
            };
            let Some(chain) = q.pop(&*mem).map_err(DeviceError::queue(TXQ))? else {
                break;
            };
            chain
                .require_readable_only()
                .map_err(DeviceError::chain(TXQ))?;
            let packet = self.read_packet(&*mem, &chain);
            if let Some(q) = self.ready_queue(TXQ)? {
                q.add_used(&*mem, chain.head(), 0)
                    .map_err(DeviceError::queue(TXQ))?;
            }
            used = true;
            if let Some(h) = packet? {
                self.counters.tx_packets += 1;
                self.handle_guest_packet(h);
            }
        }
        let tx_irq = if used { self.notify(TXQ)? } else { false };
        self.flush_all();
        let rx_irq = self.deliver()?;
        Ok(tx_irq || rx_irq)
    }

    /// The header of a transmit chain and its payload (in `scratch`), or `None` for a
    /// packet that was dropped (and counted; its connection reset).
    fn read_packet(
        &mut self,
        mem: &dyn keel_core::GuestMemory,
        chain: &DescriptorChain,
    ) -> Result<Option<Header>, DeviceError> {
        let total = chain.readable_len();
        if (total as usize) < HDR_LEN {
            self.counters.bad_packets += 1;
            return Ok(None);
        }
        let mut raw = [0u8; HDR_LEN];
        chain
            .read_at(mem, 0, &mut raw)
            .map_err(DeviceError::chain(TXQ))?;
        let h = Header::decode(&raw);
        let room = total - HDR_LEN as u32;
        if h.len > MAX_PACKET_PAYLOAD || h.len > room {
            self.counters.bad_packets += 1;
            self.reset_named(&h);
            return Ok(None);
        }
        if h.src_cid != self.cid {
            self.counters.wrong_src_cid += 1;
            self.reset_named(&h);
            return Ok(None);
        }
        let len = h.len as usize;
        if self.scratch.len() < len {
            self.scratch
                .try_reserve_exact(MAX_PACKET_PAYLOAD as usize - self.scratch.len())
                .map_err(|_| DeviceError::OutOfMemory {
                    what: "vsock packet",
                    bytes: MAX_PACKET_PAYLOAD as usize,
                })?;
            self.scratch.resize(MAX_PACKET_PAYLOAD as usize, 0);
        }
        chain
            .read_at(mem, HDR_LEN as u64, &mut self.scratch[..len])
            .map_err(DeviceError::chain(TXQ))?;
        Ok(Some(h))
    }

    /// The guest sent a malformed packet: reset the host connection it names, if any.
    fn reset_named(&mut self, h: &Header) {
        if h.dst_cid == HOST_CID && self.conns.contains_key(&(h.src_port, h.dst_port)) {
            self.reset((h.src_port, h.dst_port));
        }
    }

    fn handle_guest_packet(&mut self, h: Header) {
        if h.kind != TYPE_STREAM {
            self.counters.bad_packets += 1;
            self.reset_named(&h);
            if h.op != op::RST {
                self.push_control(h.reset_reply());
            }
            return;
        }
        if h.dst_cid == HOST_CID {
            self.handle_host_packet(h);
        } else if let Some(i) = self.peers.iter().position(|p| p.cid == h.dst_cid) {
            self.relay_to_peer(i, h);
        } else if h.op != op::RST {
            self.counters.refused_cid += 1;
            self.push_control(h.reset_reply());
        }
    }

    fn handle_host_packet(&mut self, h: Header) {
        let key = (h.src_port, h.dst_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.peer_buf_alloc = h.buf_alloc;
            conn.peer_fwd_cnt = h.fwd_cnt;
        }
        let state = self.conns.get(&key).map(|c| c.state);
        match (h.op, state) {
            (op::REQUEST, None) => {
                if self.conns.len() >= MAX_CONNECTIONS {
                    self.counters.refused_host += 1;
                    self.push_control(h.reset_reply());
                    return;
                }
                match self.host.connect(h.dst_port) {
                    Ok(id) => {
                        let mut conn = Conn::new(id, State::Established);
                        conn.peer_buf_alloc = h.buf_alloc;
                        conn.peer_fwd_cnt = h.fwd_cnt;
                        self.conns.insert(key, conn);
                        self.send_on(key, op::RESPONSE, 0);
                    }
                    Err(_) => {
                        self.counters.refused_host += 1;
                        self.push_control(h.reset_reply());
                    }
                }
            }
            (op::RESPONSE, Some(State::AwaitResponse)) => {
                let id = self.conns.get(&key).map_or(0, |c| c.id);
                match self.host.accepted(id, key.1) {
                    Ok(()) => {
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.state = State::Established;
                        }
                    }
                    Err(_) => self.reset(key),
                }
            }
            (op::RST, Some(_)) => {
                if let Some(conn) = self.conns.remove(&key) {
                    self.host.close(conn.id);
                }
            }
            (op::RST, None) => {}
            (op::SHUTDOWN, Some(State::Established)) => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.guest_done_sending |= h.flags & SHUTDOWN_SEND != 0;
                    c.guest_done_receiving |= h.flags & SHUTDOWN_RCV != 0;
                }
                self.flush(key);
            }
            (op::RW, Some(State::Established)) => self.guest_data(key, h.len as usize),
            (op::CREDIT_UPDATE, Some(State::Established)) => {}
            (op::CREDIT_REQUEST, Some(State::Established)) => {
                self.send_on(key, op::CREDIT_UPDATE, 0);
            }
            (op::REQUEST | op::RESPONSE | op::SHUTDOWN | op::RW, _)
            | (op::CREDIT_UPDATE | op::CREDIT_REQUEST, _) => {
                // Not valid in this state (or no such connection).
                if state.is_some() {
                    self.reset(key);
                } else {
                    self.push_control(h.reset_reply());
                }
            }
            _ => {
                self.counters.bad_packets += 1;
                if state.is_some() {
                    self.reset(key);
                } else {
                    self.push_control(h.reset_reply());
                }
            }
        }
    }

    /// `len` bytes of data (in `scratch`) on an established host connection.
    fn guest_data(&mut self, key: Key, len: usize) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.guest_done_sending || len > conn.own_credit() as usize {
            self.counters.credit_violations += 1;
            self.reset(key);
            return;
        }
        self.counters.tx_bytes += len as u64;
        // len <= own_credit <= CONN_BUF, a u32.
        conn.rx_cnt = conn.rx_cnt.wrapping_add(len as u32);
        let mut taken = 0;
        if conn.pending.is_empty() {
            match self.host.write(conn.id, &self.scratch[..len]) {
                Ok(n) => taken = n.min(len),
                Err(_) => {
                    self.reset(key);
                    return;
                }
            }
            conn.fwd_cnt = conn.fwd_cnt.wrapping_add(taken as u32);
        }
        conn.pending.extend(&self.scratch[taken..len]);
        self.flush(key);
    }

    /// Hand `key`'s pending bytes to the backend; tell the backend and the guest what
    /// follows from the guest's shutdown once they are gone; send a credit update when due.
    fn flush(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != State::Established {
            return;
        }
        while !conn.pending.is_empty() {
            let (a, _) = conn.pending.as_slices();
            match self.host.write(conn.id, a) {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(a.len());
                    conn.pending.drain(..n);
                    conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
                }
                Err(_) => {
                    self.reset(key);
                    return;
                }
            }
        }
        if !conn.pending.is_empty() {
            if conn.wants_credit_update() {
                self.send_on(key, op::CREDIT_UPDATE, 0);
            }
            return;
        }
        if conn.guest_done_sending && !conn.write_shut {
            conn.write_shut = true;
            self.host.shutdown_write(conn.id);
        }
        if conn.guest_done_sending && conn.guest_done_receiving {
            // The guest closed: the connection ends with our RST.
            self.reset(key);
            return;
        }
        if conn.wants_credit_update() {
            self.send_on(key, op::CREDIT_UPDATE, 0);
        }
    }

    fn flush_all(&mut self) {
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.pending.is_empty() || c.wants_credit_update())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.flush(key);
        }
    }

    /// Relay a guest packet (header `h`, payload in `scratch`) to peer `i`, split into
    /// link-sized packets.
    fn relay_to_peer(&mut self, i: usize, h: Header) {
        let chunk = PEER_PACKET_MAX - HDR_LEN;
        let len = h.len as usize;
        let mut packet = [0u8; PEER_PACKET_MAX];
        let mut off = 0;
        loop {
            let n = (len - off).min(chunk);
            let mut piece = h;
            piece.len = n as u32;
            packet[..HDR_LEN].copy_from_slice(&piece.encode());
            packet[HDR_LEN..HDR_LEN + n].copy_from_slice(&self.scratch[off..off + n]);
            if self.peers[i].link.send(&packet[..HDR_LEN + n]).is_err() {
                // The link is full or gone: the guest's connection cannot go on.
                self.counters.peer_tx_dropped += 1;
                if h.op != op::RST {
                    self.push_control(h.reset_reply());
                }
                return;
            }
            if h.op == op::RW {
                self.counters.tx_bytes += n as u64;
            }
            off += n;
            if off >= len {
                return;
            }
        }
    }

    /// Host connections that arrived: each becomes a REQUEST to the guest.
    fn accept_host(&mut self) {
        for _ in 0..BATCH {
            let Some((id, port)) = self.host.accept() else {
                return;
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                self.counters.refused_host += 1;
                self.host.close(id);
                continue;
            }
            let mut host_port = self.next_host_port;
            while self.conns.contains_key(&(port, host_port)) {
                host_port = host_port.wrapping_add(1).max(1 << 30);
            }
            self.next_host_port = host_port.wrapping_add(1).max(1 << 30);
            let key = (port, host_port);
            self.conns.insert(key, Conn::new(id, State::AwaitResponse));
            self.send_on(key, op::REQUEST, 0);
        }
        self.backlog = true;
    }

    /// Fill the guest's receive buffers: control packets, then packets from peers, then
    /// host data within the guest's credit, round robin over the connections.
    fn deliver(&mut self) -> Result<bool, DeviceError> {
        let Some(mem) = self.memory() else {
            return Ok(false);
        };
        let mut used = false;
        for done in 0.. {
            if done == BATCH {
                self.backlog = true;
                break;
            }
            let held = self.held.take();
            let Some(q) = self.ready_queue(RXQ)? else {
                self.held = held;
                break;
            };
            let chain = match held {
                Some(c) => c,
                None => match q.pop(&*mem).map_err(DeviceError::queue(RXQ))? {
                    Some(c) => c,
                    None => break,
                },
            };
            chain
                .require_writable_only()
                .map_err(DeviceError::chain(RXQ))?;
            let room = chain.writable_len() as usize;
            let written = if room < HDR_LEN {
                // Useless to the protocol: given back empty.
                Some(0)
            } else {
                self.fill(&*mem, &chain, room - HDR_LEN)?
            };
            let Some(n) = written else {
                self.held = Some(chain);
                break;
            };
            if let Some(q) = self.ready_queue(RXQ)? {
                q.add_used(&*mem, chain.head(), n)
                    .map_err(DeviceError::queue(RXQ))?;
            }
            if n > 0 {
                self.counters.rx_packets += 1;
            }
            used = true;
        }
        if used { self.notify(RXQ) } else { Ok(false) }
    }

    /// Write the next packet for the guest into `chain` (at most `room` payload bytes):
    /// its total length, or `None` when nothing is waiting.
    fn fill(
        &mut self,
        mem: &dyn keel_core::GuestMemory,
        chain: &DescriptorChain,
        room: usize,
    ) -> Result<Option<u32>, DeviceError> {
        if let Some(h) = self.control.pop_front() {
            chain
                .write_at(mem, 0, &h.encode())
                .map_err(DeviceError::chain(RXQ))?;
            return Ok(Some(HDR_LEN as u32));
        }
        if let Some(n) = self.peer_packet_into(mem, chain, room)? {
            return Ok(Some(n));
        }
        self.host_data_into(mem, chain, room)
    }

    /// The next valid packet from a peer link, stamped with the peer's CID.
    fn peer_packet_into(
        &mut self,
        mem: &dyn keel_core::GuestMemory,
        chain: &DescriptorChain,
        room: usize,
    ) -> Result<Option<u32>, DeviceError> {
        let mut buf = [0u8; PEER_PACKET_MAX];
        for _ in 0..BATCH {
            let mut got = None;
            for peer in self.peers.iter_mut() {
                if let Some(n) = peer.link.recv(&mut buf) {
                    got = Some((n.min(PEER_PACKET_MAX), peer.cid));
                    break;
                }
            }
            let Some((packet, from)) = got else {
                return Ok(None);
            };
            let Some(raw) = buf.first_chunk::<HDR_LEN>() else {
                self.counters.peer_rx_dropped += 1;
                continue;
            };
            let mut h = Header::decode(raw);
            // Stamped: a guest cannot pose as another.
            h.src_cid = from;
            let len = h.len as usize;
            if packet < HDR_LEN
                || HDR_LEN + len != packet
                || h.dst_cid != self.cid
                || h.kind != TYPE_STREAM
            {
                self.counters.peer_rx_dropped += 1;
                continue;
            }
            if len > room {
                // A receive buffer too small for a link packet: the guest's own doing.
                self.counters.peer_rx_dropped += 1;
                continue;
            }
            buf[..HDR_LEN].copy_from_slice(&h.encode());
            chain
                .write_at(mem, 0, &buf[..packet])
                .map_err(DeviceError::chain(RXQ))?;
            if h.op == op::RW {
                self.counters.rx_bytes += len as u64;
            }
            return Ok(Some(packet as u32));
        }
        self.backlog = true;
        Ok(None)
    }

    /// Data from the next host connection that has some and may send it.
    fn host_data_into(
        &mut self,
        mem: &dyn keel_core::GuestMemory,
        chain: &DescriptorChain,
        room: usize,
    ) -> Result<Option<u32>, DeviceError> {
        if room == 0 {
            return Ok(None);
        }
        let start = self.next_key;
        let keys: Vec<Key> = self
            .conns
            .range(start..)
            .chain(self.conns.range(..start))
            .filter(|(_, c)| {
                c.state == State::Established
                    && !c.host_eof
                    && !c.guest_done_receiving
                    && c.peer_credit() > 0
            })
            .map(|(k, _)| *k)
            .collect();
        if self.scratch.len() < MAX_PACKET_PAYLOAD as usize {
            self.scratch
                .try_reserve_exact(MAX_PACKET_PAYLOAD as usize - self.scratch.len())
                .map_err(|_| DeviceError::OutOfMemory {
                    what: "vsock packet",
                    bytes: MAX_PACKET_PAYLOAD as usize,
                })?;
            self.scratch.resize(MAX_PACKET_PAYLOAD as usize, 0);
        }
        for key in keys {
            let Some(conn) = self.conns.get(&key) else {
                continue;
            };
            let want = (conn.peer_credit() as usize)
                .min(room)
                .min(MAX_PACKET_PAYLOAD as usize);
            let id = conn.id;
            match self.host.read(id, &mut self.scratch[..want]) {
                Ok(HostRead::Data(n)) => {
                    let n = n.min(want);
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
                    conn.fwd_reported = conn.fwd_cnt;
                    let h = Header {
                        src_cid: HOST_CID,
                        dst_cid: self.cid,
                        src_port: key.1,
                        dst_port: key.0,
                        len: n as u32,
                        kind: TYPE_STREAM,
                        op: op::RW,
                        flags: 0,
                        buf_alloc: CONN_BUF,
                        fwd_cnt: conn.fwd_cnt,
                    };
                    chain
                        .write_at(mem, 0, &h.encode())
                        .map_err(DeviceError::chain(RXQ))?;
                    chain
                        .write_at(mem, HDR_LEN as u64, &self.scratch[..n])
                        .map_err(DeviceError::chain(RXQ))?;
                    self.counters.rx_bytes += n as u64;
                    // Next time, start after this connection.
                    self.next_key = (key.0, key.1.wrapping_add(1));
                    return Ok(Some((HDR_LEN + n) as u32));
                }
                Ok(HostRead::WouldBlock) => {}
                Ok(HostRead::Eof) => {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.host_eof = true;
                    }
                    self.send_on(key, op::SHUTDOWN, SHUTDOWN_SEND);
                    if let Some(h) = self.control.pop_front() {
                        chain
                            .write_at(mem, 0, &h.encode())
                            .map_err(DeviceError::chain(RXQ))?;
                        return Ok(Some(HDR_LEN as u32));
                    }
                }
                Err(_) => {
                    self.reset(key);
                    if let Some(h) = self.control.pop_front() {
                        chain
                            .write_at(mem, 0, &h.encode())
                            .map_err(DeviceError::chain(RXQ))?;
                        return Ok(Some(HDR_LEN as u32));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Everything the host or the peers may have for the guest.
    fn host_work(&mut self) -> Result<bool, DeviceError> {
        self.backlog = false;
        self.accept_host();
        self.flush_all();
        self.deliver()
    }
}

impl<H: VsockHost> VirtioDevice for Vsock<H> {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn active_queues(&mut self) -> &mut Option<ActiveQueues> {
        &mut self.active
    }

    fn reset(&mut self) {
        self.active = None;
        self.held = None;
        self.control.clear();
        let conns = core::mem::take(&mut self.conns);
        for (_, conn) in conns {
            self.host.close(conn.id);
        }
    }

    fn process_queue(&mut self, queue: u16) -> Result<bool, DeviceError> {
        self.backlog = false;
        match queue {
            // New receive buffers: also the moment to look for host connections that came
            // before the driver was ready.
            RXQ => self.host_work(),
            TXQ => self.transmit(),
            EVENTQ => Ok(false),
            _ => Err(DeviceError::NoSuchQueue { queue, count: 3 }),
        }
    }

    fn poll(&mut self) -> Result<bool, DeviceError> {
        if self.active.is_none() {
            return Ok(false);
        }
        self.host_work()
    }

    fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        let mut v = Vec::new();
        if let Some(s) = self.host.event_source() {
            v.push((HOST_EVENT, s));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if let Some(s) = p.link.event_source() {
                v.push((EventToken(PEER_EVENT_BASE + i as u32), s));
            }
        }
        v
    }

    fn handle_event(&mut self, token: EventToken) -> Result<bool, DeviceError> {
        // HOST_EVENT is also the backlog's token: always known.
        let known = if token == HOST_EVENT {
            true
        } else {
            token
                .0
                .checked_sub(PEER_EVENT_BASE)
                .and_then(|i| self.peers.get(i as usize))
                .is_some_and(|p| p.link.event_source().is_some())
        };
        if !known {
            return Err(DeviceError::NoSuchEvent { token: token.0 });
        }
        if self.active.is_none() {
            // Not started: a host connection waits in the backend; peer packets are
            // dropped by the link's own rules when it fills.
            self.host.drain_event();
            return Ok(false);
        }
        self.host_work()
    }

    fn backlogged_event(&self) -> Option<EventToken> {
        self.backlog.then_some(HOST_EVENT)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.counters;
        vec![
            ("tx_packets", c.tx_packets),
            ("tx_bytes", c.tx_bytes),
            ("rx_packets", c.rx_packets),
            ("rx_bytes", c.rx_bytes),
            ("bad_packets", c.bad_packets),
            ("wrong_src_cid", c.wrong_src_cid),
            ("credit_violations", c.credit_violations),
            ("refused_cid", c.refused_cid),
            ("refused_host", c.refused_host),
            ("control_dropped", c.control_dropped),
            ("peer_rx_dropped", c.peer_rx_dropped),
            ("peer_tx_dropped", c.peer_tx_dropped),
            ("connections", self.conns.len() as u64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::reg;
    use crate::testing::{GuestDriver, MockNet};
    use alloc::sync::Arc;
    use keel_core::GuestAddress;
    use spin::Mutex;

    const GUEST: u64 = 3;
    const RX_LEN: u32 = 4096 + HDR_LEN as u32;

    #[derive(Debug, Default)]
    struct MockConn {
        /// What the guest sent (the host read).
        got: Vec<u8>,
        /// What the host sends the guest.
        out: VecDeque<u8>,
        eof: bool,
        /// Bytes `write` takes per call (None: all).
        room: Option<usize>,
        shut_write: bool,
        closed: bool,
        ok_port: Option<u32>,
        broken: bool,
    }

    #[derive(Debug, Default)]
    struct HostState {
        listening: Vec<u32>,
        conns: Vec<MockConn>,
        incoming: VecDeque<(ConnId, u32)>,
    }

    /// A host whose event source is 5; the test keeps a handle.
    #[derive(Clone, Debug, Default)]
    struct MockHost(Arc<Mutex<HostState>>);

    impl MockHost {
        fn listen(&self, port: u32) {
            self.0.lock().listening.push(port);
        }
        /// The host connects to guest port `port`: returns the connection.
        fn dial(&self, port: u32) -> ConnId {
            let mut s = self.0.lock();
            let id = s.conns.len() as ConnId;
            s.conns.push(MockConn::default());
            s.incoming.push_back((id, port));
            id
        }
        fn with<R>(&self, id: ConnId, f: impl FnOnce(&mut MockConn) -> R) -> R {
            f(&mut self.0.lock().conns[id as usize])
        }
    }

    impl VsockHost for MockHost {
        fn event_source(&self) -> Option<EventSource> {
            Some(EventSource(5))
        }
        fn accept(&mut self) -> Option<(ConnId, u32)> {
            self.0.lock().incoming.pop_front()
        }
        fn accepted(&mut self, conn: ConnId, host_port: u32) -> Result<(), VsockHostError> {
            self.with(conn, |c| c.ok_port = Some(host_port));
            Ok(())
        }
        fn connect(&mut self, port: u32) -> Result<ConnId, VsockHostError> {
            let mut s = self.0.lock();
            if !s.listening.contains(&port) {
                return Err(VsockHostError::Refused { port });
            }
            let id = s.conns.len() as ConnId;
            s.conns.push(MockConn::default());
            Ok(id)
        }
        fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<HostRead, VsockHostError> {
            self.with(conn, |c| {
                if c.broken {
                    return Err(VsockHostError::Gone { conn });
                }
                if c.out.is_empty() {
                    return Ok(if c.eof {
                        HostRead::Eof
                    } else {
                        HostRead::WouldBlock
                    });
                }
                let n = buf.len().min(c.out.len());
                for (d, s) in buf.iter_mut().zip(c.out.drain(..n)) {
                    *d = s;
                }
                Ok(HostRead::Data(n))
            })
        }
        fn write(&mut self, conn: ConnId, buf: &[u8]) -> Result<usize, VsockHostError> {
            self.with(conn, |c| {
                if c.broken {
                    return Err(VsockHostError::Gone { conn });
                }
                let n = c.room.map_or(buf.len(), |r| r.min(buf.len()));
                c.got.extend_from_slice(&buf[..n]);
                if let Some(r) = c.room.as_mut() {
                    *r -= n;
                }
                Ok(n)
            })
        }
        fn shutdown_write(&mut self, conn: ConnId) {
            self.with(conn, |c| c.shut_write = true);
        }
        fn close(&mut self, conn: ConnId) {
            self.with(conn, |c| c.closed = true);
        }
    }

    /// A guest driver with fixed transmit and receive buffers.
    struct Guest {
        d: GuestDriver<Vsock<MockHost>>,
        host: MockHost,
        tx_hdr: u64,
        tx_data: u64,
        rx_bufs: Vec<u64>,
        next_rx: usize,
        rx_by_head: BTreeMap<u16, u64>,
        rx_seen: u16,
    }

    impl Guest {
        fn new() -> Guest {
            Guest::with_device(|host| Vsock::new(GUEST as u32, host))
        }

        fn with_device(make: impl FnOnce(MockHost) -> Vsock<MockHost>) -> Guest {
            let host = MockHost::default();
            let mut d = GuestDriver::start(make(host.clone()));
            let tx_hdr = d.alloc(HDR_LEN as u32);
            let tx_data = d.alloc(MAX_PACKET_PAYLOAD + 16);
            let rx_bufs = (0..8).map(|_| d.alloc(RX_LEN)).collect();
            Guest {
                d,
                host,
                tx_hdr,
                tx_data,
                rx_bufs,
                next_rx: 0,
                rx_by_head: BTreeMap::new(),
                rx_seen: 0,
            }
        }

        /// Post `n` receive buffers and notify.
        fn post_rx(&mut self, n: usize) {
            for _ in 0..n {
                let at = self.rx_bufs[self.next_rx % self.rx_bufs.len()];
                self.next_rx += 1;
                let head = self.d.post(RXQ, &[(at, RX_LEN, true)]);
                self.rx_by_head.insert(head, at);
            }
            self.d.write_reg(reg::QUEUE_NOTIFY, u32::from(RXQ));
        }

        /// Send one packet as Linux does: the header, then the payload in its own buffer.
        fn send_raw(&mut self, h: Header, payload: &[u8]) {
            self.d
                .mem
                .write(GuestAddress(self.tx_hdr), &h.encode())
                .unwrap();
            if payload.is_empty() {
                self.d.submit(TXQ, &[(self.tx_hdr, HDR_LEN as u32, false)]);
            } else {
                self.d
                    .mem
                    .write(GuestAddress(self.tx_data), payload)
                    .unwrap();
                self.d.submit(
                    TXQ,
                    &[
                        (self.tx_hdr, HDR_LEN as u32, false),
                        (self.tx_data, payload.len() as u32, false),
                    ],
                );
            }
        }

        fn send(&mut self, op: u16, src_port: u32, dst_port: u32, payload: &[u8]) {
            self.send_to(HOST_CID, op, src_port, dst_port, payload);
        }

        fn send_to(&mut self, dst: u64, op: u16, src_port: u32, dst_port: u32, payload: &[u8]) {
            self.send_raw(
                Header {
                    src_cid: GUEST,
                    dst_cid: dst,
                    src_port,
                    dst_port,
                    len: payload.len() as u32,
                    kind: TYPE_STREAM,
                    op,
                    flags: 0,
                    buf_alloc: 64 * 1024,
                    fwd_cnt: 0,
                },
                payload,
            );
        }

        /// Packets the device put in the receive queue since the last call.
        fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
            let q = &self.d.queues[usize::from(RXQ)];
            let idx = q.used_idx(&*self.d.mem);
            let mut out = Vec::new();
            while self.rx_seen != idx {
                let (id, len) = q.used_elem(&*self.d.mem, self.rx_seen);
                self.rx_seen = self.rx_seen.wrapping_add(1);
                let at = self.rx_by_head[&(id as u16)];
                let bytes = self.d.read_mem(at, len as usize);
                let h = Header::decode(bytes[..HDR_LEN].try_into().unwrap());
                assert_eq!(h.len as usize, bytes.len() - HDR_LEN, "length of {h:?}");
                out.push((h, bytes[HDR_LEN..].to_vec()));
            }
            out
        }

        fn host_event(&mut self) {
            self.d.transport.handle_event(HOST_EVENT);
        }

        fn counters(&mut self) -> VsockCounters {
            self.d.transport.lock_device().vsock_counters()
        }

        /// A guest connection to host port 1024 from guest port 5000, established.
        fn connected(&mut self) -> ConnId {
            self.host.listen(1024);
            self.post_rx(4);
            self.send(op::REQUEST, 5000, 1024, &[]);
            let got = self.recv();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0.op, op::RESPONSE);
            0
        }
    }

    fn ops(got: &[(Header, Vec<u8>)]) -> Vec<u16> {
        got.iter().map(|(h, _)| h.op).collect()
    }

    #[test]
    fn configuration_space_holds_the_guest_cid_and_no_features_are_offered() {
        let mut g = Guest::new();

        assert_eq!(u64::from_le_bytes(g.d.config::<8>(0)), GUEST);
        // Bits 0..24 are the device's; the transport adds ring features above.
        assert_eq!(g.d.device_features() & 0xff_ffff, 0);
        assert_eq!(
            g.d.transport.event_sources(),
            [(HOST_EVENT, EventSource(5))]
        );
    }

    #[test]
    fn guest_connects_to_a_listening_host_port_and_gets_response() {
        let mut g = Guest::new();
        g.host.listen(1024);
        g.post_rx(2);

        g.send(op::REQUEST, 5000, 1024, &[]);

        let got = g.recv();
        assert_eq!(ops(&got), [op::RESPONSE]);
        let h = got[0].0;
        assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, GUEST));
        assert_eq!((h.src_port, h.dst_port), (1024, 5000));
        assert_eq!(h.buf_alloc, CONN_BUF);
    }

    #[test]
    fn connection_to_a_host_port_nobody_listens_on_is_reset() {
        let mut g = Guest::new();
        g.post_rx(2);

        g.send(op::REQUEST, 5000, 7777, &[]);

        let got = g.recv();
        assert_eq!(ops(&got), [op::RST]);
        assert_eq!((got[0].0.src_port, got[0].0.dst_port), (7777, 5000));
        assert_eq!(g.counters().refused_host, 1);
    }

    #[test]
    fn data_flows_both_ways_on_a_guest_connection() {
        let mut g = Guest::new();
        let c = g.connected();

        g.send(op::RW, 5000, 1024, b"hello host");
        g.host.with(c, |c| c.out.extend(b"hello guest"));
        g.host_event();

        assert_eq!(g.host.with(c, |c| c.got.clone()), b"hello host");
        let got = g.recv();
        assert_eq!(ops(&got), [op::RW]);
        assert_eq!(got[0].1, b"hello guest");
        assert_eq!(got[0].0.fwd_cnt, 10, "the device tells what the host took");
        let c = g.counters();
        assert_eq!((c.tx_bytes, c.rx_bytes), (10, 11));
    }

    #[test]
    fn host_connection_becomes_a_request_and_the_guests_response_tells_the_host_ok() {
        let mut g = Guest::new();
        g.post_rx(2);
        let c = g.host.dial(52);

        g.host_event();

        let got = g.recv();
        assert_eq!(ops(&got), [op::REQUEST]);
        let req = got[0].0;
        assert_eq!(
            (req.src_cid, req.dst_cid, req.dst_port),
            (HOST_CID, GUEST, 52)
        );
        assert!(req.src_port >= 1 << 30, "host ports are allocated high");
        assert_eq!(g.host.with(c, |c| c.ok_port), None);

        g.send(op::RESPONSE, 52, req.src_port, &[]);

        assert_eq!(g.host.with(c, |c| c.ok_port), Some(req.src_port));
        g.send(op::RW, 52, req.src_port, b"x");
        assert_eq!(g.host.with(c, |c| c.got.clone()), b"x");
    }

    #[test]
    fn guest_refusing_a_host_connection_closes_it_on_the_host() {
        let mut g = Guest::new();
        g.post_rx(2);
        let c = g.host.dial(52);
        g.host_event();
        let req = g.recv()[0].0;

        g.send(op::RST, 52, req.src_port, &[]);

        assert!(g.host.with(c, |c| c.closed));
        assert_eq!(g.host.with(c, |c| c.ok_port), None);
        assert_eq!(g.d.transport.lock_device().connections(), 0);
    }

    #[test]
    fn data_beyond_the_devices_credit_resets_the_connection() {
        let mut g = Guest::new();
        let c = g.connected();
        g.host.with(c, |c| c.room = Some(0));
        let chunk = alloc::vec![7u8; MAX_PACKET_PAYLOAD as usize];

        g.send(op::RW, 5000, 1024, &chunk);
        g.send(op::RW, 5000, 1024, &chunk);
        assert!(g.recv().iter().all(|(h, _)| h.op != op::RST));
        g.send(op::RW, 5000, 1024, b"one byte too many");

        let got = g.recv();
        assert_eq!(ops(&got).last(), Some(&op::RST));
        assert!(g.host.with(c, |c| c.closed));
        assert_eq!(g.counters().credit_violations, 1);
    }

    #[test]
    fn bytes_the_backend_cannot_take_wait_and_a_credit_update_follows_when_it_does() {
        let mut g = Guest::new();
        let c = g.connected();
        g.host.with(c, |c| c.room = Some(100));
        let chunk = alloc::vec![9u8; MAX_PACKET_PAYLOAD as usize];

        g.send(op::RW, 5000, 1024, &chunk);
        assert_eq!(g.host.with(c, |c| c.got.len()), 100);
        assert!(g.recv().is_empty(), "no credit to announce yet");
        g.host.with(c, |c| c.room = None);
        g.host_event();

        assert_eq!(g.host.with(c, |c| c.got.len()), chunk.len());
        let got = g.recv();
        assert_eq!(ops(&got), [op::CREDIT_UPDATE]);
        assert_eq!(got[0].0.fwd_cnt, MAX_PACKET_PAYLOAD);
    }

    #[test]
    fn credit_request_is_answered_with_credit_update() {
        let mut g = Guest::new();
        g.connected();

        g.send(op::CREDIT_REQUEST, 5000, 1024, &[]);

        let got = g.recv();
        assert_eq!(ops(&got), [op::CREDIT_UPDATE]);
        assert_eq!(got[0].0.buf_alloc, CONN_BUF);
    }

    #[test]
    fn host_data_stops_at_the_guests_credit_and_resumes_on_credit_update() {
        let mut g = Guest::new();
        let c = g.connected();
        // The guest announced buf_alloc 64 KiB with fwd_cnt 0; 100 KiB wait on the host.
        g.host
            .with(c, |c| c.out.extend(alloc::vec![1u8; 100 * 1024]));
        g.post_rx(8);
        g.host_event();
        g.post_rx(8);
        g.post_rx(8);
        let sent: usize = g.recv().iter().map(|(_, p)| p.len()).sum();
        assert_eq!(sent, 64 * 1024);

        let h = Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 1024,
            kind: TYPE_STREAM,
            op: op::CREDIT_UPDATE,
            buf_alloc: 64 * 1024,
            fwd_cnt: 64 * 1024,
            ..Header::default()
        };
        g.send_raw(h, &[]);

        let more: usize = g.recv().iter().map(|(_, p)| p.len()).sum();
        assert!(more > 0, "credit update resumes the flow");
        assert!(more <= 36 * 1024);
    }

    #[test]
    fn guest_shutdown_of_sending_ends_the_hosts_reading_after_pending_bytes() {
        let mut g = Guest::new();
        let c = g.connected();
        g.host.with(c, |c| c.room = Some(3));
        g.send(op::RW, 5000, 1024, b"abcdef");
        let mut h = Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 1024,
            kind: TYPE_STREAM,
            op: op::SHUTDOWN,
            flags: SHUTDOWN_SEND,
            ..Header::default()
        };
        g.send_raw(h, &[]);
        assert!(!g.host.with(c, |c| c.shut_write), "3 bytes still wait");

        g.host.with(c, |c| c.room = None);
        g.host_event();

        assert_eq!(g.host.with(c, |c| c.got.clone()), b"abcdef");
        assert!(g.host.with(c, |c| c.shut_write));
        h.op = op::RW;
        g.send_raw(h, b"late");
        assert_eq!(ops(&g.recv()).last(), Some(&op::RST));
        assert_eq!(g.counters().credit_violations, 1);
    }

    #[test]
    fn guest_close_is_answered_with_rst_and_the_host_connection_closed() {
        let mut g = Guest::new();
        let c = g.connected();

        g.send_raw(
            Header {
                src_cid: GUEST,
                dst_cid: HOST_CID,
                src_port: 5000,
                dst_port: 1024,
                kind: TYPE_STREAM,
                op: op::SHUTDOWN,
                flags: SHUTDOWN_SEND | SHUTDOWN_RCV,
                ..Header::default()
            },
            &[],
        );

        assert_eq!(ops(&g.recv()), [op::RST]);
        assert!(g.host.with(c, |c| c.closed && c.shut_write));
        assert_eq!(g.d.transport.lock_device().connections(), 0);
    }

    #[test]
    fn host_end_of_stream_is_a_shutdown_of_sending() {
        let mut g = Guest::new();
        let c = g.connected();
        g.host.with(c, |c| {
            c.out.extend(b"bye");
            c.eof = true;
        });

        g.host_event();

        let got = g.recv();
        assert_eq!(ops(&got), [op::RW, op::SHUTDOWN]);
        assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    }

    #[test]
    fn a_failing_host_connection_resets_the_guests() {
        let mut g = Guest::new();
        let c = g.connected();
        g.host.with(c, |c| c.broken = true);

        g.send(op::RW, 5000, 1024, b"x");

        assert_eq!(ops(&g.recv()), [op::RST]);
        assert_eq!(g.d.transport.lock_device().connections(), 0);
    }

    #[test]
    fn the_guest_rst_closes_the_host_connection() {
        let mut g = Guest::new();
        let c = g.connected();

        g.send(op::RST, 5000, 1024, &[]);

        assert!(g.host.with(c, |c| c.closed));
        assert!(g.recv().is_empty(), "no answer to a RST");
    }

    #[test]
    fn a_wrong_source_cid_is_dropped_counted_and_resets_the_connection_it_names() {
        let mut g = Guest::new();
        let c = g.connected();

        g.send_raw(
            Header {
                src_cid: 99,
                dst_cid: HOST_CID,
                src_port: 5000,
                dst_port: 1024,
                kind: TYPE_STREAM,
                op: op::RW,
                len: 1,
                ..Header::default()
            },
            b"x",
        );

        assert_eq!(ops(&g.recv()), [op::RST]);
        assert!(g.host.with(c, |c| c.got.is_empty() && c.closed));
        assert_eq!(g.counters().wrong_src_cid, 1);
    }

    #[test]
    fn a_chain_shorter_than_the_header_is_dropped_and_the_device_goes_on() {
        let mut g = Guest::new();
        g.host.listen(1024);
        g.post_rx(2);
        let at = g.tx_hdr;

        g.d.submit(TXQ, &[(at, 10, false)]);

        assert_eq!(g.counters().bad_packets, 1);
        assert!(!g.d.needs_reset());
        g.send(op::REQUEST, 5000, 1024, &[]);
        assert_eq!(ops(&g.recv()), [op::RESPONSE]);
    }

    #[test]
    fn a_length_beyond_the_chain_or_the_cap_resets_the_connection() {
        let mut g = Guest::new();
        let c = g.connected();
        let mut h = Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 1024,
            kind: TYPE_STREAM,
            op: op::RW,
            len: 100,
            ..Header::default()
        };

        g.send_raw(h, b"only ten b");

        assert_eq!(ops(&g.recv()), [op::RST]);
        assert!(g.host.with(c, |c| c.got.is_empty() && c.closed));
        h.len = MAX_PACKET_PAYLOAD + 1;
        g.send_raw(h, &alloc::vec![0; MAX_PACKET_PAYLOAD as usize + 1]);
        assert_eq!(g.counters().bad_packets, 2);
        assert!(!g.d.needs_reset());
    }

    #[test]
    fn unknown_ops_and_socket_types_are_reset() {
        let mut g = Guest::new();
        let c = g.connected();

        g.send(42, 5000, 1024, &[]);

        assert_eq!(ops(&g.recv()), [op::RST]);
        assert!(g.host.with(c, |c| c.closed));
        g.send_raw(
            Header {
                src_cid: GUEST,
                dst_cid: HOST_CID,
                src_port: 6000,
                dst_port: 1024,
                kind: 2, // SEQPACKET, not offered
                op: op::REQUEST,
                ..Header::default()
            },
            &[],
        );
        assert_eq!(ops(&g.recv()), [op::RST]);
        assert_eq!(g.counters().bad_packets, 2);
    }

    #[test]
    fn data_on_an_unknown_connection_is_answered_with_rst() {
        let mut g = Guest::new();
        g.post_rx(2);

        g.send(op::RW, 5000, 1024, b"x");

        assert_eq!(ops(&g.recv()), [op::RST]);
    }

    #[test]
    fn connections_beyond_the_limit_are_refused() {
        let mut g = Guest::new();
        g.host.listen(1024);
        for port in 0..MAX_CONNECTIONS as u32 {
            g.post_rx(1);
            g.send(op::REQUEST, 10_000 + port, 1024, &[]);
            assert_eq!(ops(&g.recv()), [op::RESPONSE]);
        }
        g.post_rx(1);

        g.send(op::REQUEST, 9999, 1024, &[]);

        assert_eq!(ops(&g.recv()), [op::RST]);
        assert_eq!(g.d.transport.lock_device().connections(), MAX_CONNECTIONS);
    }

    #[test]
    fn a_flood_of_packets_without_receive_buffers_keeps_a_bounded_control_queue() {
        let mut g = Guest::new();

        for port in 0..(CONTROL_QUEUE_LIMIT as u32 + 50) {
            g.send_to(77, op::REQUEST, port, 1, &[]);
        }

        let c = g.counters();
        assert_eq!(c.refused_cid, CONTROL_QUEUE_LIMIT as u64 + 50);
        assert_eq!(c.control_dropped, 50);
        assert!(!g.d.needs_reset());
    }

    #[test]
    fn a_connection_to_a_cid_that_is_not_an_allowed_peer_is_reset_by_the_device() {
        let mut g = Guest::new();
        g.post_rx(1);

        g.send_to(4, op::REQUEST, 5000, 80, &[]);

        let got = g.recv();
        assert_eq!(ops(&got), [op::RST]);
        assert_eq!(got[0].0.src_cid, 4);
        assert_eq!(g.counters().refused_cid, 1);
    }

    fn with_peer() -> (Guest, MockNet) {
        let link = MockNet::default();
        let l = link.clone();
        let g = Guest::with_device(move |host| {
            Vsock::new(GUEST as u32, host).with_peer(4, Box::new(l))
        });
        (g, link)
    }

    #[test]
    fn packets_to_an_allowed_peer_are_relayed_split_to_the_link_size() {
        let (mut g, link) = with_peer();
        let data: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();

        g.send_to(4, op::RW, 5000, 80, &data);

        let sent = link.sent();
        assert_eq!(sent.len(), 3);
        let mut joined = Vec::new();
        for p in &sent {
            assert!(p.len() <= PEER_PACKET_MAX);
            let h = Header::decode(p[..HDR_LEN].try_into().unwrap());
            assert_eq!((h.src_cid, h.dst_cid, h.op), (GUEST, 4, op::RW));
            assert_eq!(h.len as usize, p.len() - HDR_LEN);
            joined.extend_from_slice(&p[HDR_LEN..]);
        }
        assert_eq!(joined, data);
        assert_eq!(
            g.d.transport.event_sources(),
            [
                (HOST_EVENT, EventSource(5)),
                (EventToken(1), EventSource(9))
            ]
        );
    }

    #[test]
    fn packets_from_a_peer_are_stamped_with_its_cid_and_others_dropped() {
        let (mut g, link) = with_peer();
        g.post_rx(4);
        let forged = Header {
            src_cid: 2, // poses as the host
            dst_cid: GUEST,
            src_port: 80,
            dst_port: 5000,
            len: 2,
            kind: TYPE_STREAM,
            op: op::RW,
            ..Header::default()
        };
        let mut p = forged.encode().to_vec();
        p.extend_from_slice(b"hi");
        link.arrive(&p);
        let mut elsewhere = forged;
        elsewhere.dst_cid = 8;
        link.arrive(&elsewhere.encode());
        let mut lying = forged;
        lying.len = 500;
        let mut q = lying.encode().to_vec();
        q.extend_from_slice(b"hi");
        link.arrive(&q);
        link.arrive(b"short");

        g.d.transport.handle_event(EventToken(1));

        let got = g.recv();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.src_cid, 4, "stamped with the peer's CID");
        assert_eq!(got[0].1, b"hi");
        assert_eq!(g.counters().peer_rx_dropped, 3);
    }

    #[test]
    fn a_full_peer_link_resets_the_guests_connection() {
        let (mut g, link) = with_peer();
        g.post_rx(1);
        link.refuse_sends();

        g.send_to(4, op::RW, 5000, 80, b"x");

        let got = g.recv();
        assert_eq!(ops(&got), [op::RST]);
        assert_eq!(g.counters().peer_tx_dropped, 1);
    }

    #[test]
    fn a_reset_device_closes_every_host_connection() {
        let mut g = Guest::new();
        let c = g.connected();

        g.d.write_reg(reg::STATUS, 0);

        assert!(g.host.with(c, |c| c.closed));
        assert_eq!(g.d.transport.lock_device().connections(), 0);
    }
}
