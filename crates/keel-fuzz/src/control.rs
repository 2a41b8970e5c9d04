//! `control`: the VM control protocol (`keel_core::control`) from a hostile control VM,
//! with the seL4 admin's real decision logic (`keel_sel4::admin::Supervisor::apply`)
//! behind the server.
//!
//! The first input byte chooses the scenario (`byte % 2`); the rest drives a sequence of
//! operations decoded with [`arbitrary::Unstructured`] (at most [`MAX_OPS`]; running out of
//! bytes stops the sequence). Each run has 0..=6 target VMs (each started or a pool slot),
//! a rights table (each target's bits, sometimes with bits no right has) and a handler that
//! calls `Supervisor::apply` and, when the fuzzer says so, reports the kernel call as
//! failed (as the admin PD does when `microkit_pd_restart`/`tcb_suspend` fails).
//!
//! The page is backed by a heap buffer with guard words before and after it (filled with
//! [`GUARD`]), or, in the "exact" layout, by an allocation exactly [`WINDOW_BYTES`] long so
//! that AddressSanitizer catches any access outside it; or it is a whole 4 KiB page whose
//! bytes past the window must never change. The server reaches it through the real
//! [`ControlWindow`], wrapped in a spy that panics on a word index outside the window and
//! records every store.
//!
//! 0. Hostile client: arbitrary words anywhere in the page (the magic and the server's own
//!    index fields included), requests with any op code, target and seq in any slot,
//!    request heads and response tails near the server's indices or anywhere, interleaved
//!    with `serve` calls of any budget. Against a reference model of the server's indices,
//!    the targets' states and the rights, each `serve`:
//!    - reports a request head more than `SLOTS` ahead of the server's tail or behind it
//!      as `WildRequestHead`, else a response tail more than `SLOTS` behind its head or
//!      ahead of it as `WildResponseTail` (head checked first), and then writes nothing
//!      at all, applies nothing, and keeps its indices (a later call with sane indices
//!      goes on where it was: the server is unchanged by a refusal; the admin PD then
//!      stops serving that page, which this target does not model);
//!    - otherwise answers exactly `min(pending, SLOTS - unread, budget)` requests
//!      (`Served` says so, with the rest `waiting`), in ring order from its own tail, each
//!      response in the next slot of its own head with the request's seq echoed and the
//!      status/state the model expects: `UnknownOp` for a bad code, `BadTarget` for an
//!      index ≥ the target count, `Denied` without the op's right on that target (all with
//!      state `Unknown`, nothing applied); otherwise the supervisor's decision (`Conflict`
//!      for start of a running / stop of a stopped VM, or the state afterwards), `Failed`
//!      when the kernel call fails;
//!    - calls the rights table only for a target index in range, and the handler exactly
//!      for the requests that passed every check, in order, with the effect the model
//!      expects (restart at the VM's entry, suspend, none);
//!    - writes only the answered response slots (each of them a slot the client has read:
//!      never an unread response) and its own request tail and response head, which then
//!      hold the server's own values whatever the client wrote there; nothing else of the
//!      page, no guard byte; every word index it uses is inside the window.
//! 1. Honest client ([`Client`]) and server, interleaved by the fuzzer (submit, poll,
//!    serve with any budget), then drained: `submit` refuses only when `SLOTS` requests are
//!    outstanding; every accepted request is answered exactly once, in order, with its
//!    seq and the status the model gives; `poll` returns `None` only when no answer waits;
//!    the supervisor's states equal the model's.
//!
//! Enforced in keel_core::control (`Server::serve`) and keel_sel4::admin
//! (`Supervisor::apply`).

use arbitrary::Unstructured;
use keel_core::control::{
    Client, ControlError, ControlHandler, ControlMemory, ControlWindow, MAGIC, Op, Request, Rights,
    SLOTS, Served, Server, Status, TargetState, WINDOW_BYTES, WINDOW_WORDS,
};
use keel_sel4::admin::{AdminConfig, AdminVm, Effect, RestartPlan, Supervisor};
use std::cell::RefCell;
use std::collections::VecDeque;

/// Operations per input at most.
pub const MAX_OPS: usize = 512;
/// The byte guard words are filled with.
pub const GUARD: u8 = 0xa5;
/// Bytes of the control page.
pub const PAGE_BYTES: usize = 4096;

