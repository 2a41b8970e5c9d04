//! Block forwarding: a client VM's virtio-blk requests, terminated in its own VMM, served
//! by a storage driver VM that owns the disk (docs/driver-vms.md).
//!
//! One client and one server share one **forwarding region** holding two slot rings
//! ([`keel_core::ring::slot`]): requests (client → server) at offset 0, responses
//! (server → client) at [`ForwardGeometry::response_offset`]. The client is the VMM of the
//! client VM: its asynchronous virtio-blk device [`crate::forward_blk::ForwardBlock`] (what
//! the VMMs use), or [`ForwardClient`], the same client as a blocking [`BlockBackend`]
//! (queue depth 1, for tests and tools). It
//! copies data between its guest's buffers and the slots, so the storage VM sees bytes and
//! offsets into the client's own range, never a client guest address. The server is the
//! agent in the storage VM ([`ForwardServer`]), which serves each client from the range of
//! its disk the system description gives that client.
//!
//! # Records (little endian)
//!
//! Request, [`REQUEST_HEADER_LEN`] bytes then the data of a write:
//!
//! | offset | field |
//! |---|---|
//! | 0 | `magic` = [`REQUEST_MAGIC`] (`u32`) |
//! | 4 | `op`: [`Op`] (`u32`) |
//! | 8 | `id` (`u64`): echoed in the response |
//! | 16 | `offset` (`u64`): byte offset inside the client's range |
//! | 24 | `len` (`u32`): bytes to read / write / zero (0 for a flush) |
//! | 28 | reserved (0) |
//!
//! Response, [`RESPONSE_HEADER_LEN`] bytes then the data of a read:
//!
//! | offset | field |
//! |---|---|
//! | 0 | `id` (`u64`) |
//! | 8 | `status`: [`Status`] (`u32`) |
//! | 12 | `len` (`u32`): data bytes that follow |
//!
//! # Trust
//!
//! Neither side trusts the other. The server checks every request against the client's
//! range (an offset or length outside it is [`Status::OutOfRange`], whatever the client
//! VMM believes the disk's size to be), its read-only flag and the geometry; it serves a
//! client only while that client's response ring has room, so a client that floods or never
//! reads its responses stalls only itself. The client accepts only responses to requests
//! it has outstanding, with the length it asked for; anything else is counted and dropped,
//! and a server that does not answer within the client's timeout fails the request with an
//! I/O error (the guest sees `VIRTIO_BLK_S_IOERR`), never blocks the client VMM longer.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use keel_core::ring::RingError;
pub use keel_core::ring::forward::{
    DEFAULT_MAX_DATA, DEFAULT_SLOTS, ForwardError, ForwardGeometry, MAX_ZERO_LEN,
    REQUEST_HEADER_LEN, REQUEST_MAGIC, RESPONSE_HEADER_LEN,
};
use keel_core::ring::slot::{Pop, SlotConsumer, SlotProducer, SlotWindow};

use crate::block::{BlockBackend, BlockError};

/// An operation of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// Read `len` bytes at `offset`.
    Read = 1,
    /// Write the `len` data bytes at `offset`.
    Write = 2,
    /// Make every completed write durable on the owned device.
    Flush = 3,
    /// Make `len` bytes at `offset` read back as zeros (a discard).
    Zero = 4,
}

impl Op {
    /// The op of a request word, if it is one.
    pub fn from_u32(v: u32) -> Option<Op> {
        Some(match v {
            1 => Op::Read,
            2 => Op::Write,
            3 => Op::Flush,
            4 => Op::Zero,
            _ => return None,
        })
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Zero => "discard",
        }
    }
}

/// The status of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// The owned device failed the operation.
    IoError = 1,
    /// The request reaches outside the client's range.
    OutOfRange = 2,
    /// The request is malformed (magic, op, length, reserved word).
    BadRequest = 3,
    /// A write or discard on a read-only range.
    ReadOnly = 4,
}

impl Status {
    /// The status of a response word; unknown values are [`Status::BadRequest`]'s cousin:
    /// `None`.
    pub fn from_u32(v: u32) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::IoError,
            2 => Status::OutOfRange,
            3 => Status::BadRequest,
            4 => Status::ReadOnly,
            _ => return None,
        })
    }
}

/// A request as the server parsed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// The operation.
    pub op: Op,
    /// Echoed in the response.
    pub id: u64,
    /// Byte offset in the client's range.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
}

impl RequestHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut h = [0u8; REQUEST_HEADER_LEN];
        h[0..4].copy_from_slice(&REQUEST_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&(self.op as u32).to_le_bytes());
        h[8..16].copy_from_slice(&self.id.to_le_bytes());
        h[16..24].copy_from_slice(&self.offset.to_le_bytes());
        h[24..28].copy_from_slice(&self.len.to_le_bytes());
        h
    }
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Write a response header into `out[..RESPONSE_HEADER_LEN]`.
fn encode_response(out: &mut [u8], id: u64, status: Status, len: u32) {
    out[0..8].copy_from_slice(&id.to_le_bytes());
    out[8..12].copy_from_slice(&(status as u32).to_le_bytes());
    out[12..16].copy_from_slice(&len.to_le_bytes());
}

