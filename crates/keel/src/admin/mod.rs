//! The admin on Linux (`keel daemon`): supervises one VMM process per VM and serves the REST
//! API over a Unix socket. See docs/admin.md.
//!
//! - [`model`]: the data model and the [`model::Supervisor`] trait, the contract between the
//!   API and the supervisor.
//! - [`supervisor`]: the process supervisor implementing it; [`daemon`]: `keel daemon`.
//! - `vmmproc`: the VMM-process side (console socket, serial log, exit file).

#![allow(dead_code)] // the halves land separately; the daemon wires them together

pub mod api;
pub(crate) mod daemon;
pub mod model;
pub mod supervisor;
pub(crate) mod vmmproc;
