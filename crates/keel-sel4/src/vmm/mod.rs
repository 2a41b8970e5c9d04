//! The VMM protection domain (seL4 only): boots one VM from the payload and answers its
//! vCPUs' faults.
//!
//! Start-up: find the payload ([`crate::payload`]), build the platform (RAM, GICv2, 8250,
//! virtio-mmio devices), generate the device tree, copy kernel, initrd and tree into guest
//! RAM (which the Microkit tool mapped into this PD at the payload's `ram_vaddr`), set vCPU
//! 0's registers and start it. Then a Microkit-style event loop: every fault of a vCPU is
//! decoded (keel-core's `fault` module for the syndrome), answered, and the vCPU resumed
//! with its registers written back.
//!
//! Reset: a PSCI `SYSTEM_RESET` with the spec's `on_reboot = "restart"` restarts the VM in
//! place ([`Vmm::restart`]): vCPUs suspended and their EL1 state reset, devices built anew
//! over the same payload disks, kernel, initrd and device tree copied again, vCPU 0 started
//! (the first boot's code path, [`start_guest`]).

mod heap;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use keel_core::arch::aarch64::boot::load_linux;
use keel_core::arch::aarch64::fault::{self as kfault, Arm64Exit, GuestRegs, VmFault};
use keel_core::arch::aarch64::layout::{
    self, Arm64Platform, GIC_DIST_BASE, GIC_DIST_SIZE, GicVersion, UART_BASE, UART_SIZE, UART_SPI,
};
use keel_core::arch::aarch64::psci::{Psci, PsciHost, PsciOutcome, StartError, Started};
use keel_core::arch::aarch64::vgic::{Vgic, VgicHost};
use keel_core::bus::Bus;
use keel_core::hv::{BootEntry, ExitAnswer, SystemEvent, VcpuExit};
use keel_core::irq::IrqLine;
use keel_core::memory::{GuestAddress, GuestMemory, GuestRam, RawRegion};
use keel_core::restart::{RestartLimiter, RestartVerdict};
use keel_virtio::{
    Block, Console, ConsoleOutput, EntropyError, EntropySource, MemoryBackend, MmioTransport, Rng,
};

use crate::abi::{USER_CONTEXT_WORDS, microkit as mk, vcpu_reg};
use crate::fault::Fault;
use crate::microkit::{Event, vcpu_cap, vm_tcb_cap};
use crate::msginfo::MessageInfo;
use crate::payload::{self, PAYLOAD_VADDR};
use crate::regs::{self, UserContext};
use crate::syscall::{self as sys, debug_puts};
use crate::uart::Uart8250;

#[global_allocator]
static HEAP: heap::Heap = heap::Heap::new();

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
        // Format first, print in one go: VMMs of other VMs share the debug console.
        let mut line = String::new();
        let _ = writeln!(line, $($t)*);
        atomically(|| debug_puts(&line));
    }};
}

/// SPI levels driven by the virtio devices, read by the event loop after each exit.
static SPI_LEVELS: AtomicU64 = AtomicU64::new(0);

struct SpiLine(u32);

impl IrqLine for SpiLine {
    fn set_level(&self, high: bool) {
        let bit = 1u64 << (self.0 & 63);
        if high {
            SPI_LEVELS.fetch_or(bit, Ordering::SeqCst);
        } else {
            SPI_LEVELS.fetch_and(!bit, Ordering::SeqCst);
        }
    }
}

/// The guest's console output (8250 and virtio-console alike), line-buffered so that the
/// lines of several VMs sharing the seL4 debug console rarely interleave, optionally
/// prefixed with the VM's name.
struct LineOut {
    buf: Vec<u8>,
    prefix: Option<String>,
}

static CONSOLE: spin::Mutex<LineOut> = spin::Mutex::new(LineOut {
    buf: Vec::new(),
    prefix: None,
});

const LINE_MAX: usize = 256;

/// The console-lock word shared with the other VMMs of the system (0 = free), if any.
static CONSOLE_LOCK: AtomicU64 = AtomicU64::new(0);

