//! The supervisor's decisions as pure functions: restart or not, how long to wait, whether
//! a dynamic VM fits the description's `[limits]`. No processes, no clocks of their own.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use keel_spec::{HostPath, Limits};

use crate::admin::model::{AdminError, CreateVm, RestartPolicy, VmState};

/// The first back-off before a restart by policy.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest back-off: doubling stops here.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run at least this long resets the back-off to [`BACKOFF_FIRST`].
pub(crate) const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// The window `max_restarts_per_minute` counts restarts in.
pub(crate) const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// How a VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The admin ended it (stop, shutdown, delete, restart, the daemon's own exit).
    ByAdmin,
    /// Exit status 0: the guest powered off.
    Clean,
    /// A non-zero exit status, a guest crash, a signal.
    Failure,
}

/// What follows an ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start it again after the back-off.
    Restart,
    /// Leave it ended, in this state.
    Stay(VmState),
}

/// The restart policy's decision for an ending, given how many restarts by policy
/// happened within the last [`RESTART_WINDOW`] and the VM's `max_restarts_per_minute`.
pub(crate) fn decide(
    policy: RestartPolicy,
    ending: Ending,
    recent_restarts: usize,
    max_per_minute: u32,
) -> Decision {
    let ended_state = match ending {
        Ending::ByAdmin | Ending::Clean => VmState::Stopped,
        Ending::Failure => VmState::Crashed,
    };
    let wants = match (policy, ending) {
        (_, Ending::ByAdmin) | (RestartPolicy::Never, _) => false,
        (RestartPolicy::OnFailure, Ending::Clean) => false,
        (RestartPolicy::OnFailure, Ending::Failure) | (RestartPolicy::Always, _) => true,
    };
    if !wants {
        return Decision::Stay(ended_state);
    }
    if recent_restarts >= max_per_minute as usize {
        // A crash loop: given up (also after clean exits with `always`).
        return Decision::Stay(VmState::Crashed);
    }
    Decision::Restart
}

/// The back-off before the next restart: [`BACKOFF_FIRST`] after a run of at least
/// [`BACKOFF_RESET_AFTER`] or when there was none before, else double the previous one, at
/// most [`BACKOFF_MAX`].
pub(crate) fn next_backoff(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(p) if ran_for < BACKOFF_RESET_AFTER => p.saturating_mul(2).min(BACKOFF_MAX),
        _ => BACKOFF_FIRST,
    }
}

/// Drop restart times older than [`RESTART_WINDOW`] before `now`; how many are left.
pub(crate) fn recent(times: &mut VecDeque<Instant>, now: Instant) -> usize {
    while times
        .front()
        .is_some_and(|&t| now.saturating_duration_since(t) >= RESTART_WINDOW)
    {
        times.pop_front();
    }
    times.len()
}

/// What the existing dynamic VMs use of the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Dynamic VMs that exist.
    pub vms: u32,
    /// Their guest RAM, bytes.
    pub memory: u64,
    /// Their vCPUs.
    pub vcpus: u32,
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// A host path of a request, resolved as the description resolves its own (relative to
/// `base`).
pub(crate) fn resolve(base: &Path, path: &str) -> String {
    let p = Path::new(path);
    if p.is_absolute() {
        path.to_string()
    } else {
        base.join(p).display().to_string()
    }
}

