//! `seL4_UserContext` (aarch64) ⇄ Keel's [`GuestRegs`].
//!
//! `TCB_ReadRegisters` and `TCB_WriteRegisters` move the registers in the order of
//! `seL4_UserContext`: pc, sp, spsr, x0..x8, x16, x17, x18, x29, x30, x9..x15, x19..x28,
//! tpidr_el0, tpidrro_el0.

use keel_core::arch::aarch64::fault::GuestRegs;

use crate::abi::USER_CONTEXT_WORDS;

/// Index of the PC in the context.
pub const PC: usize = 0;
/// Index of SP (SP_EL0 for a native thread; unused for a VM, whose SP_EL1 is a vCPU register).
pub const SP: usize = 1;
/// Index of SPSR.
pub const SPSR: usize = 2;
/// Index of x0.
pub const X0: usize = 3;

/// Which general register each context word after SPSR holds.
const ORDER: [u8; 31] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 17, 18, 29, 30, 9, 10, 11, 12, 13, 14, 15, 19, 20, 21, 22, 23,
    24, 25, 26, 27, 28,
];

/// A full `seL4_UserContext`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserContext(pub [u64; USER_CONTEXT_WORDS]);

impl Default for UserContext {
    fn default() -> Self {
        UserContext([0; USER_CONTEXT_WORDS])
    }
}

impl UserContext {
    /// The guest's general registers and PC.
    pub fn guest_regs(&self) -> GuestRegs {
        let mut r = GuestRegs {
            pc: self.0[PC],
            ..GuestRegs::default()
        };
        for (i, &reg) in ORDER.iter().enumerate() {
            r.x[usize::from(reg)] = self.0[X0 + i];
        }
        r
    }

    /// Store `regs` (general registers and PC) into the context; SP, SPSR and the thread
    /// ID registers keep their values.
    pub fn set_guest_regs(&mut self, regs: &GuestRegs) {
        self.0[PC] = regs.pc;
        for (i, &reg) in ORDER.iter().enumerate() {
            self.0[X0 + i] = regs.x[usize::from(reg)];
        }
    }

    /// The number of leading context words needed to write x`n` (for a short
    /// `TCB_WriteRegisters`).
    pub fn words_to_cover(n: u8) -> usize {
        ORDER
            .iter()
            .position(|&r| r == n)
            .map_or(USER_CONTEXT_WORDS, |i| X0 + i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x16_sits_after_x8_in_the_context() {
        let mut c = UserContext::default();
        c.0[X0 + 9] = 0x16;

        assert_eq!(c.guest_regs().x[16], 0x16);
    }

    #[test]
    fn guest_regs_round_trip_through_the_context() {
        let mut regs = GuestRegs::default();
        for (i, x) in regs.x.iter_mut().enumerate() {
            *x = 100 + i as u64;
        }
        regs.pc = 0x4000_1000;
        let mut c = UserContext::default();
        c.0[SPSR] = 0x3c5;

        c.set_guest_regs(&regs);

        assert_eq!(c.guest_regs(), regs);
        assert_eq!(c.0[SPSR], 0x3c5);
    }

    #[test]
    fn writing_x0_to_x3_needs_seven_words() {
        assert_eq!(UserContext::words_to_cover(3), 7);
        assert_eq!(UserContext::words_to_cover(28), 34);
    }
}
