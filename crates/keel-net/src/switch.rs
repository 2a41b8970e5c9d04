//! A learning Ethernet switch for one virtual network.
//!
//! One [`Switch`] is one network: its ports are the network's VM interfaces, each with a
//! declared MAC address, and optionally uplinks (a host tap device) without one. Rules (docs/net.md has the full list):
//!
//! - **Validation**: a frame shorter than an Ethernet header (14 bytes) or longer than
//!   [`SwitchConfig::max_frame`] is dropped (`drop_too_short`, `drop_too_long`).
//! - **Anti-spoofing**: a frame whose source MAC is not its input port's declared MAC is
//!   dropped (`drop_spoofed`). Only then is the source learned. An **uplink** port
//!   ([`Switch::add_uplink`], e.g. a host tap device) declares no MAC: its sources are
//!   learned as they come, except a group address or a MAC another port declared, which are
//!   dropped as spoofed.
//! - **Allow list**: ports may exchange frames only when the pair was allowed
//!   ([`Switch::allow`], symmetric; default deny). Known unicast to a port that is not
//!   allowed is dropped (`drop_not_allowed`); broadcast, multicast and unknown unicast are
//!   flooded only to allowed ports. A frame with nowhere to go (no allowed port, or a
//!   unicast to the input port itself) is dropped (`drop_no_route`).
//! - **Learning and ageing**: the table maps source MACs to ports; an entry not refreshed
//!   for [`SwitchConfig::ageing_ms`] is ignored and its slot reused. When the table is
//!   full, the least recently seen entry is replaced. Time is the caller's monotonic
//!   milliseconds (the crate has no clock).
//! - **Output queues**: each port has a bounded queue of [`SwitchConfig::queue_depth`]
//!   frames; a frame that does not fit is dropped and counted on the *destination* port
//!   (`drop_queue_full`); nothing blocks. Flooded frames may fill a queue only up to
//!   [`SwitchConfig::flood_depth`], keeping the rest for unicast.
//! - **Storm control**: each input port has a token bucket for the frames it floods
//!   (broadcast, multicast, unknown unicast): [`SwitchConfig::flood_rate`] frames per
//!   second, bursts of up to [`SwitchConfig::flood_burst`]. A flood beyond it is dropped
//!   and counted on the input port (`drop_storm`); unicast to a learned MAC never takes a
//!   token.
//! - **Fairness**: [`Switch::poll`] serves input ports round-robin, one frame per port per
//!   turn, starting after the port served last (see its doc).
//!
//! Memory: everything is allocated by [`Switch::new`] ([`Switch::footprint`] bytes); adding
//! ports, forwarding and dequeuing allocate nothing.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::ring::{FrameConsumer, MAX_FRAME, Recv};

/// Bytes of an Ethernet header: destination MAC, source MAC, EtherType.
pub const ETH_HEADER_LEN: usize = 14;

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Whether this is a group address (multicast, broadcast included): the I/G bit.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    fn at(frame: &[u8], offset: usize) -> Mac {
        let mut m = [0u8; 6];
        m.copy_from_slice(&frame[offset..offset + 6]);
        Mac(m)
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A port of a switch: its index in the order ports were added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl PortId {
    fn idx(self) -> usize {
        usize::from(self.0)
    }
}

/// The sizes a switch is built with; they fix its memory footprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Ports at most (1..=4096).
    pub max_ports: usize,
    /// MAC table entries (at least 1; with anti-spoofing, `max_ports` is enough, plus the
    /// hosts seen behind uplinks).
    pub mac_table: usize,
    /// Frames each output queue holds.
    pub queue_depth: usize,
    /// Queue length up to which flooded frames (broadcast, multicast, unknown unicast) are
    /// still queued (1..=`queue_depth`); beyond it only known unicast is.
    pub flood_depth: usize,
    /// Longest frame accepted (`ETH_HEADER_LEN..=MAX_FRAME`).
    pub max_frame: usize,
    /// Milliseconds after which an unrefreshed MAC table entry is ignored.
    pub ageing_ms: u64,
    /// Flooded frames (broadcast, multicast, unknown unicast) each input port may send per
    /// second, sustained (1..=[`MAX_FLOOD_RATE`]).
    pub flood_rate: u32,
    /// Flooded frames a port may send at once after a quiet period: the bucket's size
    /// (1..=[`MAX_FLOOD_BURST`]). A port starts with a full bucket.
    pub flood_burst: u32,
}

/// Largest [`SwitchConfig::flood_rate`]: storm control is always bounded.
pub const MAX_FLOOD_RATE: u32 = 1_000_000;
/// Largest [`SwitchConfig::flood_burst`].
pub const MAX_FLOOD_BURST: u32 = 65_536;

impl Default for SwitchConfig {
    /// 16 ports, 64 MAC entries, 64-frame queues (floods up to 32), 1514-byte frames,
    /// 5 minutes of ageing, floods of 1000 frames/s in bursts of 64 per port: about
    /// 1.5 MiB of queues.
    fn default() -> SwitchConfig {
        SwitchConfig {
            max_ports: 16,
            mac_table: 64,
            queue_depth: 64,
            flood_depth: 32,
            max_frame: MAX_FRAME,
            ageing_ms: 300_000,
            flood_rate: 1000,
            flood_burst: 64,
        }
    }
}

/// A switch could not be built or configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// A [`SwitchConfig`] field is out of its range.
    #[error("switch configuration field {field} = {value} is out of range")]
    BadConfig {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: usize,
    },
    /// Every port the switch was built for is in use.
    #[error("switch already has its maximum of {max} ports")]
    TooManyPorts {
        /// The switch's `max_ports`.
        max: usize,
    },
    /// A declared MAC is a group address or all zeros.
    #[error("port MAC {mac} is not a unicast address")]
    NotUnicast {
        /// The MAC.
        mac: Mac,
    },
    /// Another port already declared this MAC.
    #[error("port MAC {mac} is already port {port:?}'s")]
    DuplicateMac {
        /// The MAC.
        mac: Mac,
        /// The port that has it.
        port: PortId,
    },
    /// No such port.
    #[error("switch has no port {port:?}")]
    NoSuchPort {
        /// The port asked for.
        port: PortId,
    },
}

