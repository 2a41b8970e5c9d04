//! seL4 system calls and the kernel invocations a VMM needs (aarch64, MCS kernel).
//!
//! Register convention (`svc #0`): `x0` = capability (badge on return), `x1` = message
//! info, `x2`..`x5` = message registers 0..3, `x6` = reply object (MCS receive calls),
//! `x7` = system call number. Message registers 4 and up live in the IPC buffer, which a
//! Microkit PD finds at the top page of its address space. Every receive copies MR0..3 into
//! the IPC buffer too, so [`mr`] reads any register uniformly.
//!
//! Only built for seL4 (`aarch64` + `target_os = "none"`).

use core::arch::asm;

use crate::abi::{self, FAST_MESSAGE_REGISTERS, MSG_MAX_LENGTH, label, syscall as sys};
use crate::msginfo::MessageInfo;
use crate::regs::UserContext;

/// An error code a kernel invocation returned (`seL4_Error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed with seL4 error {code}")]
pub struct Sel4Error {
    /// The invocation.
    pub op: &'static str,
    /// `seL4_Error` value.
    pub code: u64,
}

/// Word index of message register 0 in `seL4_IPCBuffer` (after the tag).
const IPC_MSG_OFFSET: usize = 1;

fn ipc_word(i: usize) -> *mut u64 {
    (abi::board::IPC_BUFFER_VADDR as *mut u64).wrapping_add(i)
}

/// Message register `i` from the IPC buffer (0 beyond the maximum).
pub fn mr(i: usize) -> u64 {
    if i >= MSG_MAX_LENGTH {
        return 0;
    }
    // SAFETY: the Microkit tool maps the PD's IPC buffer (one page, writable) at
    // IPC_BUFFER_VADDR for the PD's whole life; `i < 120` keeps the access inside it.
    unsafe { ipc_word(IPC_MSG_OFFSET + i).read_volatile() }
}

/// Set message register `i` in the IPC buffer (ignored beyond the maximum).
pub fn set_mr(i: usize, value: u64) {
    if i >= MSG_MAX_LENGTH {
        return;
    }
    // SAFETY: as in `mr`.
    unsafe { ipc_word(IPC_MSG_OFFSET + i).write_volatile(value) }
}

fn spill(mrs: [u64; 4]) {
    for (i, v) in mrs.into_iter().enumerate() {
        set_mr(i, v);
    }
}

fn fast(len: usize) -> [u64; 4] {
    let mut v = [0; 4];
    for (i, w) in v
        .iter_mut()
        .enumerate()
        .take(len.min(FAST_MESSAGE_REGISTERS))
    {
        *w = mr(i);
    }
    v
}

/// `seL4_Call`: send `info` (MR0..3 from the IPC buffer) to `cap`, wait for the reply.
/// Returns the reply's tag; its message registers are in the IPC buffer.
pub fn call(cap: u64, info: MessageInfo) -> MessageInfo {
    let [mut m0, mut m1, mut m2, mut m3] = fast(info.length());
    let out_info: u64;
    // SAFETY: a system call; the kernel reads and writes only x0..x7 and the IPC buffer,
    // which is ours. Every register it may change is declared as an output.
    unsafe {
        asm!("svc #0",
            inout("x0") cap => _,
            inout("x1") info.0 => out_info,
            inout("x2") m0, inout("x3") m1, inout("x4") m2, inout("x5") m3,
            lateout("x6") _,
            in("x7") sys::CALL,
            options(nostack));
    }
    let _ = (&mut m0, &mut m1, &mut m2, &mut m3);
    spill([m0, m1, m2, m3]);
    MessageInfo(out_info)
}

/// `seL4_Send` of `info` to `cap` (MR0..3 from the IPC buffer).
pub fn send(cap: u64, info: MessageInfo) {
    let [m0, m1, m2, m3] = fast(info.length());
    // SAFETY: as in `call`.
    unsafe {
        asm!("svc #0",
            inout("x0") cap => _, inout("x1") info.0 => _,
            inout("x2") m0 => _, inout("x3") m1 => _, inout("x4") m2 => _, inout("x5") m3 => _,
            lateout("x6") _,
            in("x7") sys::SEND,
            options(nostack));
    }
}

/// `seL4_NBSend` of `info` to `cap`.
pub fn nb_send(cap: u64, info: MessageInfo) {
    let [m0, m1, m2, m3] = fast(info.length());
    // SAFETY: as in `call`.
    unsafe {
        asm!("svc #0",
            inout("x0") cap => _, inout("x1") info.0 => _,
            inout("x2") m0 => _, inout("x3") m1 => _, inout("x4") m2 => _, inout("x5") m3 => _,
            lateout("x6") _,
            in("x7") sys::NB_SEND,
            options(nostack));
    }
}

