//! virtio-net (device type 1): one queue pair, receiveq 0 and transmitq 1, no control queue.
//!
//! The device moves Ethernet frames between the guest and a [`NetBackend`] (the host side:
//! a port of Keel's switch, a tap, a shared-memory ring to another protection domain). Each
//! frame on either queue is preceded by the 12-byte `virtio_net_hdr_v1`.
//!
//! Features offered: VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MRG_RXBUF,
//! VIRTIO_F_VERSION_1, and VIRTIO_NET_F_MTU when built [`Net::with_mtu`]. **No** checksum or
//! segmentation offload (CSUM, GUEST_CSUM, HOST/GUEST_TSO*, UFO, USO): the frame path neither
//! computes checksums nor segments, so the guest must hand over complete frames with valid
//! checksums; a transmit header that asks for either is refused (the frame is dropped and
//! counted). Received frames carry a zeroed header: no checksum claim, no GSO.
//!
//! Transmit: each chain is copied out of guest memory once, checked, stripped of its header
//! and handed to [`NetBackend::send`]; the chain always goes back to the used ring. A backend
//! that cannot take a frame drops it: the guest is never blocked by a slow peer.
//!
//! Receive: frames are taken from the backend only when the guest has a queue to put them in;
//! one frame that does not fit the posted buffers yet is held in the device until buffers are
//! posted, so no frame is lost because the guest was slow to post. With MRG_RXBUF a frame
//! spans as many posted chains as it needs (`num_buffers` in the header). At most
//! [`RX_BATCH`] frames are taken per call; see [`VirtioDevice::backlogged_event`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::device::features::VIRTIO_F_VERSION_1;
use crate::device::{
    ActiveQueues, DeviceError, EventSource, EventToken, VirtioDevice, check_single_event,
    device_type, read_config_bytes, single_event,
};
use crate::queue::{DescriptorChain, Queue};

/// Feature bit: the configuration holds the MTU.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// Feature bit: the configuration holds the MAC address.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature bit: the driver may post receive buffers a frame spans several of.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// Feature bit: the configuration holds the link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

/// Link status bit in the configuration's `status`: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `virtio_net_hdr_v1` flag: the driver left the checksum to the device (needs CSUM).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr_v1` gso_type: no segmentation.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// Size of `virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers): the header is this size on both queues once VERSION_1 is negotiated.
pub const NET_HDR_LEN: usize = 12;
/// Shortest frame accepted: an Ethernet header (destination, source, EtherType).
pub const MIN_FRAME_LEN: usize = 14;
/// Longest frame accepted without an MTU: a 64 KiB IP packet and its Ethernet header.
pub const MAX_FRAME_LEN: usize = 65550;
/// Most buffers of one receive or transmit chain: Linux uses at most MAX_SKB_FRAGS + 2 (19
/// by default, 47 with the largest MAX_SKB_FRAGS). Up to a queue's worth of receive chains
/// is held at a time, so this bounds what they cost the VMM's heap (256 x 1.5 KiB).
pub const NET_MAX_CHAIN_SEGMENTS: u32 = 64;
/// Smallest MTU (that of IPv4, RFC 791); [`Net::with_mtu`] refuses less.
pub const MIN_MTU: u16 = 68;
/// Room for the Ethernet header and one 802.1Q tag on top of the MTU.
const MTU_OVERHEAD: usize = 14 + 4;

/// The receive queue (backend → guest).
pub const RECEIVEQ: u16 = 0;
/// The transmit queue (guest → backend).
pub const TRANSMITQ: u16 = 1;
/// Size offered for each queue (QueueNumMax).
pub const QUEUE_SIZE: u16 = 256;

/// The token of the backend's event source in [`VirtioDevice::event_sources`].
pub const RX_EVENT: EventToken = EventToken(0);
/// Most frames taken from the backend per call, so a flood cannot monopolise the VMM's
/// I/O loop; the rest waits in the backend (see [`VirtioDevice::backlogged_event`]).
pub const RX_BATCH: usize = 128;

/// Why a backend could not take a frame, or why a device could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The backend has no room: the frame was dropped (and counted by the backend).
    #[error("backend is full: frame of {len} bytes dropped")]
    Full {
        /// Length of the dropped frame.
        len: usize,
    },
    /// The frame is longer than the backend carries.
    #[error("frame of {len} bytes is longer than the backend's maximum of {max}")]
    TooLong {
        /// Length of the frame.
        len: usize,
        /// The backend's maximum.
        max: usize,
    },
    /// The peer is gone (a closed ring, a removed switch port).
    #[error("backend is disconnected")]
    Disconnected,
    /// An MTU the device cannot offer.
    #[error("MTU {mtu} is below the minimum of {MIN_MTU}")]
    InvalidMtu {
        /// The MTU asked for.
        mtu: u16,
    },
    /// Anything else, with the backend's words.
    #[error("backend: {0}")]
    Other(String),
}

/// The host side of a virtio-net device. Neither method may block.
pub trait NetBackend: Send {
    /// The guest transmitted `frame` (an Ethernet frame without the virtio header). A backend
    /// that is full drops the frame, counts it and returns [`NetError::Full`]: it never
    /// waits for a slow peer. The device counts every error as a transmit drop and goes on.
    fn send(&mut self, frame: &[u8]) -> Result<(), NetError>;

    /// The next received frame, copied into `buf`: its length, or `None` when no frame is
    /// waiting. A frame longer than `buf` is dropped and counted by the backend (and the next
    /// one looked at), never truncated.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize>;

    /// The host event that fires when frames arrive (an eventfd on Linux, a Microkit channel
    /// on seL4), waited on edge-triggered. Without one the device looks for frames only when
    /// the guest posts receive buffers and on [`crate::MmioTransport::poll`].
    fn event_source(&self) -> Option<EventSource>;

