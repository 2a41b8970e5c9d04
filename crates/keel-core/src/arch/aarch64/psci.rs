//! PSCI 1.1 over SMCCC 1.1, for a VMM that receives its guest's firmware calls itself
//! (seL4 delivers every `hvc`/`smc`; KVM implements PSCI in the kernel and needs none of this).
//!
//! [`Psci`] keeps the power state of each vCPU of one VM and answers the calls of the
//! PSCI 1.1 specification (Arm DEN 0022) a Linux guest makes. Whatever must happen outside
//! the table — starting or stopping a vCPU, stopping the VM — goes through [`PsciHost`]; the
//! result for the calling vCPU comes back as a [`PsciOutcome`].
//!
//! Implemented: `PSCI_VERSION`, `CPU_SUSPEND` (as standby: the caller waits for an
//! interrupt and resumes with success, which the specification allows for any power state),
//! `CPU_OFF`, `CPU_ON`, `AFFINITY_INFO`, `MIGRATE_INFO_TYPE` (2: no migration needed),
//! `SYSTEM_OFF`, `SYSTEM_RESET`, `PSCI_FEATURES`, and SMCCC `VERSION` / `ARCH_FEATURES`.
//! Every other function ID returns `NOT_SUPPORTED` (-1).

use alloc::vec::Vec;

use super::layout::{mpidr, vcpu_of_mpidr};
use crate::hv::{ExitAnswer, SystemEvent, VcpuId};

/// SMCCC and PSCI function IDs (SMC32 `0x84..`, SMC64 `0xc4..`).
pub mod fid {
    /// `SMCCC_VERSION`.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// `SMCCC_ARCH_FEATURES`.
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// `SMCCC_ARCH_WORKAROUND_1` (Spectre v2).
    pub const SMCCC_ARCH_WORKAROUND_1: u32 = 0x8000_8000;
    /// `PSCI_VERSION`.
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    /// `CPU_SUSPEND` (SMC32).
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    /// `CPU_SUSPEND` (SMC64).
    pub const CPU_SUSPEND_64: u32 = 0xc400_0001;
    /// `CPU_OFF`.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// `CPU_ON` (SMC32).
    pub const CPU_ON_32: u32 = 0x8400_0003;
    /// `CPU_ON` (SMC64).
    pub const CPU_ON_64: u32 = 0xc400_0003;
    /// `AFFINITY_INFO` (SMC32).
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    /// `AFFINITY_INFO` (SMC64).
    pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
    /// `MIGRATE` (SMC64).
    pub const MIGRATE_64: u32 = 0xc400_0005;
    /// `MIGRATE_INFO_TYPE`.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// `SYSTEM_OFF`.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// `SYSTEM_RESET`.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// `PSCI_FEATURES`.
    pub const PSCI_FEATURES: u32 = 0x8400_000a;
    /// `SYSTEM_SUSPEND` (SMC64).
    pub const SYSTEM_SUSPEND_64: u32 = 0xc400_000e;
    /// `SYSTEM_RESET2` (SMC64).
    pub const SYSTEM_RESET2_64: u32 = 0xc400_0012;
}

/// PSCI return codes.
pub mod ret {
    /// Success.
    pub const SUCCESS: i64 = 0;
    /// The function is not implemented.
    pub const NOT_SUPPORTED: i64 = -1;
    /// A parameter is invalid (e.g. no such CPU).
    pub const INVALID_PARAMETERS: i64 = -2;
    /// The call is not permitted.
    pub const DENIED: i64 = -3;
    /// `CPU_ON` of a CPU that is on.
    pub const ALREADY_ON: i64 = -4;
    /// `CPU_ON` of a CPU whose start is still pending.
    pub const ON_PENDING: i64 = -5;
    /// The implementation failed.
    pub const INTERNAL_FAILURE: i64 = -6;
    /// `CPU_ON` entry point is not a valid address.
    pub const INVALID_ADDRESS: i64 = -9;
}

/// The PSCI version implemented: 1.1.
pub const PSCI_VERSION_1_1: u64 = 1 << 16 | 1;
/// The SMCCC version implemented: 1.1.
pub const SMCCC_VERSION_1_1: u64 = 1 << 16 | 1;
/// `MIGRATE_INFO_TYPE` answer: a Trusted OS is absent or needs no migration.
pub const MIGRATE_INFO_NOT_REQUIRED: u64 = 2;

