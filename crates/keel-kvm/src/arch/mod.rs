//! What differs between architectures, behind one interface per host architecture
//! (`host`): VM-wide setup (`create_vm_arch`, `VmArch::complete` once the vCPUs exist), vCPU
//! setup and boot registers (`setup_vcpu`, `set_boot_entry`, `fault_detail`), interrupt line
//! numbers (`irq_line_number`). Everything else in the crate is architecture-neutral.
//!
//! [`aarch64`]'s portable half (register ids, vGIC attributes, the device-tree platform) is
//! compiled and tested on every host; the ioctls of each architecture only on that host.

pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) use aarch64::kvm as host;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64 as host;
