//! `arm64`: everything the arm64 side decodes from a guest. The first input byte chooses
//! the part; the rest is a sequence of operations decoded with [`Unstructured`] (running out
//! of bytes ends the run).
//!
//! 0. **Fault decoding** (`keel_core::arch::aarch64::{esr, fault}`): arbitrary `ESR_EL2`
//!    syndromes (any exception class, any ISS, any upper bits), faulting addresses and guest
//!    registers through `vm_fault_exit` (seL4 `VMFault`: data aborts), `vcpu_fault_exit`
//!    (seL4 `VCPUFault`: `WFx`, `HVC`/`SMC` immediates, trapped `MSR`/`MRS`) and
//!    `hvc_syscall_exit`, then `Completion::apply` with arbitrary answers. Checked against
//!    a reference decoding written here from the Arm ARM field positions:
//!    - a decoded MMIO access has width 1/2/4/8 (`1 << SAS`), its address is exactly the
//!      faulting IPA, its register is `SRT` (0..=30, or 31: the zero register, which reads
//!      as 0 and discards loads), a store's data is that register truncated to the width,
//!      sign extension and `SF` are reported only for loads (a store exit has no such
//!      flag), and the PC moves by the instruction length (`IL`) — enforced in
//!      `fault::vm_fault_exit`, `fault::apply_read`, `fault::GuestRegs::{get, set}`;
//!    - a syndrome that cannot be emulated (not a data abort, `ISV` = 0, cache maintenance,
//!      stage-1 walk, instruction fetch) is the matching typed `EsrError` naming the
//!      address and syndrome, never a panic (`fault::vm_fault_exit`);
//!    - `HVC`/`SMC` immediates are `ISS[15:0]`, the call's arguments x0..x3 unchanged, a
//!      trapped `MSR`/`MRS` names its 16-bit encoding and register (`esr::Esr::decode`,
//!      `fault::vcpu_fault_exit`); an answer of the wrong kind is `AnswerMismatch` and
//!      leaves the registers untouched (`fault::Completion::apply`).
//! 1. **PSCI** (`psci::Psci::handle`): sequences of calls with arbitrary function ids
//!    (known ids, their SMC32/SMC64 twins, arbitrary upper bits of x0, unknown ids) and
//!    arguments from arbitrary (also non-existent) vCPUs, against a host that answers
//!    `CPU_ON` arbitrarily (now / pending / bad address / failure), plus `mark_on`. A model
//!    of the power states checks: a vCPU that is on or pending is never started again
//!    (`ALREADY_ON` / `ON_PENDING`), `CPU_ON` of a non-existent CPU or a malformed MPIDR is
//!    `INVALID_PARAMETERS` and starts nothing, a started vCPU gets the entry point and
//!    context id unchanged (SMC32: their low 32 bits), the host is never asked to start a
//!    vCPU beyond the configured count, unknown ids return `NOT_SUPPORTED`, `PSCI_VERSION`
//!    / `PSCI_FEATURES` / `AFFINITY_INFO` / `SYSTEM_OFF` / `SYSTEM_RESET` / `CPU_OFF`
//!    answer as the specification says, and the table's states always equal the model's
//!    (`psci::Psci::{handle, cpu_on, affinity_info}`).
//! 2. **vGIC** (`vgic::{v2, v3}`): a GICv2 or GICv3 distributor of random size (vCPUs,
//!    SPIs, list registers) driven by sequences of distributor / redistributor register
//!    accesses of any width and offset from arbitrary vCPUs, `ICC_SGI*R_EL1` writes, device
//!    line changes, injections and maintenance (EOIs). Checked: every list-register write
//!    names an existing vCPU, a list register below the hardware count that is free, an
//!    implemented INTID (never 1020..), a priority with the unimplemented low bits clear,
//!    and no interrupt is in two list registers at once (`Vgic::deliver`,
//!    `Vgic::place_in_lr`, `Vgic::drain_queue`); an interrupt is delivered only while it is
//!    enabled, its group is enabled in `GICD_CTLR`, and to a vCPU its `ITARGETSR` (lowest
//!    set bit) / `IROUTER` names (`Vgic::deliver`, `Vgic::target`); accesses of widths or
//!    alignments the architecture does not allow read as zero and change nothing, and the
//!    documented reserved offsets read as zero (module docs of `v2` / `v3`); enable, group,
//!    priority, target, routing and configuration registers read back as written, masked
//!    to the implemented interrupts and bits (`Vgic::common_read` / `common_write`).
//! 3. **UART** (`keel_vmm::uart::Uart8250`, the arm64 platform UART and x86's COM1):
//!    register sequences interleaved with host input. A model checks that the output is
//!    exactly the bytes written to THR with DLAB and loopback clear, the input queue never
//!    holds more than its 4096-byte limit and returns bytes in order, registers read back
//!    as written (`LCR`, `MCR & 0x1f`, `IER & 0x0f`, `SCR`, `DLL`/`DLM`), `LSR` reports
//!    data-ready exactly when input waits, and unknown offsets read 0
//!    (`Uart8250::{read, write, push_input}`).
//! 4. **MMIO dispatch** (`keel_vmm::dispatch::ExitDispatcher`): arbitrary non-overlapping
//!    spy devices and read-only regions on the MMIO bus, then arbitrary reads and writes
//!    of any width at any address. Checked: an access reaches a device only if the
//!    device's range contains all of it, at the right offset and width; anything else reads
//!    all ones and a write to nothing or to a read-only region changes no device
//!    (`ExitDispatcher::handle`, `keel_core::Bus::resolve`).
//! 5. **The VMM's arm64 exits** (`keel_vmm::VmmCore` with the software GIC, on the
//!    `testing` fake hypervisor): sequences of MMIO accesses (UART, distributor, virtio
//!    window, RAM, unmapped), firmware calls, trapped system registers, vGIC maintenance
//!    and virtual PPIs from arbitrary vCPUs. Checked: no panic, the serial output is a
//!    subsequence of the bytes written to the UART's data register, reads of addresses no
//!    device decodes return all ones, a started vCPU is an existing one whose entry is in
//!    RAM, and PSCI `SYSTEM_OFF`/`SYSTEM_RESET` stop the VM with the matching event.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arbitrary::{Result, Unstructured};
use keel_core::arch::aarch64::esr::{Esr, EsrError, SysReg, ec};
use keel_core::arch::aarch64::fault::{
    Completion, GuestRegs, VmFault, hvc_syscall_exit, vcpu_fault_exit, vm_fault_exit,
};
use keel_core::arch::aarch64::layout::{
    GIC_DIST_BASE, GIC_DIST_SIZE, GICV3_REDIST_SIZE, GicVersion, UART_BASE, UART_SIZE, mpidr,
    vcpu_of_mpidr,
};
use keel_core::arch::aarch64::psci::{
    self, PowerState, Psci, PsciHost, PsciOutcome, StartError, Started, fid, ret,
};
use keel_core::arch::aarch64::vgic::{MAX_IRQS, Vgic, VgicHost};
use keel_core::hv::HypercallKind;
use keel_core::{BootEntry, BusDevice, ExitAnswer, SystemEvent, VcpuExit, VcpuId};

/// Operations per input, at most.
const MAX_OPS: usize = 256;

/// The body of the `arm64` target.
pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    // Running out of input ends a run: every error of `arbitrary` is "no more bytes".
    let _ = match which % 6 {
        0 => faults(&mut u),
        1 => psci_calls(&mut u),
        2 => vgic(&mut u),
        3 => uart(&mut u),
        4 => mmio_dispatch(&mut u),
        _ => vmm_exits(&mut u),
    };
}

