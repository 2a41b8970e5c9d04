//! The `net` test: one role per boot (`keeltest.net=<role>`), for host tests
//! that boot several guests on one virtual switch and read their serial output.
//!
//! Test frames: EtherType 0x88b5 (IEEE local experimental), then the magic
//! `KEELNET1`, a kind byte (0 data, 1 echo-request, 2 echo-reply, 3 stop), a
//! big-endian u32 sequence number, then padding up to `keeltest.net-len`
//! bytes (byte at frame offset i = i mod 256).
//!
//! Every role prints its own summary, then `stop` lines, then one
//! `rx from <mac> frames=<n> data=<d>` line per source address seen (in order
//! of first frame) and an `rx total` line; see the README for the formats.

use crate::cmdline::{Mac, NET_MAX_LEN, NetConfig, NetRole};
use crate::fail::TestResult;
use crate::net::{MacAddr, NetDev, Received};
use crate::virtio::Transport;
use crate::x86::{self, Deadline};
use crate::{fail, say};

/// EtherType of test frames (IEEE 802 local experimental 1).
pub const ETHERTYPE: u16 = 0x88b5;
/// First payload bytes of a test frame.
pub const MAGIC: &[u8; 8] = b"KEELNET1";
/// Kind: a frame to be counted.
pub const KIND_DATA: u8 = 0;
/// Kind: please answer with an echo-reply.
pub const KIND_ECHO_REQUEST: u8 = 1;
/// Kind: the answer (the request's frame, addresses swapped).
pub const KIND_ECHO_REPLY: u8 = 2;
/// Kind: end `echo`, `listen` or `storm` now.
pub const KIND_STOP: u8 = 3;

const OFF_ETHERTYPE: usize = 12;
const OFF_MAGIC: usize = 14;
const OFF_KIND: usize = 22;
const OFF_SEQ: usize = 23;
/// End of the test header; padding follows.
const TEST_HDR_END: usize = 27;

const BROADCAST: Mac = [0xff; 6];
/// Source addresses counted separately; more are counted together.
const MAX_SOURCES: usize = 32;
/// Default `keeltest.net-count` of `ping` and `send`.
const DEFAULT_COUNT: u32 = 10;
/// Stop frames sent to each `keeltest.net-stop` address, this far apart.
const STOP_COPIES: u32 = 5;
const STOP_GAP_MS: u64 = 20;
/// Gap between `send`'s data frames.
const SEND_GAP_MS: u64 = 1;
/// First sequence number of `send`'s reachability echo-requests.
const HANDSHAKE_SEQ: u32 = 0x8000_0000;
/// Most frames `storm` queues in one burst.
const STORM_TX_BURST: u32 = 16;
/// Most frames `storm` takes from the receive ring between two bursts.
const STORM_RX_BURST: u32 = 1024;
/// How long the device may take to use the last transmit buffers.
const DRAIN_MS: u64 = 5000;

/// Padding source: byte i is i mod 256.
static PAD: [u8; NET_MAX_LEN as usize] = {
    let mut pad = [0u8; NET_MAX_LEN as usize];
    let mut i = 0;
    while i < pad.len() {
        pad[i] = i as u8;
        i += 1;
    }
    pad
};

/// Writes a test frame of `len` bytes into `buf`; returns `len`.
fn write_frame(buf: &mut [u8], dst: Mac, src: Mac, kind: u8, seq: u32, len: usize) -> usize {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[OFF_ETHERTYPE..OFF_MAGIC].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[OFF_MAGIC..OFF_KIND].copy_from_slice(MAGIC);
    buf[OFF_KIND] = kind;
    buf[OFF_SEQ..TEST_HDR_END].copy_from_slice(&seq.to_be_bytes());
    buf[TEST_HDR_END..len].copy_from_slice(&PAD[TEST_HDR_END..len]);
    len
}

fn mac_at(frame: &[u8], offset: usize) -> Mac {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&frame[offset..offset + 6]);
    mac
}

/// The fields of a received test frame.
#[derive(Clone, Copy, Debug)]
struct TestFrame {
    dst: Mac,
    src: Mac,
    kind: u8,
    seq: u32,
    len: usize,
    /// For echo-replies addressed to us: whether the padding is the sender's.
    intact: bool,
}

