//! Keel's storage agent: runs inside a Linux storage driver VM and serves the block
//! requests that client VMMs forward to it over shared forwarding regions
//! ([`keel_virtio::forward`]; docs/driver-vms.md, "The storage agent").
//!
//! The kernel command line says what to serve ([`cmdline`]): for each client its
//! forwarding region's guest-physical address and geometry, the serial of the disk holding
//! its range, the range and whether it is read-only; and the doorbell tty. The agent maps
//! each region from `/dev/mem` ([`region`]), opens each client's disk ([`disk`]), and serves
//! every client with a [`keel_virtio::forward::ForwardServer`] in one loop ([`agent`]),
//! sleeping on the doorbell ([`bell`]) when all are idle.
#![cfg(target_os = "linux")]

pub mod agent;
pub mod bell;
pub mod cmdline;
pub mod disk;
pub mod region;

pub use agent::{AgentError, Options, run};
