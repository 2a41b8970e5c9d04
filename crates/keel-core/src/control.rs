//! The portable VM control protocol: a control VM asks the admin to start, stop, restart a
//! VM or report its state, through a pair of rings in one page of memory it shares with
//! the admin (on seL4: the admin protection domain).
//!
//! Layout of the shared page (64-bit little-endian words, [`WINDOW_WORDS`] of them):
//!
//! | word | what | written by |
//! |---|---|---|
//! | 0 | [`MAGIC`] | the server, at attach |
//! | 1 | request head (requests submitted) | the client |
//! | 2 | request tail (requests taken) | the server |
//! | 3 | response head (responses written) | the server |
//! | 4 | response tail (responses read) | the client |
//! | 8.. | [`SLOTS`] requests of 2 words: `op | target << 32`, `seq` | the client |
//! | 8 + 2·SLOTS.. | [`SLOTS`] responses of 2 words: `seq`, `status | state << 32` | the server |
//!
//! Indices are free-running counters; slot = index mod [`SLOTS`]. The server (the admin)
//! trusts nothing the client wrote: it keeps its own copies of the indices it owns (what
//! the client writes over them is ignored and overwritten), refuses a request head more than
//! [`SLOTS`] ahead of its tail or behind it and a response tail that claims more than
//! [`SLOTS`] unread responses ([`ControlError`]: the admin stops serving that ring), answers
//! a bad op code, a target index out of range or a request without the right with an error
//! status, never overwrites an unread response (a client that reads none gets no more
//! served), and takes at most a budget of requests per call (a flood waits its turn).

use core::sync::atomic::{AtomicU64, Ordering};

/// Word 0 of an attached control page: `KEELCTL` and version 1.
pub const MAGIC: u64 = 0x4B45_454C_4354_4C01;
/// Request and response slots.
pub const SLOTS: u64 = 32;
/// Words of the control page the protocol uses (the rest of a 4 KiB page is unused).
pub const WINDOW_WORDS: usize = 8 + 4 * SLOTS as usize;
/// Bytes of the control page the protocol uses.
pub const WINDOW_BYTES: usize = WINDOW_WORDS * 8;

const W_MAGIC: usize = 0;
const W_REQ_HEAD: usize = 1;
const W_REQ_TAIL: usize = 2;
const W_RESP_HEAD: usize = 3;
const W_RESP_TAIL: usize = 4;
const W_REQS: usize = 8;
const W_RESPS: usize = W_REQS + 2 * SLOTS as usize;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// Start the target VM (from stopped: a pool slot, or a VM stopped before).
    Start = 1,
    /// Stop the target VM (its VMM and vCPUs no longer run).
    Stop = 2,
    /// Stop and start the target VM again (its guest boots anew).
    Restart = 3,
    /// Report the target's state only.
    Status = 4,
}

impl Op {
    /// The op of code `code`, if any.
    pub const fn from_code(code: u32) -> Option<Op> {
        match code {
            1 => Some(Op::Start),
            2 => Some(Op::Stop),
            3 => Some(Op::Restart),
            4 => Some(Op::Status),
            _ => None,
        }
    }

    /// The right a request with this op needs ([`Rights`]).
    pub const fn right(self) -> Rights {
        match self {
            Op::Start => Rights::START,
            Op::Stop => Rights::STOP,
            Op::Restart => Rights::RESTART,
            Op::Status => Rights::STATUS,
        }
    }
}

/// The rights a control VM holds over one target VM (a bit set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights(pub u32);

