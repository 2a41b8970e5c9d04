//! The VMM protection domain (seL4 only): a thin adapter that runs one VM on keel-vmm.
//!
//! Start-up ([`boot`]): find the payload ([`crate::payload`]), take the VM's plan out of
//! it (the same `keel_spec::plan::VmPlan` KVM builds from), build keel-vmm's [`VmmCore`]
//! from it with a software GICv2 and PSCI ([`SoftArm64`]) and this PD's host resources
//! (disk blobs of the payload, the console ring, the seeded entropy), load kernel, initrd
//! and device tree into guest RAM (which the Microkit tool mapped into this PD at the
//! parameters' `ram_vaddr`) and start vCPU 0. Then [`keel_vmm::run_exits`] answers every
//! exit; this PD's part is [`Sel4Exits`], the Microkit event loop that turns seL4 faults
//! into portable exits (keel-core's arm64 fault decoder) and writes the answers back into
//! the vCPUs' registers, and [`PdVm`], which starts and stops vCPU threads.
//!
//! Reset: when [`run_exits`] returns the guest's PSCI `SYSTEM_RESET` and the spec says
//! `on_reboot = "restart"` (the parameters' `restart_on_reboot`), the VM restarts in place
//! ([`restart`]): every vCPU suspended and its EL1 state reset, `VmmCore::reset` for the
//! devices, the UART and the software GIC/PSCI (the disks keep their bytes), kernel, initrd
//! and device tree loaded again as at the first boot, vCPU 0 started; then `run_exits`
//! again. The restart limit counts restarts within a minute of the generic timer's count
//! ([`crate::clock`]; over the VM's life if the firmware gave the counter no frequency).
//!
//! Network interfaces: each of the plan's `nics` is a virtio-net device on a
//! [`keel_net::port::VmmPort`] over the two ring regions this VMM shares with its network's
//! switch PD (the parameters' `nics`); its doorbell is a Microkit notification on the
//! port's channel, and the switch's notifications on that channel are the device's event
//! source. When a device stopped early after its batch limit
//! (`VirtioDevice::backlogged_event`), the event is delivered again once the PD has looked
//! at its other pending work (faults and notifications waiting at its endpoint), see
//! [`Sel4Exits::next`].
//!
//! Passed-through devices (`VmPlan::passthrough`, seL4 only): their registers are mapped
//! into the VM by the system file and never seen here; each of their interrupts arrives on
//! its own channel (`keel_spec::microkit::passthrough_channel`), is made pending in the
//! software distributor ([`SoftArm64::inject_spi`]) and is acknowledged to seL4 only when
//! the guest completes it ([`VgicHost::completed_spi`], at the vGIC maintenance fault).
//!
//! The VMM prints nothing on the seL4 debug console itself: its guest's console output
//! (8250 and virtio-console) and its own log lines go into its console ring, which the
//! console protection domain drains ([`crate::console`]).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use keel_core::arch::aarch64::fault::{self as kfault, Arm64Exit, Completion, GuestRegs, VmFault};
use keel_core::arch::aarch64::layout::{self, GicVersion};
use keel_core::arch::aarch64::vgic::VgicHost;
use keel_core::hv::{BootEntry, ExitAnswer, SystemEvent, VcpuExit};
use keel_core::irq::IrqLine;
use keel_core::memory::{GuestAddress, GuestRam, RawRegion};
use keel_core::restart::{RestartLimiter, RestartVerdict};
use keel_core::ring::{Consumer, Producer, RingWindow};
use keel_core::{HvError, Resume, Vcpu, VcpuId, Vm, VmEvent, VmExits};
use keel_net::port::{Doorbell, PortWindows, VmmPort};
use keel_net::ring::FrameWindow;
use keel_spec::VmPlan;
use keel_virtio::forward::ForwardGeometry;
use keel_virtio::forward_blk::{Clock, ForwardBell, ForwardLink};
use keel_virtio::net::NetBackend;
use keel_virtio::{
    BlockBackend, ConsoleOutput, EntropyError, EntropySource, EventSource, EventToken,
    MemoryBackend,
};
use keel_vmm::arm64::SoftArm64;
use keel_vmm::{
    BackendError, DeviceBackends, Interrupts, Level, LogSink, SerialOutput, StopSink, VmmCore,
    run_exits,
};

use crate::abi::{USER_CONTEXT_WORDS, microkit as mk, vcpu_reg};
use crate::fault::Fault;
use crate::microkit::{Event, vcpu_cap, vm_tcb_cap};
use crate::msginfo::MessageInfo;
use crate::payload::{self, ForwardWindow, NicWindows, PAYLOAD_VADDR, Sel4Params, VsockWindows};
use crate::regs::{self, UserContext};
use crate::syscall::{self as sys, debug_puts};

/// The VMM's heap (declared by `vmm_entry!` in the binary; checked against each plan's
/// worst case by [`crate::budget`]).
pub const HEAP_BYTES: usize = crate::budget::VMM_HEAP_BYTES;

/// The VMM's heap (the binary's global allocator forwards to it: `vmm_entry!`). Emptied
/// when the admin PD restarts this PD ([`forget_previous_run`]).
pub static HEAP: crate::heap::Heap<HEAP_BYTES> = crate::heap::Heap::new();

/// How many times `main` was entered: more than once when the admin PD restarted this PD
/// at its entry point after a fault.
static STARTS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Test knob (parameters' `test_fault`): a guest write to [`payload::TEST_FAULT_GPA`] makes
/// this PD fault.
static FAULT_KNOB: AtomicBool = AtomicBool::new(false);

/// The control doorbell's guest-physical address (0: not a control VM; parameters'
/// `control_doorbell`).
static DOORBELL: AtomicU64 = AtomicU64::new(0);

/// This PD is a pool slot waiting for the admin PD to start it (the run before the next
/// start never booted a VM).
static POOL_WAITING: AtomicBool = AtomicBool::new(false);

/// The channel to the admin PD (parameters' `admin_channel`).
static ADMIN_CHANNEL: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Drop what the run before a restart left in this PD's statics, without running any of
/// its destructors, and empty the heap: that run's stack is gone, and a fault may have
/// stopped it holding a lock.
///
/// # Safety
///
/// Called first thing in a restarted `main`: nothing of the previous run is used again.
unsafe fn forget_previous_run() {
    // SAFETY: the previous run, which may have held these locks, will never run again.
    unsafe {
        CONSOLE.force_unlock();
        RING.force_unlock();
    }
    // The line buffer's heap block belongs to the previous run: forget it, do not free it.
    core::mem::forget(core::mem::take(&mut CONSOLE.lock().buf));
    if let Some(r) = RING.lock().as_mut() {
        r.unnotified = 0;
    }
    for a in [&PARKED, &INJECTED, &BACKLOG, &EXITS] {
        a.store(0, Ordering::SeqCst);
    }
    // SAFETY: every static that owned a heap block was forgotten above (the console line);
    // the others hold none. Nothing allocates concurrently (the PD has one thread).
    unsafe { HEAP.reset() };
}

/// Formatted output on the seL4 debug console.
#[derive(Debug)]
pub struct DebugOut;

impl Write for DebugOut {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        debug_puts(s);
        Ok(())
    }
}

macro_rules! log {
    ($($t:tt)*) => {{
        // Format first, write in one go: the console PD prints whole lines.
        let mut line = String::new();
        let _ = writeln!(line, $($t)*);
        console_write(line.as_bytes());
    }};
}

/// The budget of the kernel-call failures the VMM meets on a guest's behalf (injecting an
/// interrupt, acknowledging a virtual PPI, parking or resuming a vCPU): each can recur at
/// every interrupt or `WFI`, so they share one count-based limit
/// ([`keel_vmm::RateLimit`]: the first few, then every 2^k-th with the count suppressed).
/// The guest's own bad accesses are limited by keel-vmm's dispatcher, as on KVM.
static KERNEL_ERRORS: keel_vmm::RateLimit = keel_vmm::RateLimit::new(KERNEL_ERROR_LOG_LIMIT);

/// How many kernel-call failures are logged before only every 2^k-th is.
const KERNEL_ERROR_LOG_LIMIT: u32 = 8;

/// `log!` under [`KERNEL_ERRORS`], with the count suppressed appended.
macro_rules! log_limited {
    ($($t:tt)*) => {{
        let allowed = KERNEL_ERRORS.allow();
        if allowed.logs() {
            log!("{}{}", format_args!($($t)*), allowed.suffix());
        }
    }};
}

/// The guest's console output (8250 and virtio-console alike), line-buffered so that the
/// VMM's own log lines never land inside a guest line.
struct LineOut {
    buf: Vec<u8>,
}

static CONSOLE: spin::Mutex<LineOut> = spin::Mutex::new(LineOut { buf: Vec::new() });

const LINE_MAX: usize = crate::console::LINE_MAX;

/// This VMM's console ring to the console PD, which alone prints on the debug console
/// (no state is shared with other VMMs: a VMM that stops mid-line stalls nobody).
struct ConsoleRing {
    ring: Producer,
    channel: u32,
    unnotified: usize,
}