/// `AFFINITY_INFO` answers.
const AFFINITY_ON: u64 = 0;
const AFFINITY_OFF: u64 = 1;
const AFFINITY_ON_PENDING: u64 = 2;

/// Power state of one vCPU, as PSCI sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Not running; `CPU_ON` may start it.
    Off,
    /// `CPU_ON` accepted, the vCPU has not run yet.
    OnPending,
    /// Running.
    On,
}

/// Why the host could not start a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The entry point is not in guest RAM (PSCI `INVALID_ADDRESS`).
    #[error("CPU_ON entry point {0:#x} is not in guest RAM")]
    InvalidAddress(u64),
    /// The hypervisor refused (PSCI `INTERNAL_FAILURE`).
    #[error("the hypervisor could not start the vCPU")]
    Internal,
}

/// Whether a started vCPU runs already or will later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// The vCPU runs (seL4: registers written, `microkit_vcpu_restart` called).
    Now,
    /// The vCPU will run later; the VMM calls [`Psci::mark_on`] when it does.
    Pending,
}

/// What PSCI asks of the VMM.
pub trait PsciHost {
    /// Start `target` at `entry` (EL1h, MMU off, DAIF masked) with `x0` = `context_id`.
    fn start_vcpu(
        &mut self,
        target: VcpuId,
        entry: u64,
        context_id: u64,
    ) -> Result<Started, StartError>;

    /// Stop `vcpu` (it called `CPU_OFF`): do not resume it until a later `start_vcpu`.
    fn stop_vcpu(&mut self, vcpu: VcpuId);

    /// The guest called `SYSTEM_OFF`; the outcome also says so.
    fn system_off(&mut self);

    /// The guest called `SYSTEM_RESET`; the outcome also says so.
    fn system_reset(&mut self);
}

/// What happens to the calling vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciOutcome {
    /// Resume it with these x0..x3.
    Return([u64; 4]),
    /// Resume it with these x0..x3 once an interrupt is pending for it (`CPU_SUSPEND`).
    Suspend([u64; 4]),
    /// It is off: do not resume it.
    Off,
    /// The whole VM stops.
    System(SystemEvent),
}

impl PsciOutcome {
    /// The answer for the caller's [`VcpuExit::Hypercall`](crate::hv::VcpuExit::Hypercall),
    /// if it resumes.
    pub fn answer(&self) -> Option<ExitAnswer> {
        match self {
            PsciOutcome::Return(x) | PsciOutcome::Suspend(x) => Some(ExitAnswer::Hypercall(*x)),
            PsciOutcome::Off | PsciOutcome::System(_) => None,
        }
    }
}

fn value(v: u64) -> PsciOutcome {
    PsciOutcome::Return([v, 0, 0, 0])
}

fn status(code: i64) -> PsciOutcome {
    value(code as u64)
}

/// The PSCI state of one VM: each vCPU's power state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Psci {
    states: Vec<PowerState>,
}

impl Psci {
    /// `vcpus` vCPUs: vCPU 0 on (the boot CPU), the others off.
    pub fn new(vcpus: u32) -> Psci {
        let mut states = alloc::vec![PowerState::Off; vcpus as usize];
        if let Some(boot) = states.first_mut() {
            *boot = PowerState::On;
        }
        Psci { states }
    }

    /// The power state of `vcpu`, if it exists.
    pub fn state(&self, vcpu: VcpuId) -> Option<PowerState> {
        self.states.get(vcpu as usize).copied()
    }

    /// Record that a vCPU whose start was [`Started::Pending`] now runs.
    pub fn mark_on(&mut self, vcpu: VcpuId) {
        if let Some(s) = self.states.get_mut(vcpu as usize) {
            *s = PowerState::On;
        }
    }