    /// Asked right after [`NetBackend::recv`] returned `None`: whether that `None` only means
    /// the backend stopped early to bound its work (it skipped many unusable frames) and
    /// frames may still be waiting, which its event source will not announce again. The
    /// device then reports [`VirtioDevice::backlogged_event`] so the VMM calls it again.
    /// Default: `false` (`None` means nothing is waiting).
    fn backlogged(&self) -> bool {
        false
    }

    /// What the backend has counted so far, by name (the device reports them after its own
    /// [`NetCounters`]). None by default.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Transmitted frames dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxDrops {
    /// Shorter than the header and an Ethernet header.
    pub too_short: u64,
    /// Longer than the maximum frame (or the chain longer than header + [`MAX_FRAME_LEN`]).
    pub too_long: u64,
    /// A header asking for checksum or segmentation offload, which is not offered.
    pub bad_header: u64,
    /// Refused by the backend ([`NetBackend::send`] returned an error).
    pub backend: u64,
}

/// Received frames dropped by the device, by reason (the backend counts its own drops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxDrops {
    /// Shorter than an Ethernet header.
    pub too_short: u64,
    /// Longer than the device's maximum frame (a backend that ignored its buffer's length).
    pub too_long: u64,
    /// Larger than the receive buffers the guest can post (without MRG_RXBUF: than the
    /// buffer at hand; with it: than all the buffers a full receive queue holds).
    pub no_room: u64,
}

/// What the device has moved and dropped since it was built (not cleared by a reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Their bytes (Ethernet frames, without the virtio header).
    pub tx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes (Ethernet frames, without the virtio header).
    pub rx_bytes: u64,
    /// Transmitted frames dropped.
    pub tx_dropped: TxDrops,
    /// Received frames dropped.
    pub rx_dropped: RxDrops,
}

/// The virtio-net device.
#[derive(Debug)]
pub struct Net<B: NetBackend> {
    backend: B,
    mac: [u8; 6],
    mtu: Option<u16>,
    /// Longest Ethernet frame either way: [`MAX_FRAME_LEN`], or the MTU plus headers.
    max_frame: usize,
    /// Whether the driver accepted VIRTIO_NET_F_MRG_RXBUF.
    mergeable: bool,
    /// Header room then one frame: the frame taken from the backend is received at
    /// `NET_HDR_LEN..`, so the header and the frame go to the guest as one stream.
    rx_buf: Vec<u8>,
    /// Length of the frame held in `rx_buf` waiting for receive buffers, if any.
    rx_pending: Option<usize>,
    /// Receive chains popped but not yet used, in ring order: the start of a frame that
    /// needs more buffers, or a chain kept after a frame too large for it was dropped (a
    /// popped chain cannot be given back to the queue).
    rx_held: Vec<DescriptorChain>,
    /// The last receive pass stopped at [`RX_BATCH`] frames with the backend maybe not dry.
    rx_backlog: bool,
    /// A transmit chain's readable bytes, copied out once.
    tx_buf: Vec<u8>,
    counters: NetCounters,
    active: Option<ActiveQueues>,
}

impl<B: NetBackend> Net<B> {
    /// A network device with MAC address `mac` whose frames go to and come from `backend`.
    pub fn new(backend: B, mac: [u8; 6]) -> Net<B> {
        Net {
            backend,
            mac,
            mtu: None,
            max_frame: MAX_FRAME_LEN,
            mergeable: false,
            rx_buf: alloc::vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            rx_pending: None,
            rx_held: Vec::new(),
            rx_backlog: false,
            tx_buf: alloc::vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            counters: NetCounters::default(),
            active: None,
        }
    }

    /// Offer VIRTIO_NET_F_MTU with `mtu`: frames longer than the MTU plus an Ethernet header
    /// and a VLAN tag are dropped both ways. An MTU below [`MIN_MTU`] is refused.
    pub fn with_mtu(mut self, mtu: u16) -> Result<Net<B>, NetError> {
        if mtu < MIN_MTU {
            return Err(NetError::InvalidMtu { mtu });
        }
        self.mtu = Some(mtu);
        self.max_frame = (usize::from(mtu) + MTU_OVERHEAD).min(MAX_FRAME_LEN);
        Ok(self)
    }

    /// The MAC address offered to the guest.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Frames and bytes moved and dropped so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Whether a frame taken from the backend waits in the device for receive buffers.
    pub fn holds_frame(&self) -> bool {
        self.rx_pending.is_some()
    }