/// Per-port counters: frames and bytes in and out, and drops by reason.
///
/// Input-side drops (`spoofed`, `too_short`, `too_long`, `not_allowed`, `no_route`,
/// `storm`) are
/// counted on the port the frame came from; `queue_full` on the port it was going to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames received from the port (all of them, dropped ones included).
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames handed to the port (taken from its output queue).
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Dropped: source MAC is not the port's declared MAC (uplink: is a group address or
    /// another port's declared MAC).
    pub drop_spoofed: u64,
    /// Dropped: shorter than an Ethernet header.
    pub drop_too_short: u64,
    /// Dropped: longer than the switch's maximum frame.
    pub drop_too_long: u64,
    /// Dropped: unicast to a port this one may not talk to.
    pub drop_not_allowed: u64,
    /// Dropped (on the destination): its output queue was full.
    pub drop_queue_full: u64,
    /// Dropped: no allowed port to deliver to (or unicast back to the input port).
    pub drop_no_route: u64,
    /// Dropped: a flood (broadcast, multicast, unknown unicast) beyond the port's
    /// storm-control rate ([`SwitchConfig::flood_rate`], [`SwitchConfig::flood_burst`]).
    pub drop_storm: u64,
}

/// What the switch did with one input frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Queued to this many ports (a frame may be queued to some and dropped for others
    /// whose queues were full: those count `drop_queue_full`).
    Queued(usize),
    /// Dropped for this reason (counted on the input port, or on the destination port
    /// for [`Drop::QueueFull`]).
    Dropped(Drop),
}

/// Why a frame was dropped (one per counter of [`PortCounters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Source MAC is not the port's (uplink: a group address or another port's MAC).
    Spoofed,
    /// Shorter than an Ethernet header.
    TooShort,
    /// Longer than the maximum frame.
    TooLong,
    /// Unicast to a port that is not allowed.
    NotAllowed,
    /// Every destination queue was full.
    QueueFull,
    /// Nowhere to deliver it.
    NoRoute,
    /// A flood beyond the input port's storm-control rate.
    Storm,
}

/// Where [`Switch::poll`] takes input frames from: one source per port, in port order.
pub trait FrameSource {
    /// Take the next frame into `buf`: `Some(len)`, or `None` when there is none now.
    /// Bounded work: implementations take at most one frame (or skip one bad slot).
    fn next_frame(&mut self, buf: &mut [u8; MAX_FRAME]) -> Option<usize>;
}

impl FrameSource for FrameConsumer {
    /// A skipped bad slot or a broken ring yields `None` (both are counted by the
    /// consumer, see [`FrameConsumer::counters`] and [`FrameConsumer::is_broken`]).
    fn next_frame(&mut self, buf: &mut [u8; MAX_FRAME]) -> Option<usize> {
        match self.recv(buf) {
            Ok(Recv::Frame(n)) => Some(n),
            _ => None,
        }
    }
}

/// A bounded FIFO of frames in one preallocated buffer.
#[derive(Debug)]
struct Queue {
    data: Box<[u8]>,
    lens: Box<[u16]>,
    first: usize,
    len: usize,
}

impl Queue {
    fn new(depth: usize, max_frame: usize) -> Queue {
        Queue {
            data: vec![0; depth * max_frame].into_boxed_slice(),
            lens: vec![0; depth].into_boxed_slice(),
            first: 0,
            len: 0,
        }
    }

    fn push(&mut self, frame: &[u8], max_frame: usize) {
        let depth = self.lens.len();
        let i = (self.first + self.len) % depth;
        self.data[i * max_frame..i * max_frame + frame.len()].copy_from_slice(frame);
        self.lens[i] = frame.len() as u16; // <= max_frame <= MAX_FRAME < 65536
        self.len += 1;
    }

    fn front(&self, max_frame: usize) -> Option<&[u8]> {
        (self.len > 0).then(|| {
            let n = usize::from(self.lens[self.first]);
            &self.data[self.first * max_frame..self.first * max_frame + n]
        })
    }

    fn pop(&mut self) {
        self.first = (self.first + 1) % self.lens.len();
        self.len -= 1;
    }
}

/// A port's storm-control token bucket, in thousandths of a frame so that whole
/// milliseconds refill it exactly (`flood_rate` frames/s = `flood_rate` milli-frames/ms).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    milli: u64,
    at_ms: u64,
}

impl Bucket {
    /// Refill for the time since the last refill (time that goes backwards refills
    /// nothing), then take one frame if there is one.
    fn take(&mut self, now_ms: u64, rate: u32, burst: u32) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        let full = u64::from(burst) * 1000;
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(rate)))
            .min(full);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    mac: Mac,
    port: PortId,
    seen_ms: u64,
}

/// A learning switch for one network (see the module doc for its rules).
#[derive(Debug)]
pub struct Switch {
    cfg: SwitchConfig,
    /// Each port's declared MAC; `None` for an uplink.
    macs: Vec<Option<Mac>>,
    counters: Vec<PortCounters>,
    /// Each input port's storm-control bucket.
    buckets: Vec<Bucket>,
    queues: Vec<Queue>,
    /// Bit `b` of row `a` (`row = a * words`) set: port `a` may send to port `b`.
    allowed: Vec<u64>,
    words: usize,
    table: Vec<Option<Entry>>,
    evictions: u64,
    next_input: usize,
    /// The input frame buffer of `poll` (taken out while a frame is switched).
    scratch: Option<Box<[u8; MAX_FRAME]>>,
}

impl Switch {
    /// A switch with no ports and nothing allowed, with all its memory allocated.
    pub fn new(cfg: SwitchConfig) -> Result<Switch, SwitchError> {
        let bad = |field, value| Err(SwitchError::BadConfig { field, value });
        if !(1..=4096).contains(&cfg.max_ports) {
            return bad("max_ports", cfg.max_ports);
        }
        if cfg.mac_table == 0 {
            return bad("mac_table", cfg.mac_table);
        }
        if cfg.queue_depth == 0 {
            return bad("queue_depth", cfg.queue_depth);
        }
        if !(1..=cfg.queue_depth).contains(&cfg.flood_depth) {
            return bad("flood_depth", cfg.flood_depth);
        }
        if !(ETH_HEADER_LEN..=MAX_FRAME).contains(&cfg.max_frame) {
            return bad("max_frame", cfg.max_frame);
        }
        if !(1..=MAX_FLOOD_RATE).contains(&cfg.flood_rate) {
            return bad("flood_rate", cfg.flood_rate as usize);
        }
        if !(1..=MAX_FLOOD_BURST).contains(&cfg.flood_burst) {
            return bad("flood_burst", cfg.flood_burst as usize);
        }
        let words = cfg.max_ports.div_ceil(64);
        Ok(Switch {
            cfg,
            macs: Vec::with_capacity(cfg.max_ports),
            counters: Vec::with_capacity(cfg.max_ports),
            buckets: Vec::with_capacity(cfg.max_ports),
            queues: (0..cfg.max_ports)
                .map(|_| Queue::new(cfg.queue_depth, cfg.max_frame))
                .collect(),
            allowed: vec![0; cfg.max_ports * words],
            words,
            table: vec![None; cfg.mac_table],
            evictions: 0,
            next_input: 0,
            scratch: Some(Box::new([0; MAX_FRAME])),
        })
    }