impl ConsoleRing {
    fn write(&mut self, bytes: &[u8]) {
        // Never wait for the console: a full ring drops the bytes and counts them in the
        // ring (the console reports the count); so does a wild consumer index.
        let _ = self.ring.write(bytes);
        self.unnotified += bytes.len();
        if bytes.contains(&b'\n') || self.unnotified >= LINE_MAX {
            self.notify();
        }
    }

    fn notify(&mut self) {
        self.unnotified = 0;
        let _ = crate::pd::notify(self.channel);
    }
}

/// The ring, once attached (before that, and in a system without a console PD, output goes
/// straight to the debug console).
static RING: spin::Mutex<Option<ConsoleRing>> = spin::Mutex::new(None);

/// Test knob (parameters' `test_stall`): stall at the VM's first fault.
static STALL: AtomicBool = AtomicBool::new(false);

fn console_write(bytes: &[u8]) {
    // `try_lock`: the only way to find it held is a panic while writing; print directly.
    if let Some(mut g) = RING.try_lock() {
        if let Some(r) = g.as_mut() {
            r.write(bytes);
            return;
        }
    }
    for &b in bytes {
        sys::debug_put_char(b);
    }
}

/// Attach this VMM's console ring (parameters' `console_ring`) and read the stall knob.
fn console_attach(params: &Sel4Params) {
    STALL.store(params.test_stall, Ordering::Relaxed);
    if params.console_ring == 0 || RING.lock().is_some() {
        return;
    }
    let Ok(len) = usize::try_from(params.console_ring_len) else {
        log!(
            "keel-sel4: console ring length {:#x} does not fit; printing directly",
            params.console_ring_len
        );
        return;
    };
    // SAFETY: the system file `keel sel4 build` wrote maps this VMM's console ring region
    // read-write at `console_ring` (and into the console PD, the only other party) for the
    // PD's whole life; no Rust reference points into it.
    let w = unsafe { RingWindow::new(params.console_ring as *mut u8, len) };
    match w {
        Ok(w) => {
            *RING.lock() = Some(ConsoleRing {
                ring: Producer::attach(w),
                channel: params.console_channel,
                unnotified: 0,
            });
        }
        Err(e) => log!("keel-sel4: console ring: {e}; printing directly"),
    }
}

/// The console channel's bit in a notification badge (0 without a console ring).
fn console_channel_bit() -> u64 {
    RING.lock()
        .as_ref()
        .map_or(0, |r| 1u64.checked_shl(r.channel).unwrap_or(0))
}

fn console_put(bytes: &[u8]) {
    let mut c = CONSOLE.lock();
    for &b in bytes {
        c.buf.push(b);
        if b == b'\n' || c.buf.len() >= LINE_MAX {
            console_write(&c.buf);
            c.buf.clear();
        }
    }
}

/// Print what is left of the current console line, ending it.
fn console_flush() {
    if !CONSOLE.lock().buf.is_empty() {
        console_put(b"\n");
    }
}

/// Pass the guest's partial line on as it is (the ring's flush mark), e.g. before a panic
/// message.
fn console_flush_partial() {
    let (Some(mut c), Some(mut g)) = (CONSOLE.try_lock(), RING.try_lock()) else {
        return;
    };
    if let Some(r) = g.as_mut() {
        if !c.buf.is_empty() {
            let _ = r.ring.write(&c.buf);
            c.buf.clear();
        }
        r.ring.flush();
        r.notify();
    }
}

/// The test knob: leave a partial line in the ring, then never answer another fault
/// (this VM's vCPUs stay blocked).
fn stall_forever() -> ! {
    if let Some(r) = RING.lock().as_mut() {
        let _ = r.ring.write(b"KEEL-STALL-PARTIAL");
        r.notify();
    }
    idle()
}

/// The fault test knob: a data access to an address this PD does not map (page 0), which
/// seL4 turns into a fault message to the admin PD, the VMM's parent.
fn fault_on_purpose() -> ! {
    console_flush();
    log!(
        "keel-sel4: test knob: guest wrote {:#x}; faulting on purpose",
        payload::TEST_FAULT_GPA
    );
    // SAFETY: not sound to dereference, and that is the point: nothing is mapped at
    // address 0x10 of a Microkit PD (programs start at 0x200000), so the load faults and
    // the kernel suspends this thread and tells its parent; it never returns a value.
    let v = unsafe { core::ptr::read_volatile(0x10 as *const u64) };
    panic!("test knob: the load of address 0x10 returned {v:#x} instead of faulting")
}

/// virtio-console output: the console ring.
struct DebugConsole;

impl ConsoleOutput for DebugConsole {
    fn write(&mut self, bytes: &[u8]) {
        console_put(bytes);
    }
}

/// VM exits handled so far: stirred into the rng stream.
static EXITS: AtomicU64 = AtomicU64::new(0);

/// Entropy for virtio-rng: a SplitMix64 stream seeded at build time (from the build host's
/// /dev/urandom, carried in the payload) and stirred with the VM-exit count and the
/// generic timer's count ([`crate::clock`]) on every request. The PD has no hardware RNG
/// (the Cortex-A53 has no RNDR). NOT cryptographically strong: whoever reads the image
/// knows the seed, and the counts are guessable (see docs/sel4.md).
struct SeededEntropy(u64, Option<crate::clock::Counter>);

impl SeededEntropy {
    fn new(seed: &[u8; 32]) -> SeededEntropy {
        let s = seed.chunks(8).fold(0u64, |acc, c| {
            acc.rotate_left(17) ^ u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))
        });
        SeededEntropy(s, crate::clock::Counter::new())
    }
}

impl EntropySource for SeededEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        self.0 ^= EXITS.load(Ordering::Relaxed).rotate_left(29)
            ^ self.1.map_or(0, |c| c.ticks()).rotate_left(7);
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// The UART's output: the console ring.
struct SerialConsole;

impl SerialOutput for SerialConsole {
    fn write(&mut self, byte: u8) {
        console_put(&[byte]);
    }
}

/// keel-vmm's messages for this VM: `keel-sel4: vm <name>: …` lines into the console ring.
struct Sel4Log {
    vm: String,
}

impl LogSink for Sel4Log {
    fn log(&self, level: Level, args: core::fmt::Arguments<'_>) {
        let level = match level {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info | Level::Debug => "",
        };
        log!("keel-sel4: vm {}: {level}{args}", self.vm);
    }
}

/// The seL4 side of keel-vmm's software GIC: list registers, waking parked vCPUs, PPIs.
struct Sel4Gic;

/// List registers of the GICv2 virtual CPU interface of QEMU `virt` (`GICH_VTR.ListRegs + 1`).
const LIST_REGISTERS: u8 = 4;
/// SPIs of the emulated distributor (UART, virtio-mmio slots).
const SPIS: u32 = 64;

impl VgicHost for Sel4Gic {
    fn inject_list_register(&mut self, vcpu: u32, lr: u8, intid: u32, priority: u8, group: u8) {
        // A GICv2 list register keeps the top 5 priority bits.
        if let Err(e) = sys::vcpu_inject_irq(vcpu_cap(vcpu), intid as u16, priority >> 3, group, lr)
        {
            log_limited!("keel-sel4: vcpu {vcpu}: inject irq {intid} into LR {lr}: {e}");
        }
        INJECTED.fetch_or(1 << (vcpu & 63), Ordering::SeqCst);
    }

    fn kick(&mut self, vcpu: u32) {
        unpark(vcpu);
    }

    /// The guest completed `intid`; a virtual PPI (the timer) is unmasked again.
    fn ack_ppi(&mut self, vcpu: u32, intid: u32) {
        if let Err(e) = sys::vcpu_ack_vppi(vcpu_cap(vcpu), u64::from(intid)) {
            log_limited!("keel-sel4: vcpu {vcpu}: ack vppi {intid}: {e}");
        }
    }

    /// The guest completed SPI `intid`: when it is a passed-through interrupt, acknowledge
    /// it to seL4 now (not when it arrived), so that the device's next interrupt reaches
    /// the guest only after it handled this one (a level line the guest has not cleared
    /// yet would otherwise fire again at once).
    fn completed_spi(&mut self, vcpu: u32, intid: u32) {
        let channel = (0..mk::MAX_CHANNELS)
            .find(|&c| PASSTHROUGH[c as usize].load(Ordering::Relaxed) == intid);
        if let Some(c) = channel {
            if let Err(e) = crate::pd::irq_ack(c) {
                log_limited!("keel-sel4: vcpu {vcpu}: passed-through irq {intid}: ack: {e}");
            }
        }
    }
}

/// Passed-through interrupts: the INTID arriving on each channel (0: none). Filled at boot
/// from the plan ([`start_passthrough`]); the channel of the `k`-th interrupt is
/// `keel_spec::microkit::passthrough_channel(k)`, as the system file says.
static PASSTHROUGH: [core::sync::atomic::AtomicU32; mk::MAX_CHANNELS as usize] =
    [const { core::sync::atomic::AtomicU32::new(0) }; mk::MAX_CHANNELS as usize];

