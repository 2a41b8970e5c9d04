//! The admin component: one protection domain per system, the Microkit **parent of every
//! VMM PD** (the system file nests each `<vm>_vmm` in `keel_admin` with child id = the VM's
//! index). A VMM PD that faults (a bad memory access, an undefined instruction, a capability
//! fault) sends its fault to the admin's endpoint; the admin applies the VM's restart
//! policy: restart the VMM PD at its entry point (as Microkit's `microkit_pd_restart`: the
//! VMM starts over, re-initialises and reloads its guest), up to the VM's limit, or leave it
//! stopped; and logs one line naming the VM, the fault and what it did.
//!
//! It also serves the control protocol (`keel_core::control`) of each control VM
//! (`[[vm.control]]`): start, stop, restart or report the state of the VMs it holds rights
//! on ([`Supervisor::apply`]); a pool slot (`start = false`) is a VMM that waits until
//! the admin starts it.
//!
//! This module is the admin's plain logic (host-tested): its configuration ([`AdminConfig`],
//! a payload appended to its ELF like the console's, at [`crate::payload::PAYLOAD_VADDR`]),
//! the policy ([`RestartPlan`]) and the decision ([`Supervisor::on_fault`]). The program
//! is `admin_pd` (seL4 only), the binary `keel-sel4-admin`.
//!
//! The restart limit is per minute of the generic timer's count ([`crate::clock`], passed
//! in by the program), like the VMM's reboot limit; without a counter frequency it counts
//! over the VM's life. No back-off in time between restarts: the admin has no timer
//! interrupt to wait for, so a restart happens at once or not at all.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use keel_core::control::{Op, Rights, Status, TargetState};
use keel_core::restart::{RestartLimiter, RestartVerdict};

use crate::abi::fault as f;
use crate::fault::Fault;

/// First bytes of the admin payload.
pub const MAGIC: [u8; 8] = *b"KEELADM\0";
/// Admin payload format version.
pub const VERSION: u32 = 1;
/// Bytes of the admin payload's fixed header (magic, version, total length).
pub const HEADER_LEN: usize = crate::payload::CONFIG_HEADER_LEN;

/// What the admin does when a VM's VMM PD faults: the per-VM restart policy of the system
/// description (`restart = "never" | "on-failure" | "always"`; the names of keel's
/// `admin::model::RestartPolicy`). A fault is a failure, so `on-failure` and `always` both
/// restart after one; they differ for a VMM that stops its VM normally, which the admin
/// is not told about on seL4 (see docs/sel4.md, "The admin PD").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPlan {
    /// Leave the VMM stopped.
    #[default]
    Never,
    /// Restart it after a failure.
    OnFailure,
    /// Restart it whenever it ends.
    Always,
}

/// A restart policy name that is none of `never`, `on-failure`, `always`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("restart policy {0:?} is not one of \"never\", \"on-failure\", \"always\"")]
pub struct UnknownPolicy(pub String);

impl RestartPlan {
    /// The policy's name in the description and the API.
    pub const fn name(self) -> &'static str {
        match self {
            RestartPlan::Never => "never",
            RestartPlan::OnFailure => "on-failure",
            RestartPlan::Always => "always",
        }
    }

    /// The policy named `name` (as the description and the API spell it).
    pub fn from_name(name: &str) -> Result<RestartPlan, UnknownPolicy> {
        match name {
            "never" => Ok(RestartPlan::Never),
            "on-failure" => Ok(RestartPlan::OnFailure),
            "always" => Ok(RestartPlan::Always),
            other => Err(UnknownPolicy(other.into())),
        }
    }

    /// Whether a VMM fault (a failure) restarts the VMM under this policy.
    pub const fn restarts_after_fault(self) -> bool {
        !matches!(self, RestartPlan::Never)
    }
}