/// How the client VMM tells the server about requests and waits for its answer: an eventfd
/// pair on Linux, a channel on seL4.
pub trait Doorbell: Send {
    /// Tell the server that requests were published.
    fn ring(&mut self);
    /// Wait until the server signals or `timeout_ms` passes; `true` if it signalled. A
    /// spurious `true` is harmless (the client polls again).
    fn wait(&mut self, timeout_ms: u32) -> bool;
}

/// Counters of a [`ForwardClient`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed (error status, timeout, full ring).
    pub failed: u64,
    /// Waits that ran out of time.
    pub timeouts: u64,
    /// Responses dropped: stale (after a timeout), unknown ids, bad lengths.
    pub bad_responses: u64,
}

/// The client end: a [`BlockBackend`] whose storage is the client's range on a storage VM.
pub struct ForwardClient<D: Doorbell> {
    name: alloc::string::String,
    req: SlotProducer,
    resp: SlotConsumer,
    doorbell: D,
    geometry: ForwardGeometry,
    size: u64,
    read_only: bool,
    timeout_ms: u32,
    next_id: u64,
    buf: Vec<u8>,
    counters: ClientCounters,
}

/// One piece of an operation in flight: its id, and where its data goes in the caller's
/// buffer.
#[derive(Clone, Copy, Debug)]
struct Piece {
    id: u64,
    at: usize,
    len: usize,
    done: bool,
}