/// The channels of the passed-through interrupts (bit n: channel n).
fn passthrough_channels() -> u64 {
    (0..mk::MAX_CHANNELS)
        .filter(|&c| PASSTHROUGH[c as usize].load(Ordering::Relaxed) != 0)
        .fold(0, |m, c| m | 1u64 << c)
}

/// Take the VM's passed-through interrupts from its plan and acknowledge each once, so that
/// it can fire (libmicrokit does that at start for every IRQ: seL4 issue #1536). An INTID
/// beyond the emulated distributor cannot be delivered and is refused.
fn start_passthrough(plan: &VmPlan) -> Result<(), String> {
    for slot in &PASSTHROUGH {
        slot.store(0, Ordering::Relaxed);
    }
    let irqs = plan.passthrough.iter().flat_map(|d| d.irqs.iter());
    for (k, &irq) in (0u32..).zip(irqs) {
        if !(32..32 + SPIS).contains(&irq) {
            return Err(alloc::format!(
                "passed-through irq {irq}: the emulated distributor has INTIDs 32..{}",
                32 + SPIS
            ));
        }
        let channel = keel_spec::microkit::passthrough_channel(k);
        let slot = PASSTHROUGH
            .get(channel as usize)
            .ok_or_else(|| alloc::format!("passed-through irq {irq}: no channel {channel}"))?;
        slot.store(irq, Ordering::Relaxed);
        crate::pd::irq_ack(channel)
            .map_err(|e| alloc::format!("passed-through irq {irq} on channel {channel}: {e}"))?;
    }
    Ok(())
}

/// Acknowledge every passed-through interrupt again (a VM restart: one the old guest never
/// completed would stay masked).
fn reack_passthrough() {
    for c in crate::microkit::channels(passthrough_channels()) {
        if let Err(e) = crate::pd::irq_ack(c) {
            log_limited!("keel-sel4: passed-through irq on channel {c}: ack: {e}");
        }
    }
}

/// vCPUs parked in `WFI` (bit n: vCPU n), suspended until an interrupt or a tick.
///
/// seL4 traps `WFI`; answering it at once makes an idle vCPU spin through traps and take
/// half the core from a busy sibling. A VMM cannot keep the fault reply while it serves
/// other vCPUs (a PD has one reply object), so an idle vCPU is *suspended* instead
/// (`TCB_Suspend`, PC already past the `WFI`) and resumed (`TCB_Resume`) when an interrupt
/// is put in its list registers or when any vCPU's timer ticks (its own timer cannot fire
/// while it is suspended, so the sibling's tick stands in for it). The last running vCPU
/// of a VM is never parked: its own timer keeps time for all.
static PARKED: AtomicU64 = AtomicU64::new(0);

/// vCPUs that got an interrupt since their last `WFI` was answered (bit n: vCPU n).
///
/// With vCPUs on other cores, a vCPU's `WFI` fault can wait at the VMM's endpoint while the
/// VMM injects an interrupt into it (the kick finds it not parked yet); parking it then
/// would leave that interrupt waiting for a sibling's tick. Such a vCPU is answered at once.
static INJECTED: AtomicU64 = AtomicU64::new(0);

fn unpark(vcpu: u32) {
    let bit = 1u64 << (vcpu & 63);
    if PARKED.fetch_and(!bit, Ordering::SeqCst) & bit != 0 {
        if let Err(e) = sys::tcb_resume(vm_tcb_cap(vcpu)) {
            log_limited!("keel-sel4: vcpu {vcpu}: resume after WFI: {e}");
        }
    }
}

fn unpark_all() {
    let parked = PARKED.load(Ordering::SeqCst);
    for v in crate::microkit::channels(parked) {
        unpark(v);
    }
}

const SPSR_EL1H_MASKED: u64 = 0x3c5;

fn call_error(e: sys::Sel4Error) -> HvError {
    HvError::Call {
        op: e.op,
        errno: i32::try_from(e.code).unwrap_or(i32::MAX),
    }
}

/// The VM as keel-vmm sees it from this PD: its RAM (mapped here) and its vCPU threads
/// (the PD's Microkit children), started and stopped with TCB invocations.
struct PdVm {
    ram: GuestRam,
    vcpus: u32,
}

/// The vCPUs of a [`PdVm`] are threads the Microkit tool created; they run through
/// [`Sel4Exits`], not through [`Vcpu::run`]. This type only completes [`Vm`]'s signature.
struct PdVcpu;

impl Vcpu for PdVcpu {
    fn id(&self) -> VcpuId {
        0
    }
    fn set_boot_entry(&mut self, _entry: &BootEntry) -> Result<(), HvError> {
        Err(unsupported("setting a vCPU's entry outside start_vcpu"))
    }
    fn run(&mut self, _answer: ExitAnswer) -> Result<VcpuExit, HvError> {
        Err(unsupported(
            "running a vCPU by itself (exits come from Sel4Exits)",
        ))
    }
}

fn unsupported(what: &'static str) -> HvError {
    HvError::Unsupported {
        backend: "sel4",
        what,
    }
}

impl Vm for PdVm {
    type Vcpu = PdVcpu;

    fn ram(&self) -> &GuestRam {
        &self.ram
    }

    fn create_vcpu(&self, _id: VcpuId) -> Result<PdVcpu, HvError> {
        Err(unsupported(
            "creating vCPUs (the system file declares them)",
        ))
    }

    fn irq_line(&self, _irq: u32) -> Result<Arc<dyn IrqLine>, HvError> {
        Err(unsupported(
            "in-kernel interrupt lines (the VMM models the GIC)",
        ))
    }

    /// Start vCPU `id` at `entry`, x1..x3 zero (the arm64 boot protocol asks for that, and
    /// after a reset they hold the old run's values), EL1h, interrupts masked, MMU off.
    fn start_vcpu(&self, id: VcpuId, entry: &BootEntry) -> Result<(), HvError> {
        if id >= self.vcpus {
            return Err(HvError::Invalid {
                what: "vcpu",
                value: id.into(),
            });
        }
        let &BootEntry::Arm64 { pc, x0 } = entry else {
            return Err(unsupported("a non-arm64 boot entry"));
        };
        let mut ctx = UserContext::default();
        ctx.0[regs::PC] = pc;
        ctx.0[regs::SPSR] = SPSR_EL1H_MASKED;
        ctx.0[regs::X0] = x0;
        // Context words x0, x1, x2, x3 follow each other (seL4_UserContext order).
        sys::tcb_write_registers(vm_tcb_cap(id), true, regs::X0 + 4, &ctx).map_err(call_error)
    }

    fn stop_vcpu(&self, id: VcpuId) -> Result<(), HvError> {
        if id >= self.vcpus {
            return Err(HvError::Invalid {
                what: "vcpu",
                value: id.into(),
            });
        }
        sys::tcb_suspend(vm_tcb_cap(id)).map_err(call_error)
    }
}

/// No platform device of an arm64 VM asks to stop through the sink (PSCI's stops come back
/// from the exit handler): it only records a request, for completeness.
#[derive(Default)]
struct PdStop(AtomicBool);

impl StopSink for PdStop {
    fn guest_event(&self, _event: SystemEvent) {
        self.0.store(true, Ordering::Release);
    }
    fn stopping(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The host resources of the VM's devices in this PD: the payload's disk blobs, the debug
/// console, the seeded entropy.
struct PdBackends {
    /// `(offset, len)` of each disk blob in the payload, in the plan's order.
    disks: Vec<Option<(usize, usize)>>,
    seed: [u8; 32],
    /// Each interface's rings and channel (parameters' `nics`), handed out once.
    nics: Vec<Option<NicWindows>>,
    /// Each served disk's forwarding region and channel (parameters' `forwards`), handed
    /// out once.
    forwards: Vec<Option<ForwardWindow>>,
    /// A storage VM's channel to each client (parameters' `serves`).
    serves: Vec<u32>,
    /// Each vsock peer's rings and channel (parameters' `vsock`, the plan's `vsock.peers`
    /// order), handed out once.
    vsock: Vec<Option<VsockWindows>>,
}

/// Events the VMM has received (faults of its vCPUs, notifications): how often it looks at
/// its devices' timeouts when no notification comes ([`POLL_EVERY_TICKS`]), and the
/// fallback clock of [`VmmClock`].
static TICKS: AtomicU64 = AtomicU64::new(0);

/// The VMM's time for block-forwarding timeouts: the generic timer's physical count
/// (`CNTPCT_EL0`, [`crate::clock`]), in milliseconds. A served disk's timeout
/// (`FORWARD_TIMEOUT_MS`, 5000) is then 5 s of real time, noticed at the VMM's next event:
/// a notification, a vCPU fault (the guest's timer ticks included), or the poll every
/// [`POLL_EVERY_TICKS`] events (docs/driver-vms.md "seL4").
///
/// Only if the firmware left the counter's frequency at 0 (no clock) does it count
/// [`TICKS`] instead, one "millisecond" per event, and the VMM says so at start.
struct VmmClock(Option<crate::clock::Counter>);

impl VmmClock {
    fn new() -> VmmClock {
        VmmClock(crate::clock::Counter::new())
    }
}

impl Clock for VmmClock {
    fn now_ms(&self) -> u64 {
        match &self.0 {
            Some(counter) => counter.now_ms(),
            None => TICKS.load(Ordering::Relaxed),
        }
    }
}

/// How many events apart the VMM polls its devices that ask for polls (a served disk's
/// timeouts) when no notification comes.
const POLL_EVERY_TICKS: u64 = 64;

/// A served disk's bell: a notification to the storage VM's VMM on the link's channel.
struct LinkBell(u32);

impl ForwardBell for LinkBell {
    fn ring(&mut self) {
        // The channel is in the system file by construction; a refusal can only mean a
        // mismatched image, and the device's timeout covers a storage VM never told.
        let _ = crate::pd::notify(self.0);
    }
}

/// A storage VM's clients' channels (bit n: channel n): a notification on any of them is
/// one doorbell input byte.
static SERVE_MASK: AtomicU64 = AtomicU64::new(0);
/// A client rang since the doorbell's last read.
static SERVE_RUNG: AtomicBool = AtomicBool::new(false);

/// The storage VM's doorbell output: byte `i` notifies client `i` (its plan's `serves`).
struct DoorbellOut {
    channels: Vec<u32>,
    /// Bytes naming no client (a confused or hostile agent), counted.
    unknown: u64,
}

impl ConsoleOutput for DoorbellOut {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.channels.get(usize::from(b)) {
                Some(&c) => {
                    let _ = crate::pd::notify(c);
                }
                None => self.unknown = self.unknown.saturating_add(1),
            }
        }
    }
}