fn allowed(
    list: &[HostPath],
    base: &Path,
    path: &str,
    limit: &'static str,
) -> Result<(), AdminError> {
    let resolved = resolve(base, path);
    if list.iter().any(|p| p.as_str() == resolved) {
        return Ok(());
    }
    let names: Vec<&str> = list.iter().map(HostPath::as_str).collect();
    Err(AdminError::Limit {
        limit,
        detail: format!(
            "{resolved} is not listed (allowed: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ),
    })
}

/// Whether `req` fits `limits` next to `used` (files resolved against `base`, the system
/// file's directory). Refusals name the limit and what was needed against what is left.
pub(crate) fn check_create(
    limits: Option<&Limits>,
    used: Usage,
    base: &Path,
    req: &CreateVm,
) -> Result<(), AdminError> {
    let Some(l) = limits else {
        return Err(AdminError::Limit {
            limit: "limits",
            detail: "the description has no [limits] table: no dynamic VM may be created".into(),
        });
    };
    if used.vms >= l.max_vms {
        return Err(AdminError::Limit {
            limit: "limits.max_vms",
            detail: format!("needs 1 more VM, {} of {} exist", used.vms, l.max_vms),
        });
    }
    let memory = req.memory_mib.saturating_mul(1 << 20);
    let memory_left = l.memory.saturating_sub(used.memory);
    if memory > memory_left {
        return Err(AdminError::Limit {
            limit: "limits.memory",
            detail: format!("needs {}, {} left", mib(memory), mib(memory_left)),
        });
    }
    let vcpus_left = l.vcpus.saturating_sub(used.vcpus);
    if req.vcpus > vcpus_left {
        return Err(AdminError::Limit {
            limit: "limits.vcpus",
            detail: format!("needs {} vCPUs, {vcpus_left} left", req.vcpus),
        });
    }
    allowed(&l.kernels, base, &req.kernel, "limits.kernels")?;
    if let Some(i) = &req.initrd {
        allowed(&l.initrds, base, i, "limits.initrds")?;
    }
    for d in &req.disks {
        allowed(&l.disks, base, d, "limits.disks")?;
    }
    for (i, n) in req.networks.iter().enumerate() {
        if req.networks[..i].contains(n) {
            return Err(AdminError::Invalid(format!(
                "networks: {n:?} is named twice (one interface per network)"
            )));
        }
        if !l.networks.contains(n) {
            return Err(AdminError::Limit {
                limit: "limits.networks",
                detail: format!(
                    "network {n:?} is not listed (allowed: {})",
                    if l.networks.is_empty() {
                        "none".to_string()
                    } else {
                        l.networks.join(", ")
                    }
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_vms: 2,
            memory: 256 << 20,
            vcpus: 4,
            kernels: vec![HostPath::new("/k/vmlinux")],
            initrds: vec![],
            disks: vec![HostPath::new("/d/a.img")],
            networks: vec!["lan".into()],
        }
    }

    fn req(memory_mib: u64, vcpus: u32) -> CreateVm {
        CreateVm {
            name: "d".into(),
            kernel: "/k/vmlinux".into(),
            initrd: None,
            cmdline: String::new(),
            memory_mib,
            vcpus,
            disks: vec![],
            networks: vec![],
            restart: RestartPolicy::Never,
        }
    }

    fn limit_of(r: Result<(), AdminError>) -> (&'static str, String) {
        match r {
            Err(AdminError::Limit { limit, detail }) => (limit, detail),
            other => panic!("expected a limit refusal, got {other:?}"),
        }
    }

    #[test]
    fn never_is_not_restarted_after_a_failure() {
        let d = decide(RestartPolicy::Never, Ending::Failure, 0, 5);

        assert_eq!(d, Decision::Stay(VmState::Crashed));
    }

    #[test]
    fn on_failure_restarts_a_failure_but_not_a_power_off() {
        assert_eq!(
            decide(RestartPolicy::OnFailure, Ending::Failure, 0, 5),
            Decision::Restart
        );
        assert_eq!(
            decide(RestartPolicy::OnFailure, Ending::Clean, 0, 5),
            Decision::Stay(VmState::Stopped)
        );
    }

    #[test]
    fn always_restarts_a_power_off() {
        assert_eq!(
            decide(RestartPolicy::Always, Ending::Clean, 0, 5),
            Decision::Restart
        );
    }

    #[test]
    fn no_policy_restarts_what_the_admin_stopped() {
        for p in [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ] {
            assert_eq!(
                decide(p, Ending::ByAdmin, 0, 5),
                Decision::Stay(VmState::Stopped),
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_crash_loop_beyond_max_restarts_per_minute_is_given_up() {
        let d = decide(RestartPolicy::Always, Ending::Failure, 5, 5);

        assert_eq!(d, Decision::Stay(VmState::Crashed));
    }

    #[test]
    fn backoff_starts_at_100_ms_and_doubles_to_10_s() {
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..9 {
            let next = next_backoff(d, Duration::from_secs(1));
            seen.push(next.as_millis());
            d = Some(next);
        }

        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
    }

    #[test]
    fn a_run_of_60_s_resets_the_backoff() {
        let d = next_backoff(Some(Duration::from_secs(10)), Duration::from_secs(60));

        assert_eq!(d, BACKOFF_FIRST);
    }

    #[test]
    fn restarts_older_than_a_minute_are_forgotten() {
        let now = Instant::now() + Duration::from_secs(120);
        let mut times: VecDeque<Instant> = [
            now - Duration::from_secs(90),
            now - Duration::from_secs(61),
            now - Duration::from_secs(59),
            now,
        ]
        .into();

        assert_eq!(recent(&mut times, now), 2);
    }

    #[test]
    fn without_limits_no_dynamic_vm_is_created() {
        let (limit, _) = limit_of(check_create(
            None,
            Usage::default(),
            Path::new("/"),
            &req(64, 1),
        ));

        assert_eq!(limit, "limits");
    }

    #[test]
    fn the_vm_count_limit_names_max_vms() {
        let used = Usage {
            vms: 2,
            memory: 0,
            vcpus: 0,
        };

        let (limit, detail) = limit_of(check_create(
            Some(&limits()),
            used,
            Path::new("/"),
            &req(64, 1),
        ));

        assert_eq!(limit, "limits.max_vms");
        assert_eq!(detail, "needs 1 more VM, 2 of 2 exist");
    }

    #[test]
    fn memory_beyond_what_is_left_is_refused_with_needed_and_left() {
        let used = Usage {
            vms: 1,
            memory: 200 << 20,
            vcpus: 1,
        };

        let (limit, detail) = limit_of(check_create(
            Some(&limits()),
            used,
            Path::new("/"),
            &req(64, 1),
        ));

        assert_eq!(limit, "limits.memory");
        assert_eq!(detail, "needs 64 MiB, 56 MiB left");
    }

    #[test]
    fn vcpus_beyond_what_is_left_are_refused() {
        let (limit, detail) = limit_of(check_create(
            Some(&limits()),
            Usage::default(),
            Path::new("/"),
            &req(64, 5),
        ));

        assert_eq!(limit, "limits.vcpus");
        assert_eq!(detail, "needs 5 vCPUs, 4 left");
    }

    #[test]
    fn an_unlisted_kernel_is_refused_naming_it() {
        let mut r = req(64, 1);
        r.kernel = "/k/other".into();

        let (limit, detail) = limit_of(check_create(
            Some(&limits()),
            Usage::default(),
            Path::new("/"),
            &r,
        ));

        assert_eq!(limit, "limits.kernels");
        assert_eq!(detail, "/k/other is not listed (allowed: /k/vmlinux)");
    }

    #[test]
    fn a_relative_kernel_is_resolved_against_the_system_file() {
        let mut r = req(64, 1);
        r.kernel = "vmlinux".into();

        let result = check_create(Some(&limits()), Usage::default(), Path::new("/k"), &r);

        assert_eq!(result, Ok(()));
    }

    #[test]
    fn an_unlisted_disk_is_refused() {
        let mut r = req(64, 1);
        r.disks = vec!["/d/b.img".into()];

        let (limit, _) = limit_of(check_create(
            Some(&limits()),
            Usage::default(),
            Path::new("/"),
            &r,
        ));

        assert_eq!(limit, "limits.disks");
    }

    #[test]
    fn a_network_not_in_limits_networks_is_refused_naming_the_limit_and_the_list() {
        let mut r = req(64, 1);
        r.networks = vec!["dmz".into()];

        let (limit, detail) = limit_of(check_create(
            Some(&limits()),
            Usage::default(),
            Path::new("/"),
            &r,
        ));

        assert_eq!(limit, "limits.networks");
        assert_eq!(detail, "network \"dmz\" is not listed (allowed: lan)");
    }

    #[test]
    fn a_network_named_twice_is_refused() {
        let mut r = req(64, 1);
        r.networks = vec!["lan".into(), "lan".into()];

        let e = check_create(Some(&limits()), Usage::default(), Path::new("/"), &r);

        assert!(
            matches!(&e, Err(AdminError::Invalid(m)) if m.contains("\"lan\" is named twice")),
            "{e:?}"
        );
    }

    #[test]
    fn a_request_within_every_limit_is_accepted() {
        let mut r = req(128, 2);
        r.disks = vec!["/d/a.img".into()];
        r.networks = vec!["lan".into()];

        assert_eq!(
            check_create(Some(&limits()), Usage::default(), Path::new("/"), &r),
            Ok(())
        );
    }
}
