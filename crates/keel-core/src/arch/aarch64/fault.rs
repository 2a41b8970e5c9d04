//! From a trapped guest instruction to a [`VcpuExit`], and from the VMM's [`ExitAnswer`] back
//! to guest registers.
//!
//! A hypervisor that hands the VMM the raw syndrome (seL4's fault IPC) needs both halves:
//! [`vm_fault_exit`] / [`vcpu_fault_exit`] / [`hvc_syscall_exit`] turn the fault message and
//! the guest's general-purpose registers into the portable exit plus a [`Completion`] that
//! says how the answer lands in the guest (which register a load writes, with what width and
//! sign extension, how far the PC moves). [`Completion::apply`] then updates the registers
//! the backend writes back (seL4: `seL4_TCB_WriteRegisters`) before resuming the vCPU.
//! KVM decodes data aborts itself and never needs this module.

use super::esr::{DataAbort, Esr, EsrError, Syndrome, SysReg};
use crate::hv::{ExitAnswer, HypercallKind, VcpuExit};

/// The guest state an exit needs: `x0`..`x30` and the PC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    /// General-purpose registers x0..x30.
    pub x: [u64; 31],
    /// Program counter (the trapped instruction's address).
    pub pc: u64,
}

impl GuestRegs {
    /// Register `n` as an instruction's source: 31 is the zero register.
    pub fn get(&self, n: u8) -> u64 {
        self.x.get(usize::from(n)).copied().unwrap_or(0)
    }

    /// Write register `n` as an instruction's destination: writes to 31 (the zero
    /// register) are discarded.
    pub fn set(&mut self, n: u8, value: u64) {
        if let Some(r) = self.x.get_mut(usize::from(n)) {
            *r = value;
        }
    }
}

/// How an emulated load delivers its value: target register, width and extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Destination register (31: the zero register, the value is dropped).
    pub reg: u8,
    /// Access width in bytes (1, 2, 4, 8).
    pub len: u8,
    /// Sign-extend the loaded value (`LDRSB`/`LDRSH`/`LDRSW`).
    pub sign_extend: bool,
    /// The destination is `Xt` (64 bits); otherwise `Wt`, whose upper 32 bits are cleared.
    pub sixty_four: bool,
}

/// The register value a load of `value` produces, as the CPU would have computed it:
/// truncated to the access width, sign-extended if asked, then cut to 32 bits for a `Wt`
/// destination.
pub fn apply_read(value: u64, access: MmioAccess) -> u64 {
    let bits = u32::from(access.len.clamp(1, 8)) * 8;
    let v = if bits == 64 {
        value
    } else {
        let masked = value & ((1u64 << bits) - 1);
        if access.sign_extend {
            let shift = 64 - bits;
            (((masked << shift) as i64) >> shift) as u64
        } else {
            masked
        }
    };
    if access.sixty_four {
        v
    } else {
        v & 0xffff_ffff
    }
}

/// What the backend does with the guest's registers when it resumes the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// An emulated load: the answer goes into a register, then the PC skips the instruction.
    MmioRead {
        /// Where and how the value lands.
        access: MmioAccess,
        /// Bytes to skip (the instruction length).
        skip: u8,
    },
    /// An emulated `MRS`: the answer goes into `Xt`, then the PC skips the instruction.
    SysRegRead {
        /// Destination register.
        rt: u8,
        /// Bytes to skip.
        skip: u8,
    },
    /// A firmware call: the answer's four values become x0..x3, then the PC skips the
    /// `hvc`/`smc` (seL4 leaves the PC on it).
    Hypercall {
        /// Bytes to skip.
        skip: u8,
    },
    /// Nothing to write back (a store, an `MSR`, `WFI`): the PC skips the instruction.
    Skip {
        /// Bytes to skip.
        skip: u8,
    },
}

/// The answer does not fit the exit it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("answer {answer:?} does not complete {completion:?}")]
pub struct AnswerMismatch {
    /// What the exit expected.
    pub completion: Completion,
    /// What the VMM gave.
    pub answer: ExitAnswer,
}

impl Completion {
    /// Apply the VMM's `answer` to `regs` and advance the PC past the trapped instruction.
    ///
    /// A load or `MRS` needs [`ExitAnswer::Read`], a firmware call [`ExitAnswer::Hypercall`],
    /// everything else [`ExitAnswer::None`]; a mismatch leaves `regs` untouched.
    pub fn apply(self, answer: ExitAnswer, regs: &mut GuestRegs) -> Result<(), AnswerMismatch> {
        let skip = match (self, answer) {
            (Completion::MmioRead { access, skip }, ExitAnswer::Read(v)) => {
                regs.set(access.reg, apply_read(v, access));
                skip
            }
            (Completion::SysRegRead { rt, skip }, ExitAnswer::Read(v)) => {
                regs.set(rt, v);
                skip
            }
            (Completion::Hypercall { skip }, ExitAnswer::Hypercall(x)) => {
                regs.x[..4].copy_from_slice(&x);
                skip
            }
            (Completion::Skip { skip }, ExitAnswer::None) => skip,
            (completion, answer) => return Err(AnswerMismatch { completion, answer }),
        };
        regs.pc = regs.pc.wrapping_add(u64::from(skip));
        Ok(())
    }
}

