//! The hypervisor traits: the only way the rest of Keel reaches KVM or seL4.
//!
//! The shape follows what both hypervisors have in common: a vCPU runs until the guest does
//! something the hypervisor will not handle itself, the VMM is told *what* happened as plain
//! data ([`VcpuExit`]), works out the answer, and hands it back ([`ExitAnswer`]) when it lets
//! the vCPU continue.
//!
//! - On KVM, [`Vcpu::run`] is one `KVM_RUN` ioctl; the answer of an MMIO read is written into
//!   the shared `kvm_run` page before the next `KVM_RUN`.
//! - On seL4, a guest fault arrives as an IPC message on the VMM's fault endpoint; the exit is
//!   decoded from the message registers, and the answer becomes the register write plus the
//!   reply that resumes the vCPU's thread.
//!
//! `docs/hypervisor-traits.md` gives the method-by-method mapping.

use alloc::sync::Arc;
use core::fmt;

use crate::irq::IrqLine;
use crate::memory::GuestRam;

/// Index of a virtual CPU inside its VM, from 0.
pub type VcpuId = u32;

/// Errors a hypervisor backend reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HvError {
    /// The backend cannot do this at all (a feature of another hypervisor or architecture).
    #[error("{what} is not supported by the {backend} backend")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What was asked for.
        what: &'static str,
    },
    /// A call into the hypervisor failed; `errno` is the OS or seL4 error code.
    #[error("{op} failed: error {errno}")]
    Call {
        /// The operation (e.g. `KVM_CREATE_VCPU`, `seL4_TCB_WriteRegisters`).
        op: &'static str,
        /// The error number the hypervisor returned.
        errno: i32,
    },
    /// The hypervisor could not emulate what the guest did; the VM cannot continue.
    #[error("vcpu {vcpu}: the hypervisor could not handle the guest: {detail}")]
    GuestFault {
        /// The vCPU that stopped.
        vcpu: VcpuId,
        /// What the hypervisor said (e.g. KVM internal-error suberror and data).
        detail: alloc::string::String,
    },
    /// An argument was out of range for this backend.
    #[error("invalid {what}: {value:#x}")]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
    },
}

/// Why the guest asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemEvent {
    /// Clean power-off (ACPI sleep, PSCI `SYSTEM_OFF`).
    Shutdown,
    /// Reboot request (i8042 reset, PSCI `SYSTEM_RESET`).
    Reset,
    /// The guest crashed (x86 triple fault, PSCI crash event).
    Crash,
    /// The guest wrote an exit code to the debug-exit port: `keel run` exits with it.
    ExitCode(u8),
}

/// The two instructions an arm64 guest uses to call firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallKind {
    /// `hvc #imm`.
    Hvc,
    /// `smc #imm`.
    Smc,
}