/// Print `f`'s output as one piece: under the lock shared by every VMM of the system, so
/// lines of different VMs never mix on the debug console.
fn atomically(f: impl FnOnce()) {
    let addr = CONSOLE_LOCK.load(Ordering::Relaxed);
    if addr == 0 {
        f();
        return;
    }
    // SAFETY: `addr` is the page the Microkit tool maps read-write into every VMM of the
    // system (payload `console_lock`); it holds only this lock word, used only atomically.
    let lock = unsafe { &*(addr as *const AtomicU32) };
    while lock
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        // The holder is another VMM: let it finish its line.
        sys::yield_now();
    }
    f();
    // The VMMs of a system may run on different cores (placement). The lock word lives in
    // normal, cacheable, inner-shareable memory (the Microkit default for a memory region:
    // the exclusives of `compare_exchange` need that), so Acquire/Release order the VMMs'
    // critical sections across cores. The kernel wrote this line's characters to the UART
    // (device memory) during our `DebugPutChar` calls: `dsb sy` makes those writes complete
    // before another core can see the lock free and start printing its own line.
    // SAFETY: a barrier; no memory is accessed.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
    lock.store(0, Ordering::Release);
}

fn console_put(bytes: &[u8]) {
    let mut c = CONSOLE.lock();
    for &b in bytes {
        c.buf.push(b);
        if b == b'\n' || c.buf.len() >= LINE_MAX {
            atomically(|| {
                if let Some(p) = &c.prefix {
                    debug_puts(p);
                }
                for &x in &c.buf {
                    sys::debug_put_char(x);
                }
            });
            c.buf.clear();
        }
    }
}

/// Print what is left of the current console line.
fn console_flush() {
    if !CONSOLE.lock().buf.is_empty() {
        console_put(b"\n");
    }
}

/// virtio-console output: the shared console.
struct DebugConsole;

impl ConsoleOutput for DebugConsole {
    fn write(&mut self, bytes: &[u8]) {
        console_put(bytes);
    }
}

/// VM exits handled so far: stirred into the rng stream.
static EXITS: AtomicU64 = AtomicU64::new(0);

/// Entropy for virtio-rng: a SplitMix64 stream seeded at build time (from the build host's
/// /dev/urandom, carried in the payload) and stirred with the VM-exit count on every
/// request. The PD can read no timer or hardware RNG (the Cortex-A53 has no RNDR, and
/// seL4 traps EL0 counter reads here). NOT cryptographically strong: whoever reads the
/// image knows the seed (see docs/sel4.md).
struct SeededEntropy(u64);

impl SeededEntropy {
    fn new(seed: &[u8; 32]) -> SeededEntropy {
        let s = seed.chunks(8).fold(0u64, |acc, c| {
            acc.rotate_left(17) ^ u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))
        });
        SeededEntropy(s)
    }
}

impl EntropySource for SeededEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        self.0 ^= EXITS.load(Ordering::Relaxed).rotate_left(29);
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

/// The seL4 side of keel-core's software GIC distributor.
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
            log!("keel-sel4: vcpu {vcpu}: inject irq {intid} into LR {lr}: {e}");
        }
        INJECTED.fetch_or(1 << (vcpu & 63), Ordering::SeqCst);
    }

    fn kick(&mut self, vcpu: u32) {
        unpark(vcpu);
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
            log!("keel-sel4: vcpu {vcpu}: resume after WFI: {e}");
        }
    }
}

fn unpark_all() {
    let parked = PARKED.load(Ordering::SeqCst);
    for v in crate::microkit::channels(parked) {
        unpark(v);
    }
}

/// The guest completed `intid`; a virtual PPI (the timer) is unmasked again.
fn completed(vcpu: u32, intid: u32) {
    if (16..32).contains(&intid) {
        if let Err(e) = sys::vcpu_ack_vppi(vcpu_cap(vcpu), u64::from(intid)) {
            log!("keel-sel4: vcpu {vcpu}: ack vppi {intid}: {e}");
        }
    }
}

