//! aarch64: the guest platform Keel builds, the boot protocol it follows, and the pieces a
//! VMM must provide itself when the hypervisor does not (seL4): syndrome decoding, PSCI and a
//! software GIC distributor.
//!
//! Everything here is portable logic (no_std, no hypervisor calls, no arm64 instructions):
//! it is compiled and tested on every host.
//!
//! - [`esr`]: `ESR_EL2` syndrome decoding (data aborts, `hvc`/`smc`, `MSR`/`MRS`, `WFI`).
//! - [`fault`]: seL4 fault messages → [`VcpuExit`](crate::hv::VcpuExit), and answers back
//!   into guest registers.
//! - [`layout`]: the guest-physical map (QEMU `virt`-like) and the platform description.
//! - [`fdt`]: the device tree generated from that description.
//! - [`image`]: arm64 Linux `Image` loading (kernel, initrd and device-tree placement).
//! - [`boot`]: the whole load step every backend shares: layout, device tree, copies.
//! - [`psci`]: PSCI 1.1 / SMCCC 1.1 firmware calls and the per-VM vCPU power states.
//! - [`vgic`]: a software GIC distributor (GICv2, GICv3) for seL4, which virtualizes only
//!   the CPU interface.

pub mod boot;
pub mod esr;
pub mod fault;
pub mod fdt;
pub mod image;
pub mod layout;
pub mod psci;
pub mod vgic;