    /// Handle the firmware call `call` (x0..x3) made by `caller`.
    pub fn handle(
        &mut self,
        call: [u64; 4],
        caller: VcpuId,
        host: &mut impl PsciHost,
    ) -> PsciOutcome {
        let Some(caller_state) = self.states.get_mut(caller as usize) else {
            return status(ret::INTERNAL_FAILURE);
        };
        // A vCPU that makes a call runs, whatever the host said when it started it.
        *caller_state = PowerState::On;
        // SMCCC: the function ID is w0; SMC32 calls take 32-bit arguments.
        let id = call[0] as u32;
        let smc32 = id & (1 << 30) == 0;
        let arg = |i: usize| {
            if smc32 {
                call[i] & 0xffff_ffff
            } else {
                call[i]
            }
        };
        match id {
            fid::SMCCC_VERSION => value(SMCCC_VERSION_1_1),
            fid::SMCCC_ARCH_FEATURES => match arg(1) as u32 {
                fid::SMCCC_VERSION | fid::SMCCC_ARCH_FEATURES => status(ret::SUCCESS),
                _ => status(ret::NOT_SUPPORTED),
            },
            fid::PSCI_VERSION => value(PSCI_VERSION_1_1),
            fid::PSCI_FEATURES => status(features(arg(1))),
            fid::CPU_SUSPEND_32 | fid::CPU_SUSPEND_64 => PsciOutcome::Suspend([0; 4]),
            fid::CPU_OFF => {
                if let Some(s) = self.states.get_mut(caller as usize) {
                    *s = PowerState::Off;
                }
                host.stop_vcpu(caller);
                PsciOutcome::Off
            }
            fid::CPU_ON_32 | fid::CPU_ON_64 => self.cpu_on(arg(1), arg(2), arg(3), host),
            fid::AFFINITY_INFO_32 | fid::AFFINITY_INFO_64 => self.affinity_info(arg(1), arg(2)),
            fid::MIGRATE_INFO_TYPE => value(MIGRATE_INFO_NOT_REQUIRED),
            fid::SYSTEM_OFF => {
                host.system_off();
                PsciOutcome::System(SystemEvent::Shutdown)
            }
            fid::SYSTEM_RESET => {
                host.system_reset();
                PsciOutcome::System(SystemEvent::Reset)
            }
            _ => status(ret::NOT_SUPPORTED),
        }
    }

    fn cpu_on(
        &mut self,
        target_mpidr: u64,
        entry: u64,
        context_id: u64,
        host: &mut impl PsciHost,
    ) -> PsciOutcome {
        let Some(target) = vcpu_of_mpidr(target_mpidr) else {
            return status(ret::INVALID_PARAMETERS);
        };
        let Some(state) = self.states.get_mut(target as usize) else {
            return status(ret::INVALID_PARAMETERS);
        };
        match *state {
            PowerState::On => status(ret::ALREADY_ON),
            PowerState::OnPending => status(ret::ON_PENDING),
            PowerState::Off => match host.start_vcpu(target, entry, context_id) {
                Ok(Started::Now) => {
                    *state = PowerState::On;
                    status(ret::SUCCESS)
                }
                Ok(Started::Pending) => {
                    *state = PowerState::OnPending;
                    status(ret::SUCCESS)
                }
                Err(StartError::InvalidAddress(_)) => status(ret::INVALID_ADDRESS),
                Err(StartError::Internal) => status(ret::INTERNAL_FAILURE),
            },
        }
    }

    fn affinity_info(&self, target_affinity: u64, lowest_level: u64) -> PsciOutcome {
        // Level n ignores the affinity fields below it; Aff3 is always zero here.
        let mask: u64 = match lowest_level {
            0 => 0xff_00ff_ffff,
            1 => 0xff_00ff_ff00,
            2 => 0xff_00ff_0000,
            3 => 0xff_0000_0000,
            _ => return status(ret::INVALID_PARAMETERS),
        };
        if target_affinity & !0xff_00ff_ffff != 0 {
            return status(ret::INVALID_PARAMETERS);
        }
        let mut matched = false;
        let mut pending = false;
        for (i, s) in self.states.iter().enumerate() {
            if mpidr(i as u32) & mask != target_affinity & mask {
                continue;
            }
            matched = true;
            match s {
                PowerState::On => return value(AFFINITY_ON),
                PowerState::OnPending => pending = true,
                PowerState::Off => {}
            }
        }
        match (matched, pending) {
            (false, _) => status(ret::INVALID_PARAMETERS),
            (true, true) => value(AFFINITY_ON_PENDING),
            (true, false) => value(AFFINITY_OFF),
        }
    }
}