const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// Start vCPU `vcpu` at `pc` with `x0`, x1..x3 zero (the arm64 boot protocol asks for that,
/// and after a reset they hold the old run's values), EL1h, interrupts masked, MMU off.
fn start_vcpu(vcpu: u32, pc: u64, x0: u64) -> Result<(), sys::Sel4Error> {
    let mut ctx = UserContext::default();
    ctx.0[regs::PC] = pc;
    ctx.0[regs::SPSR] = SPSR_EL1H_MASKED;
    ctx.0[regs::X0] = x0;
    // Context words x0, x1, x2, x3 follow each other (seL4_UserContext order).
    sys::tcb_write_registers(vm_tcb_cap(vcpu), true, regs::X0 + 4, &ctx)
}

struct PsciSel4<'a> {
    ram: &'a GuestRam,
    vcpus: u32,
    stopped: Option<SystemEvent>,
}

impl PsciHost for PsciSel4<'_> {
    fn start_vcpu(
        &mut self,
        target: u32,
        entry: u64,
        context_id: u64,
    ) -> Result<Started, StartError> {
        if target >= self.vcpus {
            return Err(StartError::Internal);
        }
        if !self.ram.contains(GuestAddress(entry), 4) {
            return Err(StartError::InvalidAddress(entry));
        }
        start_vcpu(target, entry, context_id).map_err(|e| {
            log!("keel-sel4: CPU_ON vcpu {target}: {e}");
            StartError::Internal
        })?;
        Ok(Started::Now)
    }
    fn stop_vcpu(&mut self, vcpu: u32) {
        let _ = sys::tcb_suspend(vm_tcb_cap(vcpu));
    }
    fn system_off(&mut self) {
        self.stopped = Some(SystemEvent::Shutdown);
    }
    fn system_reset(&mut self) {
        self.stopped = Some(SystemEvent::Reset);
    }
}

/// The board's PL011, mapped into the first VM's VMM for console input.
struct InputUart {
    base: u64,
    channel: u32,
}

const PL011_DR: u64 = 0x000;
const PL011_FR: u64 = 0x018;
const PL011_FR_RXFE: u32 = 1 << 4;
const PL011_IMSC: u64 = 0x038;
const PL011_ICR: u64 = 0x044;
const PL011_RX_INTERRUPTS: u32 = (1 << 4) | (1 << 6); // RX, RX timeout

impl InputUart {
    fn reg(&self, offset: u64) -> *mut u32 {
        (self.base + offset) as *mut u32
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: `base` is the PL011 page the Microkit tool mapped (uncached) into this PD
        // (payload `input_uart`); `offset` is one of the register offsets above.
        unsafe { self.reg(offset).read_volatile() }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as in `read`.
        unsafe { self.reg(offset).write_volatile(value) }
    }

    /// Take what was typed (at most one FIFO's worth) and clear the receive interrupts.
    fn drain(&self) -> Vec<u8> {
        let mut v = Vec::new();
        while v.len() < 64 && self.read(PL011_FR) & PL011_FR_RXFE == 0 {
            v.push(self.read(PL011_DR) as u8);
        }
        self.write(PL011_ICR, PL011_RX_INTERRUPTS);
        v
    }
}

struct Vmm {
    name: String,
    /// The payload (kernel, initrd, disk blobs) and its layout: read again on a restart.
    payload: &'static [u8],
    layout: payload::Layout,
    /// Counts restarts when a reset restarts the VM (`None`: a reset stops it).
    restarts: Option<RestartLimiter>,
    input: Option<InputUart>,
    vcpus: u32,
    ram: GuestRam,
    bus: Bus,
    vgic: Vgic,
    uart: Uart8250,
    psci: Psci,
    spi_levels: u64,
    stopped: bool,
    exits: u64,
    sysreg_reports: u32,
}

/// What to do with the faulting vCPU after handling.
enum Resume {
    /// Reply: the vCPU continues.
    Yes,
    /// Leave it blocked (off, or the VM stopped).
    No,
}

impl Vmm {
    fn mmio_read(&mut self, vcpu: u32, gpa: u64, len: u8) -> u64 {
        if (GIC_DIST_BASE..GIC_DIST_BASE + GIC_DIST_SIZE).contains(&gpa) {
            let off = gpa - GIC_DIST_BASE;
            return self.vgic.v2_dist_read(vcpu, off, len);
        }
        if (UART_BASE..UART_BASE + UART_SIZE).contains(&gpa) {
            return u64::from(self.uart.read(gpa - UART_BASE));
        }
        let mut buf = [0u8; 8];
        let n = usize::from(len.min(8));
        match self.bus.read(gpa, &mut buf[..n]) {
            Ok(()) => u64::from_le_bytes(buf),
            Err(e) => {
                log!(
                    "keel-sel4: vm {}: vcpu {vcpu}: read of {len} bytes at {gpa:#x}: {e} (reads as zero)",
                    self.name
                );
                0
            }
        }
    }

