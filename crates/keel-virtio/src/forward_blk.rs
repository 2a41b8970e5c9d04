//! An asynchronous virtio-blk device whose disk is a client's range on a storage VM
//! (docs/driver-vms.md): [`ForwardBlock`].
//!
//! It speaks the guest-facing protocol of [`crate::block::Block`] (the same request
//! parsing, checks and configuration space) but never waits: each guest request becomes
//! one or more forwarding requests ([`crate::forward`]'s records, ids and pieces) staged in
//! the request ring, and the guest's chain completes later, when the storage VM's answers
//! arrive ([`VirtioDevice::handle_event`] on the client's wake-up) or when it has been
//! outstanding longer than the timeout ([`VirtioDevice::poll`], with time from a
//! [`Clock`] the VMM provides). At most `slots` pieces are in flight; a chain is taken from
//! the avail ring only when a piece can be sent, so a busy storage VM leaves the guest's
//! requests where they are (back-pressure, nothing lost).
//!
//! Ordering: a FLUSH is sent only once every earlier request was answered (or failed), and
//! nothing after it is sent before its answer, so a flush completes only after the writes
//! completed before it are durable.
//!
//! Trust: the storage VM is not trusted. An answer with an id that is not in flight (late,
//! duplicate, invented) or with a length other than asked is counted and dropped; a wild
//! response ring index breaks the link: every outstanding and later request fails with
//! `VIRTIO_BLK_S_IOERR`. Every call does bounded work: at most `2 × slots` answers, at
//! most one queue's worth of chains.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use keel_core::GuestMemory;
use keel_core::ring::slot::{Pop, SlotConsumer, SlotProducer, SlotWindow};

use crate::block::{
    DiscardRanges, HEADER_LEN, Parsed, QUEUE_SIZE, SECTOR_SIZE, SERIAL_LEN, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, blk_config, blk_features, parse_request, serial_of, write_serial,
    write_status,
};
use crate::device::{
    ActiveQueues, DeviceError, EventSource, EventToken, VirtioDevice, check_single_event,
    device_type, read_config_bytes, single_event,
};
use crate::forward::{
    ForwardGeometry, MAX_ZERO_LEN, Op, REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN, RequestHeader,
    Status, le_u32, le_u64,
};
use crate::queue::{DescriptorChain, Queue};

/// Rounds of collect-submit-arm per call (see `ForwardBlock::run_active`).
const ROUNDS: usize = 4;

/// The event token of the client's wake-up (the storage VM answered).
pub const RESPONSE_EVENT: EventToken = EventToken(0);

/// How the client VMM tells the storage VM that requests were published: an eventfd on
/// Linux, a channel on seL4. Never waits.
pub trait ForwardBell: Send {
    /// Signal the storage VM.
    fn ring(&mut self);
}

/// Milliseconds from a monotonic source: `std::time::Instant` on Linux, the arm64
/// generic counter on seL4. Only differences matter.
pub trait Clock: Send {
    /// Now, in milliseconds.
    fn now_ms(&self) -> u64;
}

/// What a backend provides for a served disk: the region's rings, the bell, the wake-up
/// the device waits on, a clock and the first request id.
pub struct ForwardLink {
    /// The region's (request, response) rings, from [`ForwardGeometry::windows`].
    pub windows: (SlotWindow, SlotWindow),
    /// Rings the storage VM. It may own what keeps the region mapped: the device drops it
    /// after the rings.
    pub bell: Box<dyn ForwardBell>,
    /// The client's wake-up (the storage VM signals it after answering), the device's one
    /// event source; `None`: the device only polls.
    pub wake: Option<EventSource>,
    /// The time source of the timeouts.
    pub clock: Box<dyn Clock>,
    /// The first request id: beyond every id an earlier client of this region used (see
    /// [`crate::forward::ForwardClient::new`]).
    pub first_id: u64,
}

impl core::fmt::Debug for ForwardLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ForwardLink")
            .field("wake", &self.wake)
            .field("first_id", &self.first_id)
            .finish_non_exhaustive()
    }
}

/// The disk a [`ForwardBlock`] presents, as the plan gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardDisk {
    /// The storage VM's name, for messages.
    pub server: String,
    /// The region's geometry.
    pub geometry: ForwardGeometry,
    /// The client's range size in bytes (the guest sees `size / 512` sectors).
    pub size: u64,
    /// Writes and discards are refused locally.
    pub read_only: bool,
    /// A chain not completed this long after it was taken fails with IOERR.
    pub timeout_ms: u32,
    /// The GET_ID serial (at most 20 bytes kept).
    pub serial: Vec<u8>,
}

/// Counters of a [`ForwardBlock`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardBlockCounters {
    /// Forwarding requests sent.
    pub requests: u64,
    /// Guest requests completed (any status).
    pub completed: u64,
    /// Guest requests failed with IOERR (refused by the storage VM, timed out, link
    /// broken; local refusals are not counted).
    pub failed: u64,
    /// Guest requests that timed out.
    pub timeouts: u64,
    /// Answers dropped: unknown or stale ids, duplicates, bad lengths, bad records.
    pub bad_responses: u64,
    /// Whether the response ring was broken by a wild index (then every request fails).
    pub broken: bool,
}

/// What a guest chain asks of the storage VM.
#[derive(Clone, Copy, Debug)]
// The discard ranges are a fixed array (512 bytes) in a bounded table: nothing allocated
// per request.
#[allow(clippy::large_enum_variant)]
enum Work {
    /// Read or write `len` bytes at `offset`.
    Transfer { op: Op, offset: u64, len: u32 },
    /// Zero these ranges.
    Zero(DiscardRanges),
    /// Flush.
    Flush,
}

/// A guest chain taken from the avail ring and not completed yet.
#[derive(Debug)]
struct Pending {
    chain: DescriptorChain,
    work: Work,
    /// The status byte's offset in the writable part.
    data_in: u32,
    /// Submission cursor: range index (discard) and bytes of it sent.
    range: usize,
    sent: u64,
    /// Every piece sent.
    submitted: bool,
    /// Pieces in flight.
    outstanding: u32,
    /// A piece failed.
    failed: bool,
    /// When it was taken from the avail ring.
    taken_ms: u64,
}