/// Per-source frame counts.
#[derive(Debug)]
struct Sources {
    macs: [Mac; MAX_SOURCES],
    frames: [u32; MAX_SOURCES],
    data: [u32; MAX_SOURCES],
    len: usize,
    /// Frames from sources beyond the first MAX_SOURCES.
    untracked: u32,
}

impl Sources {
    fn count(&mut self, src: Mac, data: bool) {
        let i = match self.macs[..self.len].iter().position(|m| *m == src) {
            Some(i) => i,
            None if self.len < MAX_SOURCES => {
                self.macs[self.len] = src;
                self.len += 1;
                self.len - 1
            }
            None => {
                self.untracked += 1;
                return;
            }
        };
        self.frames[i] += 1;
        self.data[i] += u32::from(data);
    }
}

/// The device and what has been received.
struct Session<'a> {
    dev: NetDev,
    cfg: &'a NetConfig,
    sources: Sources,
    frames: u64,
    test_frames: u64,
    /// Answer echo-requests addressed to us (`echo`).
    answer: bool,
    requests: u64,
    replies_sent: u64,
    /// Source of the first stop frame addressed to us (or broadcast).
    stopped_by: Option<Mac>,
}

/// Why a loop ended.
#[derive(Clone, Copy, Debug)]
enum End {
    Stop,
    Deadline,
    Count,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Stop => "stop",
            End::Deadline => "deadline",
            End::Count => "count",
        }
    }
}