/// `seL4_Signal` on a notification (MCS: a send of an empty message).
pub fn signal(cap: u64) {
    send(cap, MessageInfo::new(0, 0));
}

/// `seL4_Recv` on `src` with reply object `reply`. Returns (badge, tag); MR0..3 are copied
/// to the IPC buffer.
pub fn recv(src: u64, reply: u64) -> (u64, MessageInfo) {
    let badge: u64;
    let info: u64;
    let (m0, m1, m2, m3): (u64, u64, u64, u64);
    // SAFETY: as in `call`.
    unsafe {
        asm!("svc #0",
            inout("x0") src => badge, lateout("x1") info,
            lateout("x2") m0, lateout("x3") m1, lateout("x4") m2, lateout("x5") m3,
            inout("x6") reply => _,
            in("x7") sys::RECV,
            options(nostack));
    }
    spill([m0, m1, m2, m3]);
    (badge, MessageInfo(info))
}

/// `seL4_NBRecv` on `src` with reply object `reply`: like [`recv`] when something is
/// waiting; otherwise returns at once with badge 0 (no Microkit event has badge 0: a
/// notification word has a channel bit set, a fault or a protected call a high bit).
pub fn nb_recv(src: u64, reply: u64) -> (u64, MessageInfo) {
    let badge: u64;
    let info: u64;
    let (m0, m1, m2, m3): (u64, u64, u64, u64);
    // SAFETY: as in `call`.
    unsafe {
        asm!("svc #0",
            inout("x0") src => badge, lateout("x1") info,
            lateout("x2") m0, lateout("x3") m1, lateout("x4") m2, lateout("x5") m3,
            inout("x6") reply => _,
            in("x7") sys::NB_RECV,
            options(nostack));
    }
    spill([m0, m1, m2, m3]);
    (badge, MessageInfo(info))
}

/// MCS: reply through reply object `reply` without receiving: a send on a reply object
/// capability is the kernel's reply invocation (`performInvocation_Reply`; MCS has no
/// `seL4_Reply` system call).
pub fn reply(reply: u64, info: MessageInfo) {
    send(reply, info);
}

/// `seL4_Wait` on `src` (no reply object). Returns the badge.
pub fn wait(src: u64) -> (u64, MessageInfo) {
    let badge: u64;
    let info: u64;
    // SAFETY: as in `call`.
    unsafe {
        asm!("svc #0",
            inout("x0") src => badge, lateout("x1") info,
            lateout("x2") _, lateout("x3") _, lateout("x4") _, lateout("x5") _,
            lateout("x6") _,
            in("x7") sys::WAIT,
            options(nostack));
    }
    (badge, MessageInfo(info))
}

/// `seL4_ReplyRecv`: reply `info` through `reply`, then receive on `src`.
pub fn reply_recv(src: u64, info: MessageInfo, reply: u64) -> (u64, MessageInfo) {
    let [m0, m1, m2, m3] = fast(info.length());
    let badge: u64;
    let out: u64;
    let (r0, r1, r2, r3): (u64, u64, u64, u64);
    // SAFETY: as in `call`.
    unsafe {
        asm!("svc #0",
            inout("x0") src => badge, inout("x1") info.0 => out,
            inout("x2") m0 => r0, inout("x3") m1 => r1, inout("x4") m2 => r2, inout("x5") m3 => r3,
            inout("x6") reply => _,
            in("x7") sys::REPLY_RECV,
            options(nostack));
    }
    spill([r0, r1, r2, r3]);
    (badge, MessageInfo(out))
}

/// `seL4_Yield`: give up the rest of the timeslice to threads of the same priority.
pub fn yield_now() {
    // SAFETY: a system call without arguments or results.
    unsafe {
        asm!("svc #0",
            lateout("x0") _, lateout("x1") _, lateout("x2") _, lateout("x3") _, lateout("x4") _,
            lateout("x5") _, lateout("x6") _,
            in("x7") sys::YIELD,
            options(nostack));
    }
}

/// `seL4_DebugPutChar` (debug kernels only; a no-op fault elsewhere).
pub fn debug_put_char(c: u8) {
    // SAFETY: a system call that only reads x0.
    unsafe {
        asm!("svc #0",
            inout("x0") u64::from(c) => _,
            lateout("x1") _, lateout("x2") _, lateout("x3") _, lateout("x4") _, lateout("x5") _,
            lateout("x6") _,
            in("x7") sys::DEBUG_PUT_CHAR,
            options(nostack));
    }
}

/// Print a string with [`debug_put_char`].
pub fn debug_puts(s: &str) {
    for b in s.bytes() {
        debug_put_char(b);
    }
}

/// `seL4_DebugHalt`: stop the whole system (debug kernels).
pub fn debug_halt() {
    // SAFETY: a system call without arguments.
    unsafe {
        asm!("svc #0",
            lateout("x0") _, lateout("x1") _, lateout("x2") _, lateout("x3") _, lateout("x4") _,
            lateout("x5") _, lateout("x6") _,
            in("x7") sys::DEBUG_HALT,
            options(nostack));
    }
}