impl Rights {
    /// No right.
    pub const NONE: Rights = Rights(0);
    /// `start`.
    pub const START: Rights = Rights(1);
    /// `stop`.
    pub const STOP: Rights = Rights(2);
    /// `restart`.
    pub const RESTART: Rights = Rights(4);
    /// `status`.
    pub const STATUS: Rights = Rights(8);
    /// Every right, with the names the description uses.
    pub const NAMED: [(&'static str, Rights); 4] = [
        ("start", Rights::START),
        ("stop", Rights::STOP),
        ("restart", Rights::RESTART),
        ("status", Rights::STATUS),
    ];

    /// The right named `name` (`start`, `stop`, `restart`, `status`).
    pub fn from_name(name: &str) -> Option<Rights> {
        Rights::NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
    }

    /// Both sets.
    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    /// Whether every right of `other` is in this set.
    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The outcome of a request (the response's status word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Done (or, for `status`, reported).
    Ok = 0,
    /// The op code is none of [`Op`]'s.
    UnknownOp = 1,
    /// The target index names no VM of the system.
    BadTarget = 2,
    /// The control VM lacks the right for this op on this target.
    Denied = 3,
    /// The admin tried and failed (the kernel refused, the VM cannot be started).
    Failed = 4,
    /// Not possible in the target's state (e.g. start of a running VM).
    Conflict = 5,
}

impl Status {
    /// The status of code `code` (an unknown code reads as `Failed`).
    pub const fn from_code(code: u32) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::UnknownOp,
            2 => Status::BadTarget,
            3 => Status::Denied,
            5 => Status::Conflict,
            _ => Status::Failed,
        }
    }
}

/// A target VM's state as the admin reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum TargetState {
    /// Not known (the request failed before the target was looked at).
    Unknown = 0,
    /// Running.
    Running = 1,
    /// Stopped (never started, stopped on request, or left stopped after a fault).
    Stopped = 2,
}

impl TargetState {
    /// The state of code `code` (an unknown code reads as `Unknown`).
    pub const fn from_code(code: u32) -> TargetState {
        match code {
            1 => TargetState::Running,
            2 => TargetState::Stopped,
            _ => TargetState::Unknown,
        }
    }
}

/// One request as the client writes it. `op` is a raw code: the server checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// [`Op`] code.
    pub op: u32,
    /// Index of the target VM in the system.
    pub target: u32,
    /// The client's sequence number, echoed in the response.
    pub seq: u64,
}

/// One response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The request's `seq`.
    pub seq: u64,
    /// The outcome.
    pub status: Status,
    /// The target's state after the request.
    pub state: TargetState,
}

/// The shared page, as 64-bit words.
pub trait ControlMemory {
    /// Word `i` (`i < WINDOW_WORDS`).
    fn load(&self, i: usize) -> u64;
    /// Set word `i` (`i < WINDOW_WORDS`).
    fn store(&self, i: usize, v: u64);
}

/// A control page in memory shared with another party.
#[derive(Debug)]
pub struct ControlWindow {
    base: *const AtomicU64,
}

impl ControlWindow {
    /// The page at `base`.
    ///
    /// # Safety
    ///
    /// `base` is 8-byte aligned and `[base, base + WINDOW_BYTES)` stays mapped readable and
    /// writable while the window lives; no Rust reference points into it; the other party
    /// may write any bytes there at any time.
    pub unsafe fn new(base: *mut u8) -> ControlWindow {
        ControlWindow {
            base: base.cast::<AtomicU64>().cast_const(),
        }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        let i = i.min(WINDOW_WORDS - 1);
        // SAFETY: `new`'s contract: the window's words are mapped and aligned, accessed
        // only atomically here; `i` is clamped inside the window.
        unsafe { &*self.base.add(i) }
    }
}

impl ControlMemory for ControlWindow {
    fn load(&self, i: usize) -> u64 {
        self.word(i).load(Ordering::Acquire)
    }
    fn store(&self, i: usize, v: u64) {
        self.word(i).store(v, Ordering::Release);
    }
}

/// A ring the server stopped serving: the client's indices are not consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request head is more than [`SLOTS`] ahead of the tail, or behind it.
    #[error("request head {head} is not within {SLOTS} of the request tail {tail}")]
    WildRequestHead {
        /// What the client wrote.
        head: u64,
        /// The server's tail.
        tail: u64,
    },
    /// The response tail claims more unread responses than there are slots, or is ahead
    /// of the head.
    #[error("response tail {tail} is not within {SLOTS} of the response head {head}")]
    WildResponseTail {
        /// What the client wrote.
        tail: u64,
        /// The server's head.
        head: u64,
    },
}