    /// Hand every transmit chain's frame to the backend.
    fn transmit(&mut self) -> Result<bool, DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let (mem, q) = active.get(TRANSMITQ)?;
        if !q.ready() {
            return Ok(false);
        }
        let mut used = false;
        while let Some(chain) = q.pop(mem).map_err(DeviceError::queue(TRANSMITQ))? {
            chain
                .require_readable_only()
                .map_err(DeviceError::chain(TRANSMITQ))?;
            let len = chain.readable_len() as usize;
            let drop = if len > NET_HDR_LEN + MAX_FRAME_LEN {
                // Not even copied: the bound keeps one chain's copy to 64 KiB.
                Some(&mut self.counters.tx_dropped.too_long)
            } else {
                let buf = self.tx_buf.get_mut(..len).ok_or_else(|| {
                    DeviceError::Backend(format!("transmit buffer shorter than {len} bytes"))
                })?;
                chain
                    .read_at(mem, 0, buf)
                    .map_err(DeviceError::chain(TRANSMITQ))?;
                match check_tx(buf, self.max_frame) {
                    Ok(frame) => match self.backend.send(frame) {
                        Ok(()) => {
                            self.counters.tx_frames += 1;
                            self.counters.tx_bytes += frame.len() as u64;
                            None
                        }
                        Err(_) => Some(&mut self.counters.tx_dropped.backend),
                    },
                    Err(TxCheck::TooShort) => Some(&mut self.counters.tx_dropped.too_short),
                    Err(TxCheck::TooLong) => Some(&mut self.counters.tx_dropped.too_long),
                    Err(TxCheck::BadHeader) => Some(&mut self.counters.tx_dropped.bad_header),
                }
            };
            if let Some(counter) = drop {
                *counter += 1;
            }
            // The device writes nothing into a transmit chain.
            q.add_used(mem, chain.head(), 0)
                .map_err(DeviceError::queue(TRANSMITQ))?;
            used = true;
        }
        if used {
            active.needs_notification(TRANSMITQ)
        } else {
            Ok(false)
        }
    }

    /// Move frames from the backend into the receive buffers the guest has posted: at most
    /// [`RX_BATCH`] frames taken from the backend, none taken while one is held.
    fn receive(&mut self) -> Result<bool, DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let (mem, q) = active.get(RECEIVEQ)?;
        if !q.ready() {
            // The driver has not set up reception: frames stay in the backend.
            return Ok(false);
        }
        self.rx_backlog = false;
        let mut used = false;
        let mut taken = 0usize;
        loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => {
                    if taken == RX_BATCH {
                        self.rx_backlog = true;
                        break;
                    }
                    let room = &mut self.rx_buf[NET_HDR_LEN..NET_HDR_LEN + self.max_frame];
                    let Some(len) = self.backend.recv(room) else {
                        // A backend that stopped short is served again like a full batch.
                        self.rx_backlog |= self.backend.backlogged();
                        break;
                    };
                    taken += 1;
                    if len < MIN_FRAME_LEN {
                        self.counters.rx_dropped.too_short += 1;
                        continue;
                    }
                    if len > self.max_frame {
                        // Longer than the buffer given: a backend not keeping its contract.
                        self.counters.rx_dropped.too_long += 1;
                        continue;
                    }
                    self.rx_pending = Some(len);
                    len
                }
            };
            match place_frame(q, mem, &mut self.rx_held, self.mergeable, len)? {
                Placement::Fits(chains) => {
                    write_frame(
                        q,
                        mem,
                        &mut self.rx_buf[..NET_HDR_LEN + len],
                        &self.rx_held[..chains],
                    )?;
                    self.rx_held.drain(..chains);
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                    self.rx_pending = None;
                    used = true;
                }
                Placement::Never => {
                    self.counters.rx_dropped.no_room += 1;
                    self.rx_pending = None;
                }
                Placement::Wait => break,
            }
        }
        if used {
            active.needs_notification(RECEIVEQ)
        } else {
            Ok(false)
        }
    }
}

/// Why a transmitted frame is refused.
enum TxCheck {
    TooShort,
    TooLong,
    BadHeader,
}

/// The frame of a transmit chain's bytes `buf` (header first), if it can be sent.
fn check_tx(buf: &[u8], max_frame: usize) -> Result<&[u8], TxCheck> {
    let (Some(header), Some(frame)) = (buf.get(..NET_HDR_LEN), buf.get(NET_HDR_LEN..)) else {
        return Err(TxCheck::TooShort);
    };
    // flags and gso_type: no checksum or segmentation offload was offered, so a header
    // asking for either (or setting a flag not defined for transmit) cannot be honoured.
    // hdr_len, gso_size, csum_start and csum_offset mean nothing without them, and
    // num_buffers is a receive field: all ignored.
    if header[0] != 0 || header[1] != VIRTIO_NET_HDR_GSO_NONE {
        return Err(TxCheck::BadHeader);
    }
    if frame.len() < MIN_FRAME_LEN {
        return Err(TxCheck::TooShort);
    }
    if frame.len() > max_frame {
        return Err(TxCheck::TooLong);
    }
    Ok(frame)
}

/// Where a frame goes in the receive queue.
enum Placement {
    /// The first this many held chains hold the header and the frame.
    Fits(usize),
    /// Not enough buffers are posted yet.
    Wait,
    /// No buffers the guest can post will ever hold it.
    Never,
}

/// Pop receive chains until the held ones hold the header and a frame of `len` bytes, or
/// until that is seen to be impossible for now or for ever.
fn place_frame(
    q: &mut Queue,
    mem: &dyn keel_core::GuestMemory,
    held: &mut Vec<DescriptorChain>,
    mergeable: bool,
    len: usize,
) -> Result<Placement, DeviceError> {
    let need = NET_HDR_LEN + len;
    loop {
        let mut room = 0usize;
        for (i, chain) in held.iter().enumerate() {
            room += chain.writable_len() as usize;
            if room >= need {
                return Ok(Placement::Fits(i + 1));
            }
        }
        if !mergeable && !held.is_empty() {
            // One chain per frame, and the one at hand is too small.
            return Ok(Placement::Never);
        }
        if held.len() >= usize::from(q.size()) {
            // Every chain a full queue can hold is here: the guest can post no more.
            return Ok(Placement::Never);
        }
        let Some(chain) = q.pop(mem).map_err(DeviceError::queue(RECEIVEQ))? else {
            return Ok(Placement::Wait);
        };
        chain
            .require_writable_only()
            .map_err(DeviceError::chain(RECEIVEQ))?;
        if (chain.writable_len() as usize) < NET_HDR_LEN {
            // Every receive buffer must hold at least the header (virtio 1.2 §5.1.6.3.1).
            return Err(DeviceError::BadRequest {
                queue: RECEIVEQ,
                head: chain.head(),
                reason: format!(
                    "receive buffer of {} bytes is shorter than the {NET_HDR_LEN}-byte header",
                    chain.writable_len()
                ),
            });
        }
        // At most a queue's worth (checked above); fallible all the same.
        held.try_reserve(1).map_err(|_| DeviceError::OutOfMemory {
            what: "held receive chains",
            bytes: core::mem::size_of::<DescriptorChain>(),
        })?;
        held.push(chain);
    }
}