/// The storage VM's doorbell input: one byte (`!`) whenever a client rang since the last
/// read. Its event source is the first client's channel; [`notified`] raises that bit
/// whenever any client's channel is notified.
struct DoorbellIn(u32);

impl keel_virtio::ConsoleInput for DoorbellIn {
    fn event_source(&self) -> Option<EventSource> {
        Some(EventSource(u64::from(self.0)))
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        if buf.is_empty() || !SERVE_RUNG.swap(false, Ordering::SeqCst) {
            return 0;
        }
        buf[0] = b'!';
        1
    }
}

/// A ring pair's doorbell: a Microkit notification on its channel (to the network's switch
/// PD for a port, to the peer's VMM PD for a vsock pair).
struct ChannelBell(u32);

impl Doorbell for ChannelBell {
    fn ring(&self) {
        // The channel is in the system file by construction: a refusal can only mean a
        // mismatched image, and a doorbell must not fail (the switch sees the frame later).
        let _ = crate::pd::notify(self.0);
    }
}

impl DeviceBackends for PdBackends {
    fn block(&mut self, plan: &VmPlan, disk: usize) -> Result<Box<dyn BlockBackend>, BackendError> {
        let missing =
            || BackendError::Unavailable(alloc::format!("no payload blob for disk {disk}"));
        let d = plan.disks.get(disk).ok_or_else(missing)?;
        // Each blob is handed out once: the block device then owns its bytes.
        let (off, len) = self
            .disks
            .get_mut(disk)
            .and_then(Option::take)
            .ok_or_else(missing)?;
        // SAFETY: `payload::parse` checked that the blob lies inside the payload segment,
        // which is mapped writable at PAYLOAD_VADDR for the PD's life; the blob was just
        // taken out of `disks`, so no other reference to these bytes is ever made (the
        // kernel, initrd and plan blobs are other, disjoint ranges).
        let bytes: &'static mut [u8] =
            unsafe { core::slice::from_raw_parts_mut((PAYLOAD_VADDR as *mut u8).add(off), len) };
        Ok(if d.read_only {
            Box::new(MemoryBackend::read_only(bytes))
        } else {
            Box::new(MemoryBackend::new(bytes))
        })
    }

    fn console(
        &mut self,
        _plan: &VmPlan,
        _port: usize,
    ) -> Result<Box<dyn ConsoleOutput>, BackendError> {
        Ok(Box::new(DebugConsole))
    }

    /// Served disk `disk`: the rings over its forwarding region (mapped into this PD by
    /// the system file), a bell notifying the storage VM's VMM on the link's channel, that
    /// channel as the wake-up, [`VmmClock`] and ids beyond every earlier run's.
    fn served_block(&mut self, plan: &VmPlan, disk: usize) -> Result<ForwardLink, BackendError> {
        let unavailable = |what: String| BackendError::Unavailable(what);
        let served = plan
            .disks
            .get(disk)
            .and_then(|d| d.served.as_ref())
            .ok_or_else(|| unavailable(alloc::format!("disk {disk} is not served")))?;
        let w = self
            .forwards
            .iter_mut()
            .find(|w| w.as_ref().is_some_and(|w| w.disk as usize == disk))
            .and_then(Option::take)
            .ok_or_else(|| unavailable(alloc::format!("no forwarding region for disk {disk}")))?;
        let len = usize::try_from(w.len)
            .ok()
            .filter(|&l| l as u64 >= served.region_len)
            .ok_or_else(|| {
                unavailable(alloc::format!(
                    "disk {disk}: region of {:#x} bytes, the link needs {:#x}",
                    w.len,
                    served.region_len
                ))
            })?;
        let geometry = ForwardGeometry {
            slots: served.slots,
            max_data: served.max_data as usize,
        };
        // SAFETY: the system file maps this link's region read-write at `w.vaddr` (`w.len`
        // bytes) into this PD and into the storage VM only, for the PD's whole life; the
        // window is handed out once (taken out of `forwards`) and no Rust reference points
        // into it. The storage VM is held to the ring protocol only.
        let windows = unsafe { geometry.windows(w.vaddr as *mut u8, len) }
            .map_err(|e| unavailable(alloc::format!("disk {disk}: {e}")))?;
        // Ids beyond any an earlier run of this PD used (an admin restart): 2^40 per run.
        let first_id = u64::from(STARTS.load(Ordering::SeqCst).max(1)) << 40;
        Ok(ForwardLink {
            windows,
            bell: Box::new(LinkBell(w.channel)),
            wake: Some(EventSource(u64::from(w.channel))),
            clock: Box::new({
                let clock = VmmClock::new();
                if clock.0.is_none() {
                    log!(
                        "keel-sel4: disk {disk}: the generic timer's frequency (CNTFRQ_EL0) is 0: its timeout counts VMM events, not time"
                    );
                }
                clock
            }),
            first_id,
        })
    }

    /// A storage VM's doorbell: input when any client's channel is notified, output byte
    /// `i` notifies client `i`.
    fn doorbell(&mut self, plan: &VmPlan) -> Result<keel_vmm::devices::DoorbellPair, BackendError> {
        let Some(&first) = self.serves.first() else {
            return Err(BackendError::Unavailable(alloc::format!(
                "vm {:?}: a doorbell without clients' channels",
                plan.name
            )));
        };
        let mask = self
            .serves
            .iter()
            .fold(0u64, |m, &c| m | 1u64.checked_shl(c).unwrap_or(0));
        SERVE_MASK.store(mask, Ordering::SeqCst);
        Ok((
            Box::new(DoorbellOut {
                channels: self.serves.clone(),
                unknown: 0,
            }),
            Box::new(DoorbellIn(first)),
        ))
    }

    fn entropy(&mut self, _plan: &VmPlan) -> Result<Box<dyn EntropySource>, BackendError> {
        Ok(Box::new(SeededEntropy::new(&self.seed)))
    }

    /// Interface `nic`: a [`VmmPort`] over its two ring regions, ringing the switch on the
    /// port's channel; the switch's notifications on that channel are its event source.
    fn net(&mut self, _plan: &VmPlan, nic: usize) -> Result<Box<dyn NetBackend>, BackendError> {
        let w = self
            .nics
            .get_mut(nic)
            .and_then(Option::take)
            .ok_or_else(|| {
                BackendError::Unavailable(alloc::format!("no port rings for interface {nic}"))
            })?;
        let len = usize::try_from(w.ring_len).map_err(|_| {
            BackendError::Unavailable(alloc::format!(
                "interface {nic}: ring length {:#x} does not fit",
                w.ring_len
            ))
        })?;
        let window = |vaddr: u64| {
            // SAFETY: the system file maps this interface's ring region read-write at
            // `vaddr` (at least `ring_len` bytes) into this PD and into its network's
            // switch PD only, for the PD's whole life; the windows are handed out once
            // (taken out of `nics`), and no Rust reference points into them. The switch is
            // held to the ring protocol only: what it writes costs only this port.
            unsafe { FrameWindow::new(vaddr as *mut u8, len, u64::from(w.slots)) }.map_err(|e| {
                BackendError::Unavailable(alloc::format!(
                    "interface {nic}: ring at {vaddr:#x}: {e}"
                ))
            })
        };
        let windows = PortWindows {
            to_switch: window(w.to_switch)?,
            from_switch: window(w.from_switch)?,
        };
        Ok(Box::new(VmmPort::new(
            windows,
            Box::new(ChannelBell(w.channel)),
            Some(EventSource(u64::from(w.channel))),
        )))
    }