/// One VM as the admin sees it: its VMM PD and how to restart it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminVm {
    /// The VM's name.
    pub name: String,
    /// Its VMM PD's name.
    pub vmm_pd: String,
    /// The VMM PD's child id in the admin PD.
    pub child_id: u32,
    /// The VMM program's entry point (where a restart starts it).
    pub entry: u64,
    /// The restart policy.
    pub restart: RestartPlan,
    /// Restarts allowed within a minute (the description's `max_restarts_per_minute`).
    pub max_restarts: u32,
    /// Whether the system starts it (`false`: a pool slot, whose VMM waits until the admin
    /// starts it).
    pub start: bool,
    /// The admin's channel id to this VM's VMM (its doorbell notifications arrive there).
    pub channel: u32,
    /// The VM's control page, when it is a control VM.
    pub control: Option<AdminControl>,
}

/// A control VM's page and rights, as the admin serves them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminControl {
    /// Where the admin maps the VM's control page.
    pub vaddr: u64,
    /// The rights ([`keel_core::control::Rights`] bits) on each target, by VM index.
    pub rights: Vec<u32>,
}

impl AdminControl {
    /// The rights on target `target` (none for an index out of range).
    pub fn rights(&self, target: u32) -> Rights {
        Rights(
            self.rights
                .get(target as usize)
                .copied()
                .unwrap_or_default(),
        )
    }
}

/// The kernel call that carries out a control request ([`Supervisor::apply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// None (a status request).
    None,
    /// Restart child `child` at `entry` (`microkit_pd_restart`).
    RestartAt {
        /// The VMM's child id.
        child: u32,
        /// Its entry point.
        entry: u64,
    },
    /// Suspend child `child` (`microkit_pd_stop`).
    Suspend {
        /// The VMM's child id.
        child: u32,
    },
}

/// What the admin PD needs to know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminConfig {
    /// Where its console ring is mapped (0: print on the debug console directly).
    pub console_ring: u64,
    /// The ring's length.
    pub console_ring_len: u64,
    /// Its channel to the console PD.
    pub console_channel: u32,
    /// The VMs, in system order.
    pub vms: Vec<AdminVm>,
}

/// What is wrong with the admin configuration (the framing every PD configuration shares).
pub use crate::payload::ConfigError as AdminConfigError;

impl AdminConfig {
    /// Serialize: magic, version, total length (the fixed header of [`HEADER_LEN`] bytes),
    /// then the configuration in postcard ([`crate::payload::encode_config`]).
    pub fn encode(&self) -> Result<Vec<u8>, AdminConfigError> {
        crate::payload::encode_config(self, &MAGIC, VERSION)
    }

    /// The total length recorded in the first [`HEADER_LEN`] bytes.
    pub fn total_len(header: &[u8]) -> Result<usize, AdminConfigError> {
        crate::payload::config_total_len(header, &MAGIC, VERSION)
    }

    /// Parse what [`AdminConfig::encode`] wrote (all of it: no bytes may be left over).
    pub fn decode(bytes: &[u8]) -> Result<AdminConfig, AdminConfigError> {
        crate::payload::decode_config(bytes, &MAGIC, VERSION, "admin payload")
    }
}

/// What to do about a fault of a child PD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Restart VM `vm`'s VMM at `entry`: restart number `count` of at most `max`.
    Restart {
        /// Index of the VM.
        vm: usize,
        /// The VMM's entry point.
        entry: u64,
        /// This restart's number over the VM's life (1-based).
        count: u32,
        /// The limit.
        max: u32,
    },
    /// Leave VM `vm`'s VMM stopped (suspend it), for `reason`.
    Stop {
        /// Index of the VM.
        vm: usize,
        /// Why (one phrase for the log line).
        reason: String,
    },
    /// The fault came from no VMM the admin knows (a child id outside its configuration):
    /// ignored, the sender stays blocked.
    Unknown {
        /// The child id.
        child: u32,
    },
}

/// The admin's state: each VM's restart count and recent restarts, and whether its VMM
/// runs.
#[derive(Debug)]
pub struct Supervisor {
    vms: Vec<AdminVm>,
    restarts: Vec<u32>,
    /// Each VM's restarts within the last minute.
    recent: Vec<RestartLimiter>,
    running: Vec<bool>,
}

