//! Keel's hypervisor-agnostic core.
//!
//! Nothing in this crate knows whether it runs above Linux KVM or seL4: the hypervisor is
//! reached only through the traits in [`hv`], guest memory through [`memory::GuestMemory`],
//! and guests are interrupted through [`irq::IrqLine`]. The crate is `#![no_std]` + `alloc`
//! so that the same code runs in a Linux process and in a seL4 protection domain.
//!
//! Layers, from the bottom:
//! - [`hv`]: `Hypervisor` → `Vm` → `Vcpu`, whose `run()` returns a [`hv::VcpuExit`] as data and
//!   takes the [`hv::ExitAnswer`] back on the next call. `docs/hypervisor-traits.md` maps every
//!   method to KVM ioctls and to seL4 fault IPC.
//! - [`memory`]: bounds-checked guest-physical memory access.
//! - [`bus`]: MMIO and port-I/O dispatch to devices.
//! - [`irq`]: interrupt lines from devices to the guest's interrupt controller.
//! - [`arch`]: per-architecture boot code and platform models.
//! - [`console_switch`]: which VM's console takes a shared terminal's input (`@N`).
//! - [`ring`]: a single-producer / single-consumer byte ring over shared memory between
//!   parties that do not trust each other (on seL4: each VMM and the console PD), and
//!   [`ring::slot`], the same header and checks over fixed-size record slots with
//!   notification suppression (keel-net's frame rings).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod arch;
pub mod bus;
pub mod console_switch;
pub mod control;
pub mod hv;
pub mod irq;
pub mod memory;
pub mod restart;
pub mod ring;

pub use bus::{Bus, BusDevice, BusError, BusTarget, SyncBusDevice};
pub use hv::{
    BootEntry, ExitAnswer, HvError, Hypervisor, Resume, SystemEvent, Vcpu, VcpuExit, VcpuId, Vm,
    VmEvent, VmExits,
};
pub use irq::IrqLine;
pub use memory::{GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryRef, GuestRam};
