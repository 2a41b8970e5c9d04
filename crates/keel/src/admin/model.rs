//! The admin's data model: what the REST API (`api.rs`) talks about and what the supervisor
//! (`supervisor.rs`) does. The API layer only ever calls a [`Supervisor`]; the supervisor
//! knows nothing of HTTP, JSON or tokens.
//!
//! This file is the contract between the two halves: change it in both at once.

use std::fmt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Where a VM is in its life (the `state` field of the API's `Vm` object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Declared or created, never started (or stopped and not yet started again).
    Created,
    /// Its VMM process runs and the guest runs.
    Running,
    /// Its VMM process is stopped: the guest's vCPUs and devices make no progress.
    Paused,
    /// A graceful shutdown was asked; the guest has until the deadline.
    ShuttingDown,
    /// Its VMM ended normally (guest power-off, or a stop request).
    Stopped,
    /// Its VMM ended with a failure (guest crash, VMM crash, killed by a signal) and the
    /// restart policy does not (or no longer) restart it.
    Crashed,
    /// It failed and its restart policy restarts it after a back-off.
    Restarting,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting_down",
            VmState::Stopped => "stopped",
            VmState::Crashed => "crashed",
            VmState::Restarting => "restarting",
        })
    }
}

/// A VM's restart policy (`restart = "never" | "on-failure" | "always"` in the
/// description; the same names in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restarted by the admin.
    Never,
    /// Restarted after a failure (not after a normal stop), with exponential back-off.
    OnFailure,
    /// Restarted whenever its VMM ends, except when the admin itself stopped it.
    Always,
}

/// What the API shows of one VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmInfo {
    /// The VM's name (unique in the daemon).
    pub name: String,
    /// Where it is in its life.
    pub state: VmState,
    /// Declared in the system description (`false`: created through the API, from the
    /// dynamic pool).
    pub r#static: bool,
    /// Its VMM process while it has one.
    pub pid: Option<u32>,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Its restart policy.
    pub restart: RestartPolicy,
    /// How many times the admin restarted it since it was created.
    pub restarts: u32,
    /// How its VMM ended last time, if it ended: e.g. `"exit 0"`, `"exit 1"`,
    /// `"killed by signal 9"`.
    pub last_exit: Option<String>,
    /// Its network interfaces (a dynamic VM's: the pool ports it holds, with the MACs the
    /// daemon fixed).
    #[serde(default)]
    pub nics: Vec<NicInfo>,
}

/// One network interface of a VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NicInfo {
    /// The network's name.
    pub network: String,
    /// The interface's MAC address, `02:00:00:00:00:01` style.
    pub mac: String,
}

/// A request to create a dynamic VM (`POST /vms`). What it may name is bounded by the
/// description's `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// Unique name, `[a-z0-9-]{1,32}` (the description's rule).
    pub name: String,
    /// The kernel: must be one the limits allow.
    pub kernel: String,
    /// The initrd, if any: must be one the limits allow.
    #[serde(default)]
    pub initrd: Option<String>,
    /// The kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs (default 1).
    #[serde(default = "one")]
    pub vcpus: u32,
    /// Disk images (read-write unless the limits say otherwise): each one the limits allow.
    #[serde(default)]
    pub disks: Vec<String>,
    /// Networks to attach one interface each to: each one the limits allow.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Restart policy (default never).
    #[serde(default = "never")]
    pub restart: RestartPolicy,
}

fn one() -> u32 {
    1
}

fn never() -> RestartPolicy {
    RestartPolicy::Never
}

/// Something that happened, in order (`GET /events`, one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A VM moved from one state to another.
    State {
        /// The VM.
        vm: String,
        /// Its previous state.
        from: VmState,
        /// Its new state.
        to: VmState,
    },
    /// A VMM ended with a failure (before any restart).
    Crashed {
        /// The VM.
        vm: String,
        /// How it ended, as in [`VmInfo::last_exit`].
        exit: String,
    },
    /// The admin restarted a VM by its policy.
    Restarted {
        /// The VM.
        vm: String,
        /// Its restart count after this one.
        restarts: u32,
    },
    /// A dynamic VM was created.
    Created {
        /// The VM.
        vm: String,
    },
    /// A dynamic VM was deleted.
    Deleted {
        /// The VM.
        vm: String,
    },
}

/// Why the supervisor refused or failed a request. The API maps each to an HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    /// No VM of that name (404).
    #[error("no VM named \"{0}\"")]
    NotFound(String),
    /// A VM of that name exists already (409).
    #[error("a VM named \"{0}\" exists already")]
    Exists(String),
    /// The request is not possible in the VM's current state (409).
    #[error("VM \"{vm}\" is {state}: cannot {action}")]
    Conflict {
        /// The VM.
        vm: String,
        /// Its state.
        state: VmState,
        /// What was asked (`start`, `pause`, …).
        action: &'static str,
    },
    /// The request breaks a limit of the description's `[limits]` (403): `limit` names it
    /// as written in the description (e.g. `limits.max_vms`), `detail` says by how much.
    #[error("refused by {limit}: {detail}")]
    Limit {
        /// The limit, e.g. `limits.memory_mib`.
        limit: &'static str,
        /// What the request needed against what is left.
        detail: String,
    },
    /// The request itself is malformed (400).
    #[error("bad request: {0}")]
    Invalid(String),
    /// The host failed (500): spawning, signals, the state directory.
    #[error("{0}")]
    Internal(String),
}

/// The VM lifecycle the admin offers, whatever serves it. Implemented by the daemon's
/// process supervisor (and by fakes in the API's tests). Calls return once the state change
/// has been made or started (a shutdown returns at once, in [`VmState::ShuttingDown`]).
pub trait Supervisor: Send + Sync {
    /// Every VM, static ones first in description order, then dynamic ones by creation.
    fn list(&self) -> Vec<VmInfo>;
    /// One VM.
    fn get(&self, vm: &str) -> Result<VmInfo, AdminError>;
    /// Create a dynamic VM within the limits (not started).
    fn create(&self, req: CreateVm) -> Result<VmInfo, AdminError>;
    /// Start a created, stopped or crashed VM.
    fn start(&self, vm: &str) -> Result<VmInfo, AdminError>;
    /// Pause a running VM.
    fn pause(&self, vm: &str) -> Result<VmInfo, AdminError>;
    /// Resume a paused VM.
    fn resume(&self, vm: &str) -> Result<VmInfo, AdminError>;
    /// Ask the guest to power off; stop it hard once `deadline` has passed.
    fn shutdown(&self, vm: &str, deadline: Duration) -> Result<VmInfo, AdminError>;
    /// Stop at once (the VMM is killed); no restart follows.
    fn stop(&self, vm: &str) -> Result<VmInfo, AdminError>;
    /// Stop (hard) if it runs, then start again.
    fn restart(&self, vm: &str) -> Result<VmInfo, AdminError>;
    /// Delete a dynamic VM (stopped first if it runs); static VMs cannot be deleted.
    fn delete(&self, vm: &str) -> Result<(), AdminError>;
    /// A bidirectional byte stream to the VM's serial console: guest output comes out,
    /// what is written goes to the guest's input.
    fn console(&self, vm: &str) -> Result<UnixStream, AdminError>;
    /// Every event from now on. A subscriber that stops reading is dropped.
    fn subscribe(&self) -> Receiver<Event>;
}