    fn mmio_write(&mut self, vcpu: u32, gpa: u64, len: u8, data: u64) {
        if (GIC_DIST_BASE..GIC_DIST_BASE + GIC_DIST_SIZE).contains(&gpa) {
            self.vgic
                .v2_dist_write(vcpu, gpa - GIC_DIST_BASE, len, data, &mut Sel4Gic);
            return;
        }
        if (UART_BASE..UART_BASE + UART_SIZE).contains(&gpa) {
            self.uart
                .write(gpa - UART_BASE, data as u8, &mut |b| console_put(&[b]));
            return;
        }
        let n = usize::from(len.min(8));
        if let Err(e) = self.bus.write(gpa, &data.to_le_bytes()[..n]) {
            log!(
                "keel-sel4: vm {}: vcpu {vcpu}: write of {len} bytes at {gpa:#x}: {e} (ignored)",
                self.name
            );
        }
    }

    /// Deliver interrupt-line changes made by devices during the last exit.
    fn sync_lines(&mut self) {
        let mut levels = SPI_LEVELS.load(Ordering::SeqCst);
        if self.uart.irq_pending() {
            levels |= 1 << UART_SPI;
        } else {
            levels &= !(1 << UART_SPI);
        }
        let changed = levels ^ self.spi_levels;
        if changed == 0 {
            return;
        }
        self.spi_levels = levels;
        for spi in crate::microkit::channels(changed) {
            self.vgic
                .set_spi_level(spi, levels & (1 << spi) != 0, &mut Sel4Gic);
        }
    }

    fn stop_vm(&mut self, why: &str) {
        console_flush();
        PARKED.store(0, Ordering::SeqCst);
        log!("keel-sel4: vm {}: stopped: {why}", self.name);
        for v in 0..self.vcpus {
            let _ = sys::tcb_suspend(vm_tcb_cap(v));
        }
        self.stopped = true;
    }