/// What the admin does for a request that passed the checks.
pub trait ControlHandler {
    /// Apply `op` to target VM `target` (an index below the server's target count); the
    /// target's state afterwards, or the failure.
    fn apply(&mut self, op: Op, target: u32) -> Result<TargetState, Status>;
}

/// What one [`Server::serve`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests answered.
    pub answered: u64,
    /// Requests still waiting (beyond the budget, or for response space).
    pub waiting: u64,
}

/// The admin's side of one control VM's page.
#[derive(Debug)]
pub struct Server {
    req_tail: u64,
    resp_head: u64,
    targets: u32,
}

impl Server {
    /// Serve a fresh page: zero the indices, write [`MAGIC`]. `targets`: how many VMs the
    /// system has (a target index must be below it).
    pub fn attach(mem: &dyn ControlMemory, targets: u32) -> Server {
        for i in [W_REQ_HEAD, W_REQ_TAIL, W_RESP_HEAD, W_RESP_TAIL] {
            mem.store(i, 0);
        }
        mem.store(W_MAGIC, MAGIC);
        Server {
            req_tail: 0,
            resp_head: 0,
            targets,
        }
    }

    /// Answer at most `budget` waiting requests: check each (op code, target index, the
    /// right in `rights(target)`), apply it with `handler` and write its response.
    pub fn serve(
        &mut self,
        mem: &dyn ControlMemory,
        rights: &dyn Fn(u32) -> Rights,
        handler: &mut dyn ControlHandler,
        budget: u64,
    ) -> Result<Served, ControlError> {
        let head = mem.load(W_REQ_HEAD);
        let pending = head.wrapping_sub(self.req_tail);
        if pending > SLOTS {
            return Err(ControlError::WildRequestHead {
                head,
                tail: self.req_tail,
            });
        }
        let tail = mem.load(W_RESP_TAIL);
        let unread = self.resp_head.wrapping_sub(tail);
        if unread > SLOTS {
            return Err(ControlError::WildResponseTail {
                tail,
                head: self.resp_head,
            });
        }
        let n = pending.min(SLOTS - unread).min(budget);
        for _ in 0..n {
            let slot = (self.req_tail % SLOTS) as usize;
            let w0 = mem.load(W_REQS + 2 * slot);
            let seq = mem.load(W_REQS + 2 * slot + 1);
            let (code, target) = (w0 as u32, (w0 >> 32) as u32);
            let (status, state) = match Op::from_code(code) {
                None => (Status::UnknownOp, TargetState::Unknown),
                Some(_) if target >= self.targets => (Status::BadTarget, TargetState::Unknown),
                Some(op) if !rights(target).contains(op.right()) => {
                    (Status::Denied, TargetState::Unknown)
                }
                Some(op) => match handler.apply(op, target) {
                    Ok(state) => (Status::Ok, state),
                    Err(status) => (status, TargetState::Unknown),
                },
            };
            let r = (self.resp_head % SLOTS) as usize;
            mem.store(W_RESPS + 2 * r, seq);
            mem.store(
                W_RESPS + 2 * r + 1,
                u64::from(status as u32) | (u64::from(state as u32) << 32),
            );
            self.resp_head = self.resp_head.wrapping_add(1);
            self.req_tail = self.req_tail.wrapping_add(1);
        }
        // Our own copies, whatever the client wrote over them.
        mem.store(W_RESP_HEAD, self.resp_head);
        mem.store(W_REQ_TAIL, self.req_tail);
        Ok(Served {
            answered: n,
            waiting: pending - n,
        })
    }
}

/// The control VM's side (the guest tool; the tests' well-behaved peer).
#[derive(Debug, Default)]
pub struct Client {
    req_head: u64,
    resp_tail: u64,
}

impl Client {
    /// A client of a page the server attached (its indices at 0).
    pub fn new() -> Client {
        Client::default()
    }

    /// Whether the server attached the page.
    pub fn attached(mem: &dyn ControlMemory) -> bool {
        mem.load(W_MAGIC) == MAGIC
    }