    /// Bytes of heap the switch holds (allocated once by [`Switch::new`]): queues
    /// (`max_ports × queue_depth × (max_frame + 2)`), the MAC table, the allow matrix
    /// (`max_ports²` bits), per-port MACs, counters and storm-control buckets, and one
    /// input frame buffer.
    pub fn footprint(&self) -> usize {
        let c = &self.cfg;
        c.max_ports * c.queue_depth * (c.max_frame + 2)
            + c.max_ports * core::mem::size_of::<Queue>()
            + c.mac_table * core::mem::size_of::<Option<Entry>>()
            + self.allowed.len() * 8
            + c.max_ports
                * (core::mem::size_of::<Option<Mac>>()
                    + core::mem::size_of::<PortCounters>()
                    + core::mem::size_of::<Bucket>())
            + MAX_FRAME
    }

    /// The configuration the switch was built with.
    pub fn config(&self) -> &SwitchConfig {
        &self.cfg
    }

    /// Add a port whose frames must come from `mac` (unicast, not zero, not used by
    /// another port). Allocates nothing.
    pub fn add_port(&mut self, mac: Mac) -> Result<PortId, SwitchError> {
        if mac.is_multicast() || mac == Mac::default() {
            return Err(SwitchError::NotUnicast { mac });
        }
        if let Some(port) = self.declared_by(mac) {
            return Err(SwitchError::DuplicateMac { mac, port });
        }
        self.push_port(Some(mac))
    }

    /// Add an uplink port (a host tap device, a bridge to another network): it declares no
    /// MAC, and the source MACs of its frames are learned as they come (no anti-spoofing),
    /// except that a frame whose source is a group address or a MAC declared by another
    /// port is dropped as spoofed (`drop_spoofed`), so the uplink cannot impersonate a VM.
    /// The allow list applies as to any port. The hosts behind an uplink take MAC table
    /// entries: size [`SwitchConfig::mac_table`] for them. Allocates nothing.
    pub fn add_uplink(&mut self) -> Result<PortId, SwitchError> {
        self.push_port(None)
    }

    fn push_port(&mut self, mac: Option<Mac>) -> Result<PortId, SwitchError> {
        if self.macs.len() == self.cfg.max_ports {
            return Err(SwitchError::TooManyPorts {
                max: self.cfg.max_ports,
            });
        }
        self.macs.push(mac);
        self.counters.push(PortCounters::default());
        self.buckets.push(Bucket {
            milli: u64::from(self.cfg.flood_burst) * 1000,
            at_ms: 0,
        });
        Ok(PortId((self.macs.len() - 1) as u16))
    }

    /// The port that declared `mac`, if any.
    fn declared_by(&self, mac: Mac) -> Option<PortId> {
        self.macs
            .iter()
            .position(|&m| m == Some(mac))
            .map(|i| PortId(i as u16))
    }

    /// The MAC `port` declared: `Ok(None)` for an uplink.
    pub fn port_mac(&self, port: PortId) -> Result<Option<Mac>, SwitchError> {
        self.check(port)?;
        Ok(self.macs[port.idx()])
    }

    /// Ports added so far.
    pub fn ports(&self) -> usize {
        self.macs.len()
    }

    fn check(&self, port: PortId) -> Result<(), SwitchError> {
        if port.idx() < self.macs.len() {
            Ok(())
        } else {
            Err(SwitchError::NoSuchPort { port })
        }
    }

    /// Let `a` and `b` exchange frames (both directions).
    pub fn allow(&mut self, a: PortId, b: PortId) -> Result<(), SwitchError> {
        self.check(a)?;
        self.check(b)?;
        for (x, y) in [(a, b), (b, a)] {
            self.allowed[x.idx() * self.words + y.idx() / 64] |= 1 << (y.idx() % 64);
        }
        Ok(())
    }

    /// Whether `from` may send to `to` (false for unknown ports).
    pub fn is_allowed(&self, from: PortId, to: PortId) -> bool {
        from.idx() < self.macs.len()
            && to.idx() < self.macs.len()
            && self.allowed[from.idx() * self.words + to.idx() / 64] & (1 << (to.idx() % 64)) != 0
    }

    /// A port's counters.
    pub fn counters(&self, port: PortId) -> Result<PortCounters, SwitchError> {
        self.check(port)?;
        Ok(self.counters[port.idx()])
    }

    /// MAC table entries replaced while still fresh because the table was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The port `mac` was last seen on, if that was less than the ageing time before
    /// `now_ms`.
    pub fn lookup(&self, mac: Mac, now_ms: u64) -> Option<PortId> {
        self.table
            .iter()
            .flatten()
            .find(|e| e.mac == mac && self.fresh(e, now_ms))
            .map(|e| e.port)
    }

    fn fresh(&self, e: &Entry, now_ms: u64) -> bool {
        now_ms.saturating_sub(e.seen_ms) < self.cfg.ageing_ms
    }

    fn learn(&mut self, mac: Mac, port: PortId, now_ms: u64) {
        let fresh = Entry {
            mac,
            port,
            seen_ms: now_ms,
        };
        if let Some(e) = self.table.iter_mut().flatten().find(|e| e.mac == mac) {
            *e = fresh;
            return;
        }
        let ageing = self.cfg.ageing_ms;
        let free = self.table.iter().position(|s| match s {
            None => true,
            Some(e) => now_ms.saturating_sub(e.seen_ms) >= ageing,
        });
        let slot = free.unwrap_or_else(|| {
            self.evictions += 1;
            // The table is not empty (mac_table >= 1) and every slot is used.
            (0..self.table.len())
                .min_by_key(|&i| self.table[i].map_or(0, |e| e.seen_ms))
                .unwrap_or(0)
        });
        self.table[slot] = Some(fresh);
    }