fn invoke(op: &'static str, cap: u64, label_: u64, args: &[u64]) -> Result<MessageInfo, Sel4Error> {
    for (i, &a) in args.iter().enumerate() {
        set_mr(i, a);
    }
    let reply = call(cap, MessageInfo::new(label_, args.len()));
    match reply.label() {
        abi::NO_ERROR => Ok(reply),
        code => Err(Sel4Error { op, code }),
    }
}

/// `seL4_TCB_ReadRegisters(tcb, suspend = false, 0, count)`: the first `count` words of
/// the thread's `seL4_UserContext`. Overwrites the IPC buffer's message registers.
pub fn tcb_read_registers(tcb: u64, count: usize) -> Result<UserContext, Sel4Error> {
    let count = count.min(abi::USER_CONTEXT_WORDS);
    invoke(
        "seL4_TCB_ReadRegisters",
        tcb,
        label::TCB_READ_REGISTERS,
        &[0, count as u64],
    )?;
    let mut ctx = UserContext::default();
    for (i, w) in ctx.0.iter_mut().enumerate().take(count) {
        *w = mr(i);
    }
    Ok(ctx)
}

/// `seL4_TCB_WriteRegisters(tcb, resume, 0, count, ctx)`.
pub fn tcb_write_registers(
    tcb: u64,
    resume: bool,
    count: usize,
    ctx: &UserContext,
) -> Result<(), Sel4Error> {
    let count = count.min(abi::USER_CONTEXT_WORDS);
    set_mr(0, u64::from(resume));
    set_mr(1, count as u64);
    for (i, &w) in ctx.0.iter().enumerate().take(count) {
        set_mr(2 + i, w);
    }
    let reply = call(tcb, MessageInfo::new(label::TCB_WRITE_REGISTERS, 2 + count));
    match reply.label() {
        abi::NO_ERROR => Ok(()),
        code => Err(Sel4Error {
            op: "seL4_TCB_WriteRegisters",
            code,
        }),
    }
}

/// `seL4_TCB_Suspend`.
pub fn tcb_suspend(tcb: u64) -> Result<(), Sel4Error> {
    invoke("seL4_TCB_Suspend", tcb, label::TCB_SUSPEND, &[]).map(|_| ())
}

/// `seL4_TCB_Resume`.
pub fn tcb_resume(tcb: u64) -> Result<(), Sel4Error> {
    invoke("seL4_TCB_Resume", tcb, label::TCB_RESUME, &[]).map(|_| ())
}

/// `seL4_IRQHandler_Ack`.
pub fn irq_ack(irq_handler: u64) -> Result<(), Sel4Error> {
    invoke("seL4_IRQHandler_Ack", irq_handler, label::IRQ_ACK_IRQ, &[]).map(|_| ())
}

/// `seL4_ARM_VCPU_InjectIRQ`: put `virq` into list register `index` of the vCPU.
pub fn vcpu_inject_irq(
    vcpu: u64,
    virq: u16,
    priority: u8,
    group: u8,
    index: u8,
) -> Result<(), Sel4Error> {
    let w = u64::from(virq)
        | (u64::from(priority) << 16)
        | (u64::from(group) << 24)
        | (u64::from(index) << 32);
    invoke(
        "seL4_ARM_VCPU_InjectIRQ",
        vcpu,
        label::ARM_VCPU_INJECT_IRQ,
        &[w],
    )
    .map(|_| ())
}

/// `seL4_ARM_VCPU_ReadRegs`.
pub fn vcpu_read_reg(vcpu: u64, reg: u64) -> Result<u64, Sel4Error> {
    invoke(
        "seL4_ARM_VCPU_ReadRegs",
        vcpu,
        label::ARM_VCPU_READ_REG,
        &[reg],
    )
    .map(|_| mr(0))
}

/// `seL4_ARM_VCPU_WriteRegs`.
pub fn vcpu_write_reg(vcpu: u64, reg: u64, value: u64) -> Result<(), Sel4Error> {
    invoke(
        "seL4_ARM_VCPU_WriteRegs",
        vcpu,
        label::ARM_VCPU_WRITE_REG,
        &[reg, value],
    )
    .map(|_| ())
}

/// `seL4_ARM_VCPU_AckVPPI`: unmask virtual PPI `irq` after the guest handled it.
pub fn vcpu_ack_vppi(vcpu: u64, irq: u64) -> Result<(), Sel4Error> {
    invoke(
        "seL4_ARM_VCPU_AckVPPI",
        vcpu,
        label::ARM_VCPU_ACK_VPPI,
        &[irq],
    )
    .map(|_| ())
}
