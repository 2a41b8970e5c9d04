//! Keel's virtual network: the frame rings that connect a VM's network device to the
//! switch, and the switch.
//!
//! - [`ring`]: a single-producer / single-consumer ring of Ethernet frames over a shared
//!   memory window, one per direction of a port. Built on [`keel_core::ring::slot`]; both
//!   parties distrust each other. The protocol is model-checked with Spin
//!   (`crates/keel-net/model/ring.pml`, `scripts/model-check.sh`).
//! - [`switch`]: a learning Ethernet switch with declared per-port MACs (anti-spoofing),
//!   uplink ports, allow lists, bounded output queues, per-port storm control and counters,
//!   with a memory footprint fixed at construction.
//! - [`plan`]: the switch a network's plan (`keel_spec::plan::NetworkPlan`) describes,
//!   built the same way by every backend.
//! - [`port`]: the glue both backends (Linux processes, seL4 protection domains) use
//!   unchanged: [`port::VmmPort`], a `keel_virtio::net::NetBackend` over a port's two rings,
//!   and [`port::SwitchService`], which moves frames between every port's rings through the
//!   switch; each side wakes the other through a [`port::Doorbell`] only when it sleeps.
//!
//! The crate is `#![no_std]` + `alloc` and has no clock: callers pass the time.
//! docs/net.md describes the protocol, the model and the switch's rules.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod plan;
pub mod port;
pub mod ring;
pub mod switch;