    /// Frames waiting in `port`'s output queue.
    pub fn queued(&self, port: PortId) -> Result<usize, SwitchError> {
        self.check(port)?;
        Ok(self.queues[port.idx()].len)
    }

    /// The oldest frame waiting for `port`, left in the queue (for a sink that may be
    /// full: take it with [`Switch::pop_output`] once it was sent).
    pub fn peek_output(&self, port: PortId) -> Option<&[u8]> {
        self.check(port).ok()?;
        self.queues[port.idx()].front(self.cfg.max_frame)
    }

    /// Remove the oldest frame waiting for `port` and count it as sent; returns its length.
    pub fn pop_output(&mut self, port: PortId) -> Option<usize> {
        let n = self.peek_output(port)?.len();
        self.queues[port.idx()].pop();
        let c = &mut self.counters[port.idx()];
        c.tx_frames += 1;
        c.tx_bytes += n as u64;
        Some(n)
    }

    /// Switch one frame received from `from` at `now_ms`: validate, check the source,
    /// learn, and queue it to its destination(s). Bounded work: O(ports + table size);
    /// allocates nothing.
    pub fn input(
        &mut self,
        from: PortId,
        frame: &[u8],
        now_ms: u64,
    ) -> Result<Verdict, SwitchError> {
        self.check(from)?;
        let i = from.idx();
        let c = &mut self.counters[i];
        c.rx_frames += 1;
        c.rx_bytes += frame.len() as u64;
        let dropped = |c: &mut u64, why| {
            *c += 1;
            Ok(Verdict::Dropped(why))
        };
        if frame.len() < ETH_HEADER_LEN {
            return dropped(&mut c.drop_too_short, Drop::TooShort);
        }
        if frame.len() > self.cfg.max_frame {
            return dropped(&mut c.drop_too_long, Drop::TooLong);
        }
        let src = Mac::at(frame, 6);
        let spoofed = match self.macs[i] {
            Some(declared) => src != declared,
            // An uplink: any individual address no port declared.
            None => src.is_multicast() || self.declared_by(src).is_some(),
        };
        if spoofed {
            return dropped(&mut self.counters[i].drop_spoofed, Drop::Spoofed);
        }
        self.learn(src, from, now_ms);
        let dst = Mac::at(frame, 0);
        let known = if dst.is_multicast() {
            None
        } else {
            self.lookup(dst, now_ms)
        };
        match known {
            Some(to) if to == from => dropped(&mut self.counters[i].drop_no_route, Drop::NoRoute),
            Some(to) if !self.is_allowed(from, to) => {
                dropped(&mut self.counters[i].drop_not_allowed, Drop::NotAllowed)
            }
            Some(to) => Ok(if self.enqueue(to, frame, self.cfg.queue_depth) {
                Verdict::Queued(1)
            } else {
                Verdict::Dropped(Drop::QueueFull)
            }),
            None => {
                let has_target = (0..self.macs.len())
                    .map(|t| PortId(t as u16))
                    .any(|to| to != from && self.is_allowed(from, to));
                if !has_target {
                    return dropped(&mut self.counters[i].drop_no_route, Drop::NoRoute);
                }
                // Storm control: a flood with somewhere to go takes one token of its input
                // port's bucket, whatever the number of ports it reaches.
                let (rate, burst) = (self.cfg.flood_rate, self.cfg.flood_burst);
                if !self.buckets[i].take(now_ms, rate, burst) {
                    return dropped(&mut self.counters[i].drop_storm, Drop::Storm);
                }
                let mut queued = 0;
                for t in 0..self.macs.len() {
                    let to = PortId(t as u16);
                    if to != from && self.is_allowed(from, to) {
                        queued += usize::from(self.enqueue(to, frame, self.cfg.flood_depth));
                    }
                }
                if queued == 0 {
                    Ok(Verdict::Dropped(Drop::QueueFull))
                } else {
                    Ok(Verdict::Queued(queued))
                }
            }
        }
    }

    /// Queue `frame` for `to` if its queue holds fewer than `limit` frames; else count a
    /// `queue_full` drop on `to`.
    fn enqueue(&mut self, to: PortId, frame: &[u8], limit: usize) -> bool {
        let q = &mut self.queues[to.idx()];
        if q.len >= limit {
            self.counters[to.idx()].drop_queue_full += 1;
            return false;
        }
        q.push(frame, self.cfg.max_frame);
        true
    }