/// Write the header (zeroed but for `num_buffers`) and the frame in `stream` (header room
/// first) across `chains`, and return each chain to the used ring with what it got.
fn write_frame(
    q: &mut Queue,
    mem: &dyn keel_core::GuestMemory,
    stream: &mut [u8],
    chains: &[DescriptorChain],
) -> Result<(), DeviceError> {
    // At most the queue size (<= 32768) chains are held.
    let num_buffers = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    let header = stream
        .get_mut(..NET_HDR_LEN)
        .ok_or_else(|| DeviceError::Backend(String::from("receive stream too short")))?;
    header.fill(0);
    header[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    let mut at = 0usize;
    for chain in chains {
        let n = (chain.writable_len() as usize).min(stream.len() - at);
        chain
            .write_at(mem, 0, &stream[at..at + n])
            .map_err(DeviceError::chain(RECEIVEQ))?;
        // n <= writable_len, a u32.
        q.add_used(mem, chain.head(), n as u32)
            .map_err(DeviceError::queue(RECEIVEQ))?;
        at += n;
    }
    Ok(())
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    /// The [`NetCounters`] (`tx_frames` … `rx_drop_no_room`), then the backend's.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let mut v = alloc::vec![
            ("tx_frames", c.tx_frames),
            ("tx_bytes", c.tx_bytes),
            ("rx_frames", c.rx_frames),
            ("rx_bytes", c.rx_bytes),
            ("tx_drop_too_short", c.tx_dropped.too_short),
            ("tx_drop_too_long", c.tx_dropped.too_long),
            ("tx_drop_bad_header", c.tx_dropped.bad_header),
            ("tx_drop_backend", c.tx_dropped.backend),
            ("rx_drop_too_short", c.rx_dropped.too_short),
            ("rx_drop_too_long", c.rx_dropped.too_long),
            ("rx_drop_no_room", c.rx_dropped.no_room),
        ];
        v.extend(self.backend.counters());
        v
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        // No VIRTIO_NET_F_CSUM / GUEST_CSUM / *_TSO* / *_UFO / *_USO: see the module doc.
        let mtu = if self.mtu.is_some() {
            VIRTIO_NET_F_MTU
        } else {
            0
        };
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_F_VERSION_1 | mtu
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { mac: [u8; 6], status: u16, max_virtqueue_pairs: u16,
        // mtu: u16, … }: the fields past mtu belong to features not offered and read as 0.
        let mut config = [0u8; 12];
        config[0..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn active_queues(&mut self) -> &mut Option<ActiveQueues> {
        &mut self.active
    }

    fn activate(
        &mut self,
        memory: keel_core::GuestMemoryRef,
        mut queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), DeviceError> {
        self.mergeable = acked_features & VIRTIO_NET_F_MRG_RXBUF != 0;
        for q in &mut queues {
            q.set_max_segments(NET_MAX_CHAIN_SEGMENTS);
        }
        self.active = Some(ActiveQueues::new(memory, queues));
        Ok(())
    }

    fn reset(&mut self) {
        // Chains belong to the old rings; a frame held stays for the next activation.
        self.active = None;
        self.rx_held.clear();
        self.rx_backlog = false;
        self.mergeable = false;
    }

    fn process_queue(&mut self, queue: u16) -> Result<bool, DeviceError> {
        match queue {
            RECEIVEQ => self.receive(),
            TRANSMITQ => self.transmit(),
            _ => Err(DeviceError::NoSuchQueue { queue, count: 2 }),
        }
    }

    fn poll(&mut self) -> Result<bool, DeviceError> {
        self.receive()
    }

    fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        single_event(RX_EVENT, self.backend.event_source())
    }

    fn handle_event(&mut self, token: EventToken) -> Result<bool, DeviceError> {
        check_single_event(token, RX_EVENT, self.backend.event_source())?;
        self.receive()
    }

    fn backlogged_event(&self) -> Option<EventToken> {
        (self.rx_backlog && self.active.is_some()).then_some(RX_EVENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
    use crate::queue::VIRTQ_AVAIL_F_NO_INTERRUPT;
    use crate::testing::{GuestDriver, MockNet};
    use alloc::collections::VecDeque;
    use alloc::vec;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn net() -> (GuestDriver<Net<MockNet>>, MockNet) {
        let backend = MockNet::default();
        (GuestDriver::start(Net::new(backend.clone(), MAC)), backend)
    }

    /// A started device whose driver accepted only `features`.
    fn net_accepting(features: u64) -> (GuestDriver<Net<MockNet>>, MockNet) {
        let backend = MockNet::default();
        let mut d = GuestDriver::new(Net::new(backend.clone(), MAC));
        assert!(d.negotiate(features), "FEATURES_OK refused");
        d.setup_queues();
        d.driver_ok();
        (d, backend)
    }

    /// An Ethernet frame of `len` bytes whose bytes count up from `seed`.
    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    /// The header a receive buffer gets: zeroed but for `num_buffers`.
    fn rx_header(num_buffers: u16) -> [u8; NET_HDR_LEN] {
        let mut h = [0u8; NET_HDR_LEN];
        h[10..].copy_from_slice(&num_buffers.to_le_bytes());
        h
    }

    /// Transmit `frame` behind `header`, header and frame in separate descriptors.
    fn transmit(d: &mut GuestDriver<Net<MockNet>>, header: [u8; NET_HDR_LEN], frame: &[u8]) {
        let h = d.buffer(&header);
        let f = d.buffer(frame);
        d.submit(
            TRANSMITQ,
            &[
                (h, NET_HDR_LEN as u32, false),
                (f, frame.len() as u32, false),
            ],
        );
    }

    fn tx_drops(d: &GuestDriver<Net<MockNet>>) -> TxDrops {
        d.transport.lock_device().counters().tx_dropped
    }

    #[test]
    fn config_space_holds_the_mac_and_link_up() {
        let (mut d, _backend) = net();

        let config = d.config::<8>(0);

        assert_eq!(config[..6], MAC);
        assert_eq!(config[6..], VIRTIO_NET_S_LINK_UP.to_le_bytes());
    }

    #[test]
    fn config_space_holds_the_mtu_when_built_with_one() {
        let net = Net::new(MockNet::default(), MAC).with_mtu(9000).unwrap();
        let mut d = GuestDriver::start(net);

        let features = d.device_features();

        assert_ne!(features & VIRTIO_NET_F_MTU, 0);
        assert_eq!(d.config::<2>(10), 9000u16.to_le_bytes());
        assert_eq!(d.config::<2>(8), 1u16.to_le_bytes());
    }

    #[test]
    fn mtu_below_the_minimum_is_refused() {
        let result = Net::new(MockNet::default(), MAC).with_mtu(67);

        assert_eq!(result.err(), Some(NetError::InvalidMtu { mtu: 67 }));
    }

    #[test]
    fn device_offers_exactly_mac_status_mergeable_buffers_and_version_1() {
        let (mut d, _backend) = net();

        let offered = d.device_features();

        // The transport adds the ring features it implements; no offload bit is offered.
        let ring = VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX;
        assert_eq!(
            offered,
            VIRTIO_NET_F_MAC
                | VIRTIO_NET_F_STATUS
                | VIRTIO_NET_F_MRG_RXBUF
                | VIRTIO_F_VERSION_1
                | ring
        );
    }

    #[test]
    fn transmitted_frame_reaches_the_backend_without_its_header() {
        let (mut d, backend) = net();
        let f = frame(60, 1);

        transmit(&mut d, [0; NET_HDR_LEN], &f);

        assert_eq!(backend.sent(), [f]);
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
        assert!(d.irq.is_high());
        let c = d.transport.lock_device().counters();
        assert_eq!((c.tx_frames, c.tx_bytes), (1, 60));
    }

    #[test]
    fn net_reports_its_counters_by_name() {
        let (mut d, _backend) = net();

        transmit(&mut d, [0; NET_HDR_LEN], &frame(60, 1));

        let c = VirtioDevice::counters(&*d.transport.lock_device());
        assert_eq!(c.first(), Some(&("tx_frames", 1)), "{c:?}");
        assert!(c.contains(&("tx_bytes", 60)), "{c:?}");
        assert!(c.contains(&("rx_frames", 0)), "{c:?}");
    }

    #[test]
    fn boxed_device_forwards_its_counters() {
        let boxed: alloc::boxed::Box<dyn VirtioDevice> =
            alloc::boxed::Box::new(Net::new(MockNet::default(), MAC));

        let c = boxed.counters();

        assert_eq!(c.first(), Some(&("tx_frames", 0)), "{c:?}");
    }

    #[test]
    fn header_and_frame_in_one_descriptor_are_split_at_the_header() {
        let (mut d, backend) = net();
        let mut bytes = vec![0u8; NET_HDR_LEN];
        bytes.extend(frame(100, 7));
        let a = d.buffer(&bytes);

        d.submit(TRANSMITQ, &[(a, bytes.len() as u32, false)]);

        assert_eq!(backend.sent(), [frame(100, 7)]);
    }

    #[test]
    fn short_frame_is_dropped_counted_and_its_chain_completed() {
        let (mut d, backend) = net();

        transmit(&mut d, [0; NET_HDR_LEN], &frame(MIN_FRAME_LEN - 1, 0));

        assert!(backend.sent().is_empty());
        assert_eq!(tx_drops(&d).too_short, 1);
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
        assert!(!d.needs_reset());
    }

    #[test]
    fn chain_shorter_than_the_header_is_dropped_as_too_short() {
        let (mut d, backend) = net();
        let a = d.buffer(&[0; 8]);

        d.submit(TRANSMITQ, &[(a, 8, false)]);

        assert!(backend.sent().is_empty());
        assert_eq!(tx_drops(&d).too_short, 1);
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
    }

    #[test]
    fn frame_longer_than_the_mtu_allows_is_dropped_and_counted() {
        let backend = MockNet::default();
        let net = Net::new(backend.clone(), MAC).with_mtu(1500).unwrap();
        let mut d = GuestDriver::start(net);

        transmit(&mut d, [0; NET_HDR_LEN], &frame(1500 + 18 + 1, 0));

        assert!(backend.sent().is_empty());
        assert_eq!(tx_drops(&d).too_long, 1);
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
    }

    #[test]
    fn frame_of_the_mtu_with_a_vlan_tag_is_sent() {
        let backend = MockNet::default();
        let net = Net::new(backend.clone(), MAC).with_mtu(1500).unwrap();
        let mut d = GuestDriver::start(net);

        transmit(&mut d, [0; NET_HDR_LEN], &frame(1500 + 18, 0));

        assert_eq!(backend.sent().len(), 1);
    }

    #[test]
    fn chain_longer_than_header_and_largest_frame_is_dropped_and_completed() {
        let (mut d, backend) = net();
        let len = (NET_HDR_LEN + MAX_FRAME_LEN + 1) as u32;
        let a = d.alloc(len);

        d.submit(TRANSMITQ, &[(a, len, false)]);

        assert!(backend.sent().is_empty());
        assert_eq!(tx_drops(&d).too_long, 1);
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
        assert!(!d.needs_reset());
    }

    #[test]
    fn frame_asking_for_checksum_offload_is_dropped_and_counted() {
        let (mut d, backend) = net();
        let mut header = [0u8; NET_HDR_LEN];
        header[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;

        transmit(&mut d, header, &frame(60, 0));

        assert!(backend.sent().is_empty());
        assert_eq!(tx_drops(&d).bad_header, 1);
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
    }

    #[test]
    fn frame_asking_for_segmentation_is_dropped_and_counted() {
        let (mut d, backend) = net();
        let mut header = [0u8; NET_HDR_LEN];
        header[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4

        transmit(&mut d, header, &frame(60, 0));

        assert!(backend.sent().is_empty());
        assert_eq!(tx_drops(&d).bad_header, 1);
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
    }

    #[test]
    fn frame_the_backend_refuses_is_counted_and_its_chain_completed() {
        let (mut d, backend) = net();
        backend.refuse_sends();

        transmit(&mut d, [0; NET_HDR_LEN], &frame(60, 0));

        assert_eq!(tx_drops(&d).backend, 1);
        assert_eq!(d.transport.lock_device().counters().tx_frames, 0);
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
        assert!(!d.needs_reset());
    }

    #[test]
    fn transmit_chain_with_writable_descriptor_sets_needs_reset() {
        let (mut d, backend) = net();
        let a = d.alloc(64);

        d.submit(TRANSMITQ, &[(a, 64, true)]);

        assert!(d.needs_reset());
        assert!(backend.sent().is_empty());
    }

    #[test]
    fn transmit_chain_over_the_segment_cap_sets_needs_reset_and_sends_nothing() {
        let backend = MockNet::default();
        let mut d = GuestDriver::start_sized(Net::new(backend.clone(), MAC), 256);
        let a = d.alloc(16);
        let bufs: Vec<_> = (0..=NET_MAX_CHAIN_SEGMENTS)
            .map(|_| (a, 16u32, false))
            .collect();

        d.submit(TRANSMITQ, &bufs);

        assert!(d.needs_reset());
        assert!(backend.sent().is_empty());
    }

    #[test]
    fn transmit_does_not_interrupt_a_driver_that_suppressed_interrupts() {
        let (mut d, backend) = net_accepting(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
        d.queues[usize::from(TRANSMITQ)].set_avail_flags(&*d.mem, VIRTQ_AVAIL_F_NO_INTERRUPT);

        transmit(&mut d, [0; NET_HDR_LEN], &frame(60, 0));

        assert_eq!(backend.sent().len(), 1);
        assert_eq!(d.last_used(TRANSMITQ), Some((0, 0)));
        assert!(!d.irq.is_high());
    }

    #[test]
    fn net_declares_its_backends_event_source() {
        let (d, _backend) = net();

        assert_eq!(d.transport.event_sources(), [(RX_EVENT, EventSource(9))]);
    }

    #[test]
    fn received_frame_lands_in_a_posted_buffer_with_header_and_one_buffer() {
        let (mut d, backend) = net();
        let a = d.alloc(2048);
        d.post(RECEIVEQ, &[(a, 2048, true)]);
        let f = frame(60, 3);
        backend.arrive(&f);

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.read_mem(a, NET_HDR_LEN), rx_header(1));
        assert_eq!(d.read_mem(a + NET_HDR_LEN as u64, 60), f);
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 72)));
        assert!(d.irq.is_high());
        let c = d.transport.lock_device().counters();
        assert_eq!((c.rx_frames, c.rx_bytes), (1, 60));
    }

    #[test]
    fn full_size_frame_spans_three_small_mergeable_buffers() {
        let (mut d, backend) = net();
        let bufs = [d.alloc(600), d.alloc(600), d.alloc(600)];
        for b in bufs {
            d.post(RECEIVEQ, &[(b, 600, true)]);
        }
        let f = frame(1514, 5);
        backend.arrive(&f);

        d.transport.handle_event(RX_EVENT);

        let q = &d.queues[usize::from(RECEIVEQ)];
        let used: Vec<_> = (0..3).map(|i| q.used_elem(&*d.mem, i)).collect();
        assert_eq!(used, [(0, 600), (1, 600), (2, 326)]);
        assert_eq!(q.used_idx(&*d.mem), 3);
        let mut got = d.read_mem(bufs[0], 600);
        got.extend(d.read_mem(bufs[1], 600));
        got.extend(d.read_mem(bufs[2], 326));
        let mut want = rx_header(3).to_vec();
        want.extend(&f);
        assert_eq!(got, want);
    }

    #[test]
    fn frame_is_held_without_buffers_and_delivered_when_one_is_posted() {
        let (mut d, backend) = net();
        let f = frame(100, 9);
        backend.arrive(&f);
        d.transport.handle_event(RX_EVENT);
        assert!(d.transport.lock_device().holds_frame());
        assert_eq!(backend.waiting(), 0);
        assert_eq!(d.last_used(RECEIVEQ), None);
        assert!(!d.irq.is_high());
        let a = d.alloc(2048);

        d.submit(RECEIVEQ, &[(a, 2048, true)]);

        assert_eq!(d.read_mem(a + NET_HDR_LEN as u64, 100), f);
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 112)));
        assert!(!d.transport.lock_device().holds_frame());
        assert!(d.irq.is_high());
    }

    #[test]
    fn frame_waiting_for_a_second_mergeable_buffer_is_delivered_when_it_is_posted() {
        let (mut d, backend) = net();
        let (a, b) = (d.alloc(1024), d.alloc(1024));
        d.post(RECEIVEQ, &[(a, 1024, true)]);
        let f = frame(1514, 2);
        backend.arrive(&f);
        d.transport.handle_event(RX_EVENT);
        assert_eq!(d.last_used(RECEIVEQ), None);

        d.submit(RECEIVEQ, &[(b, 1024, true)]);

        assert_eq!(d.read_mem(a, NET_HDR_LEN), rx_header(2));
        let mut got = d.read_mem(a + NET_HDR_LEN as u64, 1024 - NET_HDR_LEN);
        got.extend(d.read_mem(b, 1514 + NET_HDR_LEN - 1024));
        assert_eq!(got, f);
        assert_eq!(d.last_used(RECEIVEQ), Some((1, 502)));
    }

    #[test]
    fn flood_is_delivered_in_bounded_batches_without_loss_or_reordering() {
        // Under Miri (every access checked, ~1000x slower) a smaller flood still spans
        // several receive batches.
        const FRAMES: u32 = if cfg!(miri) { 300 } else { 10_000 };
        const BUF: u32 = 64;
        let backend = MockNet::default();
        let mut d = GuestDriver::start_sized(Net::new(backend.clone(), MAC), 256);
        let mut posted: VecDeque<u64> = VecDeque::new();
        for _ in 0..256 {
            let b = d.alloc(BUF);
            d.post(RECEIVEQ, &[(b, BUF, true)]);
            posted.push_back(b);
        }
        for seq in 0..FRAMES {
            let mut f = frame(MIN_FRAME_LEN, 0);
            f.extend(seq.to_le_bytes());
            backend.arrive(&f);
        }
        let mut received = Vec::new();
        let mut batches = Vec::new();
        let mut seen_used = 0u16;

        // The VMM delivers the event, then again as long as the device reports a backlog.
        let mut event = Some(RX_EVENT);
        while let Some(token) = event {
            d.transport.handle_event(token);
            let q = &d.queues[usize::from(RECEIVEQ)];
            let used_idx = q.used_idx(&*d.mem);
            let batch = used_idx.wrapping_sub(seen_used);
            batches.push(batch);
            for _ in 0..batch {
                let (_, len) = q.used_elem(&*d.mem, seen_used);
                seen_used = seen_used.wrapping_add(1);
                let b = posted.pop_front().unwrap();
                let bytes = d.read_mem(b + (NET_HDR_LEN + MIN_FRAME_LEN) as u64, 4);
                received.push((len, u32::from_le_bytes(bytes.try_into().unwrap())));
                posted.push_back(b);
            }
            for &b in posted.iter().skip(posted.len() - usize::from(batch)) {
                d.post(RECEIVEQ, &[(b, BUF, true)]);
            }
            event = d.transport.backlogged_event();
            assert!(batches.len() <= 1000, "the flood is not draining");
        }

        let want: Vec<_> = (0..FRAMES)
            .map(|seq| ((NET_HDR_LEN + MIN_FRAME_LEN + 4) as u32, seq))
            .collect();
        assert_eq!(received, want);
        assert!(batches.iter().all(|&n| usize::from(n) <= RX_BATCH));
        assert_eq!(usize::from(batches[0]), RX_BATCH);
        assert_eq!(backend.waiting(), 0);
        assert_eq!(
            d.transport.lock_device().counters().rx_frames,
            u64::from(FRAMES)
        );
    }

    #[test]
    fn backlog_is_reported_after_the_batch_limit_and_cleared_once_drained() {
        let backend = MockNet::default();
        let mut d = GuestDriver::start_sized(Net::new(backend.clone(), MAC), 256);
        for _ in 0..200 {
            let b = d.alloc(64);
            d.post(RECEIVEQ, &[(b, 64, true)]);
        }
        for _ in 0..RX_BATCH + 10 {
            backend.arrive(&frame(MIN_FRAME_LEN, 0));
        }
        d.transport.handle_event(RX_EVENT);
        assert_eq!(d.transport.backlogged_event(), Some(RX_EVENT));
        assert_eq!(backend.waiting(), 10);

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.transport.backlogged_event(), None);
        assert_eq!(backend.waiting(), 0);
        assert_eq!(
            d.transport.lock_device().counters().rx_frames,
            (RX_BATCH + 10) as u64
        );
    }

    #[test]
    fn backend_that_stopped_short_is_reported_as_a_backlog() {
        let backend = MockNet::default();
        let mut d = GuestDriver::start(Net::new(backend.clone(), MAC));
        let b = d.alloc(64);
        d.post(RECEIVEQ, &[(b, 64, true)]);
        backend.stop_short(true);

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.transport.backlogged_event(), Some(RX_EVENT));
    }

    #[test]
    fn backend_that_ran_dry_is_not_a_backlog() {
        let backend = MockNet::default();
        let mut d = GuestDriver::start(Net::new(backend.clone(), MAC));
        let b = d.alloc(64);
        d.post(RECEIVEQ, &[(b, 64, true)]);
        backend.arrive(&frame(MIN_FRAME_LEN, 0));

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.transport.backlogged_event(), None);
        assert_eq!(d.transport.lock_device().counters().rx_frames, 1);
    }

    #[test]
    fn boxed_device_forwards_its_backlog() {
        let backend = MockNet::default();
        let boxed: alloc::boxed::Box<dyn VirtioDevice> =
            alloc::boxed::Box::new(Net::new(backend.clone(), MAC));
        let mut d = GuestDriver::start_sized(boxed, 256);
        for _ in 0..RX_BATCH + 1 {
            let b = d.alloc(64);
            d.post(RECEIVEQ, &[(b, 64, true)]);
            backend.arrive(&frame(MIN_FRAME_LEN, 0));
        }

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.transport.backlogged_event(), Some(RX_EVENT));
    }

    #[test]
    fn backlog_is_not_reported_once_the_driver_resets_the_device() {
        let backend = MockNet::default();
        let mut d = GuestDriver::start_sized(Net::new(backend.clone(), MAC), 256);
        for _ in 0..RX_BATCH + 1 {
            let b = d.alloc(64);
            d.post(RECEIVEQ, &[(b, 64, true)]);
            backend.arrive(&frame(MIN_FRAME_LEN, 0));
        }
        d.transport.handle_event(RX_EVENT);

        d.write_reg(crate::mmio::reg::STATUS, 0);

        assert_eq!(d.transport.backlogged_event(), None);
    }

    #[test]
    fn event_with_no_backend_frames_adds_nothing_and_does_not_interrupt() {
        let (mut d, _backend) = net();
        let a = d.alloc(2048);
        d.post(RECEIVEQ, &[(a, 2048, true)]);

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.last_used(RECEIVEQ), None);
        assert!(!d.irq.is_high());
        assert!(!d.needs_reset());
    }

    #[test]
    fn frame_larger_than_a_full_receive_queue_holds_is_dropped_and_counted() {
        let (mut d, backend) = net();
        let first = d.alloc(64);
        d.post(RECEIVEQ, &[(first, 64, true)]);
        for _ in 1..crate::testing::DRIVER_QUEUE_SIZE {
            let b = d.alloc(64);
            d.post(RECEIVEQ, &[(b, 64, true)]);
        }
        backend.arrive(&frame(1514, 0));
        let small = frame(40, 1);
        backend.arrive(&small);

        d.transport.handle_event(RX_EVENT);

        // 16 buffers of 64 bytes cannot hold 1526 bytes: dropped, and the next frame uses
        // the buffers the device kept.
        assert_eq!(d.transport.lock_device().counters().rx_dropped.no_room, 1);
        assert!(!d.transport.lock_device().holds_frame());
        assert_eq!(d.read_mem(first + NET_HDR_LEN as u64, 40), small);
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 52)));
    }

    #[test]
    fn without_mergeable_buffers_a_frame_too_large_for_the_buffer_is_dropped() {
        let (mut d, backend) = net_accepting(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
        let a = d.alloc(512);
        d.post(RECEIVEQ, &[(a, 512, true)]);
        backend.arrive(&frame(1514, 0));
        let small = frame(60, 4);
        backend.arrive(&small);

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.transport.lock_device().counters().rx_dropped.no_room, 1);
        assert_eq!(d.read_mem(a, NET_HDR_LEN), rx_header(1));
        assert_eq!(d.read_mem(a + NET_HDR_LEN as u64, 60), small);
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 72)));
    }

    #[test]
    fn without_mergeable_buffers_a_frame_takes_one_buffer() {
        let (mut d, backend) = net_accepting(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
        let (a, b) = (d.alloc(1600), d.alloc(1600));
        d.post(RECEIVEQ, &[(a, 1600, true)]);
        d.post(RECEIVEQ, &[(b, 1600, true)]);
        backend.arrive(&frame(1514, 0));
        backend.arrive(&frame(1514, 1));

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.read_mem(b, NET_HDR_LEN), rx_header(1));
        assert_eq!(d.read_mem(b + NET_HDR_LEN as u64, 1514), frame(1514, 1));
        assert_eq!(d.last_used(RECEIVEQ), Some((1, 1526)));
    }

    #[test]
    fn receive_buffer_shorter_than_the_header_sets_needs_reset() {
        let (mut d, backend) = net();
        let a = d.alloc(8);
        d.post(RECEIVEQ, &[(a, 8, true)]);
        backend.arrive(&frame(60, 0));

        d.transport.handle_event(RX_EVENT);

        assert!(d.needs_reset());
        assert_eq!(d.read_mem(a, 8), [0; 8]);
    }

    #[test]
    fn receive_chain_with_readable_descriptor_sets_needs_reset() {
        let (mut d, backend) = net();
        let a = d.alloc(64);
        d.post(RECEIVEQ, &[(a, 64, false)]);
        backend.arrive(&frame(60, 0));

        d.transport.handle_event(RX_EVENT);

        assert!(d.needs_reset());
    }

    #[test]
    fn received_frame_shorter_than_an_ethernet_header_is_dropped_and_counted() {
        let (mut d, backend) = net();
        let a = d.alloc(2048);
        d.post(RECEIVEQ, &[(a, 2048, true)]);
        backend.arrive(&frame(MIN_FRAME_LEN - 1, 0));

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.transport.lock_device().counters().rx_dropped.too_short, 1);
        assert_eq!(d.last_used(RECEIVEQ), None);
        assert!(!d.irq.is_high());
    }

    #[test]
    fn received_frame_longer_than_the_mtu_allows_is_dropped_by_the_backend() {
        let backend = MockNet::default();
        let net = Net::new(backend.clone(), MAC).with_mtu(1500).unwrap();
        let mut d = GuestDriver::start(net);
        let a = d.alloc(4096);
        d.post(RECEIVEQ, &[(a, 4096, true)]);
        backend.arrive(&frame(1500 + 18 + 1, 0));

        d.transport.handle_event(RX_EVENT);

        assert_eq!(backend.recv_dropped(), 1);
        assert_eq!(d.last_used(RECEIVEQ), None);
    }

    #[test]
    fn frame_held_across_a_reset_is_delivered_after_the_driver_restarts() {
        let (mut d, backend) = net();
        let a = d.alloc(64);
        d.post(RECEIVEQ, &[(a, 64, true)]);
        backend.arrive(&frame(1514, 0));
        d.transport.handle_event(RX_EVENT);
        assert!(d.transport.lock_device().holds_frame());
        let offered = d.device_features();
        assert!(d.negotiate(offered));
        d.setup_queues();
        d.driver_ok();
        let b = d.alloc(2048);

        d.submit(RECEIVEQ, &[(b, 2048, true)]);

        assert_eq!(d.read_mem(b + NET_HDR_LEN as u64, 1514), frame(1514, 0));
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 1526)));
    }

    #[test]
    fn boxed_backend_is_a_backend() {
        let backend = MockNet::default();
        let boxed: alloc::boxed::Box<dyn NetBackend> = alloc::boxed::Box::new(backend.clone());
        let mut d = GuestDriver::start(Net::new(boxed, MAC));
        let a = d.alloc(2048);
        d.post(RECEIVEQ, &[(a, 2048, true)]);
        backend.arrive(&frame(60, 0));

        d.transport.handle_event(RX_EVENT);

        assert_eq!(d.transport.event_sources(), [(RX_EVENT, EventSource(9))]);
        assert_eq!(d.last_used(RECEIVEQ), Some((0, 72)));
    }
}
