//! Decoding of the exception syndrome register (`ESR_EL2`, seL4's "HSR"/"FSR").
//!
//! The syndrome says why a guest instruction trapped to the hypervisor and, for the traps a
//! VMM emulates, everything needed to emulate it: the access width and target register of a
//! load or store, the immediate of an `hvc`/`smc`, the encoding of a system register.
//! Field positions follow the Arm ARM (DDI 0487), section D17.2.40 "ESR_EL2".
//!
//! Only what a VMM emulates is decoded into fields; every other exception class is kept as
//! [`Syndrome::Other`] so that the caller can name it in an error.

/// Exception classes (`ESR_EL2.EC`, bits \[31:26\]) a VMM meets.
pub mod ec {
    /// Unknown reason (an undefined instruction, among others).
    pub const UNKNOWN: u8 = 0x00;
    /// Trapped `WFI` / `WFE` (and `WFIT` / `WFET`).
    pub const WFX: u8 = 0x01;
    /// `HVC` executed in AArch32 state.
    pub const HVC32: u8 = 0x12;
    /// `SMC` executed in AArch32 state.
    pub const SMC32: u8 = 0x13;
    /// `HVC` executed in AArch64 state.
    pub const HVC64: u8 = 0x16;
    /// `SMC` executed in AArch64 state.
    pub const SMC64: u8 = 0x17;
    /// Trapped `MSR`, `MRS` or system instruction in AArch64 state.
    pub const SYS64: u8 = 0x18;
    /// Instruction abort from a lower exception level (stage-2 fault on an instruction fetch).
    pub const IABT_LOW: u8 = 0x20;
    /// Data abort from a lower exception level (stage-2 fault on a load or store).
    pub const DABT_LOW: u8 = 0x24;
}

const EC_SHIFT: u32 = 26;
const IL_BIT: u64 = 1 << 25;
const ISS_MASK: u64 = (1 << 25) - 1;

// Data abort ISS fields.
const DABT_ISV: u64 = 1 << 24;
const DABT_SAS_SHIFT: u32 = 22;
const DABT_SSE: u64 = 1 << 21;
const DABT_SRT_SHIFT: u32 = 16;
const DABT_SF: u64 = 1 << 15;
const DABT_AR: u64 = 1 << 14;
const DABT_CM: u64 = 1 << 8;
const DABT_S1PTW: u64 = 1 << 7;
const DABT_WNR: u64 = 1 << 6;
const DABT_FSC_MASK: u64 = 0x3f;

// Trapped system register access ISS fields (EC 0x18).
const SYS_OP0_SHIFT: u32 = 20;
const SYS_OP2_SHIFT: u32 = 17;
const SYS_OP1_SHIFT: u32 = 14;
const SYS_CRN_SHIFT: u32 = 10;
const SYS_RT_SHIFT: u32 = 5;
const SYS_CRM_SHIFT: u32 = 1;
const SYS_DIR_READ: u64 = 1;

/// Why a syndrome cannot be turned into something a VMM can emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EsrError {
    /// A data abort without a valid instruction syndrome (`ISV` = 0): the access was a load
    /// or store pair, a register write-back form, a SIMD load, or similar, whose width and
    /// register the hardware does not report. Guessing would corrupt guest registers.
    #[error(
        "data abort at {gpa:#x} has no instruction syndrome (ESR {esr:#x}, ISV=0): cannot decode the access"
    )]
    NoInstructionSyndrome {
        /// The faulting guest-physical address.
        gpa: u64,
        /// The syndrome.
        esr: u64,
    },
    /// A cache maintenance instruction (`DC ...`) on an address that is not RAM.
    #[error("cache maintenance on non-RAM address {gpa:#x} (ESR {esr:#x})")]
    CacheMaintenance {
        /// The address.
        gpa: u64,
        /// The syndrome.
        esr: u64,
    },
    /// A stage-2 fault taken while the guest's MMU walked its own page tables: the guest
    /// keeps page tables outside RAM.
    #[error("guest page-table walk faulted at {gpa:#x} (ESR {esr:#x}): page tables outside RAM")]
    PageTableWalk {
        /// The address.
        gpa: u64,
        /// The syndrome.
        esr: u64,
    },
    /// An instruction fetch from an address that is not RAM.
    #[error("instruction fetch from non-RAM address {gpa:#x} (ESR {esr:#x})")]
    InstructionAbort {
        /// The address.
        gpa: u64,
        /// The syndrome.
        esr: u64,
    },
    /// A trap of a class the VMM does not emulate.
    #[error("unhandled exception class {ec:#04x} (ESR {esr:#x})")]
    UnhandledClass {
        /// The exception class.
        ec: u8,
        /// The syndrome.
        esr: u64,
    },
}

