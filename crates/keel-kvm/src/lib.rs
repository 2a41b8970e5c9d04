//! Keel's Linux KVM backend (x86_64 and aarch64 hosts): the [`keel_core::Hypervisor`] traits
//! over `/dev/kvm`, the host-side legacy devices (8250 serial; on x86 also i8042 and debug
//! exit), and the [`Vmm`] that runs one VM from its [`keel_spec::VmSpec`].
//!
//! Layout:
//! - [`hv`] and [`vcpu`]: the only files that talk to KVM, with [`arch`] for what differs
//!   between x86_64 and aarch64 (irqchip, vCPU setup, boot registers, guest platform).
//! - [`dispatch`]: exit dispatch to the MMIO and port buses, in keel-core terms only (it
//!   can move to a portable crate as is).
//! - [`devices`]: legacy PC devices as [`keel_core::BusDevice`]s.
//! - [`vmm`]: building and running a VM from its spec; [`io`]: the I/O thread.
//! - [`placement`]: a VM's `placement` on Linux (affinity, scheduling class, cgroup budget).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!("keel-kvm supports Linux on x86_64 and aarch64 only");

pub mod arch;
#[cfg(target_arch = "x86_64")]
pub mod cpuid;
pub mod forward;
pub mod host;
pub mod hv;
pub mod io;
pub mod log;
pub mod net;
pub mod placement;
pub mod sandbox;
pub mod stats;
pub mod vcpu;
pub mod vmm;
pub mod vsock;

pub use hv::{KvmHypervisor, KvmVm};
pub use vcpu::KvmVcpu;
pub use vmm::{
    DeviceCounters, LifecycleEvent, RunReport, VmExitStatus, VmHandle, VmNetwork, VmProbe, Vmm,
    VmmError, run_vm, start_vm, start_vm_in, start_vm_with,
};