/// Something the guest did that the VMM must answer. Every field came from the guest or
/// the hypervisor's decoding of a guest instruction: handlers check them before use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VcpuExit {
    /// A load of `len` bytes (1, 2, 4 or 8) from guest-physical `gpa` that is not RAM.
    /// Answer with [`ExitAnswer::Read`].
    MmioRead {
        /// Guest-physical address.
        gpa: u64,
        /// Access width in bytes.
        len: u8,
    },
    /// A store of the low `len` bytes of `data` (little endian) to guest-physical `gpa`.
    MmioWrite {
        /// Guest-physical address.
        gpa: u64,
        /// Access width in bytes.
        len: u8,
        /// The value stored, zero-extended.
        data: u64,
    },
    /// x86 `in` of `len` bytes from `port`. Answer with [`ExitAnswer::Read`].
    PioRead {
        /// I/O port.
        port: u16,
        /// Access width in bytes.
        len: u8,
    },
    /// x86 `out` of the low `len` bytes of `data` to `port`.
    PioWrite {
        /// I/O port.
        port: u16,
        /// Access width in bytes.
        len: u8,
        /// The value written, zero-extended.
        data: u32,
    },
    /// An arm64 firmware call (PSCI and SMCCC) that the hypervisor did not handle itself
    /// (seL4 delivers every `hvc`; KVM handles PSCI in the kernel). `args` are x0..x3.
    /// Answer with [`ExitAnswer::Hypercall`] (the new x0..x3).
    Hypercall {
        /// `hvc` or `smc`.
        kind: HypercallKind,
        /// The immediate of the instruction.
        imm: u16,
        /// x0 (function id), x1, x2, x3.
        args: [u64; 4],
    },
    /// An arm64 system-register access trapped to the VMM (seL4 vCPU fault, EC 0x18).
    /// `encoding` is `op0 << 14 | op1 << 11 | CRn << 7 | CRm << 3 | op2`, the system-register
    /// index KVM uses (see `arch::aarch64::esr::SysReg`). Writes carry the value; reads are
    /// answered with [`ExitAnswer::Read`].
    SysReg {
        /// Packed register encoding.
        encoding: u32,
        /// `Some(value)` for a write (MSR), `None` for a read (MRS).
        write: Option<u64>,
    },
    /// The vCPU waits for an interrupt (`hlt`, `wfi`) and the hypervisor left waiting to the VMM.
    Halt,
    /// arm64 vGIC maintenance interrupt for list register `lr` (seL4 only: KVM does this in
    /// the kernel).
    VgicMaintenance {
        /// The list register that became free, if the hypervisor says.
        lr: Option<u8>,
    },
    /// A virtual PPI (the guest's arch timer) is pending for this vCPU (seL4 only).
    VirtualPpi {
        /// The interrupt id (e.g. 27 for the virtual timer).
        irq: u32,
    },
    /// The guest wants the VM to stop.
    System(SystemEvent),
    /// `run` returned without a guest action: another thread asked this vCPU to stop
    /// (a signal with KVM's `immediate_exit`, a notification on seL4).
    Interrupted,
}

/// The VMM's answer to the previous [`VcpuExit`], passed to the next [`Vcpu::run`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExitAnswer {
    /// Nothing to hand back (writes, interrupts, the first run).
    #[default]
    None,
    /// The value of a read (MMIO, port, system register), little endian in the low bytes.
    Read(u64),
    /// The new x0..x3 after a firmware call.
    Hypercall([u64; 4]),
}

/// Where a vCPU starts executing, in the terms of the boot protocol the loader chose.
/// Backends set the architectural registers for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootEntry {
    /// x86_64 64-bit Linux boot protocol: long mode with the identity map at `cr3`,
    /// flat segments from the GDT at `gdt_gpa`, `rsi` = boot_params.
    X86Long {
        /// Entry point.
        rip: u64,
        /// Guest-physical address of boot_params (the "zero page").
        rsi: u64,
        /// Root of the identity-mapped page tables.
        cr3: u64,
        /// Guest-physical address of the GDT the loader wrote.
        gdt_gpa: u64,
        /// Initial stack pointer.
        rsp: u64,
    },
    /// x86 PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    X86Pvh {
        /// Entry point (from the `XEN_ELFNOTE_PHYS32_ENTRY` note).
        eip: u32,
        /// Guest-physical address of the `hvm_start_info` structure.
        ebx: u32,
        /// Guest-physical address of the GDT the loader wrote.
        gdt_gpa: u64,
    },
    /// arm64 Linux `Image` protocol: EL1h, MMU off, `x0` = device tree.
    Arm64 {
        /// Entry point.
        pc: u64,
        /// Guest-physical address of the device tree blob.
        x0: u64,
    },
    /// A secondary vCPU that waits to be started by the guest (x86 INIT/SIPI, PSCI CPU_ON).
    Parked,
}

/// One virtual CPU. On KVM each `Vcpu` is driven by its own host thread; on seL4 the VMM
/// protection domain receives the faults of all its vCPUs and answers them in turn (the
/// same [`VcpuExit`] and [`ExitAnswer`] types travel through its event loop).
pub trait Vcpu: Send {
    /// This vCPU's index in its VM.
    fn id(&self) -> VcpuId;

    /// Set the architectural state for `entry`. Called once, before the first `run`.
    fn set_boot_entry(&mut self, entry: &BootEntry) -> Result<(), HvError>;

    /// Complete the previous exit with `answer` and run the guest until its next exit.
    ///
    /// The first call takes [`ExitAnswer::None`]. An answer that does not fit the previous
    /// exit (a `Read` after a write) is an error, not silently dropped.
    fn run(&mut self, answer: ExitAnswer) -> Result<VcpuExit, HvError>;
}

