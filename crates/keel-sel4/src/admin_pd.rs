//! The admin protection domain (seL4 only): the Microkit parent of every VMM PD. It
//! receives their faults and applies each VM's restart policy ([`crate::admin`]), and
//! serves each control VM's control page (`keel_core::control`) when that VM's VMM
//! notifies it (the guest rang its doorbell).
//!
//! A restart is Microkit's `microkit_pd_restart`: `TCB_WriteRegisters` of the child's TCB
//! with resume, pc = the VMM's entry point. That cancels the VMM's wait for the fault
//! reply (the admin never replies to a fault) and runs it from `_start` again; the PD's
//! `_start` (`pd_start!`) restores the stack pointer it started with, and the VMM's `main`
//! notices the second start and resets its own state (`vmm::main`).

use alloc::string::String;

use keel_core::ring::{Producer, RingWindow};

use crate::abi::microkit as mk;
use keel_core::control::{ControlHandler, ControlWindow, Op, SLOTS, Server, Status, TargetState};

use crate::admin::{AdminConfig, Effect, FaultAction, HEADER_LEN, Supervisor, describe_fault};
use crate::fault::Fault;
use crate::microkit::{Event, child_tcb_cap};
use crate::msginfo::MessageInfo;
use crate::payload::PAYLOAD_VADDR;
use crate::regs::{self, UserContext};
use crate::syscall::{self as sys, debug_puts};

/// The admin's heap: its configuration and log lines.
pub const HEAP_BYTES: usize = 1 << 20;

/// The admin's console ring to the console PD (or none: lines go to the debug console).
struct Out {
    ring: Option<(Producer, u32)>,
}

impl Out {
    fn attach(cfg: &AdminConfig) -> Out {
        if cfg.console_ring == 0 {
            return Out { ring: None };
        }
        let Ok(len) = usize::try_from(cfg.console_ring_len) else {
            return Out { ring: None };
        };
        // SAFETY: the system file `keel sel4 build` wrote maps the admin's console ring
        // region read-write at `console_ring` (and into the console PD, the only other
        // party) for the PD's whole life; no Rust reference points into it.
        match unsafe { RingWindow::new(cfg.console_ring as *mut u8, len) } {
            Ok(w) => Out {
                ring: Some((Producer::attach(w), cfg.console_channel)),
            },
            Err(e) => {
                debug_puts(&alloc::format!(
                    "keel-admin: console ring: {e}; printing directly\n"
                ));
                Out { ring: None }
            }
        }
    }

    /// One whole line (the newline is added).
    fn line(&mut self, text: &str) {
        let mut l = String::from(text);
        l.push('\n');
        match &mut self.ring {
            Some((ring, channel)) => {
                // Never wait for the console: a full ring drops the line (and counts it).
                let _ = ring.write(l.as_bytes());
                let _ = crate::pd::notify(*channel);
            }
            None => debug_puts(&l),
        }
    }
}

/// Restart child `child` at `entry` (`microkit_pd_restart`): only the PC, resumed.
fn restart_child(child: u32, entry: u64) -> Result<(), sys::Sel4Error> {
    let mut ctx = UserContext::default();
    ctx.0[regs::PC] = entry;
    // Only the PC, as microkit_pd_restart: the VMM's _start restores its initial stack
    // pointer itself.
    sys::tcb_write_registers(child_tcb_cap(child), true, 1, &ctx)
}

/// Carries out the requests of control VM `from` that passed the protocol's checks.
struct Ops<'a> {
    sup: &'a mut Supervisor,
    out: &'a mut Out,
    from: &'a str,
}

impl ControlHandler for Ops<'_> {
    fn apply(&mut self, op: Op, target: u32) -> Result<TargetState, Status> {
        let name = self
            .sup
            .vms()
            .get(target as usize)
            .map_or_else(|| alloc::format!("#{target}"), |v| v.name.clone());
        let verb = match op {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Restart => "restart",
            Op::Status => "read the state of",
        };
        let was_running = self.sup.running(target as usize);
        let result = self.sup.apply(op, target).and_then(|(state, effect)| {
            let done = match effect {
                Effect::None => Ok(()),
                Effect::RestartAt { child, entry } => restart_child(child, entry),
                Effect::Suspend { child } => sys::tcb_suspend(child_tcb_cap(child)),
            };
            done.map(|()| state).map_err(|e| {
                self.sup.call_failed(target, was_running);
                self.out
                    .line(&alloc::format!("keel-admin: vm {name}: {verb}: {e}"));
                Status::Failed
            })
        });
        if op != Op::Status {
            let what = match result {
                Ok(_) => "done".into(),
                Err(s) => alloc::format!("refused ({s:?})"),
            };
            self.out.line(&alloc::format!(
                "keel-admin: vm {} asks to {verb} vm {name}: {what}",
                self.from
            ));
        }
        result
    }
}