    /// Queue `req`; `false` when every slot is taken.
    pub fn submit(&mut self, mem: &dyn ControlMemory, req: Request) -> bool {
        let tail = mem.load(W_REQ_TAIL);
        if self.req_head.wrapping_sub(tail) >= SLOTS {
            return false;
        }
        let slot = (self.req_head % SLOTS) as usize;
        mem.store(
            W_REQS + 2 * slot,
            u64::from(req.op) | (u64::from(req.target) << 32),
        );
        mem.store(W_REQS + 2 * slot + 1, req.seq);
        self.req_head = self.req_head.wrapping_add(1);
        mem.store(W_REQ_HEAD, self.req_head);
        true
    }

    /// The next response, if one is waiting.
    pub fn poll(&mut self, mem: &dyn ControlMemory) -> Option<Response> {
        let head = mem.load(W_RESP_HEAD);
        if head == self.resp_tail || head.wrapping_sub(self.resp_tail) > SLOTS {
            return None;
        }
        let r = (self.resp_tail % SLOTS) as usize;
        let seq = mem.load(W_RESPS + 2 * r);
        let w = mem.load(W_RESPS + 2 * r + 1);
        self.resp_tail = self.resp_tail.wrapping_add(1);
        mem.store(W_RESP_TAIL, self.resp_tail);
        Some(Response {
            seq,
            status: Status::from_code(w as u32),
            state: TargetState::from_code((w >> 32) as u32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    struct Page(Vec<AtomicU64>);

    impl Page {
        fn new() -> Page {
            Page((0..WINDOW_WORDS).map(|_| AtomicU64::new(0)).collect())
        }
    }

    impl ControlMemory for Page {
        fn load(&self, i: usize) -> u64 {
            self.0[i].load(Ordering::SeqCst)
        }
        fn store(&self, i: usize, v: u64) {
            self.0[i].store(v, Ordering::SeqCst);
        }
    }

    /// Records what it applied; every target runs.
    #[derive(Default)]
    struct Admin {
        applied: Vec<(Op, u32)>,
    }

    impl ControlHandler for Admin {
        fn apply(&mut self, op: Op, target: u32) -> Result<TargetState, Status> {
            self.applied.push((op, target));
            Ok(match op {
                Op::Stop => TargetState::Stopped,
                _ => TargetState::Running,
            })
        }
    }

    const ALL: Rights = Rights(15);

    fn setup() -> (Page, Server, Client, Admin) {
        let page = Page::new();
        let server = Server::attach(&page, 3);
        (page, server, Client::new(), Admin::default())
    }

    fn req(op: u32, target: u32, seq: u64) -> Request {
        Request { op, target, seq }
    }

    #[test]
    fn a_permitted_request_is_applied_and_answered_with_its_seq() {
        let (page, mut server, mut client, mut admin) = setup();
        client.submit(&page, req(Op::Stop as u32, 1, 77));

        let served = server.serve(&page, &|_| ALL, &mut admin, 8).unwrap();

        assert_eq!(
            served,
            Served {
                answered: 1,
                waiting: 0
            }
        );
        assert_eq!(admin.applied, [(Op::Stop, 1)]);
        assert_eq!(
            client.poll(&page),
            Some(Response {
                seq: 77,
                status: Status::Ok,
                state: TargetState::Stopped
            })
        );
    }

    #[test]
    fn a_request_without_the_right_is_refused_and_not_applied() {
        let (page, mut server, mut client, mut admin) = setup();
        client.submit(&page, req(Op::Restart as u32, 2, 1));

        server
            .serve(
                &page,
                &|t| if t == 2 { Rights::STATUS } else { ALL },
                &mut admin,
                8,
            )
            .unwrap();

        assert!(admin.applied.is_empty());
        assert_eq!(client.poll(&page).unwrap().status, Status::Denied);
    }

    #[test]
    fn a_target_index_out_of_range_is_refused() {
        let (page, mut server, mut client, mut admin) = setup();
        client.submit(&page, req(Op::Status as u32, u32::MAX, 1));

        server.serve(&page, &|_| ALL, &mut admin, 8).unwrap();

        assert!(admin.applied.is_empty());
        assert_eq!(client.poll(&page).unwrap().status, Status::BadTarget);
    }

    #[test]
    fn an_unknown_op_code_is_refused() {
        let (page, mut server, mut client, mut admin) = setup();
        client.submit(&page, req(0xdead, 0, 1));

        server.serve(&page, &|_| ALL, &mut admin, 8).unwrap();

        assert!(admin.applied.is_empty());
        assert_eq!(client.poll(&page).unwrap().status, Status::UnknownOp);
    }

    #[test]
    fn a_request_head_far_ahead_is_refused_whole() {
        let (page, mut server, _, mut admin) = setup();
        page.store(W_REQ_HEAD, SLOTS + 1);

        let r = server.serve(&page, &|_| ALL, &mut admin, 8);

        assert_eq!(
            r,
            Err(ControlError::WildRequestHead {
                head: SLOTS + 1,
                tail: 0
            })
        );
        assert!(admin.applied.is_empty());
    }

    #[test]
    fn a_request_head_behind_the_tail_is_refused() {
        let (page, mut server, _, mut admin) = setup();
        page.store(W_REQ_HEAD, u64::MAX);

        let r = server.serve(&page, &|_| ALL, &mut admin, 8);

        assert!(matches!(r, Err(ControlError::WildRequestHead { .. })));
    }

    #[test]
    fn a_wild_response_tail_is_refused() {
        let (page, mut server, _, mut admin) = setup();
        page.store(W_RESP_TAIL, 5);

        let r = server.serve(&page, &|_| ALL, &mut admin, 8);

        assert!(matches!(
            r,
            Err(ControlError::WildResponseTail { tail: 5, head: 0 })
        ));
    }

    #[test]
    fn a_flood_is_served_a_budget_at_a_time() {
        let (page, mut server, mut client, mut admin) = setup();
        for seq in 0..SLOTS {
            assert!(client.submit(&page, req(Op::Status as u32, 0, seq)));
        }

        let first = server.serve(&page, &|_| ALL, &mut admin, 4).unwrap();

        assert_eq!(
            first,
            Served {
                answered: 4,
                waiting: SLOTS - 4
            }
        );
    }

    #[test]
    fn a_full_request_ring_takes_no_more() {
        let (page, _, mut client, _) = setup();
        for seq in 0..SLOTS {
            client.submit(&page, req(Op::Status as u32, 0, seq));
        }

        assert!(!client.submit(&page, req(Op::Status as u32, 0, 99)));
    }

    #[test]
    fn unread_responses_are_never_overwritten() {
        let (page, mut server, mut client, mut admin) = setup();
        for round in 0..2 {
            for seq in 0..SLOTS {
                client.submit(&page, req(Op::Status as u32, 0, round * 100 + seq));
                server.serve(&page, &|_| ALL, &mut admin, SLOTS).unwrap();
            }
        }

        // 32 answered, 32 waiting for response space: the first response is still round 0's.
        assert_eq!(admin.applied.len(), SLOTS as usize);
        assert_eq!(client.poll(&page).unwrap().seq, 0);
    }

    #[test]
    fn the_clients_writes_over_the_servers_indices_are_ignored() {
        let (page, mut server, mut client, mut admin) = setup();
        client.submit(&page, req(Op::Status as u32, 0, 1));
        server.serve(&page, &|_| ALL, &mut admin, 8).unwrap();
        client.submit(&page, req(Op::Status as u32, 0, 2));
        page.store(W_REQ_TAIL, 1000);
        page.store(W_RESP_HEAD, 1000);

        server.serve(&page, &|_| ALL, &mut admin, 8).unwrap();

        assert_eq!(admin.applied.len(), 2);
        assert_eq!((page.load(W_REQ_TAIL), page.load(W_RESP_HEAD)), (2, 2));
    }

    #[test]
    fn rights_are_named_as_the_description_names_them() {
        assert_eq!(Rights::from_name("restart"), Some(Rights::RESTART));
        assert_eq!(Rights::from_name("create"), None);
        assert!(Rights::START.union(Rights::STOP).contains(Rights::STOP));
        assert!(!Rights::START.contains(Rights::STOP));
    }
}
