//! Keel's portable VMM: what a VMM is regardless of hypervisor.
//!
//! From a VM's plan ([`keel_spec::VmPlan`]) and the host resources a backend supplies,
//! [`VmmCore`] builds the device set (each device at its planned slot and interrupt), the
//! platform devices (UART; on x86 the i8042, debug exit and ACPI ports; on arm64 without an
//! in-kernel GIC the software distributor and PSCI), writes the firmware description (the
//! device tree on arm64; command line, MP and ACPI tables on x86) with the kernel, and
//! answers every vCPU exit. A backend is an adapter: it creates the VM through
//! [`keel_core::Hypervisor`], supplies [`DeviceBackends`], and drives exits either from one
//! thread per vCPU ([`run_vcpu`], KVM) or from one per-VM exit source ([`run_exits`], seL4).
//!
//! `no_std` + `alloc`; tested on the host with a fake hypervisor ([`testing`]).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod arm64;
pub mod devices;
pub mod dispatch;
pub mod log;
pub mod serial;
pub mod stop;
pub mod testing;
pub mod uart;
mod vmm;
pub mod x86;

pub use devices::{BackendError, DeviceBackends, PlacedDevice, VirtioSlot};
pub use dispatch::{ExitDispatcher, ExitStats, Next};
pub use log::{Allowed, Level, Log, LogSink, RateLimit};
pub use serial::{Serial8250, SerialOutput};
pub use stop::StopSink;
pub use vmm::{Interrupts, LoadedGuest, VmmCore, run_exits, run_vcpu};

use alloc::string::String;

use keel_core::{BootEntry, HvError, VcpuId, Vm};

/// Starting and stopping vCPUs from the VMM (PSCI on hypervisors that leave it to the VMM).
/// Every [`Vm`] is one.
pub trait VcpuControl {
    /// Start vCPU `id` at `entry`.
    fn start_vcpu(&self, id: VcpuId, entry: &BootEntry) -> Result<(), HvError>;
    /// Stop vCPU `id`.
    fn stop_vcpu(&self, id: VcpuId) -> Result<(), HvError>;
}

impl<V: Vm> VcpuControl for V {
    fn start_vcpu(&self, id: VcpuId, entry: &BootEntry) -> Result<(), HvError> {
        Vm::start_vcpu(self, id, entry)
    }
    fn stop_vcpu(&self, id: VcpuId) -> Result<(), HvError> {
        Vm::stop_vcpu(self, id)
    }
}

/// Why a VM's devices and platform could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A device's host resource could not be had.
    #[error("vm {vm:?}: {source}")]
    Backend {
        /// The VM.
        vm: String,
        /// What the backend said.
        source: BackendError,
    },
    /// The hypervisor refused (an interrupt line, …).
    #[error("{0}")]
    Hypervisor(#[from] HvError),
    /// Two devices claim one address range (a plan bug).
    #[error("bus: {0}")]
    Bus(#[from] keel_core::BusError),
    /// The software interrupt controller could not be built.
    #[error("interrupt controller: {0}")]
    Vgic(#[from] keel_core::arch::aarch64::vgic::VgicError),
}

/// Why the kernel, initrd or firmware description could not be put into guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// x86 kernel, initrd or command line.
    #[error("{0}")]
    X86(keel_core::arch::x86_64::BootError),
    /// x86 ACPI tables.
    #[error("ACPI tables: {0}")]
    Acpi(keel_core::arch::x86_64::acpi::AcpiError),
    /// arm64 `Image`, initrd or device tree.
    #[error("{0}")]
    Arm64(#[from] keel_core::arch::aarch64::boot::LinuxLoadError),
}