    /// Vsock peer `peer`: a [`VmmPort`] over the pair's two rings (this VMM produces `tx`
    /// and consumes `rx`; the peer's VMM the other way round), ringing the peer's VMM on
    /// the pair's channel; the peer's notifications on that channel are the link's event
    /// source (the device's `PEER_EVENT_BASE + peer`, delivered by [`deliver_events`]).
    /// The device's host is the default `NoHost`: seL4 has no host side.
    fn vsock_peer(
        &mut self,
        plan: &VmPlan,
        peer: usize,
    ) -> Result<Box<dyn NetBackend>, BackendError> {
        let unavailable = |what: String| BackendError::Unavailable(what);
        let planned = plan
            .vsock
            .as_ref()
            .and_then(|v| v.peers.get(peer))
            .ok_or_else(|| unavailable(alloc::format!("vsock peer {peer} is not planned")))?;
        let w = self
            .vsock
            .get_mut(peer)
            .and_then(Option::take)
            .ok_or_else(|| unavailable(alloc::format!("no rings for vsock peer {peer}")))?;
        if w.pair as usize != planned.pair {
            return Err(unavailable(alloc::format!(
                "vsock peer {peer} ({:?}): rings of pair {}, the plan's pair is {}",
                planned.vm,
                w.pair,
                planned.pair
            )));
        }
        let len = usize::try_from(w.ring_len).map_err(|_| {
            unavailable(alloc::format!(
                "vsock peer {peer}: ring length {:#x} does not fit",
                w.ring_len
            ))
        })?;
        let window = |vaddr: u64| {
            // SAFETY: the system file maps this pair's two ring regions read-write at `tx`
            // and `rx` (at least `ring_len` bytes each) into this PD and into the peer's
            // VMM PD only (never into a guest), for the PD's whole life; the windows are
            // handed out once (taken out of `vsock`), and no Rust reference points into
            // them. The peer's VMM is held to the ring protocol only: what it writes costs
            // only this link.
            unsafe { FrameWindow::new(vaddr as *mut u8, len, u64::from(w.slots)) }.map_err(|e| {
                unavailable(alloc::format!("vsock peer {peer}: ring at {vaddr:#x}: {e}"))
            })
        };
        let windows = PortWindows {
            to_switch: window(w.tx)?,
            from_switch: window(w.rx)?,
        };
        Ok(Box::new(VmmPort::new(
            windows,
            Box::new(ChannelBell(w.channel)),
            Some(EventSource(u64::from(w.channel))),
        )))
    }
}

/// Device events waiting to be delivered again (bit n: channel n): a device stopped after
/// its batch limit with more work behind an edge-triggered source that will not signal
/// again. Set by [`deliver_events`], taken by [`Sel4Exits::next`].
static BACKLOG: AtomicU64 = AtomicU64::new(0);

/// The host events of the VM's devices: `(device index, token, channel bit)`, and the
/// devices that ask for polls (a served disk's timeouts), fixed once the devices are built
/// (a backend's event source and poll interval never change).
struct DeviceEvents(Vec<(usize, EventToken, u64)>, Vec<usize>);

impl DeviceEvents {
    fn of(core: &VmmCore) -> DeviceEvents {
        let polled = core
            .devices()
            .iter()
            .enumerate()
            .filter(|(_, d)| d.transport.poll_interval_ms().is_some())
            .map(|(i, _)| i)
            .collect();
        let mut v = Vec::new();
        for (i, d) in core.devices().iter().enumerate() {
            for (token, source) in d.transport.event_sources() {
                let bit = u32::try_from(source.0)
                    .ok()
                    .filter(|&c| c < mk::MAX_CHANNELS)
                    .map_or(0, |c| 1u64 << c);
                if bit != 0 {
                    v.push((i, token, bit));
                }
            }
        }
        DeviceEvents(v, polled)
    }

    /// Whether any device asks for polls.
    fn polls(&self) -> bool {
        !self.1.is_empty()
    }
}

/// Deliver the device events signalled in `channels`; note the ones the devices want
/// delivered again.
fn deliver_events(core: &VmmCore, events: &DeviceEvents, channels: u64) {
    let mut backlog = 0;
    for &(i, token, bit) in &events.0 {
        if channels & bit == 0 {
            continue;
        }
        let Some(d) = core.devices().get(i) else {
            continue;
        };
        d.handle_event(token, core.log());
        if d.transport.backlogged_event() == Some(token) {
            backlog |= bit;
        }
    }
    if backlog != 0 {
        BACKLOG.fetch_or(backlog, Ordering::SeqCst);
    }
}

/// How a vCPU's last exit is completed.
// One slot per vCPU, allocated once: boxing the registers would allocate on every exit.
#[allow(clippy::large_enum_variant)]
enum Pending {
    /// Write the answer into the registers read at the fault (the trapped instruction is
    /// skipped), then reply.
    Registers {
        ctx: UserContext,
        gregs: GuestRegs,
        completion: Completion,
    },
    /// Only reply (vGIC maintenance, a virtual PPI: nothing of the guest's to update).
    Reply,
}

/// The exits of this PD's VM: the Microkit event loop (fault endpoint and notifications)
/// as a keel-core [`VmExits`]. One reply object serves every vCPU: a completed exit's
/// reply goes out with the next receive (`seL4_ReplyRecv`).
struct Sel4Exits {
    vcpus: u32,
    soft: Arc<SoftArm64>,
    /// The decoded completion of each vCPU's exit in flight.
    pending: Vec<Option<Pending>>,
    /// Reply before the next receive.
    reply: bool,
    /// Exits received (stirred into the rng; reported when the VM stops).
    exits: u64,
    /// Notification bits that are no host event of the VM's devices (the console PD's
    /// channel: the console never signals a VMM, but a channel is two-way).
    not_device: u64,
    /// An event came in while a backlog waited: the backlog goes first next time.
    backlog_owed: bool,
    /// [`TICKS`] at the last poll (see [`POLL_EVERY_TICKS`]).
    last_poll: u64,
    /// Whether a device asks for polls: only then does [`VmExits::next`] make the periodic
    /// poll (a VM without served disks never pays for it).
    polls: bool,
}

impl Sel4Exits {
    /// With `console_input`, the console PD's notifications bring typed input (they are
    /// passed on); without, they are ignored. With `polls`, every [`POLL_EVERY_TICKS`]
    /// events become a poll of the devices' timeouts.
    fn new(vcpus: u32, soft: Arc<SoftArm64>, console_input: bool, polls: bool) -> Sel4Exits {
        Sel4Exits {
            vcpus,
            soft,
            pending: (0..vcpus).map(|_| None).collect(),
            reply: false,
            exits: 0,
            // The admin never signals a VMM either.
            not_device: if console_input {
                0
            } else {
                console_channel_bit()
            } | 1u64
                .checked_shl(ADMIN_CHANNEL.load(Ordering::Relaxed))
                .unwrap_or(0),
            backlog_owed: false,
            last_poll: 0,
            polls,
        }
    }

    /// Forget every exit in flight (a VM restart: the vCPUs were suspended, which cancels
    /// their waits for a reply).
    fn reset(&mut self) {
        for slot in &mut self.pending {
            *slot = None;
        }
        self.reply = false;
        self.backlog_owed = false;
        BACKLOG.store(0, Ordering::SeqCst);
    }

    /// The next kernel event, or the backlog ([`BACKLOG`]) once nothing else waits: with a
    /// backlog, answer the pending fault, then look without blocking; an event found is
    /// handled first and the backlog right after it (so neither starves the other).
    fn receive(&mut self) -> Result<(u64, MessageInfo), u64> {
        let backlog = BACKLOG.load(Ordering::SeqCst);
        if backlog == 0 {
            let got = if self.reply {
                sys::reply_recv(mk::INPUT_CAP, MessageInfo::new(0, 0), mk::REPLY_CAP)
            } else {
                sys::recv(mk::INPUT_CAP, mk::REPLY_CAP)
            };
            self.reply = false;
            return Ok(got);
        }
        if self.backlog_owed {
            self.backlog_owed = false;
            BACKLOG.fetch_and(!backlog, Ordering::SeqCst);
            return Err(backlog);
        }
        if self.reply {
            sys::reply(mk::REPLY_CAP, MessageInfo::new(0, 0));
            self.reply = false;
        }
        let (badge, info) = sys::nb_recv(mk::INPUT_CAP, mk::REPLY_CAP);
        if badge == 0 {
            BACKLOG.fetch_and(!backlog, Ordering::SeqCst);
            return Err(backlog);
        }
        self.backlog_owed = true;
        Ok((badge, info))
    }

