//! The admin on Linux (`keel daemon`): supervises one VMM process per VM and serves the REST
//! API over a Unix socket. See docs/admin.md.
//!
//! - [`model`]: the data model and the [`model::Supervisor`] trait, the contract between the
//!   API and the supervisor.

#![allow(dead_code)] // the halves land separately; the daemon wires them together

pub mod api;
pub mod model;