impl Session<'_> {
    fn mac(&self) -> Mac {
        self.dev.mac
    }

    fn len(&self) -> usize {
        usize::from(self.cfg.len)
    }

    /// Takes one received frame: counts it, answers or notes it as the role
    /// asks. None when nothing is waiting; Some(None) for a frame that is not
    /// a test frame.
    fn poll(&mut self) -> TestResult<Option<Option<TestFrame>>> {
        let Some(r) = self.dev.recv()? else {
            return Ok(None);
        };
        let test = self.inspect(r);
        let src = mac_at(self.dev.frame(r), 6);
        self.frames += 1;
        self.sources
            .count(src, test.is_some_and(|t| t.kind == KIND_DATA));
        let result = self.act(r, test);
        self.dev.release(r);
        result.map(|()| Some(test))
    }

    fn inspect(&self, r: Received) -> Option<TestFrame> {
        let frame = self.dev.frame(r);
        if frame.len() < TEST_HDR_END
            || frame[OFF_ETHERTYPE..OFF_MAGIC] != ETHERTYPE.to_be_bytes()
            || &frame[OFF_MAGIC..OFF_KIND] != MAGIC
        {
            return None;
        }
        let dst = mac_at(frame, 0);
        let kind = frame[OFF_KIND];
        let intact = kind == KIND_ECHO_REPLY
            && dst == self.mac()
            && frame[TEST_HDR_END..] == PAD[TEST_HDR_END..frame.len().min(PAD.len())];
        let mut seq = [0u8; 4];
        seq.copy_from_slice(&frame[OFF_SEQ..TEST_HDR_END]);
        Some(TestFrame {
            dst,
            src: mac_at(frame, 6),
            kind,
            seq: u32::from_be_bytes(seq),
            len: frame.len(),
            intact,
        })
    }

    fn act(&mut self, r: Received, test: Option<TestFrame>) -> TestResult {
        let Some(t) = test else {
            return Ok(());
        };
        self.test_frames += 1;
        let mine = t.dst == self.mac();
        match t.kind {
            KIND_ECHO_REQUEST if mine && self.answer => {
                self.requests += 1;
                let own = self.mac();
                self.dev.reply(r, |frame| {
                    frame[0..6].copy_from_slice(&t.src);
                    frame[6..12].copy_from_slice(&own);
                    frame[OFF_KIND] = KIND_ECHO_REPLY;
                })?;
                self.replies_sent += 1;
            }
            KIND_STOP if (mine || t.dst == BROADCAST) && self.stopped_by.is_none() => {
                self.stopped_by = Some(t.src);
            }
            _ => {}
        }
        Ok(())
    }

    /// Polls (counting and answering) until `deadline`.
    fn idle_until(&mut self, deadline: Deadline) -> TestResult {
        while !deadline.expired() {
            if self.poll()?.is_none() {
                core::hint::spin_loop();
            }
        }
        Ok(())
    }

    fn send_test(&mut self, dst: Mac, src: Mac, kind: u8, seq: u32) -> TestResult {
        let len = self.len();
        self.dev
            .send(|buf| write_frame(buf, dst, src, kind, seq, len))
    }

    /// Sends one echo-request and polls until a reply from `peer` to us
    /// arrives whose sequence number `accept` takes, or `deadline`. Returns
    /// the reply.
    fn request(
        &mut self,
        peer: Mac,
        seq: u32,
        deadline: Deadline,
        mut accept: impl FnMut(u32) -> bool,
    ) -> TestResult<Option<TestFrame>> {
        let own = self.mac();
        self.send_test(peer, own, KIND_ECHO_REQUEST, seq)?;
        loop {
            match self.poll()? {
                Some(Some(t))
                    if t.kind == KIND_ECHO_REPLY
                        && t.src == peer
                        && t.dst == own
                        && accept(t.seq) =>
                {
                    return Ok(Some(t));
                }
                Some(_) => {}
                None => core::hint::spin_loop(),
            }
            if deadline.expired() {
                return Ok(None);
            }
        }
    }

    /// `ping`: every request answered, each retried after `try_ms`.
    fn ping(&mut self, peer: Mac) -> TestResult {
        let count = self.cfg.count.unwrap_or(DEFAULT_COUNT);
        let deadline = Deadline::after_ms(u64::from(self.cfg.time_ms));
        let try_ms = u64::from(self.cfg.try_ms);
        let (mut sent, mut replies, mut tries) = (0u32, 0u32, 0u32);
        let (mut rtt_min, mut rtt_max, mut rtt_sum) = (u64::MAX, 0u64, 0u64);
        let mut damaged = None;
        let began = x86::rdtsc();
        'requests: for seq in 1..=count {
            if deadline.expired() {
                break;
            }
            sent += 1;
            loop {
                tries += 1;
                let start = x86::rdtsc();
                let try_deadline = Deadline::after_ms(try_ms).sooner(deadline);
                if let Some(reply) = self.request(peer, seq, try_deadline, |s| s == seq)? {
                    let rtt = x86::tsc_to_us(x86::rdtsc().wrapping_sub(start));
                    if !reply.intact || reply.len < self.len() {
                        damaged.get_or_insert(reply);
                    }
                    replies += 1;
                    rtt_min = rtt_min.min(rtt);
                    rtt_max = rtt_max.max(rtt);
                    rtt_sum += rtt;
                    break;
                }
                if deadline.expired() {
                    break 'requests;
                }
            }
        }
        let ms = x86::tsc_to_us(x86::rdtsc().wrapping_sub(began)) / 1000;
        say!(
            "net: ping {} sent={sent} replies={replies} ms={ms}",
            MacAddr(peer)
        );
        if replies != 0 {
            say!(
                "net: ping {} tries={tries} rtt-min-us={rtt_min} rtt-avg-us={} rtt-max-us={rtt_max}",
                MacAddr(peer),
                rtt_sum / u64::from(replies)
            );
        }
        if let Some(reply) = damaged {
            return fail!(
                "net: ping: reply {} from {} ({} bytes) does not carry the request's {} bytes",
                reply.seq,
                MacAddr(peer),
                reply.len,
                self.len()
            );
        }
        if replies != count {
            return fail!(
                "net: ping: {replies} of {count} requests to {} answered within {} ms",
                MacAddr(peer),
                self.cfg.time_ms
            );
        }
        Ok(())
    }

    /// `ping-expect-none`: requests every `try_ms` until the deadline (at
    /// most `count` if given); pass iff no reply at all comes back.
    fn ping_expect_none(&mut self, peer: Mac) -> TestResult {
        let count = self.cfg.count.unwrap_or(u32::MAX);
        let deadline = Deadline::after_ms(u64::from(self.cfg.time_ms));
        let try_ms = u64::from(self.cfg.try_ms);
        let (mut sent, mut replies) = (0u32, 0u32);
        while !deadline.expired() {
            let try_deadline = Deadline::after_ms(try_ms).sooner(deadline);
            let answered = if sent < count {
                sent += 1;
                self.request(peer, sent, try_deadline, |_| true)?
            } else {
                // All sent: keep listening for late replies.
                self.request_wait(peer, try_deadline)?
            };
            replies += u32::from(answered.is_some());
        }
        say!("net: ping {} sent={sent} replies={replies}", MacAddr(peer));
        if replies != 0 {
            return fail!(
                "net: ping-expect-none: {replies} of {sent} requests to {} were answered",
                MacAddr(peer)
            );
        }
        Ok(())
    }

    /// Polls until a reply from `peer` to us, or `deadline`.
    fn request_wait(&mut self, peer: Mac, deadline: Deadline) -> TestResult<Option<TestFrame>> {
        let own = self.mac();
        while !deadline.expired() {
            match self.poll()? {
                Some(Some(t)) if t.kind == KIND_ECHO_REPLY && t.src == peer && t.dst == own => {
                    return Ok(Some(t));
                }
                Some(_) => {}
                None => core::hint::spin_loop(),
            }
        }
        Ok(None)
    }

    /// `echo` and `listen`: until the deadline or a stop frame.
    fn serve(&mut self) -> TestResult<End> {
        let deadline = Deadline::after_ms(u64::from(self.cfg.time_ms));
        loop {
            if self.stopped_by.is_some() {
                return Ok(End::Stop);
            }
            if deadline.expired() {
                return Ok(End::Deadline);
            }
            if self.poll()?.is_none() {
                core::hint::spin_loop();
            }
        }
    }

    /// `send`: reach the peer, then send `count` data frames from `src`.
    fn send(&mut self, peer: Mac) -> TestResult {
        let count = self.cfg.count.unwrap_or(DEFAULT_COUNT);
        let deadline = Deadline::after_ms(u64::from(self.cfg.time_ms));
        let try_ms = u64::from(self.cfg.try_ms);
        let mut tries = 0u32;
        loop {
            if deadline.expired() {
                return fail!(
                    "net: send: {} answered none of {tries} echo-requests within {} ms",
                    MacAddr(peer),
                    self.cfg.time_ms
                );
            }
            let seq = HANDSHAKE_SEQ.wrapping_add(tries);
            tries += 1;
            let try_deadline = Deadline::after_ms(try_ms).sooner(deadline);
            if self
                .request(peer, seq, try_deadline, |s| s >= HANDSHAKE_SEQ)?
                .is_some()
            {
                break;
            }
        }
        say!("net: send {} reachable tries={tries}", MacAddr(peer));
        let src = self.cfg.src.unwrap_or(self.mac());
        for seq in 1..=count {
            self.send_test(peer, src, KIND_DATA, seq)?;
            self.idle_until(Deadline::after_ms(SEND_GAP_MS))?;
        }
        self.dev.drain_tx(Deadline::after_ms(DRAIN_MS))?;
        say!(
            "net: send {} src={} frames={count}",
            MacAddr(peer),
            MacAddr(src)
        );
        Ok(())
    }

    /// `storm`: broadcast data frames as fast as the device takes them.
    fn storm(&mut self) -> TestResult {
        let count = self.cfg.count.unwrap_or(0);
        let src = self.cfg.src.unwrap_or(self.mac());
        let len = self.len();
        let start = x86::rdtsc();
        let deadline = Deadline::after_ms(u64::from(self.cfg.time_ms));
        say!(
            "net: storm start src={} len={len} count={count} ms={}",
            MacAddr(src),
            self.cfg.time_ms
        );
        let mut sent = 0u32;
        let end = loop {
            if self.stopped_by.is_some() {
                break End::Stop;
            }
            if count != 0 && sent >= count {
                break End::Count;
            }
            if deadline.expired() {
                break End::Deadline;
            }
            // One burst: at most a queue's worth, so the checks above run
            // even when the device takes frames as fast as they are queued.
            for _ in 0..STORM_TX_BURST {
                if count != 0 && sent >= count {
                    break;
                }
                let seq = sent.wrapping_add(1);
                if !self
                    .dev
                    .try_queue(|buf| write_frame(buf, BROADCAST, src, KIND_DATA, seq, len))?
                {
                    break;
                }
                sent += 1;
            }
            self.dev.kick();
            // Take what arrived (stop frames among it) before sending more;
            // bounded, so a flood from elsewhere cannot stop the storm.
            for _ in 0..STORM_RX_BURST {
                if self.poll()?.is_none() {
                    break;
                }
            }
        };
        self.dev.drain_tx(Deadline::after_ms(DRAIN_MS))?;
        let ms = x86::tsc_to_us(x86::rdtsc().wrapping_sub(start)) / 1000;
        say!("net: storm sent={sent} ms={ms} end={}", end.name());
        Ok(())
    }

    /// Sends the stop frames of `keeltest.net-stop`.
    fn send_stops(&mut self) -> TestResult {
        let own = self.mac();
        let targets = self.cfg.stop;
        if targets.iter().all(Option::is_none) {
            return Ok(());
        }
        for seq in 1..=STOP_COPIES {
            for &mac in targets.iter().flatten() {
                self.send_test(mac, own, KIND_STOP, seq)?;
            }
            self.idle_until(Deadline::after_ms(STOP_GAP_MS))?;
        }
        for &mac in targets.iter().flatten() {
            say!("net: stop {} frames={STOP_COPIES}", MacAddr(mac));
        }
        Ok(())
    }

    fn print_rx(&self) {
        let s = &self.sources;
        for i in 0..s.len {
            say!(
                "net: rx from {} frames={} data={}",
                MacAddr(s.macs[i]),
                s.frames[i],
                s.data[i]
            );
        }
        if s.untracked != 0 {
            say!("net: rx untracked frames={}", s.untracked);
        }
        say!(
            "net: rx total frames={} test={} sources={} bad={}",
            self.frames,
            self.test_frames,
            s.len,
            self.dev.rx_bad
        );
    }
}