const W_MAGIC: usize = 0;
const W_REQ_HEAD: usize = 1;
const W_REQ_TAIL: usize = 2;
const W_RESP_HEAD: usize = 3;
const W_RESP_TAIL: usize = 4;
const W_REQS: usize = 8;
const W_RESPS: usize = W_REQS + 2 * SLOTS as usize;
/// Guard bytes on each side in the guarded layouts.
const GUARD_BYTES: usize = 64;

/// The fuzz body.
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    match sel % 2 {
        0 => hostile_client(&mut u),
        _ => honest_pair(&mut u),
    }
}

/// The shared page with guards, accessed only through raw pointers.
struct Page {
    _mem: Vec<u64>,
    base: *mut u8,
    len: usize,
    guard: usize,
}

impl Page {
    /// Layout 0: exactly the window (ASan's redzones are the guards); 1: the window with
    /// guards; 2: a whole 4 KiB page with guards. Filled with `fill`.
    fn new(layout: u8, fill: u8) -> Page {
        let (len, guard) = match layout % 3 {
            0 => (WINDOW_BYTES, 0),
            1 => (WINDOW_BYTES, GUARD_BYTES),
            _ => (PAGE_BYTES, GUARD_BYTES),
        };
        let mut mem = vec![u64::from_ne_bytes([GUARD; 8]); (len + 2 * guard) / 8];
        let base = mem.as_mut_ptr().cast::<u8>();
        let page = Page {
            _mem: mem,
            base,
            len,
            guard,
        };
        // SAFETY: the page lies inside the allocation; nothing else uses it yet.
        unsafe { page.ptr().write_bytes(fill, len) };
        page
    }

    fn ptr(&self) -> *mut u8 {
        self.base.wrapping_add(self.guard)
    }

    fn words(&self) -> usize {
        self.len / 8
    }

    fn peek(&self, w: usize) -> u64 {
        assert!(w < self.words());
        // SAFETY: inside the allocation, 8-aligned (a `u64` allocation, guards a multiple
        // of 8); single-threaded, no reference into it.
        unsafe { self.ptr().add(8 * w).cast::<u64>().read_volatile() }
    }

    fn poke(&self, w: usize, v: u64) {
        assert!(w < self.words());
        // SAFETY: as in `peek`.
        unsafe { self.ptr().add(8 * w).cast::<u64>().write_volatile(v) }
    }

    fn snapshot(&self) -> Vec<u64> {
        (0..self.words()).map(|w| self.peek(w)).collect()
    }

    /// The window the server uses.
    fn window(&self) -> ControlWindow {
        // SAFETY: the page outlives the window (both live in one scenario function, the
        // page declared first), is 8-aligned and at least WINDOW_BYTES long; between the
        // server's calls the test pokes it only through raw pointers (single-threaded).
        unsafe { ControlWindow::new(self.ptr()) }
    }

    fn check_guards(&self) {
        for i in 0..self.guard {
            for at in [i, self.guard + self.len + i] {
                // SAFETY: `at < len + 2 * guard`: inside the allocation.
                let b = unsafe { self.base.add(at).read_volatile() };
                assert_eq!(
                    b, GUARD,
                    "guard byte {at} around the control page was written"
                );
            }
        }
    }
}

/// The real window, checking every word index and recording every store.
struct Spy {
    w: ControlWindow,
    stores: RefCell<Vec<usize>>,
}

impl ControlMemory for Spy {
    fn load(&self, i: usize) -> u64 {
        assert!(
            i < WINDOW_WORDS,
            "server loads word {i}, outside the window"
        );
        self.w.load(i)
    }
    fn store(&self, i: usize, v: u64) {
        assert!(
            i < WINDOW_WORDS,
            "server stores word {i}, outside the window"
        );
        self.stores.borrow_mut().push(i);
        self.w.store(i, v);
    }
}

/// The admin's decision logic, with kernel failures on demand; records what it applied.
struct Admin {
    sup: Supervisor,
    vms: Vec<AdminVm>,
    /// Whether the next calls' kernel call fails (popped front to back; empty: succeeds).
    fail: VecDeque<bool>,
    applied: Vec<(Op, u32, Effect)>,
}

impl ControlHandler for Admin {
    fn apply(&mut self, op: Op, target: u32) -> Result<TargetState, Status> {
        let r = self.sup.apply(op, target);
        if let Ok((_, effect)) = r {
            self.applied.push((op, target, effect));
        }
        let fail = self.fail.pop_front().unwrap_or(false);
        match r {
            Ok((_, effect)) if fail && effect != Effect::None => Err(Status::Failed),
            Ok((state, _)) => Ok(state),
            Err(s) => Err(s),
        }
    }
}