    /// Turn seL4 fault `fault` of `vcpu` into a portable exit, keeping how to complete it.
    fn exit(&mut self, vcpu: VcpuId, fault: Fault) -> Result<VcpuExit, HvError> {
        let guest_fault = |detail: String| HvError::GuestFault { vcpu, detail };
        let (exit, pending) = match fault {
            Fault::VgicMaintenance { idx } => {
                (VcpuExit::VgicMaintenance { lr: idx }, Pending::Reply)
            }
            Fault::VppiEvent { irq } => {
                // A tick: parked siblings get to look at their own timers.
                unpark_all();
                let irq = u32::try_from(irq)
                    .map_err(|_| guest_fault(alloc::format!("virtual PPI {irq:#x}")))?;
                (VcpuExit::VirtualPpi { irq }, Pending::Reply)
            }
            Fault::Other { label } => {
                return Err(guest_fault(alloc::format!(
                    "unhandled seL4 fault type {label}"
                )));
            }
            Fault::VmFault { .. } | Fault::VcpuFault { .. } | Fault::UnknownSyscall { .. } => {
                // Read the registers only now: TCB_ReadRegisters overwrites the fault
                // message, which `fault` already holds.
                let ctx = sys::tcb_read_registers(vm_tcb_cap(vcpu), USER_CONTEXT_WORDS)
                    .map_err(call_error)?;
                let gregs = ctx.guest_regs();
                let decoded: Result<Arm64Exit, _> = match fault {
                    Fault::VmFault {
                        ip,
                        addr,
                        prefetch,
                        fsr,
                    } => kfault::vm_fault_exit(
                        &VmFault {
                            ip,
                            addr,
                            prefetch,
                            fsr,
                        },
                        &gregs,
                    ),
                    Fault::VcpuFault { hsr } => kfault::vcpu_fault_exit(hsr, &gregs),
                    _ => Ok(kfault::hvc_syscall_exit(&gregs)),
                };
                let decoded = decoded.map_err(|e| {
                    guest_fault(alloc::format!(
                        "at pc {:#x}: cannot decode the fault: {e}",
                        gregs.pc
                    ))
                })?;
                (
                    decoded.exit,
                    Pending::Registers {
                        ctx,
                        gregs,
                        completion: decoded.completion,
                    },
                )
            }
        };
        if let Some(slot) = self.pending.get_mut(vcpu as usize) {
            *slot = Some(pending);
        }
        Ok(exit)
    }

    /// Apply `answer` to `vcpu`'s registers (its pending exit's completion).
    fn apply(&mut self, vcpu: VcpuId, answer: ExitAnswer) -> Result<(), HvError> {
        let pending = self
            .pending
            .get_mut(vcpu as usize)
            .and_then(Option::take)
            .ok_or(HvError::Invalid {
                what: "vcpu without an exit to complete",
                value: vcpu.into(),
            })?;
        let Pending::Registers {
            mut ctx,
            mut gregs,
            completion,
        } = pending
        else {
            return Ok(());
        };
        completion
            .apply(answer, &mut gregs)
            .map_err(|e| HvError::GuestFault {
                vcpu,
                detail: alloc::format!("{e}"),
            })?;
        let words = match completion {
            Completion::MmioRead { access, .. } => UserContext::words_to_cover(access.reg),
            Completion::SysRegRead { rt, .. } => UserContext::words_to_cover(rt),
            Completion::Hypercall { .. } => UserContext::words_to_cover(3),
            Completion::Skip { .. } => 1,
        };
        ctx.set_guest_regs(&gregs);
        sys::tcb_write_registers(vm_tcb_cap(vcpu), false, words, &ctx).map_err(call_error)
    }

    /// `vcpu` waits for an interrupt (its PC is already past the `WFI`): park it if a
    /// sibling runs. Returns whether to reply (let it run).
    fn idle(&self, vcpu: VcpuId) -> bool {
        let bit = 1u64 << (vcpu & 63);
        if INJECTED.fetch_and(!bit, Ordering::SeqCst) & bit != 0 {
            // An interrupt went into its list registers while this WFI was on its way.
            return true;
        }
        if PARKED.load(Ordering::SeqCst) != 0 {
            // Siblings were waiting: let them run again, keep this one going.
            unpark_all();
            return true;
        }
        if !self.soft.sibling_runs(vcpu) {
            return true;
        }
        match sys::tcb_suspend(vm_tcb_cap(vcpu)) {
            Ok(()) => {
                PARKED.fetch_or(bit, Ordering::SeqCst);
                false
            }
            Err(e) => {
                log_limited!("keel-sel4: vcpu {vcpu}: park on WFI: {e}");
                true
            }
        }
    }
}

impl VmExits for Sel4Exits {
    fn next(&mut self) -> Result<VmEvent, HvError> {
        loop {
            let now = TICKS.load(Ordering::Relaxed);
            if self.polls && now.wrapping_sub(self.last_poll) >= POLL_EVERY_TICKS {
                // Time to look at the devices' timeouts: a notification of no channel.
                self.last_poll = now;
                return Ok(VmEvent::Notified(0));
            }
            let (badge, info) = match self.receive() {
                Ok(got) => got,
                Err(backlog) => return Ok(VmEvent::Notified(backlog)),
            };
            TICKS.fetch_add(1, Ordering::Relaxed);
            match Event::from_badge(badge) {
                Event::Fault { child } => {
                    if STALL.load(Ordering::Relaxed) {
                        stall_forever();
                    }
                    let vcpu = u32::from(child);
                    // Decode before any other kernel call overwrites the message.
                    let fault = Fault::decode(info, sys::mr).map_err(|e| HvError::GuestFault {
                        vcpu,
                        detail: alloc::format!("{e}"),
                    })?;
                    if vcpu >= self.vcpus {
                        // Not a vCPU of this VM: leave it blocked.
                        log!("keel-sel4: fault of unknown child {vcpu} ignored");
                        continue;
                    }
                    self.exits += 1;
                    EXITS.store(self.exits, Ordering::Relaxed);
                    let exit = self.exit(vcpu, fault)?;
                    let doorbell = DOORBELL.load(Ordering::Relaxed);
                    if doorbell != 0
                        && matches!(exit, VcpuExit::MmioWrite { gpa, .. } if gpa == doorbell)
                    {
                        // The control VM rang: tell the admin, which reads its control
                        // page; the write itself stores nothing.
                        let _ = crate::pd::notify(ADMIN_CHANNEL.load(Ordering::Relaxed));
                        self.apply(vcpu, ExitAnswer::None)?;
                        self.reply = true;
                        continue;
                    }
                    if FAULT_KNOB.load(Ordering::Relaxed)
                        && matches!(exit, VcpuExit::MmioWrite { gpa, .. } if gpa == payload::TEST_FAULT_GPA)
                    {
                        fault_on_purpose();
                    }
                    return Ok(VmEvent::Exit { vcpu, exit });
                }
                Event::ProtectedCall { .. } => self.reply = true,
                Event::Notified { channels } => {
                    let channels = channels & !self.not_device;
                    if channels != 0 {
                        return Ok(VmEvent::Notified(channels));
                    }
                }
            }
        }
    }

    fn complete(&mut self, vcpu: VcpuId, resume: Resume) -> Result<(), HvError> {
        match resume {
            Resume::Run(answer) => {
                self.apply(vcpu, answer)?;
                self.reply = true;
            }
            Resume::WaitForInterrupt(answer) => {
                self.apply(vcpu, answer)?;
                self.reply = self.idle(vcpu);
            }
            Resume::Park => {
                // Off (PSCI CPU_OFF suspended it) or the VM stopped: no reply.
                if let Some(slot) = self.pending.get_mut(vcpu as usize) {
                    *slot = None;
                }
            }
        }
        Ok(())
    }
}

/// This VMM's console input: the ring the console PD writes what is typed for this VM
/// into (docs/console.md), and the bit of its channel in a notification.
struct ConsoleInput {
    ring: Consumer,
    channel_bit: u64,
    /// The ring's consumer index was found wild: input is no longer read.
    broken: bool,
}

/// The payload segment as bytes.
fn payload_bytes() -> Result<&'static [u8], String> {
    // SAFETY: the payload segment is mapped (read-write) at PAYLOAD_VADDR by the Microkit
    // tool from this ELF; its first 32 bytes are the header.
    let header = unsafe { core::slice::from_raw_parts(PAYLOAD_VADDR as *const u8, 32) };
    let total = payload::total_len(header)
        .map_err(|e| alloc::format!("payload at {PAYLOAD_VADDR:#x}: {e}"))?;
    // SAFETY: `total` bytes from PAYLOAD_VADDR are the payload segment (written by
    // `keel sel4 build`, which sized the segment to exactly this length). Disk blobs are
    // later borrowed mutably, disjointly from the kernel, initrd and configuration read
    // through this slice.
    Ok(unsafe { core::slice::from_raw_parts(PAYLOAD_VADDR as *const u8, total) })
}

/// A booted VM: what the exit loop needs.
struct Booted {
    /// The devices' host events (the ring pairs' and links' channels) and polled devices.
    events: DeviceEvents,
    /// The distributor, for passed-through interrupts.
    soft: Arc<SoftArm64>,
    name: String,
    vm: PdVm,
    core: VmmCore,
    exits: Sel4Exits,
    input: Option<ConsoleInput>,
    /// The payload's kernel and initrd: loaded again on a restart.
    kernel: &'static [u8],
    initrd: Option<&'static [u8]>,
    /// Counts restarts when a guest reset restarts the VM (`None`: a reset stops it).
    restarts: Option<RestartLimiter>,
}