/// The admin payload segment's configuration.
fn config() -> Result<AdminConfig, String> {
    // SAFETY: `keel sel4 build` appended the admin payload as a segment at PAYLOAD_VADDR of
    // this ELF (mapped by the Microkit tool for the PD's whole life); its first HEADER_LEN
    // bytes are the header.
    let header = unsafe { core::slice::from_raw_parts(PAYLOAD_VADDR as *const u8, HEADER_LEN) };
    let total = AdminConfig::total_len(header)
        .map_err(|e| alloc::format!("admin payload at {PAYLOAD_VADDR:#x}: {e}"))?;
    // SAFETY: the segment is `total` bytes long (the build wrote exactly the encoded
    // configuration, whose header records its length); nothing writes it.
    let bytes = unsafe { core::slice::from_raw_parts(PAYLOAD_VADDR as *const u8, total) };
    AdminConfig::decode(bytes).map_err(|e| alloc::format!("admin payload: {e}"))
}

/// The protection domain's main function, called from `_start`.
pub extern "C" fn main() -> ! {
    let cfg = match config() {
        Ok(c) => c,
        Err(e) => {
            debug_puts(&alloc::format!("keel-admin: cannot start: {e}\n"));
            idle();
        }
    };
    let mut out = Out::attach(&cfg);
    let mut sup = Supervisor::new(&cfg);
    // The restart limit's time (None: a counter without a frequency, see `Supervisor::on_fault`).
    let counter = crate::clock::Counter::new();
    let policies: alloc::vec::Vec<String> = sup
        .vms()
        .iter()
        .map(|v| alloc::format!("{} ({})", v.name, v.restart.name()))
        .collect();
    out.line(&alloc::format!(
        "keel-admin: up, parent of {} VMM(s): {}",
        policies.len(),
        policies.join(", ")
    ));
    let targets = u32::try_from(cfg.vms.len()).unwrap_or(u32::MAX);
    // One control page per control VM, attached (indices zeroed, magic written) before
    // any guest runs.
    let mut servers: alloc::vec::Vec<Option<(ControlWindow, Server)>> = cfg
        .vms
        .iter()
        .map(|v| {
            v.control.as_ref().map(|c| {
                // SAFETY: the system file `keel sel4 build` wrote maps this VM's control
                // page (4 KiB, page-aligned) read-write here for the PD's whole life, and
                // into that VM only, which may write anything there.
                let w = unsafe { ControlWindow::new(c.vaddr as *mut u8) };
                let s = Server::attach(&w, targets);
                (w, s)
            })
        })
        .collect();
    loop {
        let (badge, info) = sys::recv(mk::INPUT_CAP, mk::REPLY_CAP);
        match Event::from_badge(badge) {
            Event::Fault { child } => {
                // Decode before any other kernel call overwrites the message registers.
                let what = match Fault::decode(info, sys::mr) {
                    Ok(f) => describe_fault(&f),
                    Err(e) => alloc::format!("{e}"),
                };
                let action = sup.on_fault(u32::from(child), counter.map(|c| c.now_ms()));
                out.line(&sup.line(&action, &what));
                match action {
                    FaultAction::Restart { vm, entry, .. } => {
                        let id = sup.vms()[vm].child_id;
                        if let Err(e) = restart_child(id, entry) {
                            out.line(&alloc::format!(
                                "keel-admin: vm {}: restart failed: {e}",
                                sup.vms()[vm].name
                            ));
                        }
                    }
                    FaultAction::Stop { vm, .. } => {
                        let id = sup.vms()[vm].child_id;
                        if let Err(e) = sys::tcb_suspend(child_tcb_cap(id)) {
                            out.line(&alloc::format!(
                                "keel-admin: vm {}: stopping its VMM: {e}",
                                sup.vms()[vm].name
                            ));
                        }
                    }
                    FaultAction::Unknown { .. } => {}
                }
            }
            // Nobody has a protected-call channel to the admin; answer at once anyway.
            Event::ProtectedCall { .. } => sys::reply(mk::REPLY_CAP, MessageInfo::new(0, 0)),
            Event::Notified { channels } => {
                for ch in crate::microkit::channels(channels) {
                    let Some(vm) = sup.vm_of_channel(ch) else {
                        continue;
                    };
                    let (Some(Some((w, server))), Some(control)) = (
                        servers.get_mut(vm),
                        cfg.vms.get(vm).and_then(|v| v.control.as_ref()),
                    ) else {
                        continue;
                    };
                    let from = cfg.vms[vm].name.as_str();
                    let rights = |t: u32| control.rights(t);
                    let mut ops = Ops {
                        sup: &mut sup,
                        out: &mut out,
                        from,
                    };
                    // At most one ring's worth per doorbell: a flood waits for the next.
                    if let Err(e) = server.serve(w, &rights, &mut ops, SLOTS) {
                        out.line(&alloc::format!(
                            "keel-admin: vm {from}: control page: {e}; no longer served"
                        ));
                        servers[vm] = None;
                    }
                }
            }
        }
    }
}

/// Wait forever (after a fatal error).
fn idle() -> ! {
    loop {
        let _ = sys::wait(mk::INPUT_CAP);
    }
}

/// The panic handler: report on the debug console, idle.
pub fn panic(info: &core::panic::PanicInfo) -> ! {
    debug_puts(&alloc::format!("\nkeel-admin: panic: {info}\n"));
    idle()
}