impl Supervisor {
    /// A supervisor of the VMs of `cfg`, none restarted yet; the VMs the system starts
    /// are running, the pool slots stopped.
    pub fn new(cfg: &AdminConfig) -> Supervisor {
        Supervisor {
            vms: cfg.vms.clone(),
            restarts: cfg.vms.iter().map(|_| 0).collect(),
            recent: cfg
                .vms
                .iter()
                .map(|v| RestartLimiter::new(v.max_restarts, RestartLimiter::MINUTE_MS))
                .collect(),
            running: cfg.vms.iter().map(|v| v.start).collect(),
        }
    }

    /// Whether VM `vm`'s VMM runs (as far as the admin knows).
    pub fn running(&self, vm: usize) -> bool {
        self.running.get(vm).copied().unwrap_or(false)
    }

    /// Decide a control request `op` on VM `target` (already checked: the target exists
    /// and the requester holds the right): the target's state afterwards and the kernel
    /// call to make. Start of a running VM and stop of a stopped one are conflicts.
    pub fn apply(&mut self, op: Op, target: u32) -> Result<(TargetState, Effect), Status> {
        let vm = target as usize;
        let Some(v) = self.vms.get(vm) else {
            return Err(Status::BadTarget);
        };
        let state = |running: bool| {
            if running {
                TargetState::Running
            } else {
                TargetState::Stopped
            }
        };
        let running = self.running[vm];
        let restart = Effect::RestartAt {
            child: v.child_id,
            entry: v.entry,
        };
        match op {
            Op::Status => Ok((state(running), Effect::None)),
            Op::Start if running => Err(Status::Conflict),
            Op::Stop if !running => Err(Status::Conflict),
            Op::Start | Op::Restart => {
                self.running[vm] = true;
                Ok((TargetState::Running, restart))
            }
            Op::Stop => {
                self.running[vm] = false;
                Ok((TargetState::Stopped, Effect::Suspend { child: v.child_id }))
            }
        }
    }

    /// The kernel call carrying out a request [`Supervisor::apply`] accepted on `target`
    /// failed: the admin knows the VM as it was before (`was_running`), not as the request
    /// would have left it, so a later request is judged on what happened.
    pub fn call_failed(&mut self, target: u32, was_running: bool) {
        if let Some(r) = self.running.get_mut(target as usize) {
            *r = was_running;
        }
    }

    /// The VM whose VMM's channel to the admin is `channel`.
    pub fn vm_of_channel(&self, channel: u32) -> Option<usize> {
        self.vms.iter().position(|v| v.channel == channel)
    }

    /// The VMs.
    pub fn vms(&self) -> &[AdminVm] {
        &self.vms
    }

    /// Restarts of VM `vm` so far.
    pub fn restarts(&self, vm: usize) -> u32 {
        self.restarts.get(vm).copied().unwrap_or(0)
    }

    /// The VM whose VMM is child `child`.
    pub fn vm_of_child(&self, child: u32) -> Option<usize> {
        self.vms.iter().position(|v| v.child_id == child)
    }

    /// Decide what to do about a fault of child PD `child` (counting the restart).
    ///
    /// `now_ms`: the generic timer's count in milliseconds, or `None` when the counter has
    /// no frequency (then every restart of the VM's life counts against the limit).
    pub fn on_fault(&mut self, child: u32, now_ms: Option<u64>) -> FaultAction {
        let Some(vm) = self.vm_of_child(child) else {
            return FaultAction::Unknown { child };
        };
        let v = &self.vms[vm];
        self.running[vm] = false;
        if !v.restart.restarts_after_fault() {
            return FaultAction::Stop {
                vm,
                reason: format!("restart = \"{}\"", v.restart.name()),
            };
        }
        // Without a clock every restart is at time 0: none ever leaves the window.
        match self.recent[vm].record(now_ms.unwrap_or(0)) {
            RestartVerdict::Stop { count } => {
                let over = if now_ms.is_some() {
                    "within a minute"
                } else {
                    "counted over the VM's life: the counter has no frequency"
                };
                FaultAction::Stop {
                    vm,
                    reason: format!(
                        "restarted {} times already (at most {} per minute, {over})",
                        count - 1,
                        v.max_restarts
                    ),
                }
            }
            RestartVerdict::Restart { count } => {
                self.restarts[vm] += 1;
                self.running[vm] = true;
                FaultAction::Restart {
                    vm,
                    entry: v.entry,
                    count,
                    max: v.max_restarts,
                }
            }
        }
    }