// ---------------------------------------------------------------------------------------
// 0. Fault decoding.

const IL: u64 = 1 << 25;

fn syndrome(u: &mut Unstructured<'_>) -> Result<u64> {
    let class = if u.arbitrary::<bool>()? {
        *u.choose(&[
            ec::DABT_LOW,
            ec::IABT_LOW,
            ec::HVC64,
            ec::SMC64,
            ec::SYS64,
            ec::WFX,
            ec::HVC32,
            ec::SMC32,
            ec::UNKNOWN,
        ])?
    } else {
        u.int_in_range(0..=63)?
    };
    let iss = u64::from(u.arbitrary::<u32>()?) & 0x1ff_ffff;
    let il = if u.arbitrary::<bool>()? { IL } else { 0 };
    let high = if u.ratio(1, 8)? {
        u64::from(u.arbitrary::<u32>()?) << 32
    } else {
        0
    };
    Ok(high | u64::from(class) << 26 | il | iss)
}

/// The value a load of `len` bytes leaves in its register, computed independently of
/// `fault::apply_read`.
fn loaded(value: u64, len: u8, sign_extend: bool, sixty_four: bool) -> u64 {
    let v = match (len, sign_extend) {
        (1, false) => u64::from(value as u8),
        (2, false) => u64::from(value as u16),
        (4, false) => u64::from(value as u32),
        (1, true) => value as u8 as i8 as i64 as u64,
        (2, true) => value as u16 as i16 as i64 as u64,
        (4, true) => value as u32 as i32 as i64 as u64,
        _ => value,
    };
    if sixty_four { v } else { v & 0xffff_ffff }
}

fn faults(u: &mut Unstructured<'_>) -> Result<()> {
    let salt: u64 = u.arbitrary()?;
    let mut regs = GuestRegs::default();
    for (i, r) in regs.x.iter_mut().enumerate() {
        *r = salt.rotate_left(i as u32 * 7) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    regs.pc = u.arbitrary()?;
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let esr = syndrome(u)?;
        let iss = esr & 0x1ff_ffff;
        let class = ((esr >> 26) & 0x3f) as u8;
        let skip: u8 = if esr & IL != 0 { 4 } else { 2 };
        let answer_value: u64 = u.arbitrary()?;
        match u.int_in_range(0..=2u8)? {
            0 => {
                let fault = VmFault {
                    ip: regs.pc,
                    addr: u.arbitrary()?,
                    prefetch: u.ratio(1, 8)?,
                    fsr: esr,
                };
                check_vm_fault(&fault, &regs, class, iss, skip, answer_value);
            }
            1 => check_vcpu_fault(esr, &regs, class, iss, skip, answer_value),
            _ => {
                let e = hvc_syscall_exit(&regs);
                assert_eq!(
                    e.exit,
                    VcpuExit::Hypercall {
                        kind: HypercallKind::Hvc,
                        imm: 0,
                        args: [regs.x[0], regs.x[1], regs.x[2], regs.x[3]],
                    },
                    "UnknownSyscall hvc: wrong exit"
                );
                assert_eq!(e.completion, Completion::Hypercall { skip: 4 });
            }
        }
        // Vary the registers between syndromes.
        let r: u8 = u.int_in_range(0..=30)?;
        regs.x[usize::from(r)] = u.arbitrary()?;
    }
    Ok(())
}

fn check_vm_fault(
    fault: &VmFault,
    regs: &GuestRegs,
    class: u8,
    iss: u64,
    skip: u8,
    answer_value: u64,
) {
    let gpa = fault.addr;
    let esr = fault.fsr;
    let got = vm_fault_exit(fault, regs);
    // The reference classification (Arm ARM D17.2.40: ISV 24, SAS 23:22, SSE 21, SRT 20:16,
    // SF 15, CM 8, S1PTW 7, WnR 6).
    let expected_err = if class != ec::DABT_LOW && class != ec::IABT_LOW {
        Some(EsrError::UnhandledClass { ec: class, esr })
    } else if class == ec::IABT_LOW || fault.prefetch {
        Some(EsrError::InstructionAbort { gpa, esr })
    } else if iss & (1 << 7) != 0 {
        Some(EsrError::PageTableWalk { gpa, esr })
    } else if iss & (1 << 8) != 0 {
        Some(EsrError::CacheMaintenance { gpa, esr })
    } else if iss & (1 << 24) == 0 {
        Some(EsrError::NoInstructionSyndrome { gpa, esr })
    } else {
        None
    };
    let exit = match (got, expected_err) {
        (Err(e), Some(want)) => {
            assert_eq!(e, want, "syndrome {esr:#x}: wrong error");
            return;
        }
        (Ok(exit), None) => exit,
        (got, want) => {
            panic!("syndrome {esr:#x} at {gpa:#x}: got {got:?}, expected error {want:?}")
        }
    };
    let len = 1u8 << ((iss >> 22) & 3);
    let srt = ((iss >> 16) & 0x1f) as u8;
    let write = iss & (1 << 6) != 0;
    if write {
        let raw = if srt == 31 {
            0
        } else {
            regs.x[usize::from(srt)]
        };
        let data = if len == 8 {
            raw
        } else {
            raw & ((1 << (8 * u32::from(len))) - 1)
        };
        assert_eq!(
            exit.exit,
            VcpuExit::MmioWrite { gpa, len, data },
            "store syndrome {esr:#x}: wrong access"
        );
        assert_eq!(
            exit.completion,
            Completion::Skip { skip },
            "store syndrome {esr:#x}: a store writes no register"
        );
        return;
    }
    assert_eq!(
        exit.exit,
        VcpuExit::MmioRead { gpa, len },
        "load syndrome {esr:#x}: wrong access"
    );
    let Completion::MmioRead { access, skip: s } = exit.completion else {
        panic!("load syndrome {esr:#x}: completion {:?}", exit.completion);
    };
    assert_eq!(s, skip, "load syndrome {esr:#x}: wrong PC step");
    assert!(access.reg <= 31, "register {} out of range", access.reg);
    assert_eq!(access.reg, srt, "load syndrome {esr:#x}: wrong register");
    assert_eq!(access.len, len, "load syndrome {esr:#x}: wrong width");
    assert_eq!(access.sign_extend, iss & (1 << 21) != 0, "SSE not reported");
    assert_eq!(access.sixty_four, iss & (1 << 15) != 0, "SF not reported");
    // Complete the load: only the target register and the PC change.
    let mut after = *regs;
    exit.completion
        .apply(ExitAnswer::Read(answer_value), &mut after)
        .unwrap_or_else(|e| panic!("a read answer must complete a load: {e}"));
    let mut want = *regs;
    if srt < 31 {
        want.x[usize::from(srt)] = loaded(answer_value, len, access.sign_extend, access.sixty_four);
    }
    want.pc = regs.pc.wrapping_add(u64::from(skip));
    assert_eq!(after, want, "load syndrome {esr:#x} completed wrongly");
    // A wrong kind of answer changes nothing.
    let mut untouched = *regs;
    assert!(
        exit.completion
            .apply(ExitAnswer::None, &mut untouched)
            .is_err(),
        "a load completed without a value"
    );
    assert_eq!(untouched, *regs, "a refused answer changed registers");
}