/// Width of a load or store, from `ESR_EL2.ISS.SAS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessSize {
    /// 1 byte.
    Byte,
    /// 2 bytes.
    Halfword,
    /// 4 bytes.
    Word,
    /// 8 bytes.
    Doubleword,
}

impl AccessSize {
    /// From the 2-bit `SAS` field.
    pub const fn from_sas(sas: u8) -> AccessSize {
        match sas & 3 {
            0 => AccessSize::Byte,
            1 => AccessSize::Halfword,
            2 => AccessSize::Word,
            _ => AccessSize::Doubleword,
        }
    }

    /// The width in bytes (1, 2, 4 or 8).
    pub const fn bytes(self) -> u8 {
        match self {
            AccessSize::Byte => 1,
            AccessSize::Halfword => 2,
            AccessSize::Word => 4,
            AccessSize::Doubleword => 8,
        }
    }
}

/// A decoded data abort. The register fields are meaningful only when `isv` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAbort {
    /// Instruction syndrome valid: `size`, `sign_extend`, `srt`, `sixty_four` and
    /// `acquire_release` describe the access.
    pub isv: bool,
    /// Access width.
    pub size: AccessSize,
    /// A load sign-extends the value (`LDRSB`, `LDRSH`, `LDRSW`).
    pub sign_extend: bool,
    /// The transfer register `Xt`/`Wt` (31 is the zero register).
    pub srt: u8,
    /// The register is 64 bits wide (`Xt`); otherwise `Wt`, whose upper half a load clears.
    pub sixty_four: bool,
    /// Load-acquire / store-release semantics.
    pub acquire_release: bool,
    /// The instruction was a cache maintenance operation.
    pub cache_maintenance: bool,
    /// The fault happened during the guest's stage-1 page-table walk.
    pub s1ptw: bool,
    /// Write (`true`) or read.
    pub write: bool,
    /// Data fault status code.
    pub fsc: u8,
}

/// A decoded trapped `MSR` / `MRS` (EC 0x18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    /// The register.
    pub reg: SysReg,
    /// The general-purpose register transferred (31 is the zero register).
    pub rt: u8,
    /// `MRS` (read into `Xt`) when `true`, `MSR` (write from `Xt`) when `false`.
    pub read: bool,
}

/// A system register named by its `op0, op1, CRn, CRm, op2` encoding.
///
/// [`SysReg::encoding`] packs it as `op0<<14 | op1<<11 | CRn<<7 | CRm<<3 | op2` — the same
/// 16-bit layout as the index of a `KVM_REG_ARM64_SYSREG` register id — and that packed
/// value is what travels in [`VcpuExit::SysReg`](crate::hv::VcpuExit::SysReg).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysReg {
    /// op0 (2 bits).
    pub op0: u8,
    /// op1 (3 bits).
    pub op1: u8,
    /// CRn (4 bits).
    pub crn: u8,
    /// CRm (4 bits).
    pub crm: u8,
    /// op2 (3 bits).
    pub op2: u8,
}

impl SysReg {
    /// A register from its fields (each masked to its width).
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> SysReg {
        SysReg {
            op0: op0 & 3,
            op1: op1 & 7,
            crn: crn & 0xf,
            crm: crm & 0xf,
            op2: op2 & 7,
        }
    }

    /// The packed 16-bit encoding (`op0:op1:CRn:CRm:op2`).
    pub const fn encoding(self) -> u32 {
        (self.op0 as u32) << 14
            | (self.op1 as u32) << 11
            | (self.crn as u32) << 7
            | (self.crm as u32) << 3
            | self.op2 as u32
    }

    /// The register whose packed encoding is `encoding` (bits above 15 are ignored).
    pub const fn from_encoding(encoding: u32) -> SysReg {
        SysReg::new(
            (encoding >> 14) as u8,
            (encoding >> 11) as u8,
            (encoding >> 7) as u8,
            (encoding >> 3) as u8,
            encoding as u8,
        )
    }

    /// `ICC_SGI1R_EL1`: a write sends a group-1 SGI (GICv3 system-register interface).
    pub const ICC_SGI1R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 5);
    /// `ICC_ASGI1R_EL1`: a write sends an SGI to the other security state's group 1.
    pub const ICC_ASGI1R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 6);
    /// `ICC_SGI0R_EL1`: a write sends a group-0 SGI.
    pub const ICC_SGI0R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 7);
}

/// The decoded syndrome of one trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syndrome {
    /// `WFI` (`wfe` = false) or `WFE` (`wfe` = true).
    Wfx {
        /// The instruction was `WFE`/`WFET`.
        wfe: bool,
    },
    /// `HVC #imm` from AArch64.
    Hvc {
        /// The 16-bit immediate.
        imm: u16,
    },
    /// `SMC #imm` from AArch64.
    Smc {
        /// The 16-bit immediate.
        imm: u16,
    },
    /// A trapped system register access.
    SysReg(SysRegAccess),
    /// A data abort from the guest.
    DataAbort(DataAbort),
    /// An instruction abort from the guest.
    InstructionAbort {
        /// Instruction fault status code.
        fsc: u8,
    },
    /// Any other exception class.
    Other {
        /// The exception class.
        ec: u8,
    },
}