    fn handle(&mut self, vcpu: u32, fault: Fault) -> Resume {
        self.exits += 1;
        EXITS.store(self.exits, Ordering::Relaxed);
        let tcb = vm_tcb_cap(vcpu);
        match fault {
            Fault::VgicMaintenance { idx } => {
                if idx.is_none() {
                    log!(
                        "keel-sel4: vm {}: vcpu {vcpu}: maintenance without list register",
                        self.name
                    );
                }
                if let Some(intid) =
                    idx.and_then(|lr| self.vgic.maintenance(vcpu, lr, &mut Sel4Gic))
                {
                    completed(vcpu, intid);
                }
                return Resume::Yes;
            }
            Fault::VppiEvent { irq } => {
                // A tick: parked siblings get to look at their own timers.
                unpark_all();
                self.vgic.inject(vcpu, irq as u32, &mut Sel4Gic);
                return Resume::Yes;
            }
            Fault::Other { label } => {
                self.stop_vm(&alloc::format!(
                    "vcpu {vcpu}: unhandled seL4 fault type {label}"
                ));
                return Resume::No;
            }
            _ => {}
        }
        // Read the registers only now: TCB_ReadRegisters overwrites the fault message,
        // which `fault` already holds.
        let mut ctx = match sys::tcb_read_registers(tcb, USER_CONTEXT_WORDS) {
            Ok(c) => c,
            Err(e) => {
                self.stop_vm(&alloc::format!("vcpu {vcpu}: {e}"));
                return Resume::No;
            }
        };
        let mut gregs: GuestRegs = ctx.guest_regs();
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
            Fault::UnknownSyscall { .. } => Ok(kfault::hvc_syscall_exit(&gregs)),
            // Handled above; kept total for the compiler.
            Fault::VgicMaintenance { .. } | Fault::VppiEvent { .. } | Fault::Other { .. } => {
                return Resume::Yes;
            }
        };
        let exit = match decoded {
            Ok(e) => e,
            Err(e) => {
                self.stop_vm(&alloc::format!(
                    "vcpu {vcpu} at pc {:#x}: cannot decode the fault: {e}",
                    gregs.pc
                ));
                return Resume::No;
            }
        };
        let answer = match exit.exit {
            VcpuExit::MmioRead { gpa, len } => ExitAnswer::Read(self.mmio_read(vcpu, gpa, len)),
            VcpuExit::MmioWrite { gpa, len, data } => {
                self.mmio_write(vcpu, gpa, len, data);
                ExitAnswer::None
            }
            VcpuExit::Halt => ExitAnswer::None,
            VcpuExit::SysReg { encoding, write } => {
                // Nothing Keel's guests need traps here (GICv2, no debug registers): reads
                // are zero, writes are ignored, and the first few are reported.
                if self.sysreg_reports < 8 {
                    self.sysreg_reports += 1;
                    log!(
                        "keel-sel4: vm {}: vcpu {vcpu}: trapped system register {encoding:#x} {} (RAZ/WI)",
                        self.name,
                        if write.is_some() { "write" } else { "read" }
                    );
                }
                match write {
                    Some(_) => ExitAnswer::None,
                    None => ExitAnswer::Read(0),
                }
            }
            VcpuExit::Hypercall { args, .. } => {
                let mut host = PsciSel4 {
                    ram: &self.ram,
                    vcpus: self.vcpus,
                    stopped: None,
                };
                match self.psci.handle(args, vcpu, &mut host) {
                    PsciOutcome::Return(x) | PsciOutcome::Suspend(x) => ExitAnswer::Hypercall(x),
                    PsciOutcome::Off => return Resume::No,
                    PsciOutcome::System(SystemEvent::Reset) if self.restarts.is_some() => {
                        self.reset();
                        return Resume::No;
                    }
                    PsciOutcome::System(ev) => {
                        let what = match ev {
                            SystemEvent::Shutdown => "guest powered off (PSCI SYSTEM_OFF)",
                            SystemEvent::Reset => {
                                "guest requested reboot (PSCI SYSTEM_RESET; on_reboot = \"stop\")"
                            }
                            _ => "guest stopped",
                        };
                        log!("KEEL-SEL4-VM-STOPPED {} {}", self.name, self.exits);
                        self.stop_vm(what);
                        return Resume::No;
                    }
                }
            }
            other => {
                self.stop_vm(&alloc::format!("vcpu {vcpu}: unexpected exit {other:?}"));
                return Resume::No;
            }
        };
        if let Err(e) = exit.completion.apply(answer, &mut gregs) {
            self.stop_vm(&alloc::format!("vcpu {vcpu}: {e}"));
            return Resume::No;
        }
        let words = match exit.completion {
            kfault::Completion::MmioRead { access, .. } => UserContext::words_to_cover(access.reg),
            kfault::Completion::SysRegRead { rt, .. } => UserContext::words_to_cover(rt),
            kfault::Completion::Hypercall { .. } => UserContext::words_to_cover(3),
            kfault::Completion::Skip { .. } => 1,
        };
        ctx.set_guest_regs(&gregs);
        if let Err(e) = sys::tcb_write_registers(tcb, false, words, &ctx) {
            self.stop_vm(&alloc::format!("vcpu {vcpu}: {e}"));
            return Resume::No;
        }
        if exit.exit == VcpuExit::Halt {
            return self.idle(vcpu);
        }
        Resume::Yes
    }

    /// The guest reset (PSCI `SYSTEM_RESET`) and its policy is restart: restart it in place
    /// unless that would exceed its restart limit.
    fn reset(&mut self) {
        let Some(limiter) = &mut self.restarts else {
            return;
        };
        let max = limiter.max();
        // The PD reads no clock (EL0 counter reads trap here): every restart of the VM's
        // life counts against max_restarts_per_minute.
        match limiter.record(0) {
            RestartVerdict::Restart { count } => {
                console_flush();
                log!(
                    "keel-sel4: vm {}: guest rebooted; restarting ({count} of at most {max}, counted over the VM's life)",
                    self.name
                );
                if let Err(e) = self.restart() {
                    log!("KEEL-SEL4-VM-STOPPED {} {}", self.name, self.exits);
                    self.stop_vm(&alloc::format!("restart after reboot failed: {e}"));
                }
            }
            RestartVerdict::Stop { count } => {
                log!("KEEL-SEL4-VM-STOPPED {} {}", self.name, self.exits);
                self.stop_vm(&alloc::format!(
                    "rebooted {count} times (max_restarts_per_minute = {max}, counted over the VM's life: no clock here); stopping"
                ));
            }
        }
    }

    /// Restart the VM in place: stop every vCPU, reset its EL1 state, drop the devices and
    /// interrupt state, then boot again as the first time ([`start_guest`]). The disks are
    /// payload memory: they keep what the guest wrote.
    fn restart(&mut self) -> Result<(), String> {
        for v in 0..self.vcpus {
            // The faulting vCPU waits for a reply that never comes: suspending it cancels
            // that wait (and frees the PD's reply object).
            let _ = sys::tcb_suspend(vm_tcb_cap(v));
        }
        PARKED.store(0, Ordering::SeqCst);
        INJECTED.store(0, Ordering::SeqCst);
        SPI_LEVELS.store(0, Ordering::SeqCst);
        self.spi_levels = 0;
        // The old devices go first: the new disks borrow the same payload bytes.
        self.bus = Bus::new();
        for v in 0..self.vcpus {
            reset_vcpu(v).map_err(|e| alloc::format!("vcpu {v}: {e}"))?;
        }
        let machine = start_guest(self.payload, &self.layout, &self.ram)?;
        self.bus = machine.bus;
        self.vgic = machine.vgic;
        self.uart = Uart8250::new();
        self.psci = Psci::new(self.vcpus);
        Ok(())
    }

    /// Notifications: the console-input UART's interrupt.
    fn notified(&mut self, channels: u64) {
        let Some(u) = &self.input else { return };
        if channels & (1 << u.channel) == 0 {
            return;
        }
        let typed = u.drain();
        let _ = self.uart.push_input(&typed);
        if let Err(e) = crate::pd::irq_ack(u.channel) {
            log!("keel-sel4: console input: {e}");
        }
    }

    /// `vcpu` executed `WFI` (its PC is already past it): park it if a sibling runs.
    fn idle(&mut self, vcpu: u32) -> Resume {
        let bit = 1u64 << (vcpu & 63);
        if INJECTED.fetch_and(!bit, Ordering::SeqCst) & bit != 0 {
            // An interrupt went into its list registers while this WFI was on its way.
            return Resume::Yes;
        }
        let parked = PARKED.load(Ordering::SeqCst);
        if parked != 0 {
            // Siblings were waiting: let them run again, keep this one going.
            unpark_all();
            return Resume::Yes;
        }
        let sibling_runs = (0..self.vcpus).any(|o| {
            o != vcpu && self.psci.state(o) == Some(keel_core::arch::aarch64::psci::PowerState::On)
        });
        if !sibling_runs {
            return Resume::Yes;
        }
        match sys::tcb_suspend(vm_tcb_cap(vcpu)) {
            Ok(()) => {
                PARKED.fetch_or(1 << (vcpu & 63), Ordering::SeqCst);
                Resume::No
            }
            Err(e) => {
                log!("keel-sel4: vcpu {vcpu}: park on WFI: {e}");
                Resume::Yes
            }
        }
    }
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

