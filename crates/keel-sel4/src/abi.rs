//! The numbers of the seL4 and Microkit ABIs that Keel's VMM uses.
//!
//! Everything here was read from the kernel's and Microkit's public headers (seL4 16.0,
//! Microkit 2.3, MCS kernel, aarch64, board `qemu_virt_aarch64`, config `debug`). Several of
//! these numbers depend on how the kernel was configured: the invocation labels shift when
//! `CONFIG_HARDWARE_DEBUG_API` (on in the debug config, off in release) adds the
//! breakpoint calls to the TCB. `tests/sdk_constants.rs` compares every constant here with
//! the headers of the SDK named by `MICROKIT_SDK` so a mismatched SDK fails loudly in CI
//! instead of silently invoking the wrong kernel method.

/// System call numbers (`seL4_Syscall_ID`, MCS kernel). Passed in `x7`.
pub mod syscall {
    /// `seL4_Call`: send and wait for the reply on a fresh one-shot reply.
    pub const CALL: i64 = -1;
    /// `seL4_ReplyRecv`: reply through a reply object, then receive.
    pub const REPLY_RECV: i64 = -2;
    /// `seL4_NBSendRecv`.
    pub const NB_SEND_RECV: i64 = -3;
    /// `seL4_Send` (also `seL4_Signal` on MCS).
    pub const SEND: i64 = -5;
    /// `seL4_NBSend`.
    pub const NB_SEND: i64 = -6;
    /// `seL4_Recv`.
    pub const RECV: i64 = -7;
    /// `seL4_NBRecv`: receive if a message or notification is waiting, else return at once
    /// with badge 0.
    pub const NB_RECV: i64 = -8;
    /// `seL4_Wait` (receive without a reply object).
    pub const WAIT: i64 = -9;
    /// `seL4_Yield`.
    pub const YIELD: i64 = -11;
    /// `seL4_DebugPutChar` (kernels with `CONFIG_PRINTING`).
    pub const DEBUG_PUT_CHAR: i64 = -12;
    /// `seL4_DebugHalt` (kernels with `CONFIG_DEBUG_BUILD`).
    pub const DEBUG_HALT: i64 = -14;
}

/// Invocation labels (`invocation_label`, `arch_invocation_label`) for the kernel
/// configuration Keel targets: aarch64, MCS, hypervisor, `CONFIG_HARDWARE_DEBUG_API` on
/// (Microkit's debug config). The `sel4-release-kernel` numbering would be 4 lower for
/// every label after `TCBResume`; Keel supports the debug config only and checks it.
pub mod label {
    /// `TCBReadRegisters`.
    pub const TCB_READ_REGISTERS: u64 = 2;
    /// `TCBWriteRegisters`.
    pub const TCB_WRITE_REGISTERS: u64 = 3;
    /// `TCBSuspend`.
    pub const TCB_SUSPEND: u64 = 12;
    /// `TCBResume`.
    pub const TCB_RESUME: u64 = 13;
    /// `IRQAckIRQ`.
    pub const IRQ_ACK_IRQ: u64 = 31;
    /// `ARMVCPUInjectIRQ`.
    pub const ARM_VCPU_INJECT_IRQ: u64 = 60;
    /// `ARMVCPUReadReg`.
    pub const ARM_VCPU_READ_REG: u64 = 61;
    /// `ARMVCPUWriteReg`.
    pub const ARM_VCPU_WRITE_REG: u64 = 62;
    /// `ARMVCPUAckVPPI`.
    pub const ARM_VCPU_ACK_VPPI: u64 = 63;

    /// Every label above with its header name, for the SDK check.
    pub const ALL: &[(&str, u64)] = &[
        ("TCBReadRegisters", TCB_READ_REGISTERS),
        ("TCBWriteRegisters", TCB_WRITE_REGISTERS),
        ("TCBSuspend", TCB_SUSPEND),
        ("TCBResume", TCB_RESUME),
        ("IRQAckIRQ", IRQ_ACK_IRQ),
        ("ARMVCPUInjectIRQ", ARM_VCPU_INJECT_IRQ),
        ("ARMVCPUReadReg", ARM_VCPU_READ_REG),
        ("ARMVCPUWriteReg", ARM_VCPU_WRITE_REG),
        ("ARMVCPUAckVPPI", ARM_VCPU_ACK_VPPI),
    ];
}

