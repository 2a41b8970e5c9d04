//! Keel's system description: the whole system (its VMs, their memory, devices and placement)
//! in one TOML file.
//!
//! The model ([`System`], [`VmSpec`], …) and its semantic validation ([`System::new`]) are
//! `no_std` + `alloc`, so the seL4 side can use them. Reading TOML, expanding `${VAR}` in paths
//! and checking host files (kernels, disks) need the `std` feature: [`load`], [`parse_str`] and
//! [`Loader`].
//!
//! Every error is a [`SpecError`] whose `Display` is one line naming the place in the file,
//! e.g. `vm "web": vcpus: 0 is out of range (1..=64)`.
//!
//! [`plan`] turns a validated [`System`] into the plan both backends build from (device
//! slots, interrupts, RAM, placement); [`microkit`] renders its seL4 form.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod colour;
mod error;
mod kernel;
mod layout;
pub mod microkit;
mod model;
pub mod plan;
mod size;
mod validate;

#[cfg(feature = "std")]
mod env;
#[cfg(feature = "std")]
mod host;
#[cfg(feature = "std")]
mod parse;

pub use error::{ErrorKind, SpecError};
pub use kernel::{KernelFormat, check_kernel, elf_headers_end, probe_kernel};
pub use layout::{DeviceWindow, device_window, ram_layout};
pub use model::VsockSpec;
pub use model::{
    Access, Arch, ConsoleSpec, ControlRight, ControlSpec, CpuSet, DiskSpec, Dma, HostPath, Limits,
    Llc, MacAddr, Memory, NetworkSpec, NicSpec, OnReboot, Output, OutputKind, PassthroughDt,
    PassthroughSpec, Placement, RamRegion, Restart, ServedDisk, SharedMapSpec, SharedSpec, System,
    VmSpec,
};
pub use plan::{
    DeviceKind, DevicePlan, DiskPlan, LinkPlan, NetworkPlan, NicPlan, PassthroughPlan, PortOwner,
    PortPlan, ServePlan, ServedDiskPlan, SharedMapPlan, SharedRegionPlan, SystemPlan, VmPlan,
};
pub use plan::{VsockPeerPlan, VsockPlan};
pub use size::{SizeDisplay, parse_size};
pub use validate::limits;

#[cfg(feature = "std")]
pub use host::check_host;
#[cfg(feature = "std")]
pub use parse::{Loader, load, parse_str};