fn boot() -> Result<Vmm, String> {
    let bytes = payload_bytes()?;
    let lay = payload::parse(bytes).map_err(|e| alloc::format!("payload: {e}"))?;
    let cfg = lay.config.clone();
    CONSOLE_LOCK.store(cfg.console_lock, Ordering::Relaxed);
    if cfg.console_prefix {
        CONSOLE.lock().prefix = Some(alloc::format!("{}| ", cfg.name));
    }

    // SAFETY: the Microkit tool maps the VM's RAM region into this PD at `ram_vaddr`
    // (the system file `keel sel4 build` wrote says so) for the PD's whole life.
    let ram = unsafe {
        GuestRam::from_raw(
            &[RawRegion {
                gpa: cfg.ram_gpa,
                len: cfg.ram_size,
                host: cfg.ram_vaddr as *mut u8,
            }],
            Arc::new(()),
        )
    }
    .map_err(|e| alloc::format!("guest RAM: {e}"))?;

    let input = (cfg.input_uart != 0).then_some(InputUart {
        base: cfg.input_uart,
        channel: cfg.input_channel,
    });
    if let Some(u) = &input {
        // libmicrokit acknowledges every IRQ once at start (seL4 issue #1536).
        match crate::pd::irq_ack(u.channel) {
            Ok(()) => u.write(PL011_IMSC, u.read(PL011_IMSC) | PL011_RX_INTERRUPTS),
            Err(e) => log!("keel-sel4: console input disabled: {e}"),
        }
    }
    let machine = start_guest(bytes, &lay, &ram)?;
    Ok(Vmm {
        name: cfg.name,
        payload: bytes,
        restarts: cfg
            .restart_on_reboot
            .then(|| RestartLimiter::lifetime(cfg.max_restarts)),
        layout: lay,
        vcpus: cfg.vcpus,
        ram,
        bus: machine.bus,
        vgic: machine.vgic,
        input,
        uart: Uart8250::new(),
        psci: Psci::new(cfg.vcpus),
        spi_levels: 0,
        stopped: false,
        exits: 0,
        sysreg_reports: 0,
    })
}