/// `PSCI_FEATURES(fid)`: 0 (no feature flags) for implemented functions, `NOT_SUPPORTED`
/// otherwise. `CPU_SUSPEND`'s flags are 0: original power-state format, platform-coordinated.
fn features(queried: u64) -> i64 {
    match u32::try_from(queried) {
        Ok(
            fid::PSCI_VERSION
            | fid::CPU_SUSPEND_32
            | fid::CPU_SUSPEND_64
            | fid::CPU_OFF
            | fid::CPU_ON_32
            | fid::CPU_ON_64
            | fid::AFFINITY_INFO_32
            | fid::AFFINITY_INFO_64
            | fid::MIGRATE_INFO_TYPE
            | fid::SYSTEM_OFF
            | fid::SYSTEM_RESET
            | fid::PSCI_FEATURES
            | fid::SMCCC_VERSION,
        ) => ret::SUCCESS,
        _ => ret::NOT_SUPPORTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[derive(Default)]
    struct Host {
        started: Vec<(VcpuId, u64, u64)>,
        stopped: Vec<VcpuId>,
        off: bool,
        reset: bool,
        answer: Option<Result<Started, StartError>>,
    }

    impl PsciHost for Host {
        fn start_vcpu(
            &mut self,
            target: VcpuId,
            entry: u64,
            context_id: u64,
        ) -> Result<Started, StartError> {
            self.started.push((target, entry, context_id));
            self.answer.unwrap_or(Ok(Started::Now))
        }
        fn stop_vcpu(&mut self, vcpu: VcpuId) {
            self.stopped.push(vcpu);
        }
        fn system_off(&mut self) {
            self.off = true;
        }
        fn system_reset(&mut self) {
            self.reset = true;
        }
    }

    fn call(psci: &mut Psci, host: &mut Host, caller: VcpuId, x: [u64; 4]) -> PsciOutcome {
        psci.handle(x, caller, host)
    }

    fn x0(o: PsciOutcome) -> i64 {
        match o {
            PsciOutcome::Return(x) => x[0] as i64,
            other => panic!("no return value: {other:?}"),
        }
    }

    fn on(target: u64, entry: u64, ctx: u64) -> [u64; 4] {
        [fid::CPU_ON_64 as u64, target, entry, ctx]
    }

    #[test]
    fn psci_version_is_1_1() {
        let mut p = Psci::new(1);
        let o = call(&mut p, &mut Host::default(), 0, [0x8400_0000, 0, 0, 0]);
        assert_eq!(o, PsciOutcome::Return([0x1_0001, 0, 0, 0]));
        assert_eq!(o.answer(), Some(ExitAnswer::Hypercall([0x1_0001, 0, 0, 0])));
    }

    #[test]
    fn smccc_version_is_1_1_and_discoverable_through_psci_features() {
        let mut p = Psci::new(1);
        let mut h = Host::default();
        let f = call(
            &mut p,
            &mut h,
            0,
            [fid::PSCI_FEATURES as u64, 0x8000_0000, 0, 0],
        );
        let v = call(&mut p, &mut h, 0, [0x8000_0000, 0, 0, 0]);
        assert_eq!(x0(f), 0);
        assert_eq!(x0(v), 0x1_0001);
    }

    #[test]
    fn arch_features_of_workaround_1_is_not_supported() {
        let mut p = Psci::new(1);
        let o = call(
            &mut p,
            &mut Host::default(),
            0,
            [
                fid::SMCCC_ARCH_FEATURES as u64,
                fid::SMCCC_ARCH_WORKAROUND_1 as u64,
                0,
                0,
            ],
        );
        assert_eq!(x0(o), ret::NOT_SUPPORTED);
    }

    #[test]
    fn psci_features_reports_cpu_on_and_refuses_system_suspend() {
        let mut p = Psci::new(1);
        let mut h = Host::default();
        let q = |f: u32| [fid::PSCI_FEATURES as u64, f as u64, 0, 0];
        assert_eq!(x0(call(&mut p, &mut h, 0, q(fid::CPU_ON_64))), 0);
        assert_eq!(
            x0(call(&mut p, &mut h, 0, q(fid::SYSTEM_SUSPEND_64))),
            ret::NOT_SUPPORTED
        );
    }

    #[test]
    fn cpu_on_starts_the_target_with_entry_and_context() {
        let mut p = Psci::new(2);
        let mut h = Host::default();

        let o = call(&mut p, &mut h, 0, on(1, 0x4008_1000, 0xc0ffee));

        assert_eq!(x0(o), ret::SUCCESS);
        assert_eq!(h.started, [(1, 0x4008_1000, 0xc0ffee)]);
        assert_eq!(p.state(1), Some(PowerState::On));
    }

    #[test]
    fn cpu_on_uses_mpidr_affinity_not_the_index() {
        let mut p = Psci::new(17);
        let mut h = Host::default();

        let o = call(&mut p, &mut h, 0, on(0x100, 0x4000_0000, 0));

        assert_eq!(x0(o), ret::SUCCESS);
        assert_eq!(h.started[0].0, 16);
    }

    #[test]
    fn cpu_on_of_missing_cpu_is_invalid_parameters() {
        let mut p = Psci::new(2);
        let mut h = Host::default();

        assert_eq!(
            x0(call(&mut p, &mut h, 0, on(2, 0, 0))),
            ret::INVALID_PARAMETERS
        );
        assert_eq!(
            x0(call(&mut p, &mut h, 0, on(0x10, 0, 0))),
            ret::INVALID_PARAMETERS
        );
        assert!(h.started.is_empty());
    }

    #[test]
    fn cpu_on_of_running_cpu_is_already_on() {
        let mut p = Psci::new(2);
        let mut h = Host::default();

        assert_eq!(x0(call(&mut p, &mut h, 1, on(0, 0, 0))), ret::ALREADY_ON);
    }

    #[test]
    fn cpu_on_while_start_pending_is_on_pending() {
        let mut p = Psci::new(2);
        let mut h = Host {
            answer: Some(Ok(Started::Pending)),
            ..Host::default()
        };
        call(&mut p, &mut h, 0, on(1, 0x4000_0000, 0));

        let o = call(&mut p, &mut h, 0, on(1, 0x4000_0000, 0));

        assert_eq!(x0(o), ret::ON_PENDING);
        assert_eq!(h.started.len(), 1);
    }

    #[test]
    fn pending_vcpu_becomes_on_when_it_calls_in() {
        let mut p = Psci::new(2);
        let mut h = Host {
            answer: Some(Ok(Started::Pending)),
            ..Host::default()
        };
        call(&mut p, &mut h, 0, on(1, 0x4000_0000, 0));

        call(&mut p, &mut h, 1, [fid::PSCI_VERSION as u64, 0, 0, 0]);

        assert_eq!(p.state(1), Some(PowerState::On));
    }

    #[test]
    fn cpu_on_with_bad_entry_is_invalid_address_and_target_stays_off() {
        let mut p = Psci::new(2);
        let mut h = Host {
            answer: Some(Err(StartError::InvalidAddress(0x10))),
            ..Host::default()
        };

        let o = call(&mut p, &mut h, 0, on(1, 0x10, 0));

        assert_eq!(x0(o), ret::INVALID_ADDRESS);
        assert_eq!(p.state(1), Some(PowerState::Off));
    }

    #[test]
    fn smc32_cpu_on_ignores_upper_argument_bits() {
        let mut p = Psci::new(2);
        let mut h = Host::default();

        let o = call(
            &mut p,
            &mut h,
            0,
            [
                fid::CPU_ON_32 as u64,
                0xffff_ffff_0000_0001,
                0x1_4000_0000,
                0,
            ],
        );

        assert_eq!(x0(o), ret::SUCCESS);
        assert_eq!(h.started, [(1, 0x4000_0000, 0)]);
    }

    #[test]
    fn cpu_off_stops_the_caller_and_affinity_info_reports_off() {
        let mut p = Psci::new(2);
        let mut h = Host::default();
        call(&mut p, &mut h, 0, on(1, 0x4000_0000, 0));

        let o = call(&mut p, &mut h, 1, [fid::CPU_OFF as u64, 0, 0, 0]);
        let info = call(&mut p, &mut h, 0, [fid::AFFINITY_INFO_64 as u64, 1, 0, 0]);

        assert_eq!(o, PsciOutcome::Off);
        assert_eq!(o.answer(), None);
        assert_eq!(h.stopped, [1]);
        assert_eq!(x0(info), 1);
    }

    #[test]
    fn affinity_info_reports_on_and_pending() {
        let mut p = Psci::new(3);
        let mut h = Host {
            answer: Some(Ok(Started::Pending)),
            ..Host::default()
        };
        call(&mut p, &mut h, 0, on(2, 0x4000_0000, 0));
        let info = |p: &mut Psci, h: &mut Host, t| {
            x0(call(p, h, 0, [fid::AFFINITY_INFO_64 as u64, t, 0, 0]))
        };

        assert_eq!(info(&mut p, &mut h, 0), 0);
        assert_eq!(info(&mut p, &mut h, 2), 2);
    }

    #[test]
    fn affinity_info_at_level_1_covers_the_cluster() {
        let mut p = Psci::new(2);
        let mut h = Host::default();

        // vCPU 0 is on: any CPU of cluster 0 being on makes the cluster on.
        let o = call(&mut p, &mut h, 1, [fid::AFFINITY_INFO_64 as u64, 0x5, 1, 0]);

        assert_eq!(x0(o), 0);
    }

    #[test]
    fn affinity_info_of_unknown_cpu_or_level_is_invalid() {
        let mut p = Psci::new(2);
        let mut h = Host::default();
        let o1 = call(&mut p, &mut h, 0, [fid::AFFINITY_INFO_64 as u64, 7, 0, 0]);
        let o2 = call(&mut p, &mut h, 0, [fid::AFFINITY_INFO_64 as u64, 0, 4, 0]);
        assert_eq!(x0(o1), ret::INVALID_PARAMETERS);
        assert_eq!(x0(o2), ret::INVALID_PARAMETERS);
    }

    #[test]
    fn cpu_suspend_waits_then_returns_success() {
        let mut p = Psci::new(1);
        let o = call(
            &mut p,
            &mut Host::default(),
            0,
            [fid::CPU_SUSPEND_64 as u64, 0x1_0000, 0x4000_0000, 0],
        );
        assert_eq!(o, PsciOutcome::Suspend([0; 4]));
    }

    #[test]
    fn migrate_info_type_says_not_required() {
        let mut p = Psci::new(1);
        let o = call(
            &mut p,
            &mut Host::default(),
            0,
            [fid::MIGRATE_INFO_TYPE as u64, 0, 0, 0],
        );
        assert_eq!(x0(o), 2);
    }

    #[test]
    fn system_off_and_reset_stop_the_vm() {
        let mut p = Psci::new(1);
        let mut h = Host::default();

        let off = call(&mut p, &mut h, 0, [fid::SYSTEM_OFF as u64, 0, 0, 0]);
        let reset = call(&mut p, &mut h, 0, [fid::SYSTEM_RESET as u64, 0, 0, 0]);

        assert_eq!(off, PsciOutcome::System(SystemEvent::Shutdown));
        assert_eq!(reset, PsciOutcome::System(SystemEvent::Reset));
        assert!(h.off && h.reset);
    }

    #[test]
    fn unknown_and_unimplemented_functions_are_not_supported() {
        let mut p = Psci::new(1);
        let mut h = Host::default();
        for f in [fid::MIGRATE_64, fid::SYSTEM_RESET2_64, 0xc200_0000, 0] {
            let o = call(&mut p, &mut h, 0, [f as u64, 0, 0, 0]);
            assert_eq!(o, PsciOutcome::Return([u64::MAX, 0, 0, 0]), "fid {f:#x}");
        }
    }

    #[test]
    fn call_from_unknown_vcpu_is_internal_failure() {
        let mut p = Psci::new(1);
        let o = call(
            &mut p,
            &mut Host::default(),
            5,
            [fid::PSCI_VERSION as u64, 0, 0, 0],
        );
        assert_eq!(x0(o), ret::INTERNAL_FAILURE);
    }
}