/// The payload's plan, parameters and blob table.
fn read_payload() -> Result<(&'static [u8], payload::Layout), String> {
    let bytes = payload_bytes()?;
    let lay = payload::parse(bytes).map_err(|e| alloc::format!("payload: {e}"))?;
    Ok((bytes, lay))
}

/// The payload decoded onto the heap, in a frame of its own: the PD's stack is Microkit's
/// 8 KiB, and decoding the plan (serde's nested visitors) must not run below `boot`'s
/// large frame.
#[inline(never)]
fn read_payload_boxed() -> Result<(&'static [u8], Box<payload::Layout>), String> {
    read_payload().map(|(bytes, lay)| (bytes, Box::new(lay)))
}

/// Boot the VM of the payload (decoded before, [`read_payload_boxed`]): its plan,
/// keel-vmm's core built from it, the guest loaded, vCPU 0 started.
#[inline(never)]
fn boot(bytes: &'static [u8], lay: &payload::Layout) -> Result<Booted, String> {
    let params = &lay.params;
    console_attach(params);
    if lay.plan.arch != keel_spec::Arch::Aarch64 {
        return Err(alloc::format!(
            "vm {}: the plan is for {}; the seL4 VMM runs aarch64 guests",
            lay.plan.name,
            lay.plan.arch
        ));
    }
    // The plan is the one KVM builds from; only the command line is seL4's (its console
    // is the 8250, named first).
    let mut plan = lay.plan.clone();
    plan.cmdline = payload::guest_cmdline(&plan.cmdline);
    // `keel sel4 build` refused it already; a payload built otherwise is refused here.
    crate::budget::check_vmm_heap(&plan).map_err(|e| alloc::format!("{e}"))?;
    let name = plan.name.clone();
    FAULT_KNOB.store(params.test_fault, Ordering::Relaxed);
    DOORBELL.store(params.control_doorbell, Ordering::Relaxed);
    ADMIN_CHANNEL.store(params.admin_channel, Ordering::Relaxed);
    if STARTS.load(Ordering::SeqCst) > 1 {
        // Restarted by the admin: the vCPUs are where the previous run left them (running,
        // or blocked on a fault it never answered). Stop them (which cancels those waits)
        // and put their EL1 state back, as a guest reset does.
        for v in 0..plan.vcpus {
            let _ = sys::tcb_suspend(vm_tcb_cap(v));
            reset_vcpu(v).map_err(|e| alloc::format!("vcpu {v}: {e}"))?;
        }
    }
    let vm = pd_vm(&plan, params)?;
    let log: keel_vmm::Log = Arc::new(Sel4Log { vm: name.clone() });
    let soft = Arc::new(
        SoftArm64::new(
            plan.vcpus,
            GicVersion::V2,
            SPIS,
            LIST_REGISTERS,
            Box::new(Sel4Gic),
            log.clone(),
        )
        .map_err(|e| alloc::format!("interrupt controller: {e}"))?,
    );
    let mut backends = PdBackends {
        disks: lay.disks.iter().copied().map(Some).collect(),
        seed: params.rng_seed,
        nics: params.nics.iter().cloned().map(Some).collect(),
        forwards: params.forwards.iter().cloned().map(Some).collect(),
        serves: params.serves.clone(),
        vsock: params.vsock.iter().cloned().map(Some).collect(),
    };
    let core = VmmCore::build(
        &plan,
        &vm,
        Interrupts::Soft(soft.clone()),
        &mut backends,
        Box::new(SerialConsole),
        Arc::new(PdStop::default()),
        log,
    )
    .map_err(|e| alloc::format!("{e}"))?;
    let kernel = blob(bytes, lay.kernel)?;
    let initrd = lay.initrd.map(|b| blob(bytes, b)).transpose()?;
    let entry = load_guest(&vm, &core, kernel, initrd)?;
    for v in 0..plan.vcpus {
        sys::vcpu_write_reg(
            vcpu_cap(v),
            vcpu_reg::VMPIDR_EL2,
            0x8000_0000 | layout::mpidr(v),
        )
        .map_err(|e| alloc::format!("vcpu {v}: {e}"))?;
    }
    let input = start_console_input(params);
    start_passthrough(&plan)?;
    let events = DeviceEvents::of(&core);
    let polls = events.polls();
    vm.start_vcpu(0, &entry)
        .map_err(|e| alloc::format!("starting vcpu 0: {e}"))?;
    Ok(Booted {
        events,
        soft: soft.clone(),
        name,
        exits: Sel4Exits::new(plan.vcpus, soft, input.is_some(), polls),
        vm,
        core,
        input,
        kernel,
        initrd,
        restarts: params
            .restart_on_reboot
            .then(|| RestartLimiter::new(params.max_restarts, RestartLimiter::MINUTE_MS)),
    })
}