/// An `ESR_EL2` value with accessors for its common fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

impl Esr {
    /// Exception class (bits \[31:26\]).
    pub const fn ec(self) -> u8 {
        ((self.0 >> EC_SHIFT) & 0x3f) as u8
    }

    /// Instruction length of the trapped instruction in bytes: 4, or 2 for a 16-bit T32
    /// instruction (`IL` = 0). The VMM skips this many bytes after emulating it.
    pub const fn instruction_len(self) -> u8 {
        if self.0 & IL_BIT != 0 { 4 } else { 2 }
    }

    /// Instruction-specific syndrome (bits \[24:0\]).
    pub const fn iss(self) -> u64 {
        self.0 & ISS_MASK
    }

    /// Decode the syndrome.
    pub fn decode(self) -> Syndrome {
        let iss = self.iss();
        match self.ec() {
            ec::WFX => Syndrome::Wfx { wfe: iss & 1 != 0 },
            ec::HVC64 => Syndrome::Hvc { imm: iss as u16 },
            ec::SMC64 => Syndrome::Smc { imm: iss as u16 },
            ec::SYS64 => Syndrome::SysReg(SysRegAccess {
                reg: SysReg::new(
                    (iss >> SYS_OP0_SHIFT) as u8,
                    (iss >> SYS_OP1_SHIFT) as u8,
                    (iss >> SYS_CRN_SHIFT) as u8,
                    (iss >> SYS_CRM_SHIFT) as u8,
                    (iss >> SYS_OP2_SHIFT) as u8,
                ),
                rt: ((iss >> SYS_RT_SHIFT) & 0x1f) as u8,
                read: iss & SYS_DIR_READ != 0,
            }),
            ec::DABT_LOW => Syndrome::DataAbort(DataAbort {
                isv: iss & DABT_ISV != 0,
                size: AccessSize::from_sas((iss >> DABT_SAS_SHIFT) as u8),
                sign_extend: iss & DABT_SSE != 0,
                srt: ((iss >> DABT_SRT_SHIFT) & 0x1f) as u8,
                sixty_four: iss & DABT_SF != 0,
                acquire_release: iss & DABT_AR != 0,
                cache_maintenance: iss & DABT_CM != 0,
                s1ptw: iss & DABT_S1PTW != 0,
                write: iss & DABT_WNR != 0,
                fsc: (iss & DABT_FSC_MASK) as u8,
            }),
            ec::IABT_LOW => Syndrome::InstructionAbort {
                fsc: (iss & DABT_FSC_MASK) as u8,
            },
            ec => Syndrome::Other { ec },
        }
    }
}