/// An exit together with how to complete it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arm64Exit {
    /// The portable exit the VMM handles.
    pub exit: VcpuExit,
    /// How its answer goes back into the guest.
    pub completion: Completion,
}

/// The fields of a seL4 `VMFault` message (`seL4_VMFault_IP`, `_Addr`, `_PrefetchFault`,
/// `_FSR`). On a hypervisor kernel `addr` is the faulting guest-physical address and `fsr`
/// the full `ESR_EL2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmFault {
    /// Guest PC of the faulting instruction.
    pub ip: u64,
    /// Faulting guest-physical address.
    pub addr: u64,
    /// Non-zero for an instruction fetch.
    pub prefetch: bool,
    /// The syndrome.
    pub fsr: u64,
}

/// Turn a data abort (seL4 `VMFault`) into an MMIO exit. `regs` supplies the stored value.
///
/// Accesses the syndrome does not describe (`ISV` = 0, cache maintenance, page-table walks,
/// instruction fetches) are errors: the VMM reports them and stops the VM rather than guess.
pub fn vm_fault_exit(fault: &VmFault, regs: &GuestRegs) -> Result<Arm64Exit, EsrError> {
    let esr = Esr(fault.fsr);
    let gpa = fault.addr;
    let d: DataAbort = match esr.decode() {
        Syndrome::DataAbort(d) if !fault.prefetch => d,
        Syndrome::InstructionAbort { .. } | Syndrome::DataAbort(_) => {
            return Err(EsrError::InstructionAbort {
                gpa,
                esr: fault.fsr,
            });
        }
        _ => {
            return Err(EsrError::UnhandledClass {
                ec: esr.ec(),
                esr: fault.fsr,
            });
        }
    };
    if d.s1ptw {
        return Err(EsrError::PageTableWalk {
            gpa,
            esr: fault.fsr,
        });
    }
    if d.cache_maintenance {
        return Err(EsrError::CacheMaintenance {
            gpa,
            esr: fault.fsr,
        });
    }
    if !d.isv {
        return Err(EsrError::NoInstructionSyndrome {
            gpa,
            esr: fault.fsr,
        });
    }
    let len = d.size.bytes();
    let skip = esr.instruction_len();
    if d.write {
        let raw = regs.get(d.srt);
        let data = if len == 8 {
            raw
        } else {
            raw & ((1u64 << (u32::from(len) * 8)) - 1)
        };
        Ok(Arm64Exit {
            exit: VcpuExit::MmioWrite { gpa, len, data },
            completion: Completion::Skip { skip },
        })
    } else {
        Ok(Arm64Exit {
            exit: VcpuExit::MmioRead { gpa, len },
            completion: Completion::MmioRead {
                access: MmioAccess {
                    reg: d.srt,
                    len,
                    sign_extend: d.sign_extend,
                    sixty_four: d.sixty_four,
                },
                skip,
            },
        })
    }
}

/// Turn a seL4 `VCPUFault` (its `HSR` is `ESR_EL2`) into an exit: `WFI`/`WFE` become
/// [`VcpuExit::Halt`], `hvc`/`smc` [`VcpuExit::Hypercall`] with x0..x3 from `regs`, trapped
/// `MSR`/`MRS` [`VcpuExit::SysReg`].
pub fn vcpu_fault_exit(hsr: u64, regs: &GuestRegs) -> Result<Arm64Exit, EsrError> {
    let esr = Esr(hsr);
    let skip = esr.instruction_len();
    let hypercall = |kind, imm| Arm64Exit {
        exit: VcpuExit::Hypercall {
            kind,
            imm,
            args: [regs.x[0], regs.x[1], regs.x[2], regs.x[3]],
        },
        completion: Completion::Hypercall { skip },
    };
    match esr.decode() {
        Syndrome::Wfx { .. } => Ok(Arm64Exit {
            exit: VcpuExit::Halt,
            completion: Completion::Skip { skip },
        }),
        Syndrome::Hvc { imm } => Ok(hypercall(HypercallKind::Hvc, imm)),
        Syndrome::Smc { imm } => Ok(hypercall(HypercallKind::Smc, imm)),
        Syndrome::SysReg(a) => {
            let encoding = a.reg.encoding();
            if a.read {
                Ok(Arm64Exit {
                    exit: VcpuExit::SysReg {
                        encoding,
                        write: None,
                    },
                    completion: Completion::SysRegRead { rt: a.rt, skip },
                })
            } else {
                Ok(Arm64Exit {
                    exit: VcpuExit::SysReg {
                        encoding,
                        write: Some(regs.get(a.rt)),
                    },
                    completion: Completion::Skip { skip },
                })
            }
        }
        _ => Err(EsrError::UnhandledClass {
            ec: esr.ec(),
            esr: hsr,
        }),
    }
}

