//! The admin on Linux (`keel daemon`): supervises one VMM process per VM and serves the REST
//! API over a Unix socket. See docs/admin.md.
//!
//! - [`model`]: the data model and the [`model::Supervisor`] trait, the contract between the
//!   API and the supervisor.
//! - [`supervisor`]: the process supervisor implementing it; [`daemon`]: `keel daemon`.
//! - `vmmproc`: the VMM-process side (console socket, serial log, exit file).
//! - [`api`]: the REST API (routes, authorization, console upgrade, event stream) over
//!   [`http`], a small strict HTTP/1.1 server and client; [`tokens`]: capability tokens.
//! - [`ctl`]: `keel ctl`, the API's command-line client.

pub mod api;
pub mod ctl;
pub(crate) mod daemon;
#[cfg(test)]
pub mod fake;
pub mod http;
pub mod model;
pub mod supervisor;
pub mod tokens;
pub(crate) mod vmmproc;