impl<D: Doorbell> ForwardClient<D> {
    /// The client of the region whose rings are `windows` (from
    /// [`ForwardGeometry::windows`]), for a disk of `size` bytes (`read_only` as declared),
    /// served by `name` (for messages). Requests left by a previous client (a VMM that was
    /// restarted, a VM rebooted in place) are not answered to this one: responses already
    /// in the ring are skipped, and later ones are matched by id: ids start at `first_id`,
    /// which must be beyond every id an earlier client of this region used (on Linux, the
    /// wall clock in nanoseconds: it advances faster than any client sends requests).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<alloc::string::String>,
        windows: (SlotWindow, SlotWindow),
        geometry: ForwardGeometry,
        doorbell: D,
        size: u64,
        read_only: bool,
        timeout_ms: u32,
        first_id: u64,
    ) -> ForwardClient<D> {
        let (req, resp) = windows;
        let mut resp = SlotConsumer::attach(resp);
        // Responses to a previous client VMM's requests are not ours.
        let _ = resp.skip_to_head();
        ForwardClient {
            name: name.into(),
            req: SlotProducer::attach(req),
            resp,
            doorbell,
            geometry,
            size,
            read_only,
            timeout_ms,
            next_id: first_id,
            buf: vec![0; geometry.slot_size()],
            counters: ClientCounters::default(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> ClientCounters {
        self.counters
    }

    fn io_error(&mut self, op: Op, offset: u64, message: alloc::string::String) -> BlockError {
        self.counters.failed += 1;
        BlockError::Io {
            op: op.name(),
            offset,
            message,
        }
    }

    fn check_range(&self, op: Op, offset: u64, len: u64) -> Result<(), BlockError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(BlockError::OutOfRange {
                op: op.name(),
                offset,
                len,
                size: self.size,
            });
        }
        if self.read_only && matches!(op, Op::Write | Op::Zero) {
            return Err(BlockError::ReadOnly { op: op.name() });
        }
        Ok(())
    }

    /// Run `op` over `[offset, offset + total)`, split into pieces of at most `piece` bytes,
    /// at most `slots` of them in flight; `data` is the caller's buffer (written into for a
    /// read, sent for a write, unused otherwise).
    fn run(
        &mut self,
        op: Op,
        offset: u64,
        total: usize,
        piece: usize,
        mut data: Data<'_>,
    ) -> Result<(), BlockError> {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut at = 0usize;
        loop {
            // Stage as many pieces as the ring has room for (one for a flush).
            pieces.clear();
            while (at < total || (total == 0 && pieces.is_empty()))
                && (pieces.len() as u64) < self.geometry.slots
            {
                let len = piece.min(total - at);
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                let header = RequestHeader {
                    op,
                    id,
                    offset: offset + at as u64,
                    len: len as u32,
                };
                let rec_len = REQUEST_HEADER_LEN + if op == Op::Write { len } else { 0 };
                self.buf[..REQUEST_HEADER_LEN].copy_from_slice(&header.encode());
                if let Data::Out(src) = &data {
                    if op == Op::Write {
                        self.buf[REQUEST_HEADER_LEN..rec_len].copy_from_slice(&src[at..at + len]);
                    }
                }
                match self.req.stage(&self.buf[..rec_len]) {
                    Ok(true) => {}
                    Ok(false) | Err(_) => {
                        // Publish what is staged: the server answers those, and ids tell
                        // stale answers apart later.
                        if self.req.publish() {
                            self.doorbell.ring();
                        }
                        let name = self.name.clone();
                        return Err(self.io_error(
                            op,
                            header.offset,
                            format!(
                                "storage VM {name:?} is not taking requests (its request ring is full)"
                            ),
                        ));
                    }
                }
                self.counters.requests += 1;
                pieces.push(Piece {
                    id,
                    at,
                    len,
                    done: false,
                });
                at += len;
                if total == 0 {
                    break;
                }
            }
            if self.req.publish() {
                self.doorbell.ring();
            }
            self.collect(op, offset, &mut pieces, &mut data)?;
            if at >= total {
                return Ok(());
            }
        }
    }

    /// Wait for the responses of `pieces`.
    fn collect(
        &mut self,
        op: Op,
        offset: u64,
        pieces: &mut [Piece],
        data: &mut Data<'_>,
    ) -> Result<(), BlockError> {
        let first = pieces.first().map_or(0, |p| p.id);
        let mut left = pieces.len();
        let mut failure: Option<BlockError> = None;
        while left > 0 {
            let got = match self.resp.pop(&mut self.buf) {
                Ok(g) => g,
                Err(e) => {
                    let name = self.name.clone();
                    return Err(self.io_error(
                        op,
                        offset,
                        format!("storage VM {name:?}: response ring: {e}"),
                    ));
                }
            };
            let n = match got {
                Pop::Record(n) => n,
                Pop::BadLength { .. } => {
                    self.counters.bad_responses += 1;
                    continue;
                }
                Pop::Empty => {
                    match self.resp.arm_wakeup() {
                        Ok(true) => {
                            let woke = self.doorbell.wait(self.timeout_ms);
                            self.resp.disarm();
                            if !woke && self.resp.avail().unwrap_or(0) == 0 {
                                self.counters.timeouts += 1;
                                let (name, ms) = (self.name.clone(), self.timeout_ms);
                                return Err(self.io_error(
                                    op,
                                    offset,
                                    format!("storage VM {name:?} did not answer within {ms} ms"),
                                ));
                            }
                        }
                        Ok(false) => {}
                        Err(_) => {}
                    }
                    continue;
                }
            };
            if n < RESPONSE_HEADER_LEN {
                self.counters.bad_responses += 1;
                continue;
            }
            let id = le_u64(&self.buf, 0);
            let status = le_u32(&self.buf, 8);
            let len = le_u32(&self.buf, 12) as usize;
            let index = id.wrapping_sub(first);
            let Some(p) = usize::try_from(index)
                .ok()
                .and_then(|i| pieces.get_mut(i))
                .filter(|p| !p.done)
            else {
                // Stale (a timed-out request's late answer) or never asked for.
                self.counters.bad_responses += 1;
                continue;
            };
            let want = if op == Op::Read && status == Status::Ok as u32 {
                p.len
            } else {
                0
            };
            if len != want || n != RESPONSE_HEADER_LEN + want {
                self.counters.bad_responses += 1;
                continue;
            }
            p.done = true;
            left -= 1;
            let piece_offset = offset + p.at as u64;
            match Status::from_u32(status) {
                Some(Status::Ok) => {
                    if let Data::In(dst) = data {
                        dst[p.at..p.at + p.len].copy_from_slice(
                            &self.buf[RESPONSE_HEADER_LEN..RESPONSE_HEADER_LEN + p.len],
                        );
                    }
                }
                other => {
                    let name = self.name.clone();
                    let why = match other {
                        Some(Status::OutOfRange) => "outside this client's range",
                        Some(Status::ReadOnly) => "this client's range is read-only",
                        Some(Status::BadRequest) => "malformed request",
                        Some(Status::IoError) => "the device failed",
                        _ => "unknown status",
                    };
                    let e = self.io_error(
                        op,
                        piece_offset,
                        format!("storage VM {name:?} refused it: {why} (status {status})"),
                    );
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// The caller's buffer of an operation.
enum Data<'a> {
    In(&'a mut [u8]),
    Out(&'a [u8]),
    None,
}

impl<D: Doorbell> BlockBackend for ForwardClient<D> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_range(Op::Read, offset, buf.len() as u64)?;
        let (total, piece) = (buf.len(), self.geometry.max_data);
        self.run(Op::Read, offset, total, piece, Data::In(buf))
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        self.check_range(Op::Write, offset, data.len() as u64)?;
        let (total, piece) = (data.len(), self.geometry.max_data);
        self.run(Op::Write, offset, total, piece, Data::Out(data))
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.run(Op::Flush, 0, 0, 0, Data::None)
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_range(Op::Zero, offset, len)?;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(u64::from(MAX_ZERO_LEN) * self.geometry.slots);
            self.run(
                Op::Zero,
                offset + done,
                n as usize,
                MAX_ZERO_LEN as usize,
                Data::None,
            )?;
            done += n;
        }
        Ok(())
    }
}

impl<D: Doorbell> core::fmt::Debug for ForwardClient<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ForwardClient")
            .field("server", &self.name)
            .field("geometry", &self.geometry)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// A client's range of the server's disk, as the system description gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRange {
    /// First byte of the range on the owned device.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// Writes and discards are refused.
    pub read_only: bool,
}

/// Counters of a [`ForwardServer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Requests answered `Ok`.
    pub ok: u64,
    /// Requests answered with an error status.
    pub refused: u64,
    /// Records dropped unanswered (too short to carry an id, or a bad slot length).
    pub dropped: u64,
}

/// What one [`ForwardServer::serve`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests taken from the ring.
    pub requests: usize,
    /// The client asked to be told about the responses: signal it.
    pub notify: bool,
    /// The server stopped with requests left because the client's response ring is full
    /// (or the budget ran out): serve again.
    pub more: bool,
}