/// How the backend lets a vCPU go on after the VMM handled its exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Complete the exit with this answer and run the vCPU.
    Run(ExitAnswer),
    /// Complete the exit with this answer, then let the vCPU wait until an interrupt is
    /// pending for it (`WFI`, PSCI `CPU_SUSPEND`). A backend whose hypervisor waits by
    /// itself (KVM) just runs it.
    WaitForInterrupt(ExitAnswer),
    /// Do not run the vCPU again until it is started (PSCI `CPU_OFF`), or ever (the VM
    /// stopped).
    Park,
}

/// What a per-VM exit source delivers: a vCPU's exit, or host events for devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// vCPU `vcpu` exited; answer it with [`VmExits::complete`].
    Exit {
        /// The vCPU.
        vcpu: VcpuId,
        /// What it did.
        exit: VcpuExit,
    },
    /// Host events arrived (on seL4: the Microkit channels that were notified, one bit
    /// each); the VMM hands them to the devices that wait on them.
    Notified(u64),
}

/// The exits of all vCPUs of a VM from one place: the shape of a hypervisor whose VMM is
/// one single-threaded event loop (seL4's fault endpoint). [`Vcpu::run`] is the shape of a
/// hypervisor with a thread per vCPU (KVM). The VMM's handlers are the same for both:
/// they take `(VcpuId, VcpuExit)`.
pub trait VmExits {
    /// Wait for the next event.
    fn next(&mut self) -> Result<VmEvent, HvError>;
    /// Let `vcpu` go on after its last [`VmEvent::Exit`].
    fn complete(&mut self, vcpu: VcpuId, resume: Resume) -> Result<(), HvError>;
}

/// A description of the VM a backend creates: sizes only, never host paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest RAM regions, `(guest-physical base, size in bytes)`, sorted and disjoint.
    pub ram: alloc::vec::Vec<(u64, u64)>,
    /// Number of vCPUs.
    pub vcpus: u32,
}

/// A virtual machine: its memory, its vCPUs and its interrupt controller.
pub trait Vm: Send + Sync {
    /// The backend's vCPU type.
    type Vcpu: Vcpu;

    /// The guest's RAM as seen by the VMM (mapped into the VMM's address space).
    fn ram(&self) -> &GuestRam;

    /// Create vCPU `id` (0-based, below the configured count).
    fn create_vcpu(&self, id: VcpuId) -> Result<Self::Vcpu, HvError>;

    /// An interrupt line into the guest's interrupt controller, for device interrupt `irq`
    /// (a GSI on x86, an SPI number on arm64). Devices keep the returned handle.
    fn irq_line(&self, irq: u32) -> Result<Arc<dyn IrqLine>, HvError>;

    /// Start vCPU `id` at `entry` (PSCI `CPU_ON` handled by the VMM). Backends whose
    /// hypervisor does this itself (KVM's in-kernel PSCI) leave the default.
    fn start_vcpu(&self, id: VcpuId, entry: &BootEntry) -> Result<(), HvError> {
        let _ = (id, entry);
        Err(HvError::Unsupported {
            backend: "this",
            what: "starting a vCPU from the VMM",
        })
    }

    /// Stop vCPU `id` until it is started again (PSCI `CPU_OFF`, a VM reset).
    fn stop_vcpu(&self, id: VcpuId) -> Result<(), HvError> {
        let _ = id;
        Err(HvError::Unsupported {
            backend: "this",
            what: "stopping a vCPU from the VMM",
        })
    }
}

/// A hypervisor: something that can create VMs.
pub trait Hypervisor {
    /// The backend's VM type.
    type Vm: Vm;

    /// A short name for logs and errors (`"kvm"`, `"sel4"`).
    fn name(&self) -> &'static str;

    /// Create a VM with the given memory layout and vCPU count.
    fn create_vm(&self, config: &VmConfig) -> Result<Self::Vm, HvError>;
}

impl fmt::Display for SystemEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SystemEvent::Shutdown => f.write_str("power-off"),
            SystemEvent::Reset => f.write_str("reboot"),
            SystemEvent::Crash => f.write_str("crash"),
            SystemEvent::ExitCode(code) => write!(f, "exit code {code}"),
        }
    }
}