/// One forwarding request in flight.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    id: u64,
    /// Index of its chain in `ForwardBlock::chains`.
    chain: usize,
    op: Op,
    /// For a read: where its bytes go in the chain's writable part, and how many.
    at: u32,
    len: u32,
}

/// The virtio-blk device of a served disk. See the module documentation.
pub struct ForwardBlock {
    active: Option<ActiveQueues>,
    disk: ForwardDisk,
    serial: [u8; SERIAL_LEN],
    // The rings are declared before `bell`, which may own the region's mapping.
    req: SlotProducer,
    resp: SlotConsumer,
    bell: Box<dyn ForwardBell>,
    wake: Option<EventSource>,
    clock: Box<dyn Clock>,
    next_id: u64,
    /// One slot's worth: a request being staged or a response being read.
    buf: Vec<u8>,
    /// Chains taken and not completed (`None`: a free entry).
    chains: Vec<Option<Pending>>,
    /// The chain being submitted (more pieces to send), an index into `chains`.
    current: Option<usize>,
    inflight: Vec<InFlight>,
    /// Answers were left in the ring at the end of a call (its batch limit).
    backlog: bool,
    counters: ForwardBlockCounters,
}

impl core::fmt::Debug for ForwardBlock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ForwardBlock")
            .field("disk", &self.disk)
            .field("inflight", &self.inflight.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl ForwardBlock {
    /// The device of `disk` over `link`. Responses already in the ring (to a previous
    /// client of the region) are skipped; later ones are matched by id.
    pub fn new(disk: ForwardDisk, link: ForwardLink) -> ForwardBlock {
        let (req, resp) = link.windows;
        let mut resp = SlotConsumer::attach(resp);
        let _ = resp.skip_to_head();
        let slots = usize::try_from(disk.geometry.slots).unwrap_or(usize::MAX);
        ForwardBlock {
            active: None,
            serial: serial_of(&disk.serial),
            buf: vec![0; disk.geometry.slot_size()],
            chains: Vec::with_capacity(slots.saturating_add(1).min(1025)),
            inflight: Vec::with_capacity(slots.min(1024)),
            disk,
            req: SlotProducer::attach(req),
            resp,
            bell: link.bell,
            wake: link.wake,
            clock: link.clock,
            next_id: link.first_id,
            current: None,
            backlog: false,
            counters: ForwardBlockCounters::default(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> ForwardBlockCounters {
        self.counters
    }

    /// The disk.
    pub fn disk(&self) -> &ForwardDisk {
        &self.disk
    }

    /// Guest requests taken and not completed.
    pub fn pending(&self) -> usize {
        self.chains.iter().filter(|c| c.is_some()).count()
    }

    /// Forwarding requests in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn slots(&self) -> usize {
        usize::try_from(self.disk.geometry.slots).unwrap_or(usize::MAX)
    }

    /// Collect answers, expire timed-out chains, submit what the ring has room for.
    /// Returns whether the guest should be interrupted.
    fn run(&mut self) -> Result<bool, DeviceError> {
        let Some(mut active) = self.active.take() else {
            return Ok(false);
        };
        let result = self.run_active(&mut active);
        self.active = Some(active);
        result
    }

    fn run_active(&mut self, active: &mut ActiveQueues) -> Result<bool, DeviceError> {
        let (mem, q) = active.get(0)?;
        let mut used = self.expire(mem, q)?;
        // A few rounds: answers that arrive while the wake-up is being armed are taken
        // now; past that, the event is reported backlogged (delivered again).
        for round in 0..ROUNDS {
            used |= self.collect(mem, q)?;
            used |= self.submit(mem, q)?;
            if self.backlog || self.counters.broken {
                break;
            }
            if self.inflight.is_empty() {
                // Nothing to wait for: no notifications wanted.
                self.resp.disarm();
                break;
            }
            // Answers are awaited: ask the storage VM to signal them.
            match self.resp.arm_wakeup() {
                Ok(true) => break,
                Ok(false) => self.backlog = round + 1 == ROUNDS,
                Err(_) => {
                    self.counters.broken = true;
                    used |= self.fail_all(mem, q)?;
                    break;
                }
            }
        }
        if used {
            active.needs_notification(0)
        } else {
            Ok(false)
        }
    }

    /// Complete chain `index` (removing its pieces from flight) with IOERR if it failed,
    /// OK otherwise.
    fn complete(
        &mut self,
        mem: &dyn GuestMemory,
        q: &mut Queue,
        index: usize,
    ) -> Result<(), DeviceError> {
        let Some(p) = self.chains.get_mut(index).and_then(Option::take) else {
            return Ok(());
        };
        self.inflight.retain(|f| f.chain != index);
        if self.current == Some(index) {
            self.current = None;
        }
        let ok = !p.failed && !self.counters.broken;
        let (status, written) = match (ok, p.work) {
            (
                true,
                Work::Transfer {
                    op: Op::Read, len, ..
                },
            ) => (VIRTIO_BLK_S_OK, len),
            (true, _) => (VIRTIO_BLK_S_OK, 0),
            (false, _) => (VIRTIO_BLK_S_IOERR, 0),
        };
        self.counters.completed += 1;
        if !ok {
            self.counters.failed += 1;
        }
        write_status(mem, &p.chain, 0, p.data_in, status)?;
        q.add_used(mem, p.chain.head(), written + 1)
            .map_err(DeviceError::queue(0))
    }

    /// Take the storage VM's answers (at most `2 × slots`).
    fn collect(&mut self, mem: &dyn GuestMemory, q: &mut Queue) -> Result<bool, DeviceError> {
        self.backlog = false;
        if self.counters.broken {
            return self.fail_all(mem, q);
        }
        let budget = self.slots().saturating_mul(2);
        let mut used = false;
        let mut taken = 0usize;
        loop {
            if taken >= budget {
                self.backlog = self.resp.avail().unwrap_or(0) > 0;
                break;
            }
            let got = match self.resp.pop(&mut self.buf) {
                Ok(g) => g,
                Err(_) => {
                    // A wild index: the link is broken for good.
                    self.counters.broken = true;
                    return Ok(self.fail_all(mem, q)? | used);
                }
            };
            let n = match got {
                Pop::Record(n) => n,
                Pop::BadLength { .. } => {
                    taken += 1;
                    self.counters.bad_responses += 1;
                    continue;
                }
                Pop::Empty => break,
            };
            taken += 1;
            used |= self.answer(mem, q, n)?;
        }
        Ok(used)
    }

    /// Handle the answer in `buf[..n]`.
    fn answer(
        &mut self,
        mem: &dyn GuestMemory,
        q: &mut Queue,
        n: usize,
    ) -> Result<bool, DeviceError> {
        if n < RESPONSE_HEADER_LEN {
            self.counters.bad_responses += 1;
            return Ok(false);
        }
        let id = le_u64(&self.buf, 0);
        let status = le_u32(&self.buf, 8);
        let len = le_u32(&self.buf, 12) as usize;
        let Some(at) = self.inflight.iter().position(|f| f.id == id) else {
            // Late (its chain timed out), a duplicate, or never asked for.
            self.counters.bad_responses += 1;
            return Ok(false);
        };
        let f = self.inflight[at];
        let ok = status == Status::Ok as u32;
        let want = if f.op == Op::Read && ok {
            f.len as usize
        } else {
            0
        };
        if len != want || n != RESPONSE_HEADER_LEN + want {
            // Left in flight: a right answer may still come, or the chain times out.
            self.counters.bad_responses += 1;
            return Ok(false);
        }
        self.inflight.swap_remove(at);
        let Some(p) = self.chains.get_mut(f.chain).and_then(Option::as_mut) else {
            return Ok(false);
        };
        p.outstanding = p.outstanding.saturating_sub(1);
        if ok {
            if f.op == Op::Read && !p.failed {
                p.chain
                    .write_at(
                        mem,
                        u64::from(f.at),
                        &self.buf[RESPONSE_HEADER_LEN..RESPONSE_HEADER_LEN + want],
                    )
                    .map_err(DeviceError::chain(0))?;
            }
        } else {
            p.failed = true;
        }
        if p.outstanding == 0 && p.submitted {
            self.complete(mem, q, f.chain)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Fail every chain taken (the link is broken).
    fn fail_all(&mut self, mem: &dyn GuestMemory, q: &mut Queue) -> Result<bool, DeviceError> {
        let mut used = false;
        for i in 0..self.chains.len() {
            if let Some(p) = self.chains[i].as_mut() {
                p.failed = true;
                self.complete(mem, q, i)?;
                used = true;
            }
        }
        Ok(used)
    }

    /// Fail the chains outstanding longer than the timeout; their late answers are
    /// dropped by id.
    fn expire(&mut self, mem: &dyn GuestMemory, q: &mut Queue) -> Result<bool, DeviceError> {
        let now = self.clock.now_ms();
        let timeout = u64::from(self.disk.timeout_ms);
        let mut used = false;
        for i in 0..self.chains.len() {
            let Some(p) = self.chains[i].as_mut() else {
                continue;
            };
            if now.saturating_sub(p.taken_ms) >= timeout {
                p.failed = true;
                self.counters.timeouts += 1;
                self.complete(mem, q, i)?;
                used = true;
            }
        }
        Ok(used)
    }

    /// Take chains from the avail ring and send their pieces while the ring has room.
    fn submit(&mut self, mem: &dyn GuestMemory, q: &mut Queue) -> Result<bool, DeviceError> {
        let mut used = false;
        // Chains answered locally are bounded by the queue's size.
        for _ in 0..=usize::from(QUEUE_SIZE) {
            let index = match self.current {
                Some(i) => i,
                None => {
                    if !self.counters.broken && self.inflight.len() >= self.slots() {
                        break;
                    }
                    let Some(chain) = q.pop(mem).map_err(DeviceError::queue(0))? else {
                        break;
                    };
                    match self.take(mem, q, chain)? {
                        Some(i) => {
                            self.current = Some(i);
                            i
                        }
                        None => {
                            used = true;
                            continue;
                        }
                    }
                }
            };
            used |= self.send(mem, q, index)?;
            if self.current.is_some() {
                // No room (or waiting for the flush barrier): the rest stays on the ring.
                break;
            }
        }
        if self.req.publish() {
            self.bell.ring();
        }
        Ok(used)
    }

    /// A chain just taken: answer it locally (`None`) or keep it to forward.
    fn take(
        &mut self,
        mem: &dyn GuestMemory,
        q: &mut Queue,
        chain: DescriptorChain,
    ) -> Result<Option<usize>, DeviceError> {
        let parsed = parse_request(mem, &chain, 0, self.disk.size, self.disk.read_only)?;
        let work = match parsed.kind {
            Parsed::Read { offset, len } => Work::Transfer {
                op: Op::Read,
                offset,
                len,
            },
            Parsed::Write { offset, len } => Work::Transfer {
                op: Op::Write,
                offset,
                len,
            },
            Parsed::Flush => Work::Flush,
            Parsed::Discard(ranges) => Work::Zero(ranges),
            Parsed::GetId => {
                let n = write_serial(mem, &chain, 0, &self.serial, parsed.data_in)?;
                write_status(mem, &chain, 0, parsed.data_in, VIRTIO_BLK_S_OK)?;
                q.add_used(mem, chain.head(), n + 1)
                    .map_err(DeviceError::queue(0))?;
                return Ok(None);
            }
            Parsed::Status(status) => {
                write_status(mem, &chain, 0, parsed.data_in, status)?;
                q.add_used(mem, chain.head(), 1)
                    .map_err(DeviceError::queue(0))?;
                return Ok(None);
            }
        };
        let pending = Pending {
            chain,
            work,
            data_in: parsed.data_in,
            range: 0,
            sent: 0,
            submitted: false,
            outstanding: 0,
            failed: self.counters.broken,
            taken_ms: self.clock.now_ms(),
        };
        let index = match self.chains.iter().position(Option::is_none) {
            Some(i) => {
                self.chains[i] = Some(pending);
                i
            }
            None => {
                self.chains.push(Some(pending));
                self.chains.len() - 1
            }
        };
        Ok(Some(index))
    }

    /// Send pieces of chain `index` while there is room; completes it when it needs no
    /// answer (nothing to send, the link broken, the ring refused). Returns whether a
    /// chain was completed.
    fn send(
        &mut self,
        mem: &dyn GuestMemory,
        q: &mut Queue,
        index: usize,
    ) -> Result<bool, DeviceError> {
        let slots = self.slots();
        let max_data = self.disk.geometry.max_data as u64;
        let flush_in_flight = self.inflight.iter().any(|f| f.op == Op::Flush);
        let others_in_flight = self.inflight.iter().any(|f| f.chain != index);
        let Some(p) = self.chains.get_mut(index).and_then(Option::as_mut) else {
            self.current = None;
            return Ok(false);
        };
        if p.failed {
            p.submitted = true;
        }
        // The flush barrier: nothing passes a flush in flight, and a flush waits for every
        // earlier request.
        if !p.submitted && (flush_in_flight || (matches!(p.work, Work::Flush) && others_in_flight))
        {
            return Ok(false);
        }
        while !p.submitted {
            if self.inflight.len() >= slots || self.req.pending().is_ok_and(|n| n >= slots as u64) {
                return Ok(false);
            }
            let (op, offset, len, at) = match p.work {
                Work::Transfer { op, offset, len } => {
                    let n = (u64::from(len) - p.sent).min(max_data);
                    (op, offset + p.sent, n, p.sent)
                }
                Work::Zero(ranges) => {
                    let Some((offset, bytes)) = ranges.iter().nth(p.range) else {
                        p.submitted = true;
                        break;
                    };
                    let n = (bytes - p.sent).min(u64::from(MAX_ZERO_LEN));
                    (Op::Zero, offset + p.sent, n, 0)
                }
                Work::Flush => (Op::Flush, 0, 0, 0),
            };
            if op != Op::Flush && len == 0 {
                // A zero-length transfer: nothing to forward.
                p.submitted = true;
                break;
            }
            let id = self.next_id;
            let header = RequestHeader {
                op,
                id,
                offset,
                len: len as u32,
            };
            let rec_len = REQUEST_HEADER_LEN + if op == Op::Write { len as usize } else { 0 };
            self.buf[..REQUEST_HEADER_LEN].copy_from_slice(&header.encode());
            if op == Op::Write {
                p.chain
                    .read_at(
                        mem,
                        u64::from(HEADER_LEN) + at,
                        &mut self.buf[REQUEST_HEADER_LEN..rec_len],
                    )
                    .map_err(DeviceError::chain(0))?;
            }
            match self.req.stage(&self.buf[..rec_len]) {
                Ok(true) => {}
                // Full (checked above: not expected) or the storage VM's index is wild:
                // this chain fails; what is in flight of it is dropped by id.
                Ok(false) | Err(_) => {
                    p.failed = true;
                    p.submitted = true;
                    break;
                }
            }
            self.next_id = self.next_id.wrapping_add(1);
            self.counters.requests += 1;
            p.outstanding += 1;
            self.inflight.push(InFlight {
                id,
                chain: index,
                op,
                at: at as u32,
                len: len as u32,
            });
            match p.work {
                Work::Transfer { len: total, .. } => {
                    p.sent += len;
                    p.submitted = p.sent >= u64::from(total);
                }
                Work::Zero(ranges) => {
                    p.sent += len;
                    if ranges.iter().nth(p.range).is_some_and(|(_, b)| p.sent >= b) {
                        p.range += 1;
                        p.sent = 0;
                    }
                    p.submitted = ranges.iter().nth(p.range).is_none();
                }
                Work::Flush => p.submitted = true,
            }
        }
        self.current = None;
        if p.outstanding == 0 {
            self.complete(mem, q, index)?;
            return Ok(true);
        }
        Ok(false)
    }
}

impl VirtioDevice for ForwardBlock {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        blk_features(self.disk.read_only)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&blk_config(self.disk.size / SECTOR_SIZE), offset, data);
    }

    fn active_queues(&mut self) -> &mut Option<ActiveQueues> {
        &mut self.active
    }

    fn reset(&mut self) {
        // The chains belong to the guest's old queue: forgotten; their answers, if they
        // come, are dropped by id.
        self.active = None;
        self.chains.clear();
        self.inflight.clear();
        self.current = None;
        self.backlog = false;
    }

    fn process_queue(&mut self, queue: u16) -> Result<bool, DeviceError> {
        if let Some(active) = self.active.as_mut() {
            // The one queue: anything else is the transport's error to report.
            active.get(queue)?;
        }
        self.run()
    }

    fn poll(&mut self) -> Result<bool, DeviceError> {
        self.run()
    }

    fn poll_interval_ms(&self) -> Option<u32> {
        // A tenth of the timeout, at least every 10 ms at most every second.
        Some((self.disk.timeout_ms / 10).clamp(10, 1000))
    }

    fn event_sources(&self) -> Vec<(EventToken, EventSource)> {
        single_event(RESPONSE_EVENT, self.wake)
    }

    fn handle_event(&mut self, token: EventToken) -> Result<bool, DeviceError> {
        check_single_event(token, RESPONSE_EVENT, self.wake)?;
        self.run()
    }

    fn backlogged_event(&self) -> Option<EventToken> {
        (self.backlog && self.wake.is_some()).then_some(RESPONSE_EVENT)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.counters;
        vec![
            ("requests", c.requests),
            ("completed", c.completed),
            ("failed", c.failed),
            ("timeouts", c.timeouts),
            ("bad_responses", c.bad_responses),
            ("broken", u64::from(c.broken)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{
        BlockBackend, BlockError, MemoryBackend, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_UNSUPP,
        VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
    };
    use crate::forward::{ClientRange, ForwardServer};
    use crate::testing::GuestDriver;
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    /// A small geometry: 4 slots of 1 KiB.
    const G: ForwardGeometry = ForwardGeometry {
        slots: 4,
        max_data: 1024,
    };
    const DISK: usize = 64 * 1024;

    struct Region(Vec<u64>);

    impl Region {
        fn windows(&mut self) -> (SlotWindow, SlotWindow) {
            let len = self.0.len() * 8;
            // SAFETY: the vector outlives every window of a test (the harness drops the
            // device first), is 8-aligned and reached only through the windows.
            unsafe { G.windows(self.0.as_mut_ptr().cast(), len) }.unwrap()
        }
    }

    /// A memory disk recording the operations the server ran.
    struct Disk {
        mem: MemoryBackend<Vec<u8>>,
        ops: Vec<&'static str>,
    }

    impl BlockBackend for Disk {
        fn size(&self) -> u64 {
            self.mem.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.ops.push("read");
            self.mem.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
            self.ops.push("write");
            self.mem.write_at(offset, data)
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            self.ops.push("flush");
            Ok(())
        }
        fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
            self.ops.push("zero");
            self.mem.discard(offset, len)
        }
    }

    struct Bell(Arc<AtomicU32>);
    impl ForwardBell for Bell {
        fn ring(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct TestClock(Arc<AtomicU64>);
    impl Clock for TestClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A client guest with a forwarded disk, its storage VM's server (started on demand)
    /// and the clock. The driver is declared first: dropped before the region.
    struct Harness {
        d: GuestDriver<ForwardBlock>,
        server: Option<ForwardServer<Disk>>,
        clock: Arc<AtomicU64>,
        rings: Arc<AtomicU32>,
        region: Region,
    }

    fn harness(read_only: bool) -> Harness {
        let mut h = harness_sized(read_only, DISK as u64);
        h.start_server();
        h
    }

    /// A harness for a disk of `size` bytes, without a server.
    fn harness_sized(read_only: bool, size: u64) -> Harness {
        let mut region = Region(vec![0; G.region_len() / 8]);
        let clock = Arc::new(AtomicU64::new(1000));
        let rings = Arc::new(AtomicU32::new(0));
        let disk = ForwardDisk {
            server: "store".into(),
            geometry: G,
            size,
            read_only,
            timeout_ms: 5000,
            serial: b"fwd-disk".to_vec(),
        };
        let link = ForwardLink {
            windows: region.windows(),
            bell: Box::new(Bell(rings.clone())),
            wake: Some(EventSource(7)),
            clock: Box::new(TestClock(clock.clone())),
            first_id: 100,
        };
        let d = GuestDriver::start(ForwardBlock::new(disk, link));
        Harness {
            d,
            server: None,
            clock,
            rings,
            region,
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    impl Harness {
        /// A (new) storage VM: skips the requests its predecessor left.
        fn start_server(&mut self) {
            let disk = Disk {
                mem: MemoryBackend::new(pattern(DISK, 0x33)),
                ops: Vec::new(),
            };
            let old = self.server.take().map(|s| s.disk().mem.bytes().to_vec());
            let mut disk = disk;
            if let Some(bytes) = old {
                disk.mem.write_at(0, &bytes).unwrap();
            }
            let range = ClientRange {
                start: 0,
                size: DISK as u64,
                read_only: false,
            };
            self.server = Some(ForwardServer::new(self.region.windows(), G, disk, range).unwrap());
        }

        /// The storage VM serves what is there; the device gets its wake-up.
        fn serve(&mut self) {
            self.server.as_mut().unwrap().serve(usize::MAX).unwrap();
            self.d.transport.handle_event(RESPONSE_EVENT);
        }

        fn disk(&self) -> &Disk {
            self.server.as_ref().unwrap().disk()
        }

        fn device(&mut self) -> &ForwardBlock {
            self.d.transport.device()
        }

        /// Post a request (header, optional data out, `in_len` bytes in, status) and
        /// notify; returns (head, data address, status address).
        fn post(&mut self, kind: u32, sector: u64, out: Option<&[u8]>, in_len: u32) -> Req {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            let header = self.d.buffer(&h);
            let status = self.d.buffer(&[0xff]);
            let mut bufs = vec![(header, 16, false)];
            let mut data = 0;
            if let Some(out) = out {
                data = self.d.buffer(out);
                bufs.push((data, out.len() as u32, false));
            }
            if in_len > 0 {
                data = self.d.alloc(in_len);
                bufs.push((data, in_len, true));
            }
            bufs.push((status, 1, true));
            let head = self.d.submit(0, &bufs);
            Req { head, data, status }
        }

        /// The status byte of `r` (0xff: not completed).
        fn status(&self, r: &Req) -> u8 {
            self.d.read_mem(r.status, 1)[0]
        }

        /// The used ring's heads, in completion order.
        fn used_heads(&self) -> Vec<u32> {
            let q = &self.d.queues[0];
            let n = q.used_idx(&*self.d.mem);
            (0..n).map(|i| q.used_elem(&*self.d.mem, i).0).collect()
        }
    }

    struct Req {
        head: u16,
        data: u64,
        status: u64,
    }

    #[test]
    fn config_and_features_are_those_of_a_block_device_of_the_clients_size() {
        let mut h = harness(false);
        assert_eq!(u64::from_le_bytes(h.d.config::<8>(0)), (DISK / 512) as u64);
        assert_eq!(h.d.device_features() & VIRTIO_BLK_F_RO, 0);
        let mut ro = harness(true);
        assert_ne!(ro.d.device_features() & VIRTIO_BLK_F_RO, 0);
    }

    #[test]
    fn write_then_read_in_pieces_across_batches_round_trips() {
        let mut h = harness(false);
        // 6 KiB: 6 pieces of 1 KiB, more than the 4 slots: two batches.
        let data = pattern(6 * 1024, 5);
        // The storage VM sleeps until rung.
        assert!(h.server.as_mut().unwrap().arm_wakeup().unwrap());

        let w = h.post(VIRTIO_BLK_T_OUT, 8, Some(&data), 0);
        assert_eq!(h.rings.load(Ordering::SeqCst), 1);
        assert_eq!(h.device().in_flight(), 4);
        // The client waits for answers: the storage VM is asked to signal them.
        assert!(h.server.as_mut().unwrap().serve(usize::MAX).unwrap().notify);
        h.d.transport.handle_event(RESPONSE_EVENT);
        assert_eq!(h.status(&w), 0xff, "completed before its last piece");
        assert_eq!(h.device().in_flight(), 2);
        h.serve();
        let r = h.post(VIRTIO_BLK_T_IN, 8, None, 6 * 1024);
        h.serve();
        h.serve();

        assert_eq!(h.status(&w), VIRTIO_BLK_S_OK);
        assert_eq!(h.status(&r), VIRTIO_BLK_S_OK);
        assert_eq!(h.d.read_mem(r.data, data.len()), data);
        assert_eq!(&h.disk().mem.bytes()[4096..4096 + data.len()], &data[..]);
        assert_eq!(h.d.last_used(0), Some((u32::from(r.head), 6 * 1024 + 1)));
        assert_eq!(h.device().counters().requests, 12);
        assert!(h.d.irq.is_high());
    }

    #[test]
    fn requests_in_flight_complete_in_the_order_the_answers_arrive() {
        let mut h = harness(false);
        let reads: Vec<Req> = (0..3)
            .map(|i| h.post(VIRTIO_BLK_T_IN, i * 2, None, 512))
            .collect();
        assert_eq!(h.device().in_flight(), 3);
        // The storage VM answers the third, then the first, then the second.
        let (req_w, resp_w) = h.region.windows();
        let mut req = SlotConsumer::attach(req_w);
        let mut resp = SlotProducer::attach(resp_w);
        let mut ids = Vec::new();
        let mut buf = vec![0u8; G.slot_size()];
        while let Pop::Record(_) = req.pop(&mut buf).unwrap() {
            ids.push(le_u64(&buf, 8));
        }
        for (i, seed) in [(2usize, 0xc), (0, 0xa), (1, 0xb)] {
            let mut rec = vec![0u8; RESPONSE_HEADER_LEN + 512];
            rec[..8].copy_from_slice(&ids[i].to_le_bytes());
            rec[12..16].copy_from_slice(&512u32.to_le_bytes());
            rec[16..].fill(seed);
            resp.push(&rec).unwrap();
            h.d.transport.handle_event(RESPONSE_EVENT);
        }

        let heads: Vec<u32> = [2, 0, 1]
            .iter()
            .map(|&i| u32::from(reads[i].head))
            .collect();
        assert_eq!(h.used_heads(), heads);
        for (r, seed) in reads.iter().zip([0xa, 0xb, 0xc]) {
            assert_eq!(h.status(r), VIRTIO_BLK_S_OK);
            assert_eq!(h.d.read_mem(r.data, 512), [seed; 512]);
        }
    }

    #[test]
    fn a_full_ring_leaves_chains_on_the_avail_ring_until_there_is_room() {
        let mut h = harness(false);
        let reads: Vec<Req> = (0..6)
            .map(|i| h.post(VIRTIO_BLK_T_IN, i, None, 1024))
            .collect();

        // Four in flight (one each); the fifth chain is not taken at all.
        assert_eq!(h.device().in_flight(), 4);
        assert_eq!(h.device().pending(), 4);
        assert_eq!(
            h.d.transport.device().active.as_ref().unwrap().queues[0].next_avail(),
            4
        );
        h.serve();
        h.serve();

        let disk = pattern(DISK, 0x33);
        for (i, r) in reads.iter().enumerate() {
            assert_eq!(h.status(r), VIRTIO_BLK_S_OK, "request {i}");
            assert_eq!(h.d.read_mem(r.data, 1024), disk[i * 512..i * 512 + 1024]);
        }
    }

    #[test]
    fn a_flush_waits_for_earlier_writes_and_later_writes_wait_for_it() {
        let mut h = harness(false);
        let w1 = h.post(VIRTIO_BLK_T_OUT, 0, Some(&[1; 512]), 0);
        let f = h.post(VIRTIO_BLK_T_FLUSH, 0, None, 0);
        let w2 = h.post(VIRTIO_BLK_T_OUT, 1, Some(&[2; 512]), 0);
        assert_eq!(h.device().in_flight(), 1, "only the first write is sent");

        h.serve();
        assert_eq!(h.status(&w1), VIRTIO_BLK_S_OK);
        assert_eq!(h.status(&f), 0xff);
        assert_eq!(h.device().in_flight(), 1, "the flush alone");
        h.serve();
        assert_eq!(h.status(&f), VIRTIO_BLK_S_OK);
        assert_eq!(h.status(&w2), 0xff);
        h.serve();

        assert_eq!(h.status(&w2), VIRTIO_BLK_S_OK);
        assert_eq!(h.disk().ops, ["write", "flush", "write"]);
    }

    #[test]
    fn a_silent_storage_vm_fails_the_request_at_the_timeout_and_its_late_answer_is_dropped() {
        let mut h = harness(false);
        let r = h.post(VIRTIO_BLK_T_IN, 0, None, 512);
        h.clock.fetch_add(4999, Ordering::SeqCst);
        h.d.transport.poll();
        assert_eq!(h.status(&r), 0xff);

        h.clock.fetch_add(1, Ordering::SeqCst);
        h.d.transport.poll();
        assert_eq!(h.status(&r), VIRTIO_BLK_S_IOERR);
        assert_eq!(h.d.last_used(0), Some((u32::from(r.head), 1)));
        assert_eq!(h.device().counters().timeouts, 1);
        assert_eq!(h.device().in_flight(), 0);

        // The late answer arrives with the next request's: only the latter counts.
        let again = h.post(VIRTIO_BLK_T_IN, 1, None, 512);
        h.serve();
        assert_eq!(h.status(&again), VIRTIO_BLK_S_OK);
        assert_eq!(
            h.d.read_mem(again.data, 512),
            pattern(DISK, 0x33)[512..1024]
        );
        assert_eq!(h.d.read_mem(r.data, 512), [0; 512], "late data written");
        assert_eq!(h.device().counters().bad_responses, 1);
    }

    #[test]
    fn a_request_that_could_not_be_sent_times_out_too() {
        let mut h = harness(false);
        // A stuck storage VM: the request ring stays full of requests that timed out.
        let old: Vec<Req> = (0..4)
            .map(|i| h.post(VIRTIO_BLK_T_IN, i, None, 512))
            .collect();
        h.clock.fetch_add(5000, Ordering::SeqCst);
        h.d.transport.poll();
        assert!(old.iter().all(|r| h.status(r) == VIRTIO_BLK_S_IOERR));
        let r = h.post(VIRTIO_BLK_T_IN, 0, None, 512);
        assert_eq!(h.device().in_flight(), 0);
        assert_eq!(h.device().pending(), 1);

        h.clock.fetch_add(5000, Ordering::SeqCst);
        h.d.transport.poll();

        assert_eq!(h.status(&r), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn a_restarted_storage_vm_serves_the_client_again() {
        let mut h = harness(false);
        let r = h.post(VIRTIO_BLK_T_OUT, 0, Some(&[9; 512]), 0);
        h.clock.fetch_add(6000, Ordering::SeqCst);
        h.d.transport.poll();
        assert_eq!(h.status(&r), VIRTIO_BLK_S_IOERR);

        h.start_server();
        let w = h.post(VIRTIO_BLK_T_OUT, 1, Some(&[8; 512]), 0);
        h.serve();

        assert_eq!(h.status(&w), VIRTIO_BLK_S_OK);
        assert_eq!(&h.disk().mem.bytes()[512..1024], &[8; 512]);
        // The request the old server never took is skipped by the new one.
        assert_eq!(h.disk().mem.bytes()[..512], pattern(DISK, 0x33)[..512]);
        assert_eq!(h.disk().ops, ["write"]);
    }

    #[test]
    fn hostile_answers_are_counted_and_dropped_and_the_right_one_is_taken() {
        let mut h = harness(false);
        let r = h.post(VIRTIO_BLK_T_IN, 0, None, 512);
        let (req_w, resp_w) = h.region.windows();
        let mut req = SlotConsumer::attach(req_w);
        let mut resp = SlotProducer::attach(resp_w);
        let mut buf = vec![0u8; G.slot_size()];
        assert!(matches!(req.pop(&mut buf).unwrap(), Pop::Record(32)));
        let id = le_u64(&buf, 8);
        let answer = |id: u64, status: u32, len: u32, data: usize| {
            let mut rec = vec![0x77u8; RESPONSE_HEADER_LEN + data];
            rec[..8].copy_from_slice(&id.to_le_bytes());
            rec[8..12].copy_from_slice(&status.to_le_bytes());
            rec[12..16].copy_from_slice(&len.to_le_bytes());
            rec
        };

        resp.push(&answer(id + 1, 0, 512, 512)).unwrap(); // unknown id
        resp.push(&answer(id, 0, 256, 256)).unwrap(); // wrong length
        resp.push(&answer(id, 0, 512, 100)).unwrap(); // length and record disagree
        resp.push(&[1, 2, 3]).unwrap(); // too short
        h.d.transport.handle_event(RESPONSE_EVENT);
        assert_eq!(h.status(&r), 0xff);
        resp.push(&answer(id, 0, 512, 512)).unwrap();
        resp.push(&answer(id, 0, 512, 512)).unwrap(); // a duplicate
        h.d.transport.handle_event(RESPONSE_EVENT);

        assert_eq!(h.status(&r), VIRTIO_BLK_S_OK);
        assert_eq!(h.d.read_mem(r.data, 512), [0x77; 512]);
        assert_eq!(h.device().counters().bad_responses, 5);
        assert!(!h.needs_reset_after_all());
    }

    impl Harness {
        fn needs_reset_after_all(&mut self) -> bool {
            self.d.needs_reset()
        }
    }

    #[test]
    fn an_error_status_fails_the_guest_request() {
        let mut h = harness(false);
        let r = h.post(VIRTIO_BLK_T_IN, 0, None, 1024);
        let (req_w, resp_w) = h.region.windows();
        let mut req = SlotConsumer::attach(req_w);
        let mut resp = SlotProducer::attach(resp_w);
        let mut buf = vec![0u8; G.slot_size()];
        let _ = req.pop(&mut buf).unwrap();
        let mut rec = vec![0u8; RESPONSE_HEADER_LEN];
        rec[..8].copy_from_slice(&le_u64(&buf, 8).to_le_bytes());
        rec[8..12].copy_from_slice(&(Status::IoError as u32).to_le_bytes());
        resp.push(&rec).unwrap();

        h.d.transport.handle_event(RESPONSE_EVENT);

        assert_eq!(h.status(&r), VIRTIO_BLK_S_IOERR);
        assert_eq!(h.d.last_used(0), Some((u32::from(r.head), 1)));
        assert_eq!(h.device().counters().failed, 1);
    }

    #[test]
    fn a_wild_response_ring_fails_every_outstanding_and_later_request() {
        let mut h = harness(false);
        let a = h.post(VIRTIO_BLK_T_IN, 0, None, 512);
        let b = h.post(VIRTIO_BLK_T_OUT, 1, Some(&[1; 512]), 0);
        // The storage VM writes a head far beyond the ring.
        let resp_at = G.response_offset() / 8;
        h.region.0[resp_at] = 1 << 40;

        h.d.transport.handle_event(RESPONSE_EVENT);
        let later = h.post(VIRTIO_BLK_T_IN, 2, None, 512);
        let id = h.post(VIRTIO_BLK_T_GET_ID, 0, None, 20);

        assert_eq!(h.status(&a), VIRTIO_BLK_S_IOERR);
        assert_eq!(h.status(&b), VIRTIO_BLK_S_IOERR);
        assert_eq!(h.status(&later), VIRTIO_BLK_S_IOERR);
        assert_eq!(h.status(&id), VIRTIO_BLK_S_OK);
        assert!(h.device().counters().broken);
        assert!(!h.d.needs_reset());
    }

    #[test]
    fn read_only_out_of_range_and_unknown_requests_are_answered_without_forwarding() {
        let mut ro = harness(true);
        let w = ro.post(VIRTIO_BLK_T_OUT, 0, Some(&[1; 512]), 0);
        let disc = ro.post(VIRTIO_BLK_T_DISCARD, 0, Some(&[0; 16]), 0);
        assert_eq!(ro.status(&w), VIRTIO_BLK_S_IOERR);
        assert_eq!(ro.status(&disc), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(ro.device().counters().requests, 0);

        let mut h = harness(false);
        let past = h.post(VIRTIO_BLK_T_IN, (DISK / 512) as u64 - 1, None, 1024);
        let odd = h.post(VIRTIO_BLK_T_OUT, 0, Some(&[1; 100]), 0);
        let unknown = h.post(99, 0, None, 0);
        assert_eq!(h.status(&past), VIRTIO_BLK_S_IOERR);
        assert_eq!(h.status(&odd), VIRTIO_BLK_S_IOERR);
        assert_eq!(h.status(&unknown), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(h.device().counters().requests, 0);
        assert_eq!(h.device().in_flight(), 0);
    }

    #[test]
    fn get_id_is_answered_locally() {
        let mut h = harness(false);
        let r = h.post(VIRTIO_BLK_T_GET_ID, 0, None, 20);

        assert_eq!(h.status(&r), VIRTIO_BLK_S_OK);
        assert_eq!(
            h.d.read_mem(r.data, 20),
            b"fwd-disk\0\0\0\0\0\0\0\0\0\0\0\0"
        );
        assert_eq!(h.d.last_used(0), Some((u32::from(r.head), 21)));
        assert_eq!(h.device().counters().requests, 0);
    }

    fn segment(sector: u64, sectors: u32) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&sectors.to_le_bytes());
        s
    }

    #[test]
    fn discard_becomes_zero_requests_of_every_segment() {
        let mut h = harness(false);
        let mut segs = Vec::new();
        segs.extend_from_slice(&segment(2, 3));
        segs.extend_from_slice(&segment(10, 1));

        let r = h.post(VIRTIO_BLK_T_DISCARD, 0, Some(&segs), 0);
        h.serve();

        assert_eq!(h.status(&r), VIRTIO_BLK_S_OK);
        let bytes = h.disk().mem.bytes();
        let before = pattern(DISK, 0x33);
        assert!(bytes[1024..2560].iter().all(|&b| b == 0));
        assert!(bytes[5120..5632].iter().all(|&b| b == 0));
        assert_eq!(bytes[2560..5120], before[2560..5120]);
        assert_eq!(h.disk().ops, ["zero", "zero"]);
    }

    #[test]
    fn a_large_discard_is_split_into_zero_requests_of_at_most_16_mib() {
        // A 1 GiB disk: the client needs no memory for it, only the storage VM would.
        let mut h = harness_sized(false, 1 << 30);
        let sectors = (40 << 20) / 512; // 40 MiB from 1 MiB on
        let r = h.post(VIRTIO_BLK_T_DISCARD, 0, Some(&segment(2048, sectors)), 0);
        let (req_w, resp_w) = h.region.windows();
        let mut req = SlotConsumer::attach(req_w);
        let mut resp = SlotProducer::attach(resp_w);
        let mut buf = vec![0u8; G.slot_size()];
        let mut seen = Vec::new();
        while let Pop::Record(n) = req.pop(&mut buf).unwrap() {
            assert_eq!(n, REQUEST_HEADER_LEN);
            let (op, id) = (le_u32(&buf, 4), le_u64(&buf, 8));
            seen.push((op, le_u64(&buf, 16), le_u32(&buf, 24)));
            let mut rec = vec![0u8; RESPONSE_HEADER_LEN];
            rec[..8].copy_from_slice(&id.to_le_bytes());
            resp.push(&rec).unwrap();
        }
        h.d.transport.handle_event(RESPONSE_EVENT);

        let zero = Op::Zero as u32;
        let mib = 1u64 << 20;
        assert_eq!(
            seen,
            [
                (zero, mib, MAX_ZERO_LEN),
                (zero, 17 * mib, MAX_ZERO_LEN),
                (zero, 33 * mib, 8 << 20)
            ]
        );
        assert_eq!(h.status(&r), VIRTIO_BLK_S_OK);
    }

    #[test]
    fn a_device_reset_forgets_its_requests_and_drops_their_answers() {
        let mut h = harness(false);
        let _ = h.post(VIRTIO_BLK_T_IN, 0, None, 512);
        assert_eq!(h.device().pending(), 1);
        // The driver resets the device and sets it up again.
        let features = h.d.device_features();
        assert!(h.d.negotiate(features));
        h.d.setup_queues();
        h.d.driver_ok();
        assert_eq!(h.device().pending(), 0);
        let r = h.post(VIRTIO_BLK_T_IN, 1, None, 512);
        h.serve();

        assert_eq!(h.status(&r), VIRTIO_BLK_S_OK);
        assert_eq!(h.device().counters().bad_responses, 1);
    }

    #[test]
    fn poll_interval_follows_the_timeout() {
        let mut h = harness(false);
        assert_eq!(h.device().poll_interval_ms(), Some(500));
    }
}