/// The server end, in the storage VM: serves one client's requests from its range of
/// `disk`.
pub struct ForwardServer<B: BlockBackend> {
    req: SlotConsumer,
    resp: SlotProducer,
    disk: B,
    range: ClientRange,
    geometry: ForwardGeometry,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    counters: ServerCounters,
}

impl<B: BlockBackend> core::fmt::Debug for ForwardServer<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ForwardServer")
            .field("range", &self.range)
            .field("geometry", &self.geometry)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<B: BlockBackend> ForwardServer<B> {
    /// The server of the region whose rings are `windows`, for the client confined to
    /// `range` of `disk`. Requests a previous server left unanswered are skipped (their
    /// client has timed out on them). Fails if `range` does not fit `disk`.
    pub fn new(
        windows: (SlotWindow, SlotWindow),
        geometry: ForwardGeometry,
        disk: B,
        range: ClientRange,
    ) -> Result<ForwardServer<B>, BlockError> {
        if range
            .start
            .checked_add(range.size)
            .is_none_or(|e| e > disk.size())
        {
            return Err(BlockError::OutOfRange {
                op: "serve",
                offset: range.start,
                len: range.size,
                size: disk.size(),
            });
        }
        let (req, resp) = windows;
        let mut req = SlotConsumer::attach(req);
        let _ = req.skip_to_head();
        Ok(ForwardServer {
            req,
            resp: SlotProducer::attach(resp),
            disk,
            range,
            geometry,
            inbuf: vec![0; geometry.slot_size()],
            outbuf: vec![0; geometry.slot_size()],
            counters: ServerCounters::default(),
        })
    }

    /// The counters.
    pub fn counters(&self) -> ServerCounters {
        self.counters
    }

    /// The disk.
    pub fn disk(&self) -> &B {
        &self.disk
    }

    /// Serve at most `budget` requests, each only while the response ring has a free
    /// slot. Returns what was done; a broken request ring (wild producer index) is an
    /// error: the client is served no more until it is attached again.
    pub fn serve(&mut self, budget: usize) -> Result<Served, RingError> {
        let mut s = Served::default();
        while s.requests < budget {
            if self.resp.pending().unwrap_or(self.geometry.slots) >= self.geometry.slots {
                s.more = self.req.avail()? > 0;
                break;
            }
            let n = match self.req.pop(&mut self.inbuf)? {
                Pop::Empty => break,
                Pop::BadLength { .. } => {
                    s.requests += 1;
                    self.counters.dropped += 1;
                    continue;
                }
                Pop::Record(n) => n,
            };
            s.requests += 1;
            if n < 16 {
                self.counters.dropped += 1;
                continue;
            }
            let id = le_u64(&self.inbuf, 8);
            let (status, out_len) = self.handle(n);
            if status == Status::Ok {
                self.counters.ok += 1;
            } else {
                self.counters.refused += 1;
            }
            encode_response(&mut self.outbuf, id, status, out_len as u32);
            // Room was checked above; a wild consumer index drops the record (counted by
            // the producer) and the client times out.
            let _ = self
                .resp
                .stage(&self.outbuf[..RESPONSE_HEADER_LEN + out_len]);
        }
        if s.requests == budget && self.req.avail().unwrap_or(0) > 0 {
            s.more = true;
        }
        s.notify = self.resp.publish();
        Ok(s)
    }

    /// Whether the request ring is empty after asking the client for a notification
    /// (`true`: sleep until notified, then call [`ForwardServer::woken`]).
    pub fn arm_wakeup(&mut self) -> Result<bool, RingError> {
        self.req.arm_wakeup()
    }

    /// Withdraw the request for a notification (woken).
    pub fn woken(&mut self) {
        self.req.disarm();
    }

    /// Handle the request in `inbuf[..n]`: its status, and the data bytes put in
    /// `outbuf[RESPONSE_HEADER_LEN..]`.
    fn handle(&mut self, n: usize) -> (Status, usize) {
        if n < REQUEST_HEADER_LEN
            || le_u32(&self.inbuf, 0) != REQUEST_MAGIC
            || le_u32(&self.inbuf, 28) != 0
        {
            return (Status::BadRequest, 0);
        }
        let Some(op) = Op::from_u32(le_u32(&self.inbuf, 4)) else {
            return (Status::BadRequest, 0);
        };
        let offset = le_u64(&self.inbuf, 16);
        let len = le_u32(&self.inbuf, 24);
        let data_len = n - REQUEST_HEADER_LEN;
        let well_formed = match op {
            Op::Read => data_len == 0 && len as usize <= self.geometry.max_data && len > 0,
            Op::Write => data_len == len as usize && len > 0,
            Op::Flush => data_len == 0 && len == 0 && offset == 0,
            Op::Zero => data_len == 0 && len > 0 && len <= MAX_ZERO_LEN,
        };
        if !well_formed {
            return (Status::BadRequest, 0);
        }
        if op != Op::Flush
            && offset
                .checked_add(u64::from(len))
                .is_none_or(|end| end > self.range.size)
        {
            return (Status::OutOfRange, 0);
        }
        if self.range.read_only && matches!(op, Op::Write | Op::Zero) {
            return (Status::ReadOnly, 0);
        }
        let at = self.range.start + offset;
        let result = match op {
            Op::Read => {
                let out = &mut self.outbuf[RESPONSE_HEADER_LEN..RESPONSE_HEADER_LEN + len as usize];
                self.disk.read_at(at, out).map(|()| len as usize)
            }
            Op::Write => self
                .disk
                .write_at(at, &self.inbuf[REQUEST_HEADER_LEN..n])
                .map(|()| 0),
            Op::Flush => self.disk.flush().map(|()| 0),
            Op::Zero => self.disk.discard(at, u64::from(len)).map(|()| 0),
        };
        match result {
            Ok(out) => (Status::Ok, out),
            Err(BlockError::ReadOnly { .. }) => (Status::ReadOnly, 0),
            Err(BlockError::OutOfRange { .. }) => (Status::OutOfRange, 0),
            Err(BlockError::Io { .. }) => (Status::IoError, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemoryBackend;
    use alloc::string::ToString;
    use alloc::sync::Arc;
    use spin::Mutex;

    /// A small geometry: 4 slots of 1 KiB.
    const G: ForwardGeometry = ForwardGeometry {
        slots: 4,
        max_data: 1024,
    };

    /// A forwarding region in test memory (8-aligned).
    struct Region(Vec<u64>);

    impl Region {
        fn new(g: ForwardGeometry) -> Region {
            Region(vec![0; g.region_len() / 8])
        }
        fn windows(&mut self, g: ForwardGeometry) -> (SlotWindow, SlotWindow) {
            let len = self.0.len() * 8;
            // SAFETY: the vector outlives every window of a test (each test keeps the
            // region until its end), is 8-aligned and reached only through the windows.
            unsafe { g.windows(self.0.as_mut_ptr().cast(), len) }.unwrap()
        }
    }

    /// A disk shared by several servers (each owns a handle), counting flushes.
    #[derive(Clone)]
    struct SharedDisk(Arc<Mutex<(MemoryBackend<Vec<u8>>, u32)>>);

    impl SharedDisk {
        fn new(size: usize) -> SharedDisk {
            SharedDisk(Arc::new(Mutex::new((MemoryBackend::new(vec![0; size]), 0))))
        }
        fn bytes(&self, at: usize, len: usize) -> Vec<u8> {
            self.0.lock().0.bytes()[at..at + len].to_vec()
        }
        fn flushes(&self) -> u32 {
            self.0.lock().1
        }
    }

    impl BlockBackend for SharedDisk {
        fn size(&self) -> u64 {
            self.0.lock().0.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.0.lock().0.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
            self.0.lock().0.write_at(offset, data)
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            self.0.lock().1 += 1;
            Ok(())
        }
        fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
            self.0.lock().0.discard(offset, len)
        }
    }

    type Server = Arc<Mutex<ForwardServer<SharedDisk>>>;

    /// A doorbell whose `wait` runs the server (or not): the storage VM in one thread.
    struct Bell {
        server: Option<Server>,
        rings: u32,
    }

    impl Doorbell for Bell {
        fn ring(&mut self) {
            self.rings += 1;
        }
        fn wait(&mut self, _timeout_ms: u32) -> bool {
            match &self.server {
                Some(s) => {
                    s.lock().serve(usize::MAX).unwrap();
                    true
                }
                None => false,
            }
        }
    }

    fn range(start: u64, size: u64) -> ClientRange {
        ClientRange {
            start,
            size,
            read_only: false,
        }
    }

    /// A client and its server on `disk`, confined to `r`.
    fn pair(
        region: &mut Region,
        disk: &SharedDisk,
        r: ClientRange,
    ) -> (ForwardClient<Bell>, Server) {
        let server = Arc::new(Mutex::new(
            ForwardServer::new(region.windows(G), G, disk.clone(), r).unwrap(),
        ));
        let bell = Bell {
            server: Some(server.clone()),
            rings: 0,
        };
        let client = ForwardClient::new(
            "store",
            region.windows(G),
            G,
            bell,
            r.size,
            r.read_only,
            100,
            1,
        );
        (client, server)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    #[test]
    fn write_then_read_round_trips_through_the_server_in_pieces() {
        let disk = SharedDisk::new(64 * 1024);
        let mut region = Region::new(G);
        let (mut client, _server) = pair(&mut region, &disk, range(0, 64 * 1024));
        // 10 KiB: 10 pieces of 1 KiB, more than the 4 slots: three batches.
        let data = pattern(10 * 1024 + 512, 1);

        client.write_at(4096, &data).unwrap();
        let mut back = vec![0; data.len()];
        client.read_at(4096, &mut back).unwrap();

        assert_eq!(back, data);
        assert_eq!(disk.bytes(4096, data.len()), data);
        assert_eq!(client.counters().requests, 2 * 11);
        assert_eq!(client.counters().failed, 0);
    }

    #[test]
    fn each_client_lands_in_its_own_range_and_never_in_another() {
        let disk = SharedDisk::new(16 * 1024);
        let (mut ra, mut rb) = (Region::new(G), Region::new(G));
        let (mut a, _sa) = pair(&mut ra, &disk, range(0, 8192));
        let (mut b, _sb) = pair(&mut rb, &disk, range(8192, 8192));

        a.write_at(0, &pattern(8192, 0xa)).unwrap();
        b.write_at(0, &pattern(8192, 0xb)).unwrap();
        let beyond = b.write_at(8192, &[1; 512]);

        assert_eq!(disk.bytes(0, 8192), pattern(8192, 0xa));
        assert_eq!(disk.bytes(8192, 8192), pattern(8192, 0xb));
        assert!(
            matches!(beyond, Err(BlockError::OutOfRange { .. })),
            "{beyond:?}"
        );
    }

    /// Push a raw request record as a hostile client VMM would, serve it, and return the
    /// response's (id, status, data length) if there is one.
    fn raw(region: &mut Region, server: &Server, rec: &[u8]) -> Option<(u64, u32, u32)> {
        let (req, resp) = region.windows(G);
        let mut p = SlotProducer::attach(req);
        let mut c = SlotConsumer::attach(resp);
        p.push(rec).unwrap();
        server.lock().serve(16).unwrap();
        let mut buf = vec![0; G.slot_size()];
        match c.pop(&mut buf).unwrap() {
            Pop::Record(n) => {
                assert!(n >= RESPONSE_HEADER_LEN);
                Some((le_u64(&buf, 0), le_u32(&buf, 8), le_u32(&buf, 12)))
            }
            Pop::Empty => None,
            Pop::BadLength { len } => panic!("bad response length {len}"),
        }
    }

    fn request(op: u32, id: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut h = RequestHeader {
            op: Op::Read,
            id,
            offset,
            len,
        }
        .encode()
        .to_vec();
        h[4..8].copy_from_slice(&op.to_le_bytes());
        h
    }

    #[test]
    fn server_refuses_what_reaches_outside_the_clients_range_whatever_the_client_vmm_says() {
        let disk = SharedDisk::new(16 * 1024);
        disk.0.lock().0.write_at(8192, &[0x55; 512]).unwrap();
        let mut region = Region::new(G);
        let (_client, server) = pair(&mut region, &disk, range(0, 8192));

        let past_end = raw(&mut region, &server, &request(1, 7, 8192, 512));
        let straddling = raw(&mut region, &server, &request(1, 8, 8191 - 511, 1024));
        let wrapping = raw(&mut region, &server, &request(1, 9, u64::MAX - 100, 512));
        let mut write = request(2, 10, 8192, 512);
        write.extend_from_slice(&[0xee; 512]);
        let write_past = raw(&mut region, &server, &write);

        let out = Status::OutOfRange as u32;
        assert_eq!(past_end, Some((7, out, 0)));
        assert_eq!(straddling, Some((8, out, 0)));
        assert_eq!(wrapping, Some((9, out, 0)));
        assert_eq!(write_past, Some((10, out, 0)));
        assert_eq!(disk.bytes(8192, 512), [0x55; 512]);
    }

    #[test]
    fn malformed_requests_get_bad_request_and_the_next_good_one_is_served() {
        let disk = SharedDisk::new(8192);
        let mut region = Region::new(G);
        let (_client, server) = pair(&mut region, &disk, range(0, 8192));
        let bad = Status::BadRequest as u32;

        let mut magic = request(1, 1, 0, 512);
        magic[0] ^= 1;
        let mut reserved = request(1, 2, 0, 512);
        reserved[28] = 1;
        let mut short_write = request(2, 5, 0, 512);
        short_write.extend_from_slice(&[0; 100]);
        let mut read_with_data = request(1, 6, 0, 512);
        read_with_data.push(0);

        assert_eq!(raw(&mut region, &server, &magic), Some((1, bad, 0)));
        assert_eq!(raw(&mut region, &server, &reserved), Some((2, bad, 0)));
        assert_eq!(
            raw(&mut region, &server, &request(9, 3, 0, 512)),
            Some((3, bad, 0))
        );
        assert_eq!(
            raw(&mut region, &server, &request(1, 4, 0, 4096)),
            Some((4, bad, 0))
        );
        assert_eq!(raw(&mut region, &server, &short_write), Some((5, bad, 0)));
        assert_eq!(
            raw(&mut region, &server, &read_with_data),
            Some((6, bad, 0))
        );
        assert_eq!(
            raw(&mut region, &server, &request(3, 7, 8, 0)),
            Some((7, bad, 0))
        );
        assert_eq!(
            raw(&mut region, &server, &request(1, 8, 0, 0)),
            Some((8, bad, 0))
        );
        // Too short to carry an id: dropped unanswered.
        assert_eq!(raw(&mut region, &server, &[1, 2, 3]), None);
        assert_eq!(
            raw(&mut region, &server, &request(1, 9, 0, 512)),
            Some((9, Status::Ok as u32, 512))
        );
        assert_eq!(server.lock().counters().dropped, 1);
        assert_eq!(server.lock().counters().refused, 8);
    }

    #[test]
    fn flush_reaches_the_owned_device() {
        let disk = SharedDisk::new(8192);
        let mut region = Region::new(G);
        let (mut client, _server) = pair(&mut region, &disk, range(0, 8192));

        client.write_at(0, &[1; 512]).unwrap();
        client.flush().unwrap();

        assert_eq!(disk.flushes(), 1);
    }

    #[test]
    fn discard_zeroes_only_the_clients_bytes() {
        let disk = SharedDisk::new(16384);
        disk.0.lock().0.write_at(0, &[0xff; 16384]).unwrap();
        let mut region = Region::new(G);
        let (mut client, _server) = pair(&mut region, &disk, range(4096, 8192));

        client.discard(0, 8192).unwrap();

        assert_eq!(disk.bytes(4096, 8192), vec![0; 8192]);
        assert_eq!(disk.bytes(0, 4096), vec![0xff; 4096]);
        assert_eq!(disk.bytes(12288, 4096), vec![0xff; 4096]);
    }

    #[test]
    fn read_only_range_refuses_writes_at_the_server_too() {
        let disk = SharedDisk::new(8192);
        let mut region = Region::new(G);
        let r = ClientRange {
            read_only: true,
            ..range(0, 8192)
        };
        let (_client, server) = pair(&mut region, &disk, r);
        let mut write = request(2, 3, 0, 512);
        write.extend_from_slice(&[9; 512]);

        assert_eq!(
            raw(&mut region, &server, &write),
            Some((3, Status::ReadOnly as u32, 0))
        );
        assert_eq!(
            raw(&mut region, &server, &request(4, 4, 0, 512)).unwrap().1,
            Status::ReadOnly as u32
        );
        assert_eq!(disk.bytes(0, 512), [0; 512]);
    }

    #[test]
    fn silent_server_fails_the_request_with_an_io_error_within_the_timeout() {
        let disk = SharedDisk::new(8192);
        let mut region = Region::new(G);
        let _server =
            ForwardServer::new(region.windows(G), G, disk.clone(), range(0, 8192)).unwrap();
        let bell = Bell {
            server: None,
            rings: 0,
        };
        let mut client =
            ForwardClient::new("store", region.windows(G), G, bell, 8192, false, 50, 1);

        let got = client.read_at(0, &mut [0; 512]);

        let Err(BlockError::Io { message, .. }) = got else {
            panic!("{got:?}")
        };
        assert!(
            message.contains("\"store\" did not answer within 50 ms"),
            "{message}"
        );
        assert_eq!(client.counters().timeouts, 1);
    }

    #[test]
    fn late_answers_to_timed_out_requests_are_dropped_and_the_next_request_is_right() {
        let disk = SharedDisk::new(8192);
        disk.0.lock().0.write_at(0, &pattern(1024, 3)).unwrap();
        let mut region = Region::new(G);
        let server = Arc::new(Mutex::new(
            ForwardServer::new(region.windows(G), G, disk.clone(), range(0, 8192)).unwrap(),
        ));
        let bell = Bell {
            server: None,
            rings: 0,
        };
        let mut client =
            ForwardClient::new("store", region.windows(G), G, bell, 8192, false, 10, 1);
        assert!(client.read_at(512, &mut [0; 512]).is_err());
        // The storage VM wakes up and answers the old request; then it serves again.
        server.lock().serve(16).unwrap();
        client.doorbell.server = Some(server.clone());

        let mut buf = vec![0; 512];
        client.read_at(0, &mut buf).unwrap();

        assert_eq!(buf, pattern(1024, 3)[..512]);
        assert_eq!(client.counters().bad_responses, 1);
    }

    #[test]
    fn a_restarted_client_never_takes_an_answer_meant_for_its_predecessor() {
        let disk = SharedDisk::new(8192);
        disk.0.lock().0.write_at(0, &[0xaa; 512]).unwrap();
        disk.0.lock().0.write_at(512, &[0xbb; 512]).unwrap();
        let mut region = Region::new(G);
        let server = Arc::new(Mutex::new(
            ForwardServer::new(region.windows(G), G, disk.clone(), range(0, 8192)).unwrap(),
        ));
        let silent = || Bell {
            server: None,
            rings: 0,
        };
        // The old client asks for sector 0 and dies before the answer.
        let mut old = ForwardClient::new(
            "store",
            region.windows(G),
            G,
            silent(),
            8192,
            false,
            1,
            1000,
        );
        assert!(old.read_at(0, &mut [0; 512]).is_err());
        // The new client starts later (a larger first id); the old answer arrives meanwhile.
        let mut new = ForwardClient::new(
            "store",
            region.windows(G),
            G,
            silent(),
            8192,
            false,
            100,
            2000,
        );
        server.lock().serve(16).unwrap();
        new.doorbell.server = Some(server.clone());

        let mut buf = vec![0; 512];
        new.read_at(512, &mut buf).unwrap();

        assert_eq!(buf, [0xbb; 512]);
        assert_eq!(new.counters().bad_responses, 1);
    }

    #[test]
    fn flooding_client_stalls_only_itself_when_it_does_not_read_responses() {
        let disk = SharedDisk::new(8192);
        let mut region = Region::new(G);
        let (_client, server) = pair(&mut region, &disk, range(0, 8192));
        let (req, _resp) = region.windows(G);
        let mut p = SlotProducer::attach(req);
        for id in 0..G.slots {
            p.push(&request(1, id, 0, 512)).unwrap();
        }
        let first = server.lock().serve(usize::MAX).unwrap();
        for id in 0..G.slots {
            p.push(&request(1, 100 + id, 0, 512)).unwrap();
        }

        let second = server.lock().serve(usize::MAX).unwrap();

        assert_eq!(first.requests, G.slots as usize);
        assert_eq!(second.requests, 0);
        assert!(second.more);
    }

    #[test]
    fn a_restarted_server_skips_requests_left_by_the_old_one() {
        let disk = SharedDisk::new(8192);
        let mut region = Region::new(G);
        let (req, _resp) = region.windows(G);
        let mut p = SlotProducer::attach(req);
        let mut write = request(2, 1, 0, 512);
        write.extend_from_slice(&[7; 512]);
        p.push(&write).unwrap();

        let mut server =
            ForwardServer::new(region.windows(G), G, disk.clone(), range(0, 8192)).unwrap();
        let served = server.serve(16).unwrap();

        assert_eq!(served.requests, 0);
        assert_eq!(disk.bytes(0, 512), [0; 512]);
    }

    #[test]
    fn geometry_is_checked_and_the_region_holds_both_rings() {
        assert!(ForwardGeometry::DEFAULT.check().is_ok());
        assert!(ForwardGeometry { slots: 3, ..G }.check().is_err());
        assert!(
            ForwardGeometry {
                max_data: 1000,
                ..G
            }
            .check()
            .is_err()
        );
        let g = ForwardGeometry::DEFAULT;
        assert!(g.response_offset() >= g.window_len());
        assert_eq!(g.region_len() % 4096, 0);
        let mut small = Region(vec![0; 8]);
        // SAFETY: the vector is 64 bytes long; `windows` refuses it before touching it.
        let e = unsafe { g.windows(small.0.as_mut_ptr().cast(), 64) }.unwrap_err();
        assert!(
            matches!(e, ForwardError::RegionTooShort { len: 64, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("too short"));
    }
}