/// The reference model of the targets and the rights.
struct Model {
    running: Vec<bool>,
    rights: Vec<Rights>,
}

impl Model {
    fn targets(&self) -> u32 {
        self.running.len() as u32
    }

    /// The response a request gets, the effect the admin should decide, and the model's
    /// state after it (`fail`: the kernel call fails).
    fn answer(
        &mut self,
        vms: &[AdminVm],
        code: u32,
        target: u32,
        fail: bool,
    ) -> (Status, TargetState, Option<(Op, u32, Effect)>) {
        let Some(op) = Op::from_code(code) else {
            return (Status::UnknownOp, TargetState::Unknown, None);
        };
        if target >= self.targets() {
            return (Status::BadTarget, TargetState::Unknown, None);
        }
        let t = target as usize;
        let bit = match op {
            Op::Start => 1,
            Op::Stop => 2,
            Op::Restart => 4,
            Op::Status => 8,
        };
        if self.rights[t].0 & bit == 0 {
            return (Status::Denied, TargetState::Unknown, None);
        }
        let running = self.running[t];
        let restart = Effect::RestartAt {
            child: vms[t].child_id,
            entry: vms[t].entry,
        };
        let (state, effect) = match op {
            Op::Status => {
                let s = if running {
                    TargetState::Running
                } else {
                    TargetState::Stopped
                };
                return (Status::Ok, s, Some((op, target, Effect::None)));
            }
            Op::Start if running => return (Status::Conflict, TargetState::Unknown, None),
            Op::Stop if !running => return (Status::Conflict, TargetState::Unknown, None),
            Op::Start | Op::Restart => {
                self.running[t] = true;
                (TargetState::Running, restart)
            }
            Op::Stop => {
                self.running[t] = false;
                (
                    TargetState::Stopped,
                    Effect::Suspend {
                        child: vms[t].child_id,
                    },
                )
            }
        };
        // The supervisor records the new state before the kernel call (admin_pd): a failed
        // call still leaves it so.
        if fail {
            (
                Status::Failed,
                TargetState::Unknown,
                Some((op, target, effect)),
            )
        } else {
            (Status::Ok, state, Some((op, target, effect)))
        }
    }
}

/// Targets, their rights and an admin over them, chosen by the fuzzer.
fn setup(u: &mut Unstructured) -> (Model, Admin) {
    let n = usize::from(u.int_in_range(0..=6u8).unwrap_or(2));
    let mut vms = Vec::new();
    let mut rights = Vec::new();
    for i in 0..n {
        vms.push(AdminVm {
            name: format!("vm{i}"),
            vmm_pd: format!("vm{i}_vmm"),
            child_id: 1 + i as u32,
            entry: 0x20_0000 + 0x1000 * i as u64,
            restart: RestartPlan::Never,
            max_restarts: 0,
            start: u.arbitrary::<bool>().unwrap_or(true),
            channel: 10 + i as u32,
            control: None,
        });
        rights.push(Rights(match u.int_in_range(0..=3u8).unwrap_or(0) {
            0 => 15,
            1 => 0,
            2 => u32::from(u.int_in_range(0..=15u8).unwrap_or(0)),
            _ => u.arbitrary::<u32>().unwrap_or(0),
        }));
    }
    let cfg = AdminConfig {
        console_ring: 0,
        console_ring_len: 0,
        console_channel: 0,
        vms: vms.clone(),
    };
    let model = Model {
        running: vms.iter().map(|v| v.start).collect(),
        rights,
    };
    let admin = Admin {
        sup: Supervisor::new(&cfg),
        vms,
        fail: VecDeque::new(),
        applied: Vec::new(),
    };
    (model, admin)
}

fn check_states(model: &Model, admin: &Admin) {
    for (i, &r) in model.running.iter().enumerate() {
        assert_eq!(
            admin.sup.running(i),
            r,
            "target {i}: supervisor state differs"
        );
    }
}

/// A hostile word: small deltas around `near` most of the time, anything otherwise.
fn wild_word(u: &mut Unstructured, near: u64) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => u.arbitrary::<u64>()?,
        1 => near.wrapping_sub(u64::from(u.arbitrary::<u8>()?)),
        _ => near.wrapping_add(u64::from(u.int_in_range(0..=40u8)?)),
    })
}

fn op_code(u: &mut Unstructured) -> arbitrary::Result<u32> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => u.arbitrary::<u32>()?,
        1 => 0,
        _ => u32::from(u.int_in_range(1..=4u8)?),
    })
}