fn check_vcpu_fault(esr: u64, regs: &GuestRegs, class: u8, iss: u64, skip: u8, answer_value: u64) {
    let got = vcpu_fault_exit(esr, regs);
    let args = [regs.x[0], regs.x[1], regs.x[2], regs.x[3]];
    let exit = match class {
        ec::WFX | ec::HVC64 | ec::SMC64 | ec::SYS64 => {
            got.unwrap_or_else(|e| panic!("syndrome {esr:#x} of class {class:#x}: {e}"))
        }
        _ => {
            assert_eq!(
                got,
                Err(EsrError::UnhandledClass { ec: class, esr }),
                "syndrome {esr:#x}: class {class:#x} is not emulated"
            );
            return;
        }
    };
    assert_eq!(Esr(esr).ec(), class);
    match class {
        ec::WFX => {
            assert_eq!(exit.exit, VcpuExit::Halt);
            assert_eq!(exit.completion, Completion::Skip { skip });
        }
        ec::HVC64 | ec::SMC64 => {
            let kind = if class == ec::HVC64 {
                HypercallKind::Hvc
            } else {
                HypercallKind::Smc
            };
            assert_eq!(
                exit.exit,
                VcpuExit::Hypercall {
                    kind,
                    imm: iss as u16,
                    args
                },
                "firmware call {esr:#x}: wrong immediate or arguments"
            );
            assert_eq!(exit.completion, Completion::Hypercall { skip });
            let answer = [answer_value, !answer_value, 1, 2];
            let mut after = *regs;
            exit.completion
                .apply(ExitAnswer::Hypercall(answer), &mut after)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(after.x[..4], answer, "x0..x3 are the answer");
            assert_eq!(
                after.x[4..],
                regs.x[4..],
                "x4.. untouched by a firmware call"
            );
            assert_eq!(after.pc, regs.pc.wrapping_add(u64::from(skip)));
        }
        _ => {
            // Op0 21:20, Op2 19:17, Op1 16:14, CRn 13:10, Rt 9:5, CRm 4:1, Direction 0.
            let reg = SysReg::new(
                ((iss >> 20) & 3) as u8,
                ((iss >> 14) & 7) as u8,
                ((iss >> 10) & 0xf) as u8,
                ((iss >> 1) & 0xf) as u8,
                ((iss >> 17) & 7) as u8,
            );
            let rt = ((iss >> 5) & 0x1f) as u8;
            let read = iss & 1 != 0;
            let encoding = reg.encoding();
            assert!(
                encoding < 1 << 16,
                "encoding {encoding:#x} wider than 16 bits"
            );
            let value = if rt == 31 { 0 } else { regs.x[usize::from(rt)] };
            let want = VcpuExit::SysReg {
                encoding,
                write: (!read).then_some(value),
            };
            assert_eq!(exit.exit, want, "system register syndrome {esr:#x}");
            if read {
                assert_eq!(exit.completion, Completion::SysRegRead { rt, skip });
                let mut after = *regs;
                exit.completion
                    .apply(ExitAnswer::Read(answer_value), &mut after)
                    .unwrap_or_else(|e| panic!("{e}"));
                let mut w = *regs;
                if rt < 31 {
                    w.x[usize::from(rt)] = answer_value;
                }
                w.pc = regs.pc.wrapping_add(u64::from(skip));
                assert_eq!(after, w, "MRS {esr:#x} completed wrongly");
            } else {
                assert_eq!(exit.completion, Completion::Skip { skip });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. PSCI.

struct PsciModelHost {
    vcpus: u32,
    answer: core::result::Result<Started, StartError>,
    started: Vec<(VcpuId, u64, u64)>,
    stopped: Vec<VcpuId>,
    off: u32,
    reset: u32,
}

impl PsciHost for PsciModelHost {
    fn start_vcpu(
        &mut self,
        target: VcpuId,
        entry: u64,
        context_id: u64,
    ) -> core::result::Result<Started, StartError> {
        assert!(
            target < self.vcpus,
            "PSCI asked to start vCPU {target} of {}",
            self.vcpus
        );
        self.started.push((target, entry, context_id));
        self.answer
    }
    fn stop_vcpu(&mut self, vcpu: VcpuId) {
        self.stopped.push(vcpu);
    }
    fn system_off(&mut self) {
        self.off += 1;
    }
    fn system_reset(&mut self) {
        self.reset += 1;
    }
}

/// Every function id `Psci::handle` implements.
const PSCI_IMPLEMENTED: &[u32] = &[
    fid::SMCCC_VERSION,
    fid::SMCCC_ARCH_FEATURES,
    fid::PSCI_VERSION,
    fid::CPU_SUSPEND_32,
    fid::CPU_SUSPEND_64,
    fid::CPU_OFF,
    fid::CPU_ON_32,
    fid::CPU_ON_64,
    fid::AFFINITY_INFO_32,
    fid::AFFINITY_INFO_64,
    fid::MIGRATE_INFO_TYPE,
    fid::SYSTEM_OFF,
    fid::SYSTEM_RESET,
    fid::PSCI_FEATURES,
];

/// Ids a guest may try that are not implemented.
const PSCI_UNIMPLEMENTED: &[u32] = &[
    fid::SMCCC_ARCH_WORKAROUND_1,
    fid::MIGRATE_64,
    fid::SYSTEM_SUSPEND_64,
    fid::SYSTEM_RESET2_64,
    0x8400_0007,
    0xc400_0002,
    0xc400_0008,
    0x8400_000b,
];

fn status(code: i64) -> PsciOutcome {
    PsciOutcome::Return([code as u64, 0, 0, 0])
}

fn psci_calls(u: &mut Unstructured<'_>) -> Result<()> {
    let vcpus: u32 = u.int_in_range(1..=40)?;
    let mut p = Psci::new(vcpus);
    let mut model = vec![PowerState::Off; vcpus as usize];
    model[0] = PowerState::On;
    let mut host = PsciModelHost {
        vcpus,
        answer: Ok(Started::Now),
        started: Vec::new(),
        stopped: Vec::new(),
        off: 0,
        reset: 0,
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let caller: VcpuId = u.int_in_range(0..=vcpus + 1)?;
        if u.ratio(1, 16)? {
            p.mark_on(caller);
            if let Some(s) = model.get_mut(caller as usize) {
                *s = PowerState::On;
            }
            check_psci_states(&p, &model);
            continue;
        }
        let id: u32 = match u.int_in_range(0..=3u8)? {
            0 | 1 => *u.choose(PSCI_IMPLEMENTED)?,
            2 => *u.choose(PSCI_UNIMPLEMENTED)?,
            _ => u.arbitrary()?,
        };
        let upper: u64 = if u.ratio(1, 8)? {
            u64::from(u.arbitrary::<u32>()?) << 32
        } else {
            0
        };
        let target: u64 = if u.arbitrary::<bool>()? {
            mpidr(u.int_in_range(0..=vcpus + 2)?)
        } else {
            u.arbitrary()?
        };
        let call = [
            upper | u64::from(id),
            target,
            u.arbitrary()?,
            u.arbitrary()?,
        ];
        host.answer = match u.int_in_range(0..=7u8)? {
            0 => Ok(Started::Pending),
            1 => Err(StartError::InvalidAddress(call[2])),
            2 => Err(StartError::Internal),
            _ => Ok(Started::Now),
        };
        let started_before = host.started.len();
        let stopped_before = host.stopped.len();
        let (off_before, reset_before) = (host.off, host.reset);
        let out = p.handle(call, caller, &mut host);
        let started = &host.started[started_before..];

        let Some(caller_state) = model.get_mut(caller as usize) else {
            assert_eq!(
                out,
                status(ret::INTERNAL_FAILURE),
                "call from non-existent vCPU {caller}"
            );
            assert!(started.is_empty() && host.stopped.len() == stopped_before);
            check_psci_states(&p, &model);
            continue;
        };
        *caller_state = PowerState::On;
        let smc32 = id & (1 << 30) == 0;
        let arg = |i: usize| {
            if smc32 {
                call[i] & 0xffff_ffff
            } else {
                call[i]
            }
        };
        let expected = match id {
            fid::SMCCC_VERSION => Some(PsciOutcome::Return([psci::SMCCC_VERSION_1_1, 0, 0, 0])),
            fid::PSCI_VERSION => Some(PsciOutcome::Return([psci::PSCI_VERSION_1_1, 0, 0, 0])),
            fid::SMCCC_ARCH_FEATURES => Some(status(
                if matches!(arg(1) as u32, fid::SMCCC_VERSION | fid::SMCCC_ARCH_FEATURES) {
                    ret::SUCCESS
                } else {
                    ret::NOT_SUPPORTED
                },
            )),
            fid::PSCI_FEATURES => Some(status(match u32::try_from(arg(1)) {
                Ok(q) if PSCI_IMPLEMENTED.contains(&q) && q != fid::SMCCC_ARCH_FEATURES => {
                    ret::SUCCESS
                }
                _ => ret::NOT_SUPPORTED,
            })),
            fid::CPU_SUSPEND_32 | fid::CPU_SUSPEND_64 => Some(PsciOutcome::Suspend([0; 4])),
            fid::MIGRATE_INFO_TYPE => Some(PsciOutcome::Return([2, 0, 0, 0])),
            fid::CPU_OFF => {
                *caller_state = PowerState::Off;
                assert_eq!(
                    &host.stopped[stopped_before..],
                    [caller],
                    "CPU_OFF stops the caller"
                );
                Some(PsciOutcome::Off)
            }
            fid::SYSTEM_OFF => {
                assert_eq!(host.off, off_before + 1, "SYSTEM_OFF reaches the host");
                Some(PsciOutcome::System(SystemEvent::Shutdown))
            }
            fid::SYSTEM_RESET => {
                assert_eq!(
                    host.reset,
                    reset_before + 1,
                    "SYSTEM_RESET reaches the host"
                );
                Some(PsciOutcome::System(SystemEvent::Reset))
            }
            fid::CPU_ON_32 | fid::CPU_ON_64 => {
                let t = vcpu_of_mpidr(arg(1)).filter(|&t| t < vcpus);
                Some(match t.map(|t| (t, model[t as usize])) {
                    None => {
                        assert!(started.is_empty(), "CPU_ON of no CPU started {started:?}");
                        status(ret::INVALID_PARAMETERS)
                    }
                    Some((t, PowerState::On)) => {
                        assert!(started.is_empty(), "vCPU {t} is on and was started again");
                        status(ret::ALREADY_ON)
                    }
                    Some((t, PowerState::OnPending)) => {
                        assert!(
                            started.is_empty(),
                            "vCPU {t} is pending and was started again"
                        );
                        status(ret::ON_PENDING)
                    }
                    Some((t, PowerState::Off)) => {
                        assert_eq!(
                            started,
                            [(t, arg(2), arg(3))],
                            "CPU_ON must start vCPU {t} with its entry and context id unchanged"
                        );
                        match host.answer {
                            Ok(Started::Now) => {
                                model[t as usize] = PowerState::On;
                                status(ret::SUCCESS)
                            }
                            Ok(Started::Pending) => {
                                model[t as usize] = PowerState::OnPending;
                                status(ret::SUCCESS)
                            }
                            Err(StartError::InvalidAddress(_)) => status(ret::INVALID_ADDRESS),
                            Err(StartError::Internal) => status(ret::INTERNAL_FAILURE),
                        }
                    }
                })
            }
            fid::AFFINITY_INFO_32 | fid::AFFINITY_INFO_64 => {
                // Level 0 names one vCPU: its state is the answer.
                let (aff, level) = (arg(1), arg(2));
                let one = vcpu_of_mpidr(aff).filter(|&t| t < vcpus);
                match (level, one) {
                    (0, Some(t)) => Some(PsciOutcome::Return([
                        match model[t as usize] {
                            PowerState::On => 0,
                            PowerState::Off => 1,
                            PowerState::OnPending => 2,
                        },
                        0,
                        0,
                        0,
                    ])),
                    (4.., _) => Some(status(ret::INVALID_PARAMETERS)),
                    _ => {
                        let PsciOutcome::Return([x0, 0, 0, 0]) = out else {
                            panic!("AFFINITY_INFO answered {out:?}");
                        };
                        assert!(
                            matches!(x0 as i64, 0 | 1 | 2 | ret::INVALID_PARAMETERS),
                            "AFFINITY_INFO answered {x0:#x}"
                        );
                        None
                    }
                }
            }
            _ => Some(status(ret::NOT_SUPPORTED)),
        };
        if let Some(want) = expected {
            assert_eq!(out, want, "call {call:x?} from vCPU {caller}");
        }
        if !matches!(id, fid::CPU_ON_32 | fid::CPU_ON_64) {
            assert!(started.is_empty(), "call {id:#x} started a vCPU");
        }
        if id != fid::CPU_OFF {
            assert_eq!(
                host.stopped.len(),
                stopped_before,
                "call {id:#x} stopped a vCPU"
            );
        }
        check_psci_states(&p, &model);
    }
    Ok(())
}

fn check_psci_states(p: &Psci, model: &[PowerState]) {
    for (i, want) in model.iter().enumerate() {
        assert_eq!(p.state(i as VcpuId), Some(*want), "power state of vCPU {i}");
    }
    assert_eq!(
        p.state(model.len() as VcpuId),
        None,
        "a vCPU beyond the count"
    );
}

// ---------------------------------------------------------------------------------------
// 2. vGIC.

#[derive(Default)]
struct GicHost {
    /// `(vcpu, lr, intid, priority, group)` since the last check.
    injected: Vec<(VcpuId, u8, u32, u8, u8)>,
    kicked: Vec<VcpuId>,
}

impl VgicHost for GicHost {
    fn inject_list_register(&mut self, vcpu: VcpuId, lr: u8, intid: u32, priority: u8, group: u8) {
        self.injected.push((vcpu, lr, intid, priority, group));
    }
    fn kick(&mut self, vcpu: VcpuId) {
        self.kicked.push(vcpu);
    }
}

struct GicRig {
    g: Vgic,
    v3: bool,
    vcpus: u32,
    irqs: u32,
    /// The shadow of every list register: the INTID it holds.
    lrs: Vec<Vec<Option<u32>>>,
    host: GicHost,
}

impl GicRig {
    fn dist_read(&self, vcpu: VcpuId, offset: u64, len: u8) -> u64 {
        if self.v3 {
            self.g.v3_dist_read(vcpu, offset, len)
        } else {
            self.g.v2_dist_read(vcpu, offset, len)
        }
    }

    fn dist_write(&mut self, vcpu: VcpuId, offset: u64, len: u8, value: u64) {
        if self.v3 {
            self.g
                .v3_dist_write(vcpu, offset, len, value, &mut self.host)
        } else {
            self.g
                .v2_dist_write(vcpu, offset, len, value, &mut self.host)
        }
    }

    /// Read the 1-bit register at `base` (ISENABLER, IGROUPR, …) for `intid` as `owner` sees it.
    fn bit(&self, owner: VcpuId, base: u64, intid: u32) -> bool {
        let word = u64::from(intid / 32) * 4;
        let v = if self.v3 && intid < 32 {
            self.g
                .v3_redist_read(u64::from(owner) * GICV3_REDIST_SIZE + 0x1_0000 + base, 4)
        } else {
            self.dist_read(owner, base + word, 4)
        };
        v & (1 << (intid % 32)) != 0
    }

    /// Check every list-register write and kick since the last check.
    fn check_injections(&mut self) {
        let injected = core::mem::take(&mut self.host.injected);
        for &(vcpu, lr, intid, priority, group) in &injected {
            assert!(
                vcpu < self.vcpus,
                "injected into vCPU {vcpu} of {}",
                self.vcpus
            );
            let lrs = &self.lrs[vcpu as usize];
            assert!(
                usize::from(lr) < lrs.len(),
                "list register {lr} of {} written",
                lrs.len()
            );
            assert!(
                intid < self.irqs && intid < MAX_IRQS,
                "INTID {intid} injected, {} implemented",
                self.irqs
            );
            assert_eq!(
                lrs[usize::from(lr)],
                None,
                "list register {lr} of vCPU {vcpu} overwritten with {intid}"
            );
            assert_eq!(
                priority & 7,
                0,
                "priority {priority:#x} has unimplemented bits"
            );
            assert!(group <= 1, "group {group}");
            // Nowhere else already: SPIs in no list register at all, private interrupts not
            // twice on one vCPU.
            for (v, l) in self.lrs.iter().enumerate() {
                if intid >= 32 || v == vcpu as usize {
                    assert!(
                        !l.contains(&Some(intid)),
                        "INTID {intid} in two list registers (vCPUs {v} and {vcpu})"
                    );
                }
            }
            self.lrs[vcpu as usize][usize::from(lr)] = Some(intid);
            // Enabled, its group enabled, and (SPIs) targeted at this vCPU.
            assert!(
                self.bit(vcpu, 0x100, intid),
                "INTID {intid} delivered to vCPU {vcpu} while disabled"
            );
            let ctlr = self.dist_read(0, 0, 4);
            let grp_bit = if self.v3 && group == 1 { 2 } else { 1 };
            assert!(
                ctlr & grp_bit != 0,
                "INTID {intid} (group {group}) delivered while GICD_CTLR is {ctlr:#x}"
            );
            assert_eq!(
                u8::from(self.bit(vcpu, 0x080, intid)),
                group,
                "INTID {intid} injected with a group other than IGROUPR's"
            );
            if intid >= 32 {
                if self.v3 {
                    let route = self.g.v3_dist_read(0, 0x6000 + 8 * u64::from(intid), 8);
                    if route & (1 << 31) == 0 {
                        let aff = (route & 0xff_ffff) | ((route >> 32) & 0xff) << 32;
                        assert_eq!(
                            vcpu_of_mpidr(aff),
                            Some(vcpu),
                            "SPI {intid} routed to {route:#x} delivered to vCPU {vcpu}"
                        );
                    }
                } else {
                    let targets = self.g.v2_dist_read(0, 0x800 + u64::from(intid), 1);
                    assert_eq!(
                        targets.trailing_zeros(),
                        vcpu,
                        "SPI {intid} with targets {targets:#b} delivered to vCPU {vcpu}"
                    );
                }
            }
        }
        for k in core::mem::take(&mut self.host.kicked) {
            assert!(k < self.vcpus, "kicked vCPU {k} of {}", self.vcpus);
        }
    }
}

/// Offsets worth hitting in a distributor frame (and an `SGI_base` frame).
const DIST_OFFSETS: &[u64] = &[
    0x000, 0x004, 0x008, 0x00c, 0x080, 0x084, 0x100, 0x104, 0x180, 0x184, 0x200, 0x204, 0x280,
    0x284, 0x300, 0x304, 0x380, 0x384, 0x400, 0x41c, 0x420, 0x7f8, 0x7fc, 0x800, 0x81c, 0x820,
    0x821, 0xbf8, 0xbfc, 0xc00, 0xc04, 0xc08, 0xcfc, 0xf00, 0xf10, 0xf1c, 0xf20, 0xf2c, 0xfe8,
    0x6000, 0x6100, 0x6104, 0x7fd8, 0x7fe0, 0xffe8,
];

fn gic_offset(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 | 1 => *u.choose(DIST_OFFSETS)? + u64::from(u.int_in_range(0..=7u8)? & !3),
        2 => u64::from(u.arbitrary::<u16>()?),
        _ => u.arbitrary()?,
    })
}

fn gic_len(u: &mut Unstructured<'_>) -> Result<u8> {
    Ok(*u.choose(&[4, 4, 4, 1, 1, 8, 2, 0, 3, 16])?)
}

/// Whether the vGIC documents `(offset, len)` as an access it ignores in the distributor.
fn dist_ignored(v3: bool, offset: u64, len: u8) -> bool {
    let widths: &[u8] = if v3 { &[1, 4, 8] } else { &[1, 4] };
    !widths.contains(&len) || offset % u64::from(len) != 0
}

/// Distributor offsets the register maps document as reserved (read as zero).
fn dist_reserved(v3: bool, offset: u64) -> bool {
    if v3 {
        matches!(offset, 0x00c..=0x07f | 0xd00..=0x5fff | 0x7fe0..=0xffe7 | 0xffec..)
    } else {
        matches!(offset, 0x00c..=0x07f | 0xd00..=0xeff | 0xf04..=0xf0f | 0xf30..=0xfe7 | 0xfec..)
    }
}

fn vgic(u: &mut Unstructured<'_>) -> Result<()> {
    let v3 = u.arbitrary::<bool>()?;
    let vcpus = if v3 {
        u.int_in_range(1..=12)?
    } else {
        u.int_in_range(1..=8)?
    };
    // Mostly small distributors (fast); sometimes the largest.
    let spis = if u.ratio(1, 4)? {
        u.int_in_range(0..=MAX_IRQS - 32)?
    } else {
        u.int_in_range(0..=96)?
    };
    let list_registers = u.int_in_range(1..=6u8)?;
    let version = if v3 { GicVersion::V3 } else { GicVersion::V2 };
    let g = Vgic::new(version, vcpus, spis, list_registers)
        .unwrap_or_else(|e| panic!("a valid distributor was refused: {e}"));
    let irqs = g.num_irqs();
    assert_eq!(
        irqs,
        (32 + spis.div_ceil(32) * 32).min(MAX_IRQS),
        "SPIs are rounded up to 32, below INTID 1020"
    );
    let mut rig = GicRig {
        g,
        v3,
        vcpus,
        irqs,
        lrs: vec![vec![None; usize::from(list_registers)]; vcpus as usize],
        host: GicHost::default(),
    };
    // TYPER names the lines and vCPUs.
    let typer = rig.dist_read(0, 4, 4);
    assert_eq!(
        (typer & 0x1f) + 1,
        u64::from(irqs.div_ceil(32)),
        "GICD_TYPER.ITLinesNumber"
    );
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let vcpu: VcpuId = u.int_in_range(0..=vcpus)?;
        let own = vcpu.min(vcpus - 1);
        match u.int_in_range(0..=12u8)? {
            // Distributor reads.
            0 | 1 => {
                let (offset, len) = (gic_offset(u)?, gic_len(u)?);
                let v = rig.dist_read(vcpu, offset, len);
                if dist_ignored(v3, offset, len) || dist_reserved(v3, offset) {
                    assert_eq!(v, 0, "distributor read of {len} at {offset:#x} is RAZ");
                }
                if len < 8 {
                    assert_eq!(v >> (8 * u32::from(len)), 0, "read wider than {len} bytes");
                }
            }
            // Distributor writes, with the read-back rules.
            2..=4 => {
                let (offset, len) = (gic_offset(u)?, gic_len(u)?);
                let value: u64 = u.arbitrary()?;
                let ignored = dist_ignored(v3, offset, len);
                let before = ignored.then(|| rig.g.clone());
                rig.dist_write(own, offset, len, value);
                if let Some(before) = before {
                    assert!(
                        rig.g == before,
                        "ignored write of {len} at {offset:#x} changed state"
                    );
                    assert!(rig.host.injected.is_empty(), "ignored write injected");
                } else {
                    check_read_back(&rig, own, offset, len, value);
                }
            }
            // Redistributor accesses (GICv3).
            5 if v3 => {
                let frame = u64::from(u.int_in_range(0..=vcpus)?) * GICV3_REDIST_SIZE;
                let off = if u.arbitrary()? {
                    0x1_0000 + *u.choose(DIST_OFFSETS)? % 0x1000
                } else {
                    u64::from(u.arbitrary::<u16>()?) * 2
                };
                let len = gic_len(u)?;
                let value: u64 = u.arbitrary()?;
                if u.arbitrary()? {
                    let v = rig.g.v3_redist_read(frame + off, len);
                    if frame / GICV3_REDIST_SIZE >= u64::from(vcpus) {
                        assert_eq!(v, 0, "a redistributor beyond the vCPUs reads zero");
                    }
                } else {
                    rig.g
                        .v3_redist_write(frame + off, len, value, &mut rig.host);
                    let r = frame / GICV3_REDIST_SIZE;
                    if r < u64::from(vcpus) && len == 4 && matches!(off, 0x1_0100 | 0x1_0080) {
                        let back = rig.g.v3_redist_read(frame + off, 4);
                        assert_eq!(
                            back & value & 0xffff_ffff,
                            value & 0xffff_ffff,
                            "GICR {off:#x}"
                        );
                    }
                }
            }
            5 => {
                // GICv2: the SGI register.
                let value = u64::from(u.arbitrary::<u32>()?);
                rig.dist_write(own, 0xf00, 4, value);
            }
            6 if v3 => {
                let reg = *u.choose(&[
                    SysReg::ICC_SGI1R_EL1,
                    SysReg::ICC_SGI0R_EL1,
                    SysReg::ICC_ASGI1R_EL1,
                    SysReg::new(3, 0, 12, 12, 5),
                ])?;
                let value: u64 = u.arbitrary()?;
                let owned = rig
                    .g
                    .v3_sysreg_write(own, reg.encoding(), value, &mut rig.host);
                assert_eq!(
                    owned,
                    reg != SysReg::new(3, 0, 12, 12, 5),
                    "ownership of system register {reg:?}"
                );
            }
            6 | 7 => {
                let spi = if u.arbitrary()? {
                    u.int_in_range(0..=spis + 2)?
                } else {
                    u.arbitrary()?
                };
                rig.g.set_spi_level(spi, u.arbitrary()?, &mut rig.host);
            }
            8 => {
                let intid = u.int_in_range(0..=40)?;
                rig.g.set_level(vcpu, intid, u.arbitrary()?, &mut rig.host);
            }
            9 => {
                let intid = if u.arbitrary()? {
                    u.int_in_range(0..=irqs + 4)?
                } else {
                    u.arbitrary()?
                };
                rig.g.inject(vcpu, intid, &mut rig.host);
            }
            _ => {
                // The guest EOIs a list register: the shadow must agree.
                let lr = u.int_in_range(0..=list_registers)?;
                let done = rig.g.maintenance(vcpu, lr, &mut rig.host);
                let held = rig
                    .lrs
                    .get_mut(vcpu as usize)
                    .and_then(|l| l.get_mut(usize::from(lr)))
                    .and_then(Option::take);
                assert_eq!(done, held, "maintenance of vCPU {vcpu} LR {lr}");
            }
        }
        rig.check_injections();
    }
    Ok(())
}

/// After a write the architecture lets read back, the implemented bits read as written.
fn check_read_back(rig: &GicRig, vcpu: VcpuId, offset: u64, len: u8, value: u64) {
    // Private state of GICv3 lives in the redistributors: the distributor's copy is RAZ/WI.
    let private = |intid: u32| rig.v3 && intid < 32;
    let implemented = |intid: u32| intid < rig.irqs && !private(intid);
    let mask_bits = |first: u32| -> u32 {
        (0..32)
            .filter(|b| implemented(first + b))
            .fold(0, |m, b| m | 1 << b)
    };
    let v = value as u32;
    let reg = |o: u64| rig.dist_read(vcpu, o, 4) as u32;
    match (offset, len) {
        (0x080..=0x0ff, 4) => {
            let m = mask_bits(((offset - 0x80) / 4) as u32 * 32);
            assert_eq!(reg(offset) & m, v & m, "IGROUPR at {offset:#x}");
            assert_eq!(
                reg(offset) & !m,
                0,
                "unimplemented IGROUPR bits at {offset:#x}"
            );
        }
        (0x100..=0x17f, 4) => {
            let m = mask_bits(((offset - 0x100) / 4) as u32 * 32);
            assert_eq!(reg(offset) & v & m, v & m, "ISENABLER at {offset:#x}");
            assert_eq!(
                reg(offset) & !m,
                0,
                "unimplemented enable bits at {offset:#x}"
            );
        }
        (0x180..=0x1ff, 4) => {
            assert_eq!(reg(offset) & v, 0, "ICENABLER at {offset:#x} left bits set");
            assert_eq!(reg(offset - 0x80) & v, 0, "ICENABLER did not disable");
        }
        (0x300..=0x37f, 4) => {
            let m = mask_bits(((offset - 0x300) / 4) as u32 * 32);
            assert_eq!(reg(offset) & v & m, v & m, "ISACTIVER at {offset:#x}");
        }
        (0x380..=0x3ff, 4) => assert_eq!(reg(offset) & v, 0, "ICACTIVER at {offset:#x}"),
        (0x400..=0x7fb, 1 | 4) => {
            let first = (offset - 0x400) as u32;
            let back = rig.dist_read(vcpu, offset, len);
            for i in 0..u32::from(len) {
                let want = if implemented(first + i) {
                    (value >> (8 * i)) as u8 & 0xf8
                } else {
                    0
                };
                assert_eq!(
                    (back >> (8 * i)) as u8,
                    want,
                    "IPRIORITYR of INTID {}",
                    first + i
                );
            }
        }
        (0x820..=0xbfb, 1 | 4) if !rig.v3 => {
            let first = (offset - 0x800) as u32;
            let back = rig.dist_read(vcpu, offset, len);
            let cpus = ((1u32 << rig.vcpus.min(8)) - 1) as u8;
            for i in 0..u32::from(len) {
                let want = if implemented(first + i) {
                    (value >> (8 * i)) as u8 & cpus
                } else {
                    0
                };
                assert_eq!(
                    (back >> (8 * i)) as u8,
                    want,
                    "ITARGETSR of INTID {}",
                    first + i
                );
            }
        }
        (0xc00..=0xcff, 4) => {
            let first = ((offset - 0xc00) / 4) as u32 * 16;
            let back = reg(offset);
            for i in 0..16 {
                let intid = first + i;
                let field = (back >> (2 * i)) & 3;
                let want = if !implemented(intid) {
                    0
                } else if intid < 16 {
                    2
                } else {
                    (v >> (2 * i)) & 2
                };
                assert_eq!(field, want, "ICFGR field of INTID {intid}");
            }
        }
        (0x6000..=0x7fdf, 8) if rig.v3 => {
            let intid = ((offset - 0x6000) / 8) as u32;
            let back = rig.dist_read(vcpu, offset, 8);
            let want = if intid >= 32 && intid < rig.irqs {
                value & (0xff_8000_0000 | 0xff_ffff)
            } else {
                0
            };
            assert_eq!(back, want, "IROUTER of INTID {intid}");
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// 3. UART.

/// The input queue limit documented in `keel_vmm::uart`.
const UART_INPUT_LIMIT: usize = 4096;

/// Drive a [`keel_vmm::uart::Uart8250`] with register accesses and host input against a
/// model; shared with the `x86_pio` target (COM1 is the same model).
pub(crate) fn uart(u: &mut Unstructured<'_>) -> Result<()> {
    let mut uart = keel_vmm::uart::Uart8250::new();
    let mut out = Vec::new();
    let mut want_out = Vec::new();
    let mut input: VecDeque<u8> = VecDeque::new();
    let (mut lcr, mut mcr, mut ier, mut scr, mut dll, mut dlm) = (0u8, 0u8, 0u8, 0u8, 12u8, 0u8);
    for _ in 0..MAX_OPS * 4 {
        if u.is_empty() {
            break;
        }
        let offset: u64 = if u.ratio(7, 8)? {
            u.int_in_range(0..=7)?
        } else {
            u.arbitrary()?
        };
        let dlab = lcr & 0x80 != 0;
        match u.int_in_range(0..=4u8)? {
            0 | 1 => {
                let value: u8 = u.arbitrary()?;
                uart.write(offset, value, &mut |b| out.push(b));
                match offset {
                    0 if dlab => dll = value,
                    // Loopback: the byte is received, if there is room.
                    0 if mcr & 0x10 != 0 => {
                        input.extend(Some(value).filter(|_| input.len() < UART_INPUT_LIMIT))
                    }
                    0 => want_out.push(value),
                    1 if dlab => dlm = value,
                    1 => ier = value & 0x0f,
                    2 if value & 2 != 0 => input.clear(),
                    3 => lcr = value,
                    4 => mcr = value & 0x1f,
                    7 => scr = value,
                    _ => {}
                }
            }
            2 | 3 => {
                let v = uart.read(offset);
                let want = match offset {
                    0 if dlab => Some(dll),
                    0 => Some(input.pop_front().unwrap_or(0)),
                    1 if dlab => Some(dlm),
                    1 => Some(ier),
                    2 => None,
                    3 => Some(lcr),
                    4 => Some(mcr),
                    5 => Some(0x60 | u8::from(!input.is_empty())),
                    6 => None,
                    7 => Some(scr),
                    _ => Some(0),
                };
                if let Some(w) = want {
                    assert_eq!(v, w, "UART read of register {offset:#x}");
                }
            }
            _ => {
                let n = u.int_in_range(0..=600usize)?;
                let bytes = u.bytes(n.min(u.len()))?;
                let took = uart.push_input(bytes);
                let room = UART_INPUT_LIMIT - input.len();
                assert_eq!(took, bytes.len().min(room), "host input accepted");
                input.extend(&bytes[..took]);
            }
        }
        assert!(
            input.len() <= UART_INPUT_LIMIT,
            "UART input beyond its limit"
        );
        assert_eq!(
            out, want_out,
            "UART output is exactly THR writes with DLAB and loopback clear"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 4. MMIO dispatch with spy devices.

/// What a spy device saw: `(device, offset, len, written bytes)`.
pub(crate) type SpyLog = Arc<Mutex<Vec<(usize, u64, usize, Option<Vec<u8>>)>>>;

/// A device that records every access and reads a pattern naming itself and the offset.
pub(crate) struct Spy {
    pub(crate) id: usize,
    pub(crate) log: SpyLog,
}

/// The byte a spy `id` reads at `offset`.
pub(crate) fn spy_byte(id: usize, offset: u64) -> u8 {
    (id as u8).wrapping_mul(31) ^ offset as u8 ^ 0x5a
}

/// What a read of `eff` bytes answers when it hits spy `hit` = (id, offset), or nothing.
pub(crate) fn spy_read(hit: Option<(usize, u64)>, eff: u8) -> u64 {
    match hit {
        Some((id, off)) => {
            let mut b = [0u8; 8];
            for (i, x) in b.iter_mut().take(usize::from(eff)).enumerate() {
                *x = spy_byte(id, off.wrapping_add(i as u64));
            }
            u64::from_le_bytes(b)
        }
        None => keel_vmm::dispatch::all_ones(eff),
    }
}

/// The spy log a read of `eff` bytes leaves: one entry for the spy it hits, if any.
pub(crate) fn spy_reads(
    hit: Option<(usize, u64)>,
    eff: u8,
) -> Vec<(usize, u64, usize, Option<Vec<u8>>)> {
    hit.map(|(id, off)| (id, off, usize::from(eff), None))
        .into_iter()
        .collect()
}

impl BusDevice for Spy {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = spy_byte(self.id, offset.wrapping_add(i as u64));
        }
        self.log
            .lock()
            .unwrap()
            .push((self.id, offset, data.len(), None));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push((self.id, offset, data.len(), Some(data.to_vec())));
    }
}

/// The device of `ranges` that contains all of `[addr, addr + len)`, with the offset.
pub(crate) fn containing(ranges: &[(u64, u64)], addr: u64, len: u64) -> Option<(usize, u64)> {
    ranges.iter().enumerate().find_map(|(i, &(base, size))| {
        let off = addr.checked_sub(base)?;
        (off < size && len <= size - off).then_some((i, off))
    })
}

fn near(u: &mut Unstructured<'_>, anchors: &[(u64, u64)]) -> Result<u64> {
    if anchors.is_empty() || u.ratio(1, 4)? {
        return u.arbitrary();
    }
    let &(base, size) = u.choose(anchors)?;
    let pick = match u.int_in_range(0..=3u8)? {
        0 => base,
        1 => base.wrapping_add(size),
        _ => base.wrapping_add(u.int_in_range(0..=size.saturating_sub(1))?),
    };
    Ok(pick.wrapping_add_signed(i64::from(u.int_in_range(-9..=9i8)?)))
}

fn mmio_dispatch(u: &mut Unstructured<'_>) -> Result<()> {
    use keel_vmm::dispatch::{ExitDispatcher, Next, ReadOnlyRegion};
    let mut d = ExitDispatcher::new(Arc::new(keel_vmm::log::NullLog));
    let log: SpyLog = Arc::default();
    let mut ranges = Vec::new();
    for id in 0..u.int_in_range(0..=6usize)? {
        let base: u64 = if u.arbitrary()? {
            u.arbitrary()?
        } else {
            u64::from(u.arbitrary::<u16>()?) << 4
        };
        let size: u64 = if u.arbitrary()? {
            u.int_in_range(1..=0x2000)?
        } else {
            u.arbitrary()?
        };
        let dev = Arc::new(spin::Mutex::new(Spy {
            id: ranges.len(),
            log: log.clone(),
        }));
        if d.mmio.insert(base, size, dev).is_ok() {
            ranges.push((base, size));
        } else {
            let _ = id;
        }
    }
    let mut read_only = Vec::new();
    for _ in 0..u.int_in_range(0..=2u8)? {
        let base = near(u, &ranges)?;
        let size: u64 = u.int_in_range(1..=0x1000)?;
        read_only.push((base, size));
        d.add_read_only(ReadOnlyRegion {
            name: "ro".into(),
            base,
            size,
        });
    }
    let mut anchors = ranges.clone();
    anchors.extend(&read_only);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let gpa = near(u, &anchors)?;
        let len: u8 = *u.choose(&[1, 2, 4, 8, 0, 3, 9, 16])?;
        let eff = len.min(8);
        let hit = containing(&ranges, gpa, u64::from(eff));
        let vcpu: VcpuId = u.int_in_range(0..=3)?;
        if u.arbitrary()? {
            let next = d.handle(vcpu, &VcpuExit::MmioRead { gpa, len });
            let want = spy_read(hit, eff);
            assert_eq!(
                next,
                Some(Next::run(ExitAnswer::Read(want))),
                "read of {len} at {gpa:#x}"
            );
            let seen: Vec<_> = log.lock().unwrap().drain(..).collect();
            assert_eq!(
                seen,
                spy_reads(hit, eff),
                "devices reached by a read of {len} at {gpa:#x}"
            );
        } else {
            let data: u64 = u.arbitrary()?;
            let next = d.handle(vcpu, &VcpuExit::MmioWrite { gpa, len, data });
            assert_eq!(next, Some(Next::run(ExitAnswer::None)));
            let ro = read_only.iter().any(|&(b, s)| gpa >= b && gpa - b < s);
            let seen: Vec<_> = log.lock().unwrap().drain(..).collect();
            let expect: Vec<_> = hit
                .filter(|_| !ro)
                .map(|(id, off)| {
                    let bytes = data.to_le_bytes()[..usize::from(eff)].to_vec();
                    (id, off, usize::from(eff), Some(bytes))
                })
                .into_iter()
                .collect();
            assert_eq!(
                seen, expect,
                "devices reached by a write of {len} at {gpa:#x}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 5. The VMM's arm64 exits.

#[derive(Default)]
struct NullGic;
impl VgicHost for NullGic {
    fn inject_list_register(&mut self, _: VcpuId, _: u8, _: u32, _: u8, _: u8) {}
    fn kick(&mut self, _: VcpuId) {}
}

/// Whether `s` is a subsequence of `of`.
pub(crate) fn subsequence(s: &[u8], of: &[u8]) -> bool {
    let mut it = of.iter();
    s.iter().all(|b| it.any(|c| c == b))
}

fn vmm_exits(u: &mut Unstructured<'_>) -> Result<()> {
    use keel_spec::{Arch, HostPath, Memory, VmSpec, plan::plan_vm};
    use keel_vmm::arm64::SoftArm64;
    use keel_vmm::dispatch::{Next, all_ones};
    use keel_vmm::testing::{Collected, FakeVm, MemoryBackends, RecordingStop};
    use keel_vmm::{Interrupts, VmmCore};

    let vcpus = u.int_in_range(1..=8u32)?;
    let mut spec = VmSpec::new(
        "f",
        Arch::Aarch64,
        HostPath::new("/k"),
        Memory::Size(1 << 20),
    );
    spec.vcpus = vcpus;
    let plan = plan_vm(&spec).unwrap_or_else(|e| panic!("plan: {e}"));
    let vm = FakeVm::new(&plan.ram).unwrap_or_else(|e| panic!("fake VM: {e}"));
    let serial = Collected::default();
    let stop = Arc::new(RecordingStop::default());
    let log: keel_vmm::Log = Arc::new(keel_vmm::log::NullLog);
    let soft = Arc::new(
        SoftArm64::new(vcpus, GicVersion::V2, 64, 4, Box::new(NullGic), log.clone())
            .unwrap_or_else(|e| panic!("soft GIC: {e}")),
    );
    let core = VmmCore::build(
        &plan,
        &vm,
        Interrupts::Soft(soft),
        &mut MemoryBackends::default(),
        Box::new(serial.clone()),
        stop,
        log,
    )
    .unwrap_or_else(|e| panic!("VMM: {e}"));
    let ram = plan.ram.clone();
    let decoded = [(UART_BASE, UART_SIZE), (GIC_DIST_BASE, GIC_DIST_SIZE)];
    let mut anchors = decoded.to_vec();
    anchors.extend(&ram);
    let mut thr = Vec::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let vcpu: VcpuId = u.int_in_range(0..=vcpus)?;
        let exit = match u.int_in_range(0..=9u8)? {
            0..=2 => VcpuExit::MmioRead {
                gpa: near(u, &anchors)?,
                len: *u.choose(&[1, 2, 4, 8, 3])?,
            },
            3..=5 => {
                let gpa = if u.arbitrary()? {
                    UART_BASE + u.int_in_range(0..=8)?
                } else {
                    near(u, &anchors)?
                };
                VcpuExit::MmioWrite {
                    gpa,
                    len: *u.choose(&[1, 2, 4, 8, 3])?,
                    data: u.arbitrary()?,
                }
            }
            6 => {
                let id = if u.arbitrary()? {
                    *u.choose(PSCI_IMPLEMENTED)?
                } else {
                    u.arbitrary()?
                };
                let target = if u.arbitrary()? {
                    mpidr(u.int_in_range(0..=vcpus)?)
                } else {
                    u.arbitrary()?
                };
                let entry = near(u, &ram)?;
                VcpuExit::Hypercall {
                    kind: HypercallKind::Hvc,
                    imm: u.arbitrary()?,
                    args: [u64::from(id), target, entry, u.arbitrary()?],
                }
            }
            7 => VcpuExit::SysReg {
                encoding: u.arbitrary()?,
                write: u.arbitrary()?,
            },
            8 => VcpuExit::VgicMaintenance { lr: u.arbitrary()? },
            _ => VcpuExit::VirtualPpi {
                irq: u.int_in_range(0..=40)?,
            },
        };
        let next = core.handle(&vm, vcpu, exit);
        match exit {
            VcpuExit::MmioRead { gpa, len } => {
                if containing(&decoded, gpa, u64::from(len)).is_none() {
                    assert_eq!(
                        next,
                        Next::run(ExitAnswer::Read(all_ones(len))),
                        "read of {len} at {gpa:#x}: no device decodes it"
                    );
                }
            }
            VcpuExit::MmioWrite { gpa, len, data } => {
                if gpa == UART_BASE && len >= 1 {
                    thr.push(data as u8);
                }
                assert_eq!(next, Next::run(ExitAnswer::None));
            }
            VcpuExit::Hypercall { args, .. } => match args[0] as u32 {
                fid::SYSTEM_OFF if vcpu < vcpus => {
                    assert_eq!(next, Next::Stop(SystemEvent::Shutdown))
                }
                fid::SYSTEM_RESET if vcpu < vcpus => {
                    assert_eq!(next, Next::Stop(SystemEvent::Reset))
                }
                _ => assert!(
                    !matches!(next, Next::Stop(_)),
                    "firmware call {args:x?} stopped the VM"
                ),
            },
            VcpuExit::SysReg { write, .. } => assert_eq!(
                next,
                Next::run(if write.is_some() {
                    ExitAnswer::None
                } else {
                    ExitAnswer::Read(0)
                }),
                "trapped system registers are RAZ/WI"
            ),
            _ => assert_eq!(next, Next::run(ExitAnswer::None)),
        }
        let out = serial.0.lock().clone();
        assert!(
            subsequence(&out, &thr),
            "serial output {out:x?} holds bytes never written to the data register {thr:x?}"
        );
    }
    for (id, entry) in &vm.record.lock().started {
        assert!(*id < vcpus, "vCPU {id} started, {vcpus} configured");
        let BootEntry::Arm64 { pc, .. } = entry else {
            panic!("arm64 vCPU started with {entry:?}");
        };
        assert!(
            ram.iter().any(|&(b, s)| *pc >= b && pc - b <= s - 4),
            "vCPU {id} started at {pc:#x}, outside RAM"
        );
    }
    Ok(())
}