    /// Take up to `budget` frames from `sources` (one per port, `sources[i]` is port `i`;
    /// extra sources are ignored) and switch them at `now_ms`. Returns the frames taken.
    ///
    /// Fairness rule: ports are served round-robin, one frame per port per turn; a call
    /// starts with the port after the one that was served last by the previous call, and
    /// ends when `budget` frames were taken or a whole round found every port empty. So
    /// with `k` ports that have frames, each gets `budget / k` frames per call (±1), and a
    /// port flooding the switch cannot delay another port's frame by more than one round.
    pub fn poll<S: FrameSource>(&mut self, sources: &mut [S], now_ms: u64, budget: usize) -> usize {
        let n = sources.len().min(self.macs.len());
        if n == 0 {
            return 0;
        }
        let Some(mut buf) = self.scratch.take() else {
            return 0;
        };
        let (mut taken, mut idle) = (0, 0);
        let mut p = self.next_input % n;
        while taken < budget && idle < n {
            if let Some(len) = sources[p].next_frame(&mut buf) {
                let len = len.min(MAX_FRAME);
                // The port exists (p < macs.len()): input cannot fail.
                let _ = self.input(PortId(p as u16), &buf[..len], now_ms);
                taken += 1;
                idle = 0;
                self.next_input = (p + 1) % n;
            } else {
                idle += 1;
            }
            p = (p + 1) % n;
        }
        self.scratch = Some(buf);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::VecDeque;

    fn mac(n: u8) -> Mac {
        Mac([0x02, 0, 0, 0, 0, n])
    }

    fn frame(dst: Mac, src: Mac, len: usize, tag: u8) -> Vec<u8> {
        let mut f = vec![tag; len];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    fn cfg() -> SwitchConfig {
        SwitchConfig {
            max_ports: 4,
            mac_table: 4,
            queue_depth: 8,
            flood_depth: 4,
            max_frame: MAX_FRAME,
            ageing_ms: 1000,
            // Storm control out of the way (its own tests set it).
            flood_rate: MAX_FLOOD_RATE,
            flood_burst: MAX_FLOOD_BURST,
        }
    }

    /// A switch with `n` ports (MACs 1..=n), every pair allowed.
    fn switch(n: u8) -> Switch {
        let mut sw = Switch::new(cfg()).unwrap();
        for i in 1..=n {
            sw.add_port(mac(i)).unwrap();
        }
        for a in 0..n {
            for b in a + 1..n {
                sw.allow(PortId(a.into()), PortId(b.into())).unwrap();
            }
        }
        sw
    }

    fn queued(sw: &Switch) -> Vec<usize> {
        (0..sw.ports())
            .map(|p| sw.queued(PortId(p as u16)).unwrap())
            .collect()
    }

    const P0: PortId = PortId(0);
    const P1: PortId = PortId(1);
    const P2: PortId = PortId(2);

    #[test]
    fn unicast_to_a_learned_mac_goes_only_to_its_port() {
        let mut sw = switch(3);
        sw.input(P1, &frame(Mac::BROADCAST, mac(2), 60, 0), 0)
            .unwrap();
        sw.pop_output(P0);
        sw.pop_output(P2);

        let v = sw.input(P0, &frame(mac(2), mac(1), 60, 1), 10).unwrap();

        assert_eq!(v, Verdict::Queued(1));
        assert_eq!(queued(&sw), [0, 1, 0]);
        assert_eq!(sw.peek_output(P1), Some(&frame(mac(2), mac(1), 60, 1)[..]));
    }

    #[test]
    fn unknown_unicast_is_flooded_to_the_other_allowed_ports() {
        let mut sw = switch(3);

        let v = sw.input(P0, &frame(mac(2), mac(1), 60, 0), 0).unwrap();

        assert_eq!(v, Verdict::Queued(2));
        assert_eq!(queued(&sw), [0, 1, 1]);
    }

    #[test]
    fn source_is_learned_on_its_port() {
        let mut sw = switch(2);

        sw.input(P1, &frame(Mac::BROADCAST, mac(2), 60, 0), 5)
            .unwrap();

        assert_eq!(sw.lookup(mac(2), 5), Some(P1));
    }

    #[test]
    fn learned_entry_ages_out_and_unicast_floods_again() {
        let mut sw = switch(3);
        sw.input(P1, &frame(Mac::BROADCAST, mac(2), 60, 0), 0)
            .unwrap();
        sw.pop_output(P0);
        sw.pop_output(P2);

        let before = sw.lookup(mac(2), 999);
        let v = sw.input(P0, &frame(mac(2), mac(1), 60, 1), 1000).unwrap();

        assert_eq!(before, Some(P1));
        assert_eq!(sw.lookup(mac(2), 1000), None);
        assert_eq!(v, Verdict::Queued(2));
    }

    #[test]
    fn full_table_replaces_the_least_recently_seen_entry() {
        let mut sw = Switch::new(SwitchConfig {
            mac_table: 2,
            ..cfg()
        })
        .unwrap();
        for i in 1..=3 {
            sw.add_port(mac(i)).unwrap();
        }
        sw.allow(P0, P1).unwrap();
        sw.input(P0, &frame(Mac::BROADCAST, mac(1), 60, 0), 1)
            .unwrap();
        sw.input(P1, &frame(Mac::BROADCAST, mac(2), 60, 0), 2)
            .unwrap();
        sw.input(P0, &frame(Mac::BROADCAST, mac(1), 60, 0), 3)
            .unwrap();

        sw.input(P2, &frame(Mac::BROADCAST, mac(3), 60, 0), 4)
            .unwrap();

        assert_eq!(sw.lookup(mac(2), 4), None);
        assert_eq!(sw.lookup(mac(1), 4), Some(P0));
        assert_eq!(sw.lookup(mac(3), 4), Some(P2));
        assert_eq!(sw.evictions(), 1);
    }

    #[test]
    fn broadcast_and_multicast_reach_only_allowed_ports() {
        let mut sw = switch(3);
        let mut sw2 = Switch::new(cfg()).unwrap();
        for i in 1..=3 {
            sw2.add_port(mac(i)).unwrap();
        }
        sw2.allow(P0, P2).unwrap();
        let multicast = Mac([0x01, 0x00, 0x5e, 0, 0, 1]);

        sw2.input(P0, &frame(Mac::BROADCAST, mac(1), 60, 0), 0)
            .unwrap();
        sw2.input(P0, &frame(multicast, mac(1), 60, 0), 0).unwrap();
        sw.input(P0, &frame(multicast, mac(1), 60, 0), 0).unwrap();

        assert_eq!(queued(&sw2), [0, 0, 2]);
        assert_eq!(queued(&sw), [0, 1, 1]);
    }

    #[test]
    fn unicast_to_a_port_not_allowed_is_dropped_and_counted() {
        let mut sw = Switch::new(cfg()).unwrap();
        for i in 1..=3 {
            sw.add_port(mac(i)).unwrap();
        }
        sw.allow(P0, P1).unwrap();
        sw.allow(P1, P2).unwrap();
        sw.input(P2, &frame(mac(2), mac(3), 60, 0), 0).unwrap(); // learns mac(3) on P2

        let v = sw.input(P0, &frame(mac(3), mac(1), 60, 1), 0).unwrap();

        assert_eq!(v, Verdict::Dropped(Drop::NotAllowed));
        assert_eq!(sw.counters(P0).unwrap().drop_not_allowed, 1);
        assert_eq!(sw.queued(P2).unwrap(), 0);
    }

    #[test]
    fn frame_with_no_allowed_destination_counts_no_route() {
        let mut sw = Switch::new(cfg()).unwrap();
        sw.add_port(mac(1)).unwrap();
        sw.add_port(mac(2)).unwrap();

        let v = sw
            .input(P0, &frame(Mac::BROADCAST, mac(1), 60, 0), 0)
            .unwrap();

        assert_eq!(v, Verdict::Dropped(Drop::NoRoute));
        assert_eq!(sw.counters(P0).unwrap().drop_no_route, 1);
    }

    #[test]
    fn unicast_back_to_its_own_port_counts_no_route() {
        let mut sw = switch(2);
        sw.input(P0, &frame(Mac::BROADCAST, mac(1), 60, 0), 0)
            .unwrap();

        let v = sw.input(P0, &frame(mac(1), mac(1), 60, 0), 0).unwrap();

        assert_eq!(v, Verdict::Dropped(Drop::NoRoute));
    }

    #[test]
    fn spoofed_source_is_dropped_counted_and_not_learned() {
        let mut sw = switch(3);

        let v = sw
            .input(P0, &frame(Mac::BROADCAST, mac(2), 60, 0), 0)
            .unwrap();

        assert_eq!(v, Verdict::Dropped(Drop::Spoofed));
        assert_eq!(sw.counters(P0).unwrap().drop_spoofed, 1);
        assert_eq!(sw.lookup(mac(2), 0), None);
        assert_eq!(queued(&sw), [0, 0, 0]);
    }

    /// A switch with VM ports MAC 1 and 2 and an uplink (port 2), every pair allowed.
    fn switch_with_uplink() -> Switch {
        let mut sw = switch(2);
        let up = sw.add_uplink().unwrap();
        sw.allow(P0, up).unwrap();
        sw.allow(P1, up).unwrap();
        sw
    }

    #[test]
    fn uplink_sources_are_learned_without_a_declared_mac() {
        let mut sw = switch_with_uplink();
        let host_a = Mac([0x52, 0x54, 0, 0, 0, 0xa]);
        let host_b = Mac([0x52, 0x54, 0, 0, 0, 0xb]);

        let a = sw.input(P2, &frame(Mac::BROADCAST, host_a, 60, 0), 0);
        let b = sw.input(P2, &frame(mac(1), host_b, 60, 0), 0);

        assert_eq!(a, Ok(Verdict::Queued(2)));
        assert_eq!(b, Ok(Verdict::Queued(2))); // mac(1) not learned yet: flooded
        assert_eq!(sw.lookup(host_a, 0), Some(P2));
        assert_eq!(sw.lookup(host_b, 0), Some(P2));
        assert_eq!(sw.port_mac(P2), Ok(None));
        assert_eq!(sw.counters(P2).unwrap().drop_spoofed, 0);
    }

    #[test]
    fn unicast_to_a_host_learned_on_the_uplink_goes_to_the_uplink_only() {
        let mut sw = switch_with_uplink();
        let host = Mac([0x52, 0x54, 0, 0, 0, 0xa]);
        sw.input(P2, &frame(Mac::BROADCAST, host, 60, 0), 0)
            .unwrap();
        sw.pop_output(P0);
        sw.pop_output(P1);

        let v = sw.input(P0, &frame(host, mac(1), 60, 1), 0);

        assert_eq!(v, Ok(Verdict::Queued(1)));
        assert_eq!(queued(&sw), [0, 0, 1]);
    }

    #[test]
    fn uplink_frame_from_a_declared_mac_is_dropped_as_spoofed() {
        let mut sw = switch_with_uplink();
        sw.input(P1, &frame(Mac::BROADCAST, mac(2), 60, 0), 0)
            .unwrap();

        let v = sw.input(P2, &frame(Mac::BROADCAST, mac(2), 60, 1), 5);

        assert_eq!(v, Ok(Verdict::Dropped(Drop::Spoofed)));
        assert_eq!(sw.counters(P2).unwrap().drop_spoofed, 1);
        assert_eq!(sw.lookup(mac(2), 5), Some(P1));
    }

    #[test]
    fn uplink_frame_from_a_group_address_is_dropped_as_spoofed() {
        let mut sw = switch_with_uplink();

        let v = sw.input(P2, &frame(Mac::BROADCAST, Mac::BROADCAST, 60, 0), 0);

        assert_eq!(v, Ok(Verdict::Dropped(Drop::Spoofed)));
        assert_eq!(sw.lookup(Mac::BROADCAST, 0), None);
    }

    #[test]
    fn uplink_reaches_only_the_ports_it_is_allowed_to() {
        let mut sw = switch(2);
        let up = sw.add_uplink().unwrap();
        sw.allow(P1, up).unwrap();
        let host = Mac([0x52, 0x54, 0, 0, 0, 0xa]);

        let flood = sw.input(up, &frame(Mac::BROADCAST, host, 60, 0), 0);
        sw.input(P0, &frame(Mac::BROADCAST, mac(1), 60, 1), 0)
            .unwrap();
        let to_p0 = sw.input(up, &frame(mac(1), host, 60, 2), 0);

        assert_eq!(flood, Ok(Verdict::Queued(1)));
        assert_eq!(to_p0, Ok(Verdict::Dropped(Drop::NotAllowed)));
        assert_eq!(queued(&sw), [0, 2, 0]);
    }

    #[test]
    fn uplink_counts_against_the_port_maximum() {
        let mut sw = switch(4);

        let up = sw.add_uplink();

        assert_eq!(up, Err(SwitchError::TooManyPorts { max: 4 }));
    }

    #[test]
    fn runt_and_giant_frames_are_dropped_and_counted() {
        let mut sw = Switch::new(SwitchConfig {
            max_frame: 100,
            ..cfg()
        })
        .unwrap();
        sw.add_port(mac(1)).unwrap();
        sw.add_port(mac(2)).unwrap();
        sw.allow(P0, P1).unwrap();
        let runt = &frame(Mac::BROADCAST, mac(1), 60, 0)[..13];

        let short = sw.input(P0, runt, 0).unwrap();
        let long = sw
            .input(P0, &frame(Mac::BROADCAST, mac(1), 101, 0), 0)
            .unwrap();
        let ok = sw
            .input(P0, &frame(Mac::BROADCAST, mac(1), 100, 0), 0)
            .unwrap();

        assert_eq!(short, Verdict::Dropped(Drop::TooShort));
        assert_eq!(long, Verdict::Dropped(Drop::TooLong));
        assert_eq!(ok, Verdict::Queued(1));
        let c = sw.counters(P0).unwrap();
        assert_eq!((c.drop_too_short, c.drop_too_long), (1, 1));
        assert_eq!((c.rx_frames, c.rx_bytes), (3, 13 + 101 + 100));
    }

    #[test]
    fn full_output_queue_drops_and_counts_on_the_destination() {
        let mut sw = switch(2);
        sw.input(P1, &frame(Mac::BROADCAST, mac(2), 60, 0), 0)
            .unwrap();
        for i in 0..8 {
            sw.input(P0, &frame(mac(2), mac(1), 60, i), 0).unwrap();
        }

        let v = sw.input(P0, &frame(mac(2), mac(1), 60, 8), 0).unwrap();

        assert_eq!(v, Verdict::Dropped(Drop::QueueFull));
        assert_eq!(sw.counters(P1).unwrap().drop_queue_full, 1);
        assert_eq!(sw.counters(P0).unwrap().drop_queue_full, 0);
        assert_eq!(sw.queued(P1).unwrap(), 8);
    }

    #[test]
    fn floods_stop_at_the_flood_depth_leaving_room_for_unicast() {
        let mut sw = switch(2);
        sw.input(P1, &frame(Mac::BROADCAST, mac(2), 60, 0), 0)
            .unwrap();
        for i in 0..10 {
            sw.input(P0, &frame(Mac::BROADCAST, mac(1), 60, i), 0)
                .unwrap();
        }

        let v = sw.input(P0, &frame(mac(2), mac(1), 60, 99), 0).unwrap();

        assert_eq!(sw.queued(P1).unwrap(), 5);
        assert_eq!(sw.counters(P1).unwrap().drop_queue_full, 6);
        assert_eq!(v, Verdict::Queued(1));
    }

    #[test]
    fn output_frames_come_out_in_order_and_count_as_tx() {
        let mut sw = switch(2);
        sw.input(P0, &frame(Mac::BROADCAST, mac(1), 60, 1), 0)
            .unwrap();
        sw.input(P0, &frame(Mac::BROADCAST, mac(1), 70, 2), 0)
            .unwrap();

        let first = sw.peek_output(P1).map(|f| f[20]);
        let lens = [sw.pop_output(P1), sw.pop_output(P1), sw.pop_output(P1)];

        assert_eq!(first, Some(1));
        assert_eq!(lens, [Some(60), Some(70), None]);
        let c = sw.counters(P1).unwrap();
        assert_eq!((c.tx_frames, c.tx_bytes), (2, 130));
    }

    #[test]
    fn bad_ports_and_configurations_are_refused() {
        let mut sw = switch(2);

        let dup = sw.add_port(mac(1));
        let group = sw.add_port(Mac([0x01, 0, 0, 0, 0, 9]));
        let zero = sw.add_port(Mac::default());
        let nowhere = sw.input(PortId(3), &frame(Mac::BROADCAST, mac(4), 60, 0), 0);
        let flood = Switch::new(SwitchConfig {
            flood_depth: 9,
            ..cfg()
        });

        assert_eq!(
            dup,
            Err(SwitchError::DuplicateMac {
                mac: mac(1),
                port: P0
            })
        );
        assert!(matches!(group, Err(SwitchError::NotUnicast { .. })));
        assert!(matches!(zero, Err(SwitchError::NotUnicast { .. })));
        assert_eq!(nowhere, Err(SwitchError::NoSuchPort { port: PortId(3) }));
        assert!(matches!(
            flood,
            Err(SwitchError::BadConfig {
                field: "flood_depth",
                value: 9
            })
        ));
    }

    #[test]
    fn ports_beyond_the_maximum_are_refused() {
        let mut sw = switch(4);

        let fifth = sw.add_port(mac(5));

        assert_eq!(fifth, Err(SwitchError::TooManyPorts { max: 4 }));
    }

    #[test]
    fn footprint_is_dominated_by_the_queues_and_fixed_at_construction() {
        let mut sw = Switch::new(cfg()).unwrap();
        let at_start = sw.footprint();

        sw.add_port(mac(1)).unwrap();
        sw.add_port(mac(2)).unwrap();

        assert_eq!(sw.footprint(), at_start);
        assert!(at_start >= 4 * 8 * MAX_FRAME);
    }

    /// Three ports, every pair allowed, floods limited to `rate` frames/s in bursts of
    /// `burst`.
    fn storm_switch(rate: u32, burst: u32) -> Switch {
        let mut sw = Switch::new(SwitchConfig {
            flood_rate: rate,
            flood_burst: burst,
            ..cfg()
        })
        .unwrap();
        for i in 1..=3 {
            sw.add_port(mac(i)).unwrap();
        }
        for (a, b) in [(P0, P1), (P0, P2), (P1, P2)] {
            sw.allow(a, b).unwrap();
        }
        sw
    }

    /// Empty every output queue (the ports' consumers keep up).
    fn drain_all(sw: &mut Switch) {
        for p in 0..sw.ports() {
            while sw.pop_output(PortId(p as u16)).is_some() {}
        }
    }

    /// Input `frame` from `from` at each of `times`, draining the queues after each; returns
    /// how many were queued (to at least one port).
    fn send_at(
        sw: &mut Switch,
        from: PortId,
        frame: &[u8],
        times: impl Iterator<Item = u64>,
    ) -> usize {
        let mut queued = 0;
        for t in times {
            if let Ok(Verdict::Queued(_)) = sw.input(from, frame, t) {
                queued += 1;
            }
            drain_all(sw);
        }
        queued
    }

    #[test]
    fn broadcast_storm_beyond_the_flood_rate_is_cut_to_the_rate_and_counted() {
        let mut sw = storm_switch(100, 10);
        let storm = frame(Mac::BROADCAST, mac(1), 60, 0);

        // 10 frames every millisecond for a second: 10,000 frames/s.
        let queued = send_at(&mut sw, P0, &storm, (0..10_000).map(|n| n / 10));

        // The full bucket (10), then 100 frames/s over the 999 ms since the first frame.
        assert_eq!(queued, 10 + 99);
        let c = sw.counters(P0).unwrap();
        assert_eq!(c.drop_storm, 10_000 - 109);
        assert_eq!(c.rx_frames, 10_000);
    }

    #[test]
    fn floods_below_the_flood_rate_lose_nothing() {
        let mut sw = storm_switch(100, 4);
        let bcast = frame(Mac::BROADCAST, mac(1), 60, 0);

        // 50 frames/s for 10 s, each a burst of 4 (the bucket's size) every 80 ms.
        let queued = send_at(&mut sw, P0, &bcast, (0..500).map(|n| n / 4 * 80));

        assert_eq!(queued, 500);
        assert_eq!(sw.counters(P0).unwrap().drop_storm, 0);
    }

    #[test]
    fn unicast_to_a_learned_mac_takes_no_storm_token() {
        let mut sw = storm_switch(1, 1);
        sw.input(P1, &frame(Mac::BROADCAST, mac(2), 60, 0), 0)
            .unwrap();
        drain_all(&mut sw);

        let unicast = send_at(&mut sw, P0, &frame(mac(2), mac(1), 60, 1), 0..1000);
        let bcast = sw.input(P0, &frame(Mac::BROADCAST, mac(1), 60, 2), 1000);

        assert_eq!(unicast, 1000);
        assert_eq!(bcast, Ok(Verdict::Queued(2)), "the unicast took P0's token");
        assert_eq!(sw.counters(P0).unwrap().drop_storm, 0);
    }

    #[test]
    fn unknown_unicast_and_multicast_are_storm_limited_like_broadcast() {
        let mut sw = storm_switch(1, 2);
        let multicast = Mac([0x01, 0x00, 0x5e, 0, 0, 1]);

        let unknown = sw.input(P0, &frame(mac(9), mac(1), 60, 0), 0);
        let multi = sw.input(P0, &frame(multicast, mac(1), 60, 1), 0);
        let third = sw.input(P0, &frame(Mac::BROADCAST, mac(1), 60, 2), 0);

        assert_eq!(unknown, Ok(Verdict::Queued(2)));
        assert_eq!(multi, Ok(Verdict::Queued(2)));
        assert_eq!(third, Ok(Verdict::Dropped(Drop::Storm)));
    }

    #[test]
    fn a_storming_port_does_not_use_up_another_ports_flood_budget() {
        let mut sw = storm_switch(10, 5);
        let storm = frame(Mac::BROADCAST, mac(1), 60, 0);
        send_at(&mut sw, P0, &storm, core::iter::repeat_n(0, 100));

        let other = sw.input(P1, &frame(Mac::BROADCAST, mac(2), 60, 0), 0);

        assert_eq!(other, Ok(Verdict::Queued(2)));
        assert_eq!(sw.counters(P0).unwrap().drop_storm, 95);
        assert_eq!(sw.counters(P1).unwrap().drop_storm, 0);
    }

    #[test]
    fn storm_control_cannot_be_switched_off() {
        let zero_rate = Switch::new(SwitchConfig {
            flood_rate: 0,
            ..cfg()
        });
        let zero_burst = Switch::new(SwitchConfig {
            flood_burst: 0,
            ..cfg()
        });
        let huge_rate = Switch::new(SwitchConfig {
            flood_rate: MAX_FLOOD_RATE + 1,
            ..cfg()
        });

        assert_eq!(
            zero_rate.unwrap_err(),
            SwitchError::BadConfig {
                field: "flood_rate",
                value: 0
            }
        );
        assert_eq!(
            zero_burst.unwrap_err(),
            SwitchError::BadConfig {
                field: "flood_burst",
                value: 0
            }
        );
        assert!(matches!(
            huge_rate,
            Err(SwitchError::BadConfig {
                field: "flood_rate",
                ..
            })
        ));
    }

    /// A port's input: frames waiting to be taken.
    struct Source(VecDeque<Vec<u8>>);

    impl FrameSource for Source {
        fn next_frame(&mut self, buf: &mut [u8; MAX_FRAME]) -> Option<usize> {
            let f = self.0.pop_front()?;
            buf[..f.len()].copy_from_slice(&f);
            Some(f.len())
        }
    }

    #[test]
    fn poll_serves_ports_round_robin_one_frame_each() {
        let mut sw = switch(3);
        let mut src: Vec<Source> = (1..=3)
            .map(|i| {
                Source(
                    (0..5)
                        .map(|t| frame(Mac::BROADCAST, mac(i), 60, t))
                        .collect(),
                )
            })
            .collect();

        let first = sw.poll(&mut src, 0, 4);
        let second = sw.poll(&mut src, 0, 2);

        assert_eq!((first, second), (4, 2));
        // Port 0 served twice (turns 1 and 4), then ports 1 and 2 resume: 2 each.
        let left: Vec<usize> = src.iter().map(|s| s.0.len()).collect();
        assert_eq!(left, [3, 3, 3]);
    }

    #[test]
    fn broadcast_storm_from_one_port_does_not_starve_the_others() {
        let mut sw = Switch::new(SwitchConfig {
            queue_depth: 16,
            flood_depth: 8,
            ..cfg()
        })
        .unwrap();
        for i in 1..=3 {
            sw.add_port(mac(i)).unwrap();
        }
        sw.allow(P0, P1).unwrap();
        sw.allow(P0, P2).unwrap();
        sw.allow(P1, P2).unwrap();
        let storm = Source(
            (0..10_000)
                .map(|_| frame(Mac::BROADCAST, mac(1), 60, 0))
                .collect(),
        );
        let talker = Source((0..50).map(|t| frame(mac(3), mac(2), 60, t)).collect());
        let listener = Source([frame(mac(2), mac(3), 60, 0)].into());
        let mut src = [storm, talker, listener];
        let mut heard = Vec::new();

        // Each tick the switch takes 8 frames and each port's consumer takes 4: the storm
        // alone could fill every queue many times over.
        let mut drain = |sw: &mut Switch, per_port: usize| {
            for p in [P0, P1, P2] {
                for _ in 0..per_port {
                    if let Some(f) = sw.peek_output(p) {
                        if p == P2 && f[..6] == mac(3).0 {
                            heard.push(f[20]);
                        }
                        sw.pop_output(p);
                    }
                }
            }
        };
        let mut ticks = 0;
        while !src[1].0.is_empty() && ticks < 100 {
            sw.poll(&mut src, ticks, 8);
            drain(&mut sw, 4);
            ticks += 1;
        }
        drain(&mut sw, 16);

        // 50 frames at half of the 8-frame budget (4 after the listener's one frame).
        assert!(ticks <= 14, "the talker needed {ticks} ticks");
        assert_eq!(heard, (0..50).collect::<Vec<u8>>());
        assert_eq!(sw.counters(P1).unwrap().drop_not_allowed, 0);
        assert!(
            sw.counters(P2).unwrap().drop_queue_full > 0,
            "the storm was not throttled"
        );
    }
}