fn target_index(u: &mut Unstructured, targets: u32) -> arbitrary::Result<u32> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => u.arbitrary::<u32>()?,
        _ => u.int_in_range(0..=targets + 1)?,
    })
}

fn budget(u: &mut Unstructured) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => u.arbitrary::<u64>()?,
        1 => SLOTS,
        _ => u64::from(u.int_in_range(0..=40u8)?),
    })
}

/// Fuzzer-chosen kernel failures for the next `n` handler calls.
fn failures(u: &mut Unstructured) -> arbitrary::Result<VecDeque<bool>> {
    let bits = if u.int_in_range(0..=3u8)? == 0 {
        u.arbitrary::<u64>()?
    } else {
        0
    };
    Ok((0..64).map(|i| bits >> i & 1 == 1).collect())
}

fn hostile_client(u: &mut Unstructured) {
    let layout = u.arbitrary::<u8>().unwrap_or(0);
    let fill = u.arbitrary::<u8>().unwrap_or(0);
    let page = Page::new(layout, fill);
    let (mut model, mut admin) = setup(u);
    let targets = model.targets();
    let spy = Spy {
        w: page.window(),
        stores: RefCell::new(Vec::new()),
    };

    // Attach: zeroes the four indices and writes the magic, nothing else.
    let before = page.snapshot();
    let mut server = Server::attach(&spy, targets);
    let after = page.snapshot();
    for (w, (&b, &a)) in before.iter().zip(&after).enumerate() {
        match w {
            W_MAGIC => assert_eq!(a, MAGIC, "attach: no magic"),
            W_REQ_HEAD..=W_RESP_TAIL => assert_eq!(a, 0, "attach: index word {w} not zeroed"),
            _ => assert_eq!(a, b, "attach wrote word {w}"),
        }
    }
    page.check_guards();

    // The server's indices as the model knows them.
    let (mut rt, mut rh) = (0u64, 0u64);
    let rights_table = model.rights.clone();
    let rights_calls = RefCell::new(Vec::new());
    let rights = |t: u32| {
        rights_calls.borrow_mut().push(t);
        rights_table
            .get(t as usize)
            .copied()
            .unwrap_or(Rights::NONE)
    };

    for _ in 0..MAX_OPS {
        let Ok(op) = u.int_in_range(0..=9u8) else {
            break;
        };
        let r: arbitrary::Result<()> = (|| {
            match op {
                0 => {
                    let w = u.int_in_range(0..=page.words() - 1)?;
                    page.poke(w, u.arbitrary()?);
                }
                1 | 2 => {
                    // A request in a slot near the server's tail.
                    let slot = (rt.wrapping_add(u64::from(u.int_in_range(0..=SLOTS as u8)?))
                        % SLOTS) as usize;
                    let code = op_code(u)?;
                    let target = target_index(u, targets)?;
                    page.poke(W_REQS + 2 * slot, u64::from(code) | u64::from(target) << 32);
                    page.poke(W_REQS + 2 * slot + 1, u.arbitrary()?);
                }
                3 => page.poke(W_REQ_HEAD, wild_word(u, rt)?),
                4 => page.poke(W_RESP_TAIL, wild_word(u, rh.wrapping_sub(SLOTS))?),
                5 => {
                    // A plausible read of some responses.
                    let tail = page.peek(W_RESP_TAIL);
                    let unread = rh.wrapping_sub(tail).min(SLOTS);
                    let k = u.int_in_range(0..=unread)?;
                    page.poke(W_RESP_TAIL, rh.wrapping_sub(unread - k));
                }
                6 => {
                    let w = [W_MAGIC, W_REQ_TAIL, W_RESP_HEAD][u.int_in_range(0..=2usize)?];
                    page.poke(w, u.arbitrary()?);
                }
                _ => {
                    let budget = budget(u)?;
                    admin.fail = failures(u)?;
                    serve_checked(
                        &page,
                        &spy,
                        &mut server,
                        &mut model,
                        &mut admin,
                        &rights,
                        &rights_calls,
                        budget,
                        (&mut rt, &mut rh),
                    );
                }
            }
            Ok(())
        })();
        page.check_guards();
        if r.is_err() {
            break;
        }
    }
}