/// Blob `(offset, len)` of the payload.
fn blob(bytes: &'static [u8], (off, len): (usize, usize)) -> Result<&'static [u8], String> {
    off.checked_add(len)
        .and_then(|end| bytes.get(off..end))
        .ok_or_else(|| alloc::format!("payload blob at {off:#x}+{len:#x} is out of bounds"))
}

/// The VM's RAM, mapped into this PD at the parameters' `ram_vaddr`.
fn pd_vm(plan: &VmPlan, params: &Sel4Params) -> Result<PdVm, String> {
    let [(gpa, len)] = plan.ram[..] else {
        return Err(alloc::format!(
            "vm {}: {} RAM regions; the seL4 VMM maps exactly one",
            plan.name,
            plan.ram.len()
        ));
    };
    // SAFETY: the Microkit tool maps the VM's RAM region into this PD at `ram_vaddr`
    // (the system file `keel sel4 build` wrote says so) for the PD's whole life.
    let ram = unsafe {
        GuestRam::from_raw(
            &[RawRegion {
                gpa,
                len,
                host: params.ram_vaddr as *mut u8,
            }],
            Arc::new(()),
        )
    }
    .map_err(|e| alloc::format!("guest RAM: {e}"))?;
    Ok(PdVm {
        ram,
        vcpus: plan.vcpus,
    })
}

/// Kernel, initrd and the device tree of the plan into guest RAM (`VmmCore::load_guest`),
/// cleaned to the point of coherency; returns vCPU 0's entry.
fn load_guest(
    vm: &PdVm,
    core: &VmmCore,
    kernel: &[u8],
    initrd: Option<&[u8]>,
) -> Result<BootEntry, String> {
    let loaded = core
        .load_guest(kernel, initrd, GicVersion::V2)
        .map_err(|e| alloc::format!("loading the kernel: {e}"))?;
    let BootEntry::Arm64 { pc, x0 } = loaded.entry else {
        return Err("the loader did not produce an arm64 entry".into());
    };
    let plan = core.plan();
    log!(
        "keel-sel4: vm {}: {} vCPUs, {} MiB RAM at {:#x}, kernel at {pc:#x}, dtb at {x0:#x}, {} virtio devices",
        plan.name,
        plan.vcpus,
        plan.ram_size() >> 20,
        plan.ram.first().map_or(0, |r| r.0),
        core.devices().len()
    );
    // Make sure the guest sees the copied bytes before it runs with caches off.
    for &(gpa, len) in &loaded.written {
        clean_dcache(&vm.ram, gpa, len as usize);
    }
    Ok(loaded.entry)
}

/// Console input, if this VM takes it: attach the input ring the console PD writes.
fn start_console_input(params: &Sel4Params) -> Option<ConsoleInput> {
    if params.console_input_ring == 0 {
        return None;
    }
    let len = usize::try_from(params.console_input_ring_len).ok()?;
    // SAFETY: the system file `keel sel4 build` wrote maps this VMM's console ring region
    // read-write (its input ring at `console_input_ring`, after the output ring) into this
    // PD and into the console PD only, for the PD's whole life; no Rust reference points
    // into it.
    let w = unsafe { RingWindow::new(params.console_input_ring as *mut u8, len) };
    match w {
        Ok(w) => Some(ConsoleInput {
            ring: Consumer::attach(w),
            channel_bit: 1u64.checked_shl(params.console_channel).unwrap_or(0),
            broken: false,
        }),
        Err(e) => {
            log!("keel-sel4: console input ring: {e}; no console input");
            None
        }
    }
}

/// Notifications: the devices' events (a switch's doorbell on a port's channel), the
/// passed-through interrupts (made pending in the distributor; acknowledged to seL4 when the
/// guest completes them, [`Sel4Gic::completed_spi`]), and the console PD's on the console
/// channel: typed input in the input ring, which feeds the guest's UART.
fn notified(
    core: &VmmCore,
    soft: &SoftArm64,
    events: &DeviceEvents,
    input: Option<&mut ConsoleInput>,
    channels: u64,
) {
    // A storage VM: any client's notification is the doorbell's (first client's) event.
    let serve = SERVE_MASK.load(Ordering::Relaxed);
    let channels = if channels & serve != 0 {
        SERVE_RUNG.store(true, Ordering::SeqCst);
        channels | (serve & serve.wrapping_neg())
    } else {
        channels
    };
    deliver_events(core, events, channels);
    // Devices with timeouts (served disks) look at their clock on every notification and
    // every POLL_EVERY_TICKS events ([`Sel4Exits::next`] makes one with no channels).
    for &i in &events.1 {
        if let Some(d) = core.devices().get(i) {
            d.poll(core.log());
        }
    }
    for c in crate::microkit::channels(channels & passthrough_channels()) {
        let intid = PASSTHROUGH[c as usize].load(Ordering::Relaxed);
        soft.inject_spi(intid);
    }
    let Some(i) = input else { return };
    if channels & i.channel_bit == 0 || i.broken {
        return;
    }
    let mut buf = [0u8; 256];
    // Bounded: the ring holds at most its capacity, and the console PD writes no faster
    // than a UART delivers.
    for _ in 0..64 {
        match i.ring.read(&mut buf) {
            Ok(r) if r.len > 0 => {
                let _ = core.serial().lock().input(&buf[..r.len]);
            }
            Ok(_) => break,
            Err(e) => {
                i.broken = true;
                log!("keel-sel4: console input ring: {e}; input is no longer read");
                break;
            }
        }
    }
}

/// What the stop message says about a guest's request.
fn stop_reason(event: SystemEvent) -> String {
    match event {
        SystemEvent::Shutdown => "guest powered off (PSCI SYSTEM_OFF)".into(),
        SystemEvent::Reset => {
            "guest requested reboot (PSCI SYSTEM_RESET; on_reboot = \"stop\")".into()
        }
        other => alloc::format!("guest stopped ({other})"),
    }
}

/// Restart the VM in place after a guest reset: stop every vCPU and reset its EL1 state,
/// put the devices, the UART and the software GIC/PSCI back to power-on
/// (`VmmCore::reset`: the disks are payload memory and keep what the guest wrote), load
/// kernel, initrd and device tree again as at the first boot, and start vCPU 0.
fn restart(
    vm: &PdVm,
    core: &VmmCore,
    exits: &mut Sel4Exits,
    kernel: &[u8],
    initrd: Option<&[u8]>,
) -> Result<(), String> {
    for v in 0..vm.vcpus {
        // The vCPU that reset waits for a reply that never comes: suspending it cancels
        // that wait (and frees the PD's reply object); so for the others' pending faults.
        let _ = sys::tcb_suspend(vm_tcb_cap(v));
    }
    PARKED.store(0, Ordering::SeqCst);
    INJECTED.store(0, Ordering::SeqCst);
    exits.reset();
    for v in 0..vm.vcpus {
        reset_vcpu(v).map_err(|e| alloc::format!("vcpu {v}: {e}"))?;
    }
    core.reset().map_err(|e| alloc::format!("{e}"))?;
    reack_passthrough();
    let entry = load_guest(vm, core, kernel, initrd)?;
    vm.start_vcpu(0, &entry)
        .map_err(|e| alloc::format!("starting vcpu 0: {e}"))
}

/// `SCTLR_EL1` as seL4 sets it for a new vCPU (`SCTLR_EL1_VM`): the RES1 bits
/// (0x30d0_0800), CP15BEN, UCT, nTWI, nTWE, UCI; MMU, data and instruction caches off.
const SCTLR_EL1_RESET: u64 = 0x34d5_8820;

/// Put vCPU `vcpu`'s EL1 state back to what a fresh vCPU has, as far as a booting kernel
/// depends on it: MMU and caches off, the virtual timer disabled and its PPI unmasked.
/// (The kernel sets up everything else itself before it uses it.)
fn reset_vcpu(vcpu: u32) -> Result<(), sys::Sel4Error> {
    let cap = vcpu_cap(vcpu);
    sys::vcpu_write_reg(cap, vcpu_reg::SCTLR, SCTLR_EL1_RESET)?;
    sys::vcpu_write_reg(cap, vcpu_reg::CNTV_CTL, 0)?;
    // A timer tick delivered but never completed before the reset leaves the PPI masked.
    sys::vcpu_ack_vppi(cap, u64::from(layout::ppi_intid(layout::TIMER_PPI_VIRT)))
}

/// Stop the VM: flush its console, report why, suspend every vCPU.
fn stop_vm(name: &str, vcpus: u32, why: &str) {
    console_flush();
    PARKED.store(0, Ordering::SeqCst);
    log!("keel-sel4: vm {name}: stopped: {why}");
    for v in 0..vcpus {
        let _ = sys::tcb_suspend(vm_tcb_cap(v));
    }
}

/// Clean `[gpa, gpa+len)` to the point of coherency: the guest starts with its MMU and
/// caches off and must see what the VMM wrote through its cached mapping.
fn clean_dcache(ram: &GuestRam, gpa: u64, len: usize) {
    let Some(p) = ram.host_address(GuestAddress(gpa), len as u64) else {
        return;
    };
    let start = (p as usize) & !63;
    let end = p as usize + len;
    let mut a = start;
    while a < end {
        // SAFETY: `a` lies in guest RAM mapped into this PD; `dc cvac` only cleans the line.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) a, options(nostack)) };
        a += 64;
    }
    // SAFETY: a barrier.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) };
}

/// The protection domain's main function, called from `_start`.
pub extern "C" fn main() -> ! {
    let again = STARTS.fetch_add(1, Ordering::SeqCst) > 0;
    if again {
        // SAFETY: first thing in a restarted run; nothing of the previous run is used.
        unsafe { forget_previous_run() };
    }
    let name = crate::pd::name();
    // The console ring first: the "vmm up" line already goes through the console PD.
    let pool_slot = attach_and_peek();
    if again && POOL_WAITING.swap(false, Ordering::SeqCst) {
        log!("keel-sel4: vmm started by the admin PD ({name}): pool slot; booting its VM");
    } else if again {
        log!("keel-sel4: vmm restarted by the admin PD ({name}); booting its VM again");
    } else if pool_slot {
        log!(
            "keel-sel4: vmm waiting ({name}): a pool slot (start = false); the admin PD starts it on request"
        );
        POOL_WAITING.store(true, Ordering::SeqCst);
        idle();
    } else {
        log!("keel-sel4: vmm up ({name})");
    }
    let Booted {
        events,
        soft,
        name,
        vm,
        core,
        mut exits,
        mut input,
        kernel,
        initrd,
        mut restarts,
    } = match read_payload_boxed().and_then(|(bytes, lay)| boot(bytes, &lay)) {
        Ok(b) => b,
        Err(e) => {
            log!("keel-sel4: {name}: cannot start the VM: {e}");
            idle();
        }
    };
    let stop = PdStop::default();
    let why = loop {
        let outcome = run_exits(&mut exits, &core, &vm, &stop, |channels| {
            notified(&core, &soft, &events, input.as_mut(), channels)
        });
        core.report_device_errors();
        let event = match outcome {
            Ok(event) => event,
            Err(e) => break alloc::format!("{e}"),
        };
        if let (Some(SystemEvent::Reset), Some(limiter)) = (event, restarts.as_mut()) {
            let max = limiter.max();
            // A minute of the generic timer's count. Without a counter frequency every
            // reset is at time 0, so none leaves the window: the VM's whole life.
            let counter = crate::clock::Counter::new();
            let window = if counter.is_some() {
                "per minute"
            } else {
                "over the VM's life: the counter has no frequency"
            };
            match limiter.record(counter.map_or(0, |c| c.now_ms())) {
                RestartVerdict::Restart { count } => {
                    console_flush();
                    log!(
                        "keel-sel4: vm {name}: guest rebooted; restarting ({count} of at most {max} {window})"
                    );
                    match restart(&vm, &core, &mut exits, kernel, initrd) {
                        Ok(()) => continue,
                        Err(e) => {
                            log!("KEEL-SEL4-VM-STOPPED {name} {}", exits.exits);
                            break alloc::format!("restart after reboot failed: {e}");
                        }
                    }
                }
                RestartVerdict::Stop { count } => {
                    log!("KEEL-SEL4-VM-STOPPED {name} {}", exits.exits);
                    break alloc::format!(
                        "rebooted {count} times (at most {max} {window}); stopping"
                    );
                }
            }
        }
        log!("KEEL-SEL4-VM-STOPPED {name} {}", exits.exits);
        break event.map_or_else(|| "the VMM stopped it".into(), stop_reason);
    };
    stop_vm(&name, vm.vcpus, &why);
    idle()
}

/// Attach the console ring (the "vmm up" line already goes through the console PD) and
/// say whether this PD is a pool slot. Not inlined: the decoded payload lives in this
/// frame only, not in `main`'s.
#[inline(never)]
fn attach_and_peek() -> bool {
    match read_payload() {
        Ok((_, lay)) => {
            console_attach(&lay.params);
            !lay.params.start
        }
        Err(_) => false,
    }
}

/// Wait forever (after a fatal error): the PD stays, its VM does not run.
fn idle() -> ! {
    loop {
        let _ = sys::wait(mk::INPUT_CAP);
    }
}

/// The panic handler: report on the debug console, stop the VM's vCPUs, idle.
pub fn panic(info: &core::panic::PanicInfo) -> ! {
    console_flush_partial();
    log!("keel-sel4: VMM panic: {info}");
    for v in 0..8 {
        let _ = sys::tcb_suspend(vm_tcb_cap(v));
    }
    idle()
}