/// Fault labels (`seL4_FaultType`, aarch64 with hypervisor support) and the lengths of
/// their messages.
pub mod fault {
    /// `seL4_Fault_NullFault`: not a fault (a plain message).
    pub const NULL: u64 = 0;
    /// `seL4_Fault_CapFault`.
    pub const CAP_FAULT: u64 = 1;
    /// `seL4_Fault_UnknownSyscall`: an unknown `svc` or, for a VM, an `hvc`.
    pub const UNKNOWN_SYSCALL: u64 = 2;
    /// `seL4_Fault_UserException`.
    pub const USER_EXCEPTION: u64 = 3;
    /// `seL4_Fault_DebugException`.
    pub const DEBUG_EXCEPTION: u64 = 4;
    /// `seL4_Fault_Timeout` (MCS).
    pub const TIMEOUT: u64 = 5;
    /// `seL4_Fault_VMFault`: a stage-2 (guest-physical) abort.
    pub const VM_FAULT: u64 = 6;
    /// `seL4_Fault_VGICMaintenance`.
    pub const VGIC_MAINTENANCE: u64 = 7;
    /// `seL4_Fault_VCPUFault`: a trapped instruction (WFI, SMC, MSR/MRS).
    pub const VCPU_FAULT: u64 = 8;
    /// `seL4_Fault_VPPIEvent`: a virtual PPI (the guest's timer) fired.
    pub const VPPI_EVENT: u64 = 9;

    /// `seL4_UnknownSyscall_Length`.
    pub const UNKNOWN_SYSCALL_LENGTH: usize = 13;
    /// `seL4_VMFault_Length`.
    pub const VM_FAULT_LENGTH: usize = 4;
    /// `seL4_VGICMaintenance_Length`.
    pub const VGIC_MAINTENANCE_LENGTH: usize = 1;
    /// `seL4_VCPUFault_Length`.
    pub const VCPU_FAULT_LENGTH: usize = 1;
    /// `seL4_VPPIEvent_Length`.
    pub const VPPI_EVENT_LENGTH: usize = 1;
    /// `seL4_UserException_Length`.
    pub const USER_EXCEPTION_LENGTH: usize = 5;
}

/// Message-register indices inside the UnknownSyscall fault message
/// (`seL4_UnknownSyscall_Msg`, aarch64).
pub mod unknown_syscall {
    /// x0..x7 are MR 0..7.
    pub const X0: usize = 0;
    /// The faulting PC.
    pub const FAULT_IP: usize = 8;
    /// The syscall number (`svc`/`hvc` immediate path).
    pub const SYSCALL: usize = 12;
}

/// Registers of an ARM vCPU object (`seL4_VCPUReg`, aarch64).
pub mod vcpu_reg {
    /// `SCTLR_EL1`.
    pub const SCTLR: u64 = 0;
    /// `VMPIDR_EL2`: the MPIDR the guest reads.
    pub const VMPIDR_EL2: u64 = 16;
    /// `CNTV_CTL_EL0`.
    pub const CNTV_CTL: u64 = 20;
    /// Number of vCPU registers.
    pub const NUM: u64 = 24;
    /// Every register above with its header name, for the SDK check.
    pub const ALL: &[(&str, u64)] = &[
        ("seL4_VCPUReg_SCTLR", SCTLR),
        ("seL4_VCPUReg_VMPIDR_EL2", VMPIDR_EL2),
        ("seL4_VCPUReg_CNTV_CTL", CNTV_CTL),
        ("seL4_VCPUReg_Num", NUM),
    ];
}

/// Words in `seL4_UserContext` (aarch64): pc, sp, spsr, 31 general registers, tpidr_el0,
/// tpidrro_el0.
pub const USER_CONTEXT_WORDS: usize = 36;
/// `seL4_MsgMaxLength`.
pub const MSG_MAX_LENGTH: usize = 120;
/// Message registers passed in CPU registers (`seL4_FastMessageRegisters`, x2..x5).
pub const FAST_MESSAGE_REGISTERS: usize = 4;
/// `seL4_NoError`.
pub const NO_ERROR: u64 = 0;