/// One `serve` call against the model, with every invariant of scenario 0 checked.
#[allow(clippy::too_many_arguments)]
fn serve_checked(
    page: &Page,
    spy: &Spy,
    server: &mut Server,
    model: &mut Model,
    admin: &mut Admin,
    rights: &dyn Fn(u32) -> Rights,
    rights_calls: &RefCell<Vec<u32>>,
    budget: u64,
    (rt, rh): (&mut u64, &mut u64),
) {
    let before = page.snapshot();
    let head = before[W_REQ_HEAD];
    let tail = before[W_RESP_TAIL];
    let fails: Vec<bool> = admin.fail.iter().copied().collect();
    spy.stores.borrow_mut().clear();
    rights_calls.borrow_mut().clear();
    admin.applied.clear();

    let r = server.serve(spy, rights, admin, budget);

    let after = page.snapshot();
    let pending = head.wrapping_sub(*rt);
    let unread = rh.wrapping_sub(tail);
    if pending > SLOTS || unread > SLOTS {
        let want = if pending > SLOTS {
            ControlError::WildRequestHead { head, tail: *rt }
        } else {
            ControlError::WildResponseTail { tail, head: *rh }
        };
        assert_eq!(r, Err(want), "wild indices (head {head}, tail {tail})");
        assert_eq!(after, before, "a refused page was written");
        assert!(admin.applied.is_empty(), "a refused page's request applied");
        assert!(
            rights_calls.borrow().is_empty(),
            "rights looked up on a refused page"
        );
        check_states(model, admin);
        return;
    }

    let n = pending.min(SLOTS - unread).min(budget);
    assert_eq!(
        r,
        Ok(Served {
            answered: n,
            waiting: pending - n
        }),
        "pending {pending}, unread {unread}, budget {budget}"
    );
    assert!(n <= budget, "more than the budget answered");

    let mut want_applied = Vec::new();
    let mut want_rights = Vec::new();
    let mut allowed = vec![false; after.len()];
    allowed[W_REQ_TAIL] = true;
    allowed[W_RESP_HEAD] = true;
    let mut handler_calls = 0usize;
    for i in 0..n {
        let slot = (rt.wrapping_add(i) % SLOTS) as usize;
        let w0 = before[W_REQS + 2 * slot];
        let seq = before[W_REQS + 2 * slot + 1];
        let (code, target) = (w0 as u32, (w0 >> 32) as u32);
        if Op::from_code(code).is_some() && target < model.targets() {
            want_rights.push(target);
        }
        let passes = Op::from_code(code).is_some_and(|op| {
            target < model.targets() && model.rights[target as usize].contains(op.right())
        });
        let fail = passes && fails.get(handler_calls).copied().unwrap_or(false);
        if passes {
            handler_calls += 1;
        }
        // A status request makes no kernel call: it cannot fail.
        let fail = fail && Op::from_code(code) != Some(Op::Status);
        let (status, state, applied) = model.answer(&admin.vms, code, target, fail);
        want_applied.extend(applied);

        let at = rh.wrapping_add(i);
        assert!(
            at.wrapping_sub(tail) < SLOTS,
            "response {at} overwrites an unread one (client tail {tail})"
        );
        let r = (at % SLOTS) as usize;
        allowed[W_RESPS + 2 * r] = true;
        allowed[W_RESPS + 2 * r + 1] = true;
        assert_eq!(
            after[W_RESPS + 2 * r],
            seq,
            "request {}: seq not echoed",
            rt.wrapping_add(i)
        );
        let got = after[W_RESPS + 2 * r + 1];
        assert_eq!(
            (got as u32, (got >> 32) as u32),
            (status as u32, state as u32),
            "request {} (op {code}, target {target}): status/state",
            rt.wrapping_add(i)
        );
    }
    assert_eq!(
        admin.applied, want_applied,
        "applied requests differ from the permitted ones"
    );
    assert_eq!(
        *rights_calls.borrow(),
        want_rights,
        "rights looked up for the wrong targets"
    );
    *rt = rt.wrapping_add(n);
    *rh = rh.wrapping_add(n);
    assert_eq!(
        after[W_REQ_TAIL], *rt,
        "published request tail is not the server's"
    );
    assert_eq!(
        after[W_RESP_HEAD], *rh,
        "published response head is not the server's"
    );
    for (w, (&b, &a)) in before.iter().zip(&after).enumerate() {
        if !allowed[w] {
            assert_eq!(a, b, "serve wrote word {w}, outside its own fields");
        }
    }
    for &w in spy.stores.borrow().iter() {
        assert!(
            allowed[w],
            "serve stored to word {w}, outside its own fields"
        );
    }
    check_states(model, admin);
}