    /// The log line for `action` after fault `what` (see [`describe_fault`]).
    pub fn line(&self, action: &FaultAction, what: &str) -> String {
        match action {
            FaultAction::Restart { vm, count, max, .. } => {
                let v = &self.vms[*vm];
                format!(
                    "keel-admin: vm {}: VMM {} faulted ({what}); restarting it ({count} of at most {max} per minute, restart = \"{}\")",
                    v.name,
                    v.vmm_pd,
                    v.restart.name()
                )
            }
            FaultAction::Stop { vm, reason } => {
                let v = &self.vms[*vm];
                format!(
                    "keel-admin: vm {}: VMM {} faulted ({what}); not restarted: {reason}; the VM is stopped",
                    v.name, v.vmm_pd
                )
            }
            FaultAction::Unknown { child } => {
                format!("keel-admin: fault of unknown child {child} ({what}) ignored")
            }
        }
    }
}

/// One phrase for a fault a child PD (a VMM, a plain thread) sent: its kind and where.
pub fn describe_fault(fault: &Fault) -> String {
    match *fault {
        Fault::VmFault {
            ip,
            addr,
            prefetch,
            fsr,
        } => {
            let kind = if prefetch {
                "instruction fetch"
            } else {
                "data access"
            };
            format!("memory fault: {kind} at address {addr:#x}, pc {ip:#x}, fsr {fsr:#x}")
        }
        Fault::UnknownSyscall { ip, syscall, .. } => {
            format!("unknown system call {syscall:#x} at pc {ip:#x}")
        }
        Fault::Other { label } => match label {
            f::CAP_FAULT => "capability fault".into(),
            f::USER_EXCEPTION => "user exception (undefined instruction or alignment)".into(),
            f::DEBUG_EXCEPTION => "debug exception".into(),
            f::TIMEOUT => "scheduling-context timeout".into(),
            other => format!("fault type {other}"),
        },
        // vCPU-only faults: a PD never sends these, but say what arrived.
        Fault::VcpuFault { hsr } => format!("vCPU fault, hsr {hsr:#x}"),
        Fault::VgicMaintenance { .. } => "vGIC maintenance".into(),
        Fault::VppiEvent { irq } => format!("virtual PPI {irq}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_whose_kernel_call_failed_leaves_the_vm_stopped_and_startable() {
        let mut s = Supervisor::new(&cfg(RestartPlan::OnFailure, 3));
        let was = s.running(1);
        assert!(!was, "vm 1 of the fixture is a pool slot");
        assert!(s.apply(Op::Start, 1).is_ok());
        s.call_failed(1, was);
        assert_eq!(
            s.apply(Op::Status, 1),
            Ok((TargetState::Stopped, Effect::None))
        );
        assert!(
            s.apply(Op::Start, 1).is_ok(),
            "a second start is not a conflict"
        );
    }

    fn cfg(restart: RestartPlan, max: u32) -> AdminConfig {
        AdminConfig {
            console_ring: 0x3_0000_0000,
            console_ring_len: 0x4000,
            console_channel: 2,
            vms: alloc::vec![
                AdminVm {
                    name: "a".into(),
                    vmm_pd: "a_vmm".into(),
                    child_id: 0,
                    entry: 0x20_0000,
                    restart,
                    max_restarts: max,
                    start: true,
                    channel: 0,
                    control: Some(AdminControl {
                        vaddr: 0x5_0000_0000,
                        rights: alloc::vec![0, Rights::STOP.0],
                    }),
                },
                AdminVm {
                    name: "b".into(),
                    vmm_pd: "b_vmm".into(),
                    child_id: 1,
                    entry: 0x20_0000,
                    restart: RestartPlan::Never,
                    max_restarts: max,
                    start: false,
                    channel: 1,
                    control: None,
                },
            ],
        }
    }

    #[test]
    fn configuration_survives_encoding() {
        let c = cfg(RestartPlan::OnFailure, 3);

        assert_eq!(AdminConfig::decode(&c.encode().unwrap()), Ok(c));
    }

    #[test]
    fn configuration_with_bytes_left_over_is_refused() {
        let mut bytes = cfg(RestartPlan::Always, 3).encode().unwrap();
        bytes.push(0);
        let total = bytes.len() as u32;
        bytes[12..16].copy_from_slice(&total.to_le_bytes());

        assert!(matches!(
            AdminConfig::decode(&bytes),
            Err(AdminConfigError::Decode(_))
        ));
    }

    #[test]
    fn console_configuration_is_not_taken_for_an_admin_one() {
        let console = crate::console::ConsoleConfig::for_vms(["a"])
            .encode()
            .unwrap();

        assert!(matches!(
            AdminConfig::decode(&console),
            Err(AdminConfigError::Header(_))
        ));
    }

    #[test]
    fn policy_names_round_trip_and_others_are_refused() {
        for p in [
            RestartPlan::Never,
            RestartPlan::OnFailure,
            RestartPlan::Always,
        ] {
            assert_eq!(RestartPlan::from_name(p.name()), Ok(p));
        }
        assert_eq!(
            RestartPlan::from_name("sometimes"),
            Err(UnknownPolicy("sometimes".into()))
        );
    }

    #[test]
    fn on_failure_restarts_the_faulting_vmm_at_its_entry() {
        let mut s = Supervisor::new(&cfg(RestartPlan::OnFailure, 3));

        assert_eq!(
            s.on_fault(0, Some(0)),
            FaultAction::Restart {
                vm: 0,
                entry: 0x20_0000,
                count: 1,
                max: 3
            }
        );
    }

    #[test]
    fn always_restarts_after_a_fault_too() {
        let mut s = Supervisor::new(&cfg(RestartPlan::Always, 3));

        assert!(matches!(
            s.on_fault(0, Some(0)),
            FaultAction::Restart { .. }
        ));
    }

    #[test]
    fn never_leaves_the_vmm_stopped() {
        let mut s = Supervisor::new(&cfg(RestartPlan::OnFailure, 3));

        assert_eq!(
            s.on_fault(1, Some(0)),
            FaultAction::Stop {
                vm: 1,
                reason: "restart = \"never\"".into()
            }
        );
    }

    #[test]
    fn restarts_stop_at_the_limit() {
        let mut s = Supervisor::new(&cfg(RestartPlan::OnFailure, 2));
        s.on_fault(0, Some(0));
        s.on_fault(0, Some(0));

        let third = s.on_fault(0, Some(0));

        assert!(
            matches!(&third, FaultAction::Stop { vm: 0, reason } if reason.starts_with("restarted 2 times already")),
            "{third:?}"
        );
        assert_eq!(s.restarts(0), 2);
    }

    #[test]
    fn restarts_a_minute_apart_do_not_count_against_each_other() {
        let mut s = Supervisor::new(&cfg(RestartPlan::OnFailure, 2));
        s.on_fault(0, Some(1_000));
        s.on_fault(0, Some(2_000));

        // 60 s after the first, it has left the window: one restart within the minute.
        let third = s.on_fault(0, Some(61_000));

        assert!(
            matches!(
                third,
                FaultAction::Restart {
                    count: 2,
                    max: 2,
                    ..
                }
            ),
            "{third:?}"
        );
        assert_eq!(s.restarts(0), 3);
    }

    #[test]
    fn the_limit_applies_within_a_minute() {
        let mut s = Supervisor::new(&cfg(RestartPlan::OnFailure, 2));
        s.on_fault(0, Some(1_000));
        s.on_fault(0, Some(30_000));

        let third = s.on_fault(0, Some(60_999));

        assert!(
            matches!(&third, FaultAction::Stop { vm: 0, reason } if reason == "restarted 2 times already (at most 2 per minute, within a minute)"),
            "{third:?}"
        );
    }

    #[test]
    fn without_a_clock_restarts_count_over_the_vms_life() {
        let mut s = Supervisor::new(&cfg(RestartPlan::OnFailure, 2));
        s.on_fault(0, None);
        s.on_fault(0, None);

        let third = s.on_fault(0, None);

        assert!(
            matches!(&third, FaultAction::Stop { reason, .. } if reason.ends_with("counted over the VM's life: the counter has no frequency)")),
            "{third:?}"
        );
    }

    #[test]
    fn a_restart_of_one_vm_does_not_count_against_another() {
        let mut c = cfg(RestartPlan::OnFailure, 1);
        c.vms[1].restart = RestartPlan::OnFailure;
        let mut s = Supervisor::new(&c);
        s.on_fault(0, Some(0));

        assert!(matches!(
            s.on_fault(1, Some(0)),
            FaultAction::Restart {
                vm: 1,
                count: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_fault_of_an_unknown_child_is_ignored() {
        let mut s = Supervisor::new(&cfg(RestartPlan::OnFailure, 3));

        assert_eq!(s.on_fault(9, Some(0)), FaultAction::Unknown { child: 9 });
    }

    #[test]
    fn a_pool_slot_is_stopped_until_started() {
        let mut s = Supervisor::new(&cfg(RestartPlan::Never, 3));

        assert_eq!(
            s.apply(Op::Status, 1),
            Ok((TargetState::Stopped, Effect::None))
        );
        assert_eq!(
            s.apply(Op::Start, 1),
            Ok((
                TargetState::Running,
                Effect::RestartAt {
                    child: 1,
                    entry: 0x20_0000
                }
            ))
        );
        assert!(s.running(1));
    }

    #[test]
    fn stop_suspends_a_running_vmm_and_a_second_stop_conflicts() {
        let mut s = Supervisor::new(&cfg(RestartPlan::Never, 3));

        assert_eq!(
            s.apply(Op::Stop, 0),
            Ok((TargetState::Stopped, Effect::Suspend { child: 0 }))
        );
        assert_eq!(s.apply(Op::Stop, 0), Err(Status::Conflict));
    }

    #[test]
    fn start_of_a_running_vm_conflicts() {
        let mut s = Supervisor::new(&cfg(RestartPlan::Never, 3));

        assert_eq!(s.apply(Op::Start, 0), Err(Status::Conflict));
    }

    #[test]
    fn a_fault_left_stopped_reads_as_stopped() {
        let mut s = Supervisor::new(&cfg(RestartPlan::Never, 3));
        s.on_fault(0, Some(0));

        assert_eq!(
            s.apply(Op::Status, 0),
            Ok((TargetState::Stopped, Effect::None))
        );
    }

    #[test]
    fn rights_beyond_the_list_are_none() {
        let c = cfg(RestartPlan::Never, 3);
        let control = c.vms[0].control.as_ref().unwrap();

        assert_eq!(control.rights(1), Rights::STOP);
        assert_eq!(control.rights(7), Rights::NONE);
    }

    #[test]
    fn the_restart_line_names_the_vm_the_fault_and_the_count() {
        let mut s = Supervisor::new(&cfg(RestartPlan::OnFailure, 3));
        let what = describe_fault(&Fault::VmFault {
            ip: 0x20_1234,
            addr: 0x10,
            prefetch: false,
            fsr: 0x93,
        });
        let action = s.on_fault(0, Some(0));

        assert_eq!(
            s.line(&action, &what),
            "keel-admin: vm a: VMM a_vmm faulted (memory fault: data access at address 0x10, pc 0x201234, fsr 0x93); restarting it (1 of at most 3 per minute, restart = \"on-failure\")"
        );
    }
}