/// What each boot of the guest builds afresh.
struct Machine {
    bus: Bus,
    vgic: Vgic,
}

/// One boot of the guest, the first and each after a reset: the virtio devices (disks
/// over their payload blobs), the kernel, initrd and a freshly generated device tree copied
/// into guest RAM and cleaned to the point of coherency, the vCPUs' MPIDRs, the interrupt
/// controller, and vCPU 0 started at the kernel (the others wait for PSCI `CPU_ON`).
///
/// The caller guarantees that no device built by an earlier call is still alive (the disks
/// borrow their payload bytes mutably).
fn start_guest(
    bytes: &'static [u8],
    lay: &payload::Layout,
    ram: &GuestRam,
) -> Result<Machine, String> {
    let cfg = &lay.config;
    let kernel = &bytes[lay.kernel.0..lay.kernel.0 + lay.kernel.1];
    let initrd = lay.initrd.map(|(o, l)| &bytes[o..o + l]);

    let mut platform = Arm64Platform::new(cfg.ram_size, cfg.vcpus, GicVersion::V2);
    platform.memory = alloc::vec![(cfg.ram_gpa, cfg.ram_size)];
    platform.cmdline = cfg.cmdline.clone();

    let mut bus = Bus::new();
    let mut add = |platform: &mut Arm64Platform,
                   dev: Arc<spin::Mutex<dyn keel_core::BusDevice>>|
     -> Result<(), String> {
        let slot = platform.add_virtio().ok_or("too many virtio devices")?;
        bus.insert(slot.base, slot.size, dev)
            .map_err(|e| alloc::format!("{e}"))
    };
    let next_irq = |platform: &Arm64Platform| -> Arc<dyn IrqLine> {
        Arc::new(SpiLine(
            layout::MmioDevice::virtio_slot(platform.virtio.len() as u32).spi,
        ))
    };
    for (i, d) in cfg.disks.iter().enumerate() {
        let (off, len) = lay.disks[i];
        // SAFETY: the disk blob lies inside the payload segment, which is mapped writable;
        // no other reference to these bytes exists after this point (the kernel and initrd
        // slices cover other blobs, and the devices of an earlier boot are gone: see the
        // function's contract).
        let disk: &'static mut [u8] =
            unsafe { core::slice::from_raw_parts_mut((PAYLOAD_VADDR as *mut u8).add(off), len) };
        let backend = if d.read_only {
            MemoryBackend::read_only(disk)
        } else {
            MemoryBackend::new(disk)
        };
        let irq = next_irq(&platform);
        let t = MmioTransport::new(Block::new(backend, d.id.as_bytes()), ram.clone(), irq);
        add(&mut platform, Arc::new(spin::Mutex::new(t)))?;
    }
    if cfg.virtio_console {
        let irq = next_irq(&platform);
        let t = MmioTransport::new(Console::new(DebugConsole), ram.clone(), irq);
        add(&mut platform, Arc::new(spin::Mutex::new(t)))?;
    }
    if cfg.rng {
        let irq = next_irq(&platform);
        let t = MmioTransport::new(
            Rng::new(SeededEntropy::new(&cfg.rng_seed)),
            ram.clone(),
            irq,
        );
        add(&mut platform, Arc::new(spin::Mutex::new(t)))?;
    }

    // `platform.memory` is `[(cfg.ram_gpa, cfg.ram_size)]`: the kernel goes there.
    let loaded = load_linux(ram, &mut platform, kernel, initrd)
        .map_err(|e| alloc::format!("loading the kernel: {e}"))?;
    let (boot, fdt_len) = (loaded.layout, loaded.fdt_len);
    let BootEntry::Arm64 { pc, x0 } = loaded.entry() else {
        return Err("the loader did not produce an arm64 entry".into());
    };
    log!(
        "keel-sel4: vm {}: {} vCPUs, {} MiB RAM at {:#x}, kernel at {pc:#x}, dtb at {x0:#x} ({} bytes), {} virtio devices",
        cfg.name,
        cfg.vcpus,
        cfg.ram_size >> 20,
        cfg.ram_gpa,
        fdt_len,
        platform.virtio.len()
    );
    for v in 0..cfg.vcpus {
        sys::vcpu_write_reg(
            vcpu_cap(v),
            vcpu_reg::VMPIDR_EL2,
            0x8000_0000 | layout::mpidr(v),
        )
        .map_err(|e| alloc::format!("vcpu {v}: {e}"))?;
    }
    // Make sure the guest sees the copied bytes before it runs with caches off.
    clean_dcache(ram, boot.kernel, kernel.len());
    if let Some((s, e)) = boot.initrd {
        clean_dcache(ram, s, (e - s) as usize);
    }
    clean_dcache(ram, x0, fdt_len);
    let vgic = Vgic::new(GicVersion::V2, cfg.vcpus, SPIS, LIST_REGISTERS)
        .map_err(|e| alloc::format!("interrupt controller: {e}"))?;
    start_vcpu(0, pc, x0).map_err(|e| alloc::format!("starting vcpu 0: {e}"))?;
    let _ = ram.read_u32(GuestAddress(pc));
    Ok(Machine { bus, vgic })
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
    let name = crate::pd::name();
    // The console lock first: the "vmm up" line is already shared with the other VMMs.
    if let Ok(lay) =
        payload_bytes().and_then(|b| payload::parse(b).map_err(|e| alloc::format!("{e}")))
    {
        CONSOLE_LOCK.store(lay.config.console_lock, Ordering::Relaxed);
    }
    log!("keel-sel4: vmm up ({name})");
    let mut vmm = match boot() {
        Ok(v) => v,
        Err(e) => {
            log!("keel-sel4: {name}: cannot start the VM: {e}");
            idle();
        }
    };
    let mut reply = false;
    loop {
        let (badge, info) = if reply {
            sys::reply_recv(mk::INPUT_CAP, MessageInfo::new(0, 0), mk::REPLY_CAP)
        } else {
            sys::recv(mk::INPUT_CAP, mk::REPLY_CAP)
        };
        reply = false;
        match Event::from_badge(badge) {
            Event::Fault { child } => {
                let fault = Fault::decode(info, sys::mr);
                let vcpu = u32::from(child);
                let resume = match fault {
                    Ok(f) if !vmm.stopped && vcpu < vmm.vcpus => vmm.handle(vcpu, f),
                    Ok(_) => Resume::No,
                    Err(e) => {
                        vmm.stop_vm(&alloc::format!("vcpu {vcpu}: {e}"));
                        Resume::No
                    }
                };
                vmm.sync_lines();
                reply = matches!(resume, Resume::Yes);
            }
            Event::ProtectedCall { .. } => reply = true,
            Event::Notified { channels } => {
                vmm.notified(channels);
                vmm.sync_lines();
            }
        }
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
    log!("keel-sel4: VMM panic: {info}");
    for v in 0..8 {
        let _ = sys::tcb_suspend(vm_tcb_cap(v));
    }
    idle()
}