fn honest_pair(u: &mut Unstructured) {
    let layout = u.arbitrary::<u8>().unwrap_or(0);
    let page = Page::new(layout, 0);
    let (mut model, mut admin) = setup(u);
    let targets = model.targets();
    let w = page.window();
    let mut server = Server::attach(&w, targets);
    let mut client = Client::new();
    assert!(Client::attached(&w), "no magic after attach");
    let rights_table = model.rights.clone();
    let rights = |t: u32| {
        rights_table
            .get(t as usize)
            .copied()
            .unwrap_or(Rights::NONE)
    };

    // Requests submitted, not yet taken; responses written, not yet read (expected).
    let mut queued: VecDeque<Request> = VecDeque::new();
    let mut answers: VecDeque<(u64, Status, TargetState)> = VecDeque::new();
    let (mut accepted, mut read) = (0u64, 0u64);
    let mut seq = 0u64;

    let serve = |budget: u64,
                 fail: VecDeque<bool>,
                 server: &mut Server,
                 admin: &mut Admin,
                 model: &mut Model,
                 queued: &mut VecDeque<Request>,
                 answers: &mut VecDeque<(u64, Status, TargetState)>| {
        admin.fail = fail.clone();
        admin.applied.clear();
        let r = server
            .serve(&w, &rights, admin, budget)
            .expect("honest indices refused");
        let n = (queued.len() as u64)
            .min(SLOTS - answers.len() as u64)
            .min(budget);
        assert_eq!(
            r,
            Served {
                answered: n,
                waiting: queued.len() as u64 - n
            }
        );
        let mut fail = fail;
        let mut want_applied = Vec::new();
        for _ in 0..n {
            let q = queued.pop_front().unwrap();
            let passes = Op::from_code(q.op).is_some_and(|op| {
                q.target < model.targets() && model.rights[q.target as usize].contains(op.right())
            });
            let f = passes && fail.pop_front().unwrap_or(false);
            let f = f && Op::from_code(q.op) != Some(Op::Status);
            let (status, state, applied) = model.answer(&admin.vms, q.op, q.target, f);
            want_applied.extend(applied);
            answers.push_back((q.seq, status, state));
        }
        assert_eq!(admin.applied, want_applied, "applied requests differ");
        check_states(model, admin);
    };

    for _ in 0..MAX_OPS {
        let Ok(op) = u.int_in_range(0..=5u8) else {
            break;
        };
        let r: arbitrary::Result<()> = (|| {
            match op {
                0..=2 => {
                    let req = Request {
                        op: op_code(u)?,
                        target: target_index(u, targets)?,
                        seq,
                    };
                    seq += if u.arbitrary::<bool>()? { 1 } else { 0 };
                    let ok = client.submit(&w, req);
                    assert_eq!(
                        ok,
                        queued.len() < SLOTS as usize,
                        "submit with {} outstanding",
                        queued.len()
                    );
                    if ok {
                        queued.push_back(req);
                        accepted += 1;
                    }
                }
                3 => {
                    let got = client.poll(&w);
                    let want = answers.pop_front();
                    check_poll(got, want);
                    if want.is_some() {
                        read += 1;
                    }
                }
                _ => {
                    let b = budget(u)?;
                    let f = failures(u)?;
                    serve(
                        b,
                        f,
                        &mut server,
                        &mut admin,
                        &mut model,
                        &mut queued,
                        &mut answers,
                    );
                }
            }
            Ok(())
        })();
        page.check_guards();
        if r.is_err() {
            break;
        }
    }

    // Drain: every accepted request is answered exactly once, in order.
    for _ in 0..=2 * SLOTS {
        serve(
            SLOTS,
            VecDeque::new(),
            &mut server,
            &mut admin,
            &mut model,
            &mut queued,
            &mut answers,
        );
        while let Some(want) = answers.pop_front() {
            check_poll(client.poll(&w), Some(want));
            read += 1;
        }
        if queued.is_empty() {
            break;
        }
    }
    assert!(queued.is_empty(), "requests left unanswered");
    assert_eq!(client.poll(&w), None, "an answer to no request");
    assert_eq!(read, accepted, "answers read differ from requests accepted");
    page.check_guards();
}

fn check_poll(got: Option<keel_core::control::Response>, want: Option<(u64, Status, TargetState)>) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some((seq, status, state))) => {
            assert_eq!(
                (g.seq, g.status, g.state),
                (seq, status, state),
                "answer differs"
            );
        }
        (g, w) => panic!("poll returned {g:?}, expected {w:?}"),
    }
}