/// The `net` test: the role `cfg.role` on the first virtio-net device.
pub fn run(transport: &Transport, cfg: &NetConfig) -> TestResult {
    let Some(role) = cfg.role else {
        return fail!("net: no role: use keeltest.net=<role>");
    };
    let dev = NetDev::init(transport)?;
    say!(
        "net: ready mac={} link={} features={:#x} role={}",
        MacAddr(dev.mac),
        dev.link(),
        dev.features,
        role.name()
    );
    let mut s = Session {
        dev,
        cfg,
        sources: Sources {
            macs: [[0; 6]; MAX_SOURCES],
            frames: [0; MAX_SOURCES],
            data: [0; MAX_SOURCES],
            len: 0,
            untracked: 0,
        },
        frames: 0,
        test_frames: 0,
        answer: role == NetRole::Echo,
        requests: 0,
        replies_sent: 0,
        stopped_by: None,
    };
    let peer = cfg.peer.unwrap_or(BROADCAST);
    let result = match role {
        NetRole::Ping => s.ping(peer),
        NetRole::PingExpectNone => s.ping_expect_none(peer),
        NetRole::Send => s.send(peer),
        NetRole::Storm => s.storm(),
        NetRole::Echo => s.serve().map(|end| {
            say!(
                "net: echo requests={} replies={} end={}",
                s.requests,
                s.replies_sent,
                end.name()
            );
        }),
        NetRole::Listen | NetRole::ListenExpectNone => s.serve().and_then(|end| {
            say!("net: listen frames={} end={}", s.frames, end.name());
            if role == NetRole::ListenExpectNone && (s.frames != 0 || s.dev.rx_bad != 0) {
                return fail!(
                    "net: listen-expect-none: {} frames received ({} bad)",
                    s.frames,
                    s.dev.rx_bad
                );
            }
            Ok(())
        }),
    };
    // Stop the peers and report what arrived even when the role failed.
    let stopped = s.send_stops();
    if let Some(by) = s.stopped_by {
        say!("net: stopped by {}", MacAddr(by));
    }
    s.print_rx();
    result.and(stopped)
}
