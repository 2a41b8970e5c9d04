//! seL4 fault messages a VMM receives for its vCPUs, decoded into data.
//!
//! The kernel sends a fault as an IPC whose label is the fault type and whose message
//! registers carry the fault's fields. Decode *before* any other kernel call: a later
//! `TCB_ReadRegisters` overwrites the message registers (measured on this kernel).

use crate::abi::fault as f;
use crate::abi::unknown_syscall as us;
use crate::msginfo::MessageInfo;

/// A decoded fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A stage-2 abort: the guest touched a guest-physical address that is not mapped
    /// (an emulated device) or not RAM.
    VmFault {
        /// Guest PC.
        ip: u64,
        /// Faulting guest-physical address.
        addr: u64,
        /// Instruction fetch (non-zero) or data access.
        prefetch: bool,
        /// `ESR_EL2`.
        fsr: u64,
    },
    /// A trapped instruction: `WFI`/`WFE`, `SMC`, `MSR`/`MRS`. `hsr` is `ESR_EL2`.
    VcpuFault {
        /// `ESR_EL2`.
        hsr: u64,
    },
    /// An unknown system call: for a VM, an `hvc`. x0..x3 are the firmware call's arguments.
    UnknownSyscall {
        /// x0..x3.
        args: [u64; 4],
        /// The faulting PC.
        ip: u64,
        /// The syscall number field.
        syscall: u64,
    },
    /// A vGIC maintenance interrupt: list register `idx` was handled by the guest (EOI).
    /// `None` when the kernel could not tell which one.
    VgicMaintenance {
        /// List-register index.
        idx: Option<u8>,
    },
    /// A virtual PPI (the guest's arch timer) fired; the kernel masked it until
    /// `VCPU_AckVPPI`.
    VppiEvent {
        /// The interrupt id.
        irq: u64,
    },
    /// A fault a VMM does not handle (cap fault, user exception, timeout, debug).
    Other {
        /// The fault label.
        label: u64,
    },
}

/// A fault message is shorter than its type requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fault type {label} arrived with {length} message registers, expected {expected}")]
pub struct ShortFault {
    /// Fault label.
    pub label: u64,
    /// Registers sent.
    pub length: usize,
    /// Registers the type needs.
    pub expected: usize,
}

impl Fault {
    /// Decode the fault in `info`, reading message register `i` with `mr(i)`.
    pub fn decode(info: MessageInfo, mr: impl Fn(usize) -> u64) -> Result<Fault, ShortFault> {
        let label = info.label();
        let need = |expected: usize| {
            if info.length() < expected {
                Err(ShortFault {
                    label,
                    length: info.length(),
                    expected,
                })
            } else {
                Ok(())
            }
        };
        Ok(match label {
            f::VM_FAULT => {
                need(f::VM_FAULT_LENGTH)?;
                Fault::VmFault {
                    ip: mr(0),
                    addr: mr(1),
                    prefetch: mr(2) != 0,
                    fsr: mr(3),
                }
            }
            f::VCPU_FAULT => {
                need(f::VCPU_FAULT_LENGTH)?;
                Fault::VcpuFault { hsr: mr(0) }
            }
            f::UNKNOWN_SYSCALL => {
                need(f::UNKNOWN_SYSCALL_LENGTH)?;
                Fault::UnknownSyscall {
                    args: [mr(us::X0), mr(us::X0 + 1), mr(us::X0 + 2), mr(us::X0 + 3)],
                    ip: mr(us::FAULT_IP),
                    syscall: mr(us::SYSCALL),
                }
            }
            f::VGIC_MAINTENANCE => {
                need(f::VGIC_MAINTENANCE_LENGTH)?;
                // The kernel sends -1 when no list register was identified.
                Fault::VgicMaintenance {
                    idx: u8::try_from(mr(0)).ok(),
                }
            }
            f::VPPI_EVENT => {
                need(f::VPPI_EVENT_LENGTH)?;
                Fault::VppiEvent { irq: mr(0) }
            }
            other => Fault::Other { label: other },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(words: &[u64]) -> impl Fn(usize) -> u64 + '_ {
        move |i| words.get(i).copied().unwrap_or(0)
    }

    #[test]
    fn vm_fault_fields_come_from_mr0_to_mr3() {
        let words = [0x4008_0000, 0x0a00_0070, 0, 0x9200_0046];

        let fault = Fault::decode(MessageInfo::new(6, 4), msg(&words)).unwrap();

        assert_eq!(
            fault,
            Fault::VmFault {
                ip: 0x4008_0000,
                addr: 0x0a00_0070,
                prefetch: false,
                fsr: 0x9200_0046
            }
        );
    }

    #[test]
    fn hvc_arrives_as_unknown_syscall_with_x0_to_x3() {
        let mut words = [0u64; 13];
        words[..4].copy_from_slice(&[0x8400_0000, 1, 2, 3]);
        words[8] = 0x4010_0000;

        let fault = Fault::decode(MessageInfo::new(2, 13), msg(&words)).unwrap();

        assert_eq!(
            fault,
            Fault::UnknownSyscall {
                args: [0x8400_0000, 1, 2, 3],
                ip: 0x4010_0000,
                syscall: 0
            }
        );
    }

    #[test]
    fn maintenance_without_list_register_has_no_index() {
        let fault = Fault::decode(MessageInfo::new(7, 1), msg(&[u64::MAX])).unwrap();

        assert_eq!(fault, Fault::VgicMaintenance { idx: None });
    }

    #[test]
    fn vppi_event_carries_the_interrupt_id() {
        let fault = Fault::decode(MessageInfo::new(9, 1), msg(&[27])).unwrap();

        assert_eq!(fault, Fault::VppiEvent { irq: 27 });
    }

    #[test]
    fn short_vm_fault_is_rejected() {
        let err = Fault::decode(MessageInfo::new(6, 2), msg(&[1, 2])).unwrap_err();

        assert_eq!(err.expected, 4);
        assert_eq!(err.length, 2);
    }

    #[test]
    fn cap_fault_is_reported_as_other() {
        let fault = Fault::decode(MessageInfo::new(1, 7), msg(&[])).unwrap();

        assert_eq!(fault, Fault::Other { label: 1 });
    }
}