/// Turn a seL4 `UnknownSyscall` fault — how a guest's `hvc` reaches a Microkit VMM — into a
/// hypercall exit. The message carries no syndrome, so the immediate is reported as 0 (SMCCC
/// callers use `hvc #0`); the PC is left on the instruction and is skipped by 4.
pub fn hvc_syscall_exit(regs: &GuestRegs) -> Arm64Exit {
    Arm64Exit {
        exit: VcpuExit::Hypercall {
            kind: HypercallKind::Hvc,
            imm: 0,
            args: [regs.x[0], regs.x[1], regs.x[2], regs.x[3]],
        },
        completion: Completion::Hypercall { skip: 4 },
    }
}

/// Whether a packed [`VcpuExit::SysReg`] encoding names `reg`.
pub fn is_sysreg(encoding: u32, reg: SysReg) -> bool {
    encoding == reg.encoding()
}

#[cfg(test)]
mod tests {
    use super::super::esr::build::{dabt, esr, sysreg};
    use super::super::esr::{AccessSize, ec};
    use super::*;

    fn regs_with(n: usize, v: u64) -> GuestRegs {
        let mut r = GuestRegs {
            pc: 0x4008_0000,
            ..GuestRegs::default()
        };
        r.x[n] = v;
        r
    }

    fn fault(fsr: u64) -> VmFault {
        VmFault {
            ip: 0x4008_0000,
            addr: 0x0a00_0070,
            prefetch: false,
            fsr,
        }
    }

    #[test]
    fn word_store_exit_carries_low_32_bits_of_the_register() {
        let regs = regs_with(3, 0xdead_beef_1234_5678);

        let e =
            vm_fault_exit(&fault(dabt(AccessSize::Word, 3, true, false, false)), &regs).unwrap();

        assert_eq!(
            e.exit,
            VcpuExit::MmioWrite {
                gpa: 0x0a00_0070,
                len: 4,
                data: 0x1234_5678
            }
        );
        assert_eq!(e.completion, Completion::Skip { skip: 4 });
    }

    #[test]
    fn store_to_a_read_only_page_permission_fault_is_a_write_exit_that_skips_the_store() {
        // A read-only stage-2 mapping (a shared region mapped `ro`): DFSC 0x0f, permission
        // fault at level 3, instead of a translation fault.
        let fsr = (dabt(AccessSize::Word, 2, true, false, false) & !0x3f) | 0x0f;
        let regs = regs_with(2, 0x1234_5678);

        let e = vm_fault_exit(&fault(fsr), &regs).unwrap();

        assert_eq!(
            (e.exit, e.completion),
            (
                VcpuExit::MmioWrite {
                    gpa: 0x0a00_0070,
                    len: 4,
                    data: 0x1234_5678
                },
                Completion::Skip { skip: 4 }
            )
        );
    }

    #[test]
    fn store_of_xzr_writes_zero() {
        let regs = GuestRegs {
            x: [u64::MAX; 31],
            pc: 0,
        };

        let e = vm_fault_exit(
            &fault(dabt(AccessSize::Doubleword, 31, true, false, true)),
            &regs,
        )
        .unwrap();

        assert!(matches!(e.exit, VcpuExit::MmioWrite { data: 0, .. }));
    }

    #[test]
    fn load_completion_writes_register_and_skips_instruction() {
        let mut regs = regs_with(5, 0xffff_ffff_ffff_ffff);
        let e = vm_fault_exit(
            &fault(dabt(AccessSize::Word, 5, false, false, false)),
            &regs,
        )
        .unwrap();
        assert_eq!(
            e.exit,
            VcpuExit::MmioRead {
                gpa: 0x0a00_0070,
                len: 4
            }
        );

        e.completion
            .apply(ExitAnswer::Read(0x1_7472_6976), &mut regs)
            .unwrap();

        assert_eq!(regs.x[5], 0x7472_6976);
        assert_eq!(regs.pc, 0x4008_0004);
    }

    #[test]
    fn ldrsb_into_x_register_sign_extends_to_64_bits() {
        let a = MmioAccess {
            reg: 0,
            len: 1,
            sign_extend: true,
            sixty_four: true,
        };
        assert_eq!(apply_read(0x80, a), 0xffff_ffff_ffff_ff80);
    }