/// Builders of syndrome values, for tests here and in the backends.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// A 32-bit-instruction syndrome of class `ec` with `iss`.
    pub fn esr(ec: u8, iss: u64) -> u64 {
        (ec as u64) << EC_SHIFT | IL_BIT | (iss & ISS_MASK)
    }

    /// A data abort with a valid syndrome.
    pub fn dabt(size: AccessSize, srt: u8, write: bool, sse: bool, sf: bool) -> u64 {
        let sas = match size {
            AccessSize::Byte => 0,
            AccessSize::Halfword => 1,
            AccessSize::Word => 2,
            AccessSize::Doubleword => 3,
        };
        let mut iss = DABT_ISV | sas << DABT_SAS_SHIFT | ((srt as u64) & 0x1f) << DABT_SRT_SHIFT;
        if sse {
            iss |= DABT_SSE;
        }
        if sf {
            iss |= DABT_SF;
        }
        if write {
            iss |= DABT_WNR;
        }
        // DFSC: translation fault, level 3.
        esr(ec::DABT_LOW, iss | 0x07)
    }

    /// A trapped `MSR`/`MRS` of `reg` with `rt`.
    pub fn sysreg(reg: SysReg, rt: u8, read: bool) -> u64 {
        let iss = (reg.op0 as u64) << SYS_OP0_SHIFT
            | (reg.op2 as u64) << SYS_OP2_SHIFT
            | (reg.op1 as u64) << SYS_OP1_SHIFT
            | (reg.crn as u64) << SYS_CRN_SHIFT
            | ((rt as u64) & 0x1f) << SYS_RT_SHIFT
            | (reg.crm as u64) << SYS_CRM_SHIFT
            | read as u64;
        esr(ec::SYS64, iss)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn ldr_w1_syndrome_decodes_to_a_word_read_into_x1() {
        // ldr w1, [x0] to an unmapped page: EC 0x24, IL, ISV, SAS=2, SRT=1, DFSC=0x07.
        let esr = Esr(0x9381_0007);

        let s = esr.decode();

        let Syndrome::DataAbort(d) = s else {
            panic!("not a data abort: {s:?}")
        };
        assert!(d.isv);
        assert_eq!(d.size, AccessSize::Word);
        assert_eq!(d.srt, 1);
        assert!(!d.write && !d.sign_extend && !d.sixty_four);
        assert_eq!(d.fsc, 0x07);
        assert_eq!(esr.instruction_len(), 4);
    }

    #[test]
    fn builder_matches_hand_encoded_ldr_syndrome() {
        assert_eq!(dabt(AccessSize::Word, 1, false, false, false), 0x9381_0007);
    }

    #[test]
    fn str_x2_syndrome_decodes_to_a_64_bit_write() {
        let esr = Esr(dabt(AccessSize::Doubleword, 2, true, false, true));

        let Syndrome::DataAbort(d) = esr.decode() else {
            panic!()
        };

        assert_eq!(d.size.bytes(), 8);
        assert!(d.write && d.sixty_four);
        assert_eq!(d.srt, 2);
    }

    #[test]
    fn ldrsh_syndrome_sets_sign_extend() {
        let esr = Esr(dabt(AccessSize::Halfword, 30, false, true, true));

        let Syndrome::DataAbort(d) = esr.decode() else {
            panic!()
        };

        assert!(d.sign_extend);
        assert_eq!(d.srt, 30);
        assert_eq!(d.size, AccessSize::Halfword);
    }

    #[test]
    fn data_abort_without_isv_reports_isv_clear() {
        // ldp to MMIO: EC 0x24, IL, ISV=0, WnR=0, DFSC=0x07.
        let esr = Esr(0x9200_0007);

        let Syndrome::DataAbort(d) = esr.decode() else {
            panic!()
        };

        assert!(!d.isv);
    }

    #[test]
    fn hvc_0_syndrome_is_0x5a000000() {
        assert_eq!(Esr(0x5a00_0000).decode(), Syndrome::Hvc { imm: 0 });
    }

    #[test]
    fn smc_immediate_is_decoded() {
        assert_eq!(Esr(0x5e00_1234).decode(), Syndrome::Smc { imm: 0x1234 });
    }

    #[test]
    fn wfi_and_wfe_are_told_apart() {
        // From AArch64: CV=1, COND=0b1110; TI bit 0 selects WFE.
        assert_eq!(Esr(0x07e0_0000).decode(), Syndrome::Wfx { wfe: false });
        assert_eq!(Esr(0x07e0_0001).decode(), Syndrome::Wfx { wfe: true });
    }

    #[test]
    fn msr_icc_sgi1r_el1_decodes_register_rt_and_direction() {
        // msr ICC_SGI1R_EL1, x1: op0=3 op2=5 op1=0 CRn=12 Rt=1 CRm=11, direction write.
        let esr = Esr(0x623a_3036);

        let s = esr.decode();

        assert_eq!(
            s,
            Syndrome::SysReg(SysRegAccess {
                reg: SysReg::ICC_SGI1R_EL1,
                rt: 1,
                read: false
            })
        );
        assert_eq!(sysreg(SysReg::ICC_SGI1R_EL1, 1, false), 0x623a_3036);
    }

    #[test]
    fn mrs_sets_read_direction() {
        let reg = SysReg::new(3, 3, 14, 0, 1); // CNTPCT_EL0
        let Syndrome::SysReg(a) = Esr(sysreg(reg, 7, true)).decode() else {
            panic!()
        };
        assert!(a.read);
        assert_eq!(a.rt, 7);
        assert_eq!(a.reg, reg);
    }

    #[test]
    fn sysreg_encoding_round_trips_and_matches_kvm_index() {
        // KVM's ARM64_SYS_REG(3, 0, 12, 11, 5) index: 3<<14 | 12<<7 | 11<<3 | 5.
        assert_eq!(SysReg::ICC_SGI1R_EL1.encoding(), 0xc65d);
        assert_eq!(SysReg::from_encoding(0xc65d), SysReg::ICC_SGI1R_EL1);
    }

    #[test]
    fn instruction_abort_and_unknown_classes_are_kept() {
        assert_eq!(
            Esr(esr(ec::IABT_LOW, 0x0f)).decode(),
            Syndrome::InstructionAbort { fsc: 0x0f }
        );
        assert_eq!(Esr(esr(ec::UNKNOWN, 0)).decode(), Syndrome::Other { ec: 0 });
    }

    #[test]
    fn sixteen_bit_instruction_length_is_two() {
        assert_eq!(Esr(0x9181_0007).instruction_len(), 2);
    }
}