/// The Microkit protection-domain ABI (`libmicrokit`, `microkit.h`).
pub mod microkit {
    /// Endpoint the PD receives on (notifications, protected calls, faults of children).
    pub const INPUT_CAP: u64 = 1;
    /// The PD's reply object (MCS).
    pub const REPLY_CAP: u64 = 4;
    /// Endpoint to the monitor.
    pub const MONITOR_EP: u64 = 5;
    /// First notification capability for output channels (`+ channel`).
    pub const BASE_OUTPUT_NOTIFICATION_CAP: u64 = 10;
    /// First endpoint capability for protected calls (`+ channel`).
    pub const BASE_ENDPOINT_CAP: u64 = 74;
    /// First IRQ handler capability (`+ channel`).
    pub const BASE_IRQ_CAP: u64 = 138;
    /// First child-PD TCB capability (`+ child id`).
    pub const BASE_TCB_CAP: u64 = 202;
    /// First VM TCB capability (`+ vcpu id`).
    pub const BASE_VM_TCB_CAP: u64 = 266;
    /// First vCPU capability (`+ vcpu id`).
    pub const BASE_VCPU_CAP: u64 = 330;
    /// Badge bit set on a fault message from a child (PD or vCPU).
    pub const BADGE_FAULT_BIT: u32 = 62;
    /// Badge bit set on a protected call.
    pub const BADGE_ENDPOINT_BIT: u32 = 63;
    /// Child (vCPU) id in a fault badge.
    pub const PD_MASK: u64 = 0xff;
    /// Channel in a protected-call badge.
    pub const CHANNEL_MASK: u64 = 0x3f;
    /// Channels a PD may have.
    pub const MAX_CHANNELS: u32 = 62;
    /// Bytes of `microkit_name`.
    pub const PD_NAME_LENGTH: usize = 64;
    /// Every capability slot above with its header name, for the SDK check.
    pub const ALL: &[(&str, u64)] = &[
        ("MONITOR_EP", MONITOR_EP),
        ("BASE_OUTPUT_NOTIFICATION_CAP", BASE_OUTPUT_NOTIFICATION_CAP),
        ("BASE_ENDPOINT_CAP", BASE_ENDPOINT_CAP),
        ("BASE_IRQ_CAP", BASE_IRQ_CAP),
        ("BASE_TCB_CAP", BASE_TCB_CAP),
        ("BASE_VM_TCB_CAP", BASE_VM_TCB_CAP),
        ("BASE_VCPU_CAP", BASE_VCPU_CAP),
        ("MICROKIT_PD_NAME_LENGTH", PD_NAME_LENGTH as u64),
    ];
}

/// The board Keel's seL4 backend targets, and the addresses of its address spaces.
pub mod board {
    /// Microkit board name.
    pub const NAME: &str = "qemu_virt_aarch64";
    /// The single-core Microkit config Keel drives (seL4_DebugPutChar, the invocation
    /// labels above).
    pub const CONFIG: &str = "debug";
    /// The multicore config (`KernelMaxNumNodes` 4 on this board), preferred when the SDK
    /// has it; its invocation labels are those of `debug` (checked by `sdk_constants`).
    pub const SMP_CONFIG: &str = "smp-debug";
    /// Physical address the loader image is linked to (QEMU `-device loader,addr=`).
    pub const LOADER_LINK_ADDRESS: u64 = 0x7000_0000;
    /// Physical address of the GIC virtual CPU interface (GICV) on QEMU `virt`, mapped into
    /// each VM at the guest's GICC address.
    pub const GICV_PADDR: u64 = 0x0804_0000;
    /// Physical address of the board's PL011 UART (the seL4 debug console).
    pub const PL011_PADDR: u64 = 0x0900_0000;
    /// The PL011's interrupt (SPI 1).
    pub const PL011_IRQ: u32 = 33;
    /// Highest user virtual address + 1 of a PD (`vspace_user_top` + 1, 40-bit IPA).
    pub const USER_TOP: u64 = 0x100_0000_0000;
    /// The IPC buffer of a Microkit PD: the top page of its address space.
    pub const IPC_BUFFER_VADDR: u64 = USER_TOP - 0x1000;
    /// Start of the board's RAM (QEMU `virt`). 0x4000_0000..[`KERNEL_RAM_BASE`] is RAM to
    /// QEMU but device memory to the SDK's kernel: the Microkit tool never places anything
    /// there, so a VM's fixed RAM (`ram_phys_addr`) can go there.
    pub const RAM_BASE: u64 = 0x4000_0000;
    /// Start of the RAM the SDK's kernel manages (`platform_gen.json` memory): the kernel
    /// image is loaded here.
    pub const KERNEL_RAM_BASE: u64 = 0x6000_0000;
    /// The 32 virtio-mmio transports of QEMU `virt` (0x200 bytes each, slot `n` on INTID
    /// 48 + n); QEMU gives `-device virtio-*-device` the highest free slot first.
    pub const VIRTIO_MMIO_PADDR: u64 = 0x0a00_0000;
    /// End of the RAM the SDK's kernel uses (its `platform_gen.json` memory is
    /// 0x6000_0000..0xC000_0000: QEMU `-m 2G` from 0x4000_0000).
    pub const RAM_END: u64 = 0xC000_0000;
    /// Lowest physical address coloured RAM is taken from: the 512 MiB below it hold the
    /// kernel, the capDL initialiser with every PD image (the VMMs' payloads: kernels,
    /// initrds, disks), and every object the Microkit tool places itself (uncoloured RAM,
    /// rings, heaps, page tables).
    pub const COLOUR_POOL_BASE: u64 = 0x8000_0000;
    /// Bytes kept free at the top of RAM: the kernel puts the initial task's CNode, TCB
    /// and page tables there at boot (aligned to the CNode's size).
    pub const RAM_TOP_RESERVE: u64 = 16 << 20;
}