    #[test]
    fn ldrsh_into_w_register_sign_extends_to_32_bits_only() {
        let a = MmioAccess {
            reg: 0,
            len: 2,
            sign_extend: true,
            sixty_four: false,
        };
        assert_eq!(apply_read(0x8001, a), 0xffff_8001);
    }

    #[test]
    fn unsigned_byte_load_is_truncated() {
        let a = MmioAccess {
            reg: 0,
            len: 1,
            sign_extend: false,
            sixty_four: false,
        };
        assert_eq!(apply_read(0x1ff, a), 0xff);
    }

    #[test]
    fn positive_value_is_not_sign_extended() {
        let a = MmioAccess {
            reg: 0,
            len: 4,
            sign_extend: true,
            sixty_four: true,
        };
        assert_eq!(apply_read(0x7fff_ffff, a), 0x7fff_ffff);
    }

    #[test]
    fn data_abort_without_syndrome_is_an_error_not_a_guess() {
        let r = vm_fault_exit(&fault(0x9200_0047), &GuestRegs::default());

        assert_eq!(
            r,
            Err(EsrError::NoInstructionSyndrome {
                gpa: 0x0a00_0070,
                esr: 0x9200_0047
            })
        );
    }

    #[test]
    fn prefetch_fault_is_an_instruction_abort_error() {
        let mut f = fault(esr(ec::IABT_LOW, 0x07));
        f.prefetch = true;

        let r = vm_fault_exit(&f, &GuestRegs::default());

        assert!(matches!(r, Err(EsrError::InstructionAbort { .. })));
    }

    #[test]
    fn page_table_walk_fault_is_an_error() {
        let fsr = dabt(AccessSize::Doubleword, 0, false, false, true) | 1 << 7;
        let r = vm_fault_exit(&fault(fsr), &GuestRegs::default());
        assert!(matches!(r, Err(EsrError::PageTableWalk { .. })));
    }

    #[test]
    fn smc_vcpu_fault_becomes_hypercall_with_x0_to_x3() {
        let mut regs = GuestRegs::default();
        regs.x[..4].copy_from_slice(&[0x8400_0000, 1, 2, 3]);

        let e = vcpu_fault_exit(0x5e00_0000, &regs).unwrap();

        assert_eq!(
            e.exit,
            VcpuExit::Hypercall {
                kind: HypercallKind::Smc,
                imm: 0,
                args: [0x8400_0000, 1, 2, 3]
            }
        );
    }

    #[test]
    fn hypercall_answer_sets_x0_to_x3_and_skips_the_call() {
        let mut regs = regs_with(4, 44);
        let e = hvc_syscall_exit(&regs);

        e.completion
            .apply(ExitAnswer::Hypercall([10, 11, 12, 13]), &mut regs)
            .unwrap();

        assert_eq!(regs.x[..5], [10, 11, 12, 13, 44]);
        assert_eq!(regs.pc, 0x4008_0004);
    }

    #[test]
    fn wfi_becomes_halt() {
        let e = vcpu_fault_exit(0x07e0_0000, &GuestRegs::default()).unwrap();
        assert_eq!(e.exit, VcpuExit::Halt);
        assert_eq!(e.completion, Completion::Skip { skip: 4 });
    }

    #[test]
    fn msr_sgi1r_becomes_sysreg_write_with_register_value() {
        let regs = regs_with(2, 0x0001_0000_0000_0001);

        let e = vcpu_fault_exit(sysreg(SysReg::ICC_SGI1R_EL1, 2, false), &regs).unwrap();

        assert_eq!(
            e.exit,
            VcpuExit::SysReg {
                encoding: SysReg::ICC_SGI1R_EL1.encoding(),
                write: Some(0x0001_0000_0000_0001)
            }
        );
    }

    #[test]
    fn mrs_answer_lands_in_rt() {
        let mut regs = GuestRegs::default();
        let e = vcpu_fault_exit(sysreg(SysReg::new(3, 0, 0, 0, 5), 9, true), &regs).unwrap();

        e.completion
            .apply(ExitAnswer::Read(0x8000_0000), &mut regs)
            .unwrap();

        assert_eq!(regs.x[9], 0x8000_0000);
    }

    #[test]
    fn mismatched_answer_is_refused_and_changes_nothing() {
        let mut regs = regs_with(1, 7);
        let before = regs;

        let r = Completion::Skip { skip: 4 }.apply(ExitAnswer::Read(1), &mut regs);

        assert!(r.is_err());
        assert_eq!(regs, before);
    }

    #[test]
    fn unknown_class_in_vcpu_fault_is_an_error() {
        let r = vcpu_fault_exit(esr(0x07, 0), &GuestRegs::default());
        assert_eq!(
            r,
            Err(EsrError::UnhandledClass {
                ec: 0x07,
                esr: esr(0x07, 0)
            })
        );
    }
}
