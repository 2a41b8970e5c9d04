//! End-to-end tests of `placement` on Linux (docs/config.md, "placement"): the built `keel`
//! runs the x86_64 test guest under /dev/kvm while the test reads the VMM's threads
//! (`/proc/<pid>/task/<tid>`: their names, CPUs and nice values) and its cgroup.
//!
//! Without /dev/kvm, or (budget tests) without root and a cgroup cpu controller, a test
//! prints `SKIPPED: …` and records the skip in `$KEEL_SKIP_LOG`. Refusals need no KVM and
//! always run. The test guest is built if missing.

use std::time::{Duration, Instant};

use keel_kvm::placement::{CgroupScope, cgroup_usage, host_cpu_controller, thread_affinity};

/// Longest a run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a test waits for the VMM's threads or cgroup to appear.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(30);

#[path = "common/guest.rs"]
mod guest;
#[path = "common/run.rs"]
mod run;
#[path = "../../keel-kvm/tests/common/skip.rs"]
mod skip;

use run::{Run, Scratch, run_keel};

fn kvm_or_skip(test: &str) -> bool {
    skip::kvm_or_skip("placement", test)
}

/// Whether this process may use CPUs 0 and 1; if not, skip `test`.
fn two_cpus_or_skip(test: &str) -> bool {
    let cpus = thread_affinity(0).unwrap_or_default();
    let ok = cpus.contains(&0) && cpus.contains(&1);
    if !ok {
        skip::skip(
            "placement",
            test,
            "host CPUs 0 and 1 are not both available",
        );
    }
    ok
}

/// Whether budgets can be applied here (root, a cgroup cpu controller); if not, skip.
fn cgroups_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip::skip("placement", test, "not root: cannot create cgroups");
        return false;
    }
    if host_cpu_controller().is_none() {
        skip::skip("placement", test, "no cgroup cpu controller mounted");
        return false;
    }
    true
}

/// A system `name` with one VM `t` running the test guest with `cmdline`, plus `extra`
/// (its `placement` line).
fn system(name: &str, vcpus: u32, cmdline: &str, extra: &str) -> String {
    format!(
        "[system]\nname = \"{name}\"\n[[vm]]\nname = \"t\"\narch = \"x86_64\"\nkernel = \"{}\"\nmemory = \"64M\"\nvcpus = {vcpus}\ncmdline = \"{cmdline}\"\nserial = \"stdio\"\n{extra}\n",
        guest::testguest().display()
    )
}

/// The threads of process `pid`: (name, tid).
fn threads(pid: u32) -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((comm.trim().to_string(), tid))
        })
        .collect()
}

/// Wait until process `pid` has a thread named `name`; its tid.
fn wait_thread(pid: u32, name: &str) -> u32 {
    let start = Instant::now();
    loop {
        if let Some((_, tid)) = threads(pid).into_iter().find(|(n, _)| n == name) {
            return tid;
        }
        assert!(
            start.elapsed() < APPEAR_TIMEOUT,
            "no thread {name} in process {pid}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `Cpus_allowed_list` of thread `tid` of `pid` (e.g. `0-1`).
fn cpus_allowed(pid: u32, tid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

/// The nice value of thread `tid` of `pid` (field 19 of its `stat`).
fn nice(pid: u32, tid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    // Fields after the name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(19 - 3).unwrap().parse().unwrap()
}

/// Run `keel run` on the [`system`] `name` (in a scratch directory of that name), calling
/// `during` with its pid while it runs.
fn run_placed(
    name: &str,
    vcpus: u32,
    cmdline: &str,
    placement: &str,
    during: impl FnOnce(u32),
) -> Run {
    let s = Scratch::new(name);
    let sys = s.write("system.toml", &system(name, vcpus, cmdline, placement));
    run_keel(
        "placement",
        &["run", sys.to_str().unwrap()],
        RUN_TIMEOUT,
        during,
    )
}

/// The `Cpus_allowed_list` of the threads of vCPUs 0 and 1 of `pid`, once each has pinned
/// itself. A vCPU thread exists (and has its name) a moment before it restricts itself,
/// before it runs guest code; so each is read until it shows `expected` or
/// [`APPEAR_TIMEOUT`] passes, and the last value read is returned for the assertion.
fn vcpus_allowed(pid: u32, expected: [&str; 2]) -> Vec<String> {
    ["keel-vcpu0", "keel-vcpu1"]
        .into_iter()
        .zip(expected)
        .map(|(name, want)| {
            let tid = wait_thread(pid, name);
            let start = Instant::now();
            loop {
                let seen = cpus_allowed(pid, tid);
                if seen == want || start.elapsed() >= APPEAR_TIMEOUT {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .collect()
}

#[test]
fn each_vcpu_thread_runs_only_on_its_declared_cpu() {
    let test = "each_vcpu_thread_runs_only_on_its_declared_cpu";
    if !kvm_or_skip(test) || !two_cpus_or_skip(test) {
        return;
    }
    let mut seen = Vec::new();

    let run = run_placed(
        "pinned",
        2,
        "keeltest=pause:1500",
        "placement = { pcpus = [0, 1] }",
        |pid| seen = vcpus_allowed(pid, ["0", "1"]),
    );

    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(seen, ["0", "1"]);
}

#[test]
fn vcpu_with_a_cpu_set_may_run_on_each_cpu_of_it() {
    let test = "vcpu_with_a_cpu_set_may_run_on_each_cpu_of_it";
    if !kvm_or_skip(test) || !two_cpus_or_skip(test) {
        return;
    }
    let mut seen = Vec::new();

    let run = run_placed(
        "hybrid",
        2,
        "keeltest=pause:1500",
        "placement = { pcpus = [0, [0, 1]] }",
        |pid| seen = vcpus_allowed(pid, ["0", "0-1"]),
    );

    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(seen, ["0", "0-1"]);
}

#[test]
fn every_thread_of_the_vmm_stays_on_the_vms_cpus() {
    let test = "every_thread_of_the_vmm_stays_on_the_vms_cpus";
    if !kvm_or_skip(test) || !two_cpus_or_skip(test) {
        return;
    }
    let mut seen = Vec::new();

    // Two vCPUs sharing CPU 1: the union is {1}, so the main, supervisor and stdin
    // threads must leave CPU 0 too.
    let run = run_placed(
        "shared",
        2,
        "keeltest=pause:1500",
        "placement = { pcpus = [1, 1] }",
        |pid| {
            wait_thread(pid, "keel-vcpu1");
            seen = threads(pid)
                .into_iter()
                .map(|(name, tid)| (name, cpus_allowed(pid, tid)))
                .collect();
        },
    );

    assert_eq!(run.status, 0, "{run:?}");
    assert!(seen.iter().any(|(n, _)| n == "keel-vm-t"), "{seen:?}");
    assert!(seen.iter().all(|(_, cpus)| cpus == "1"), "{seen:?}");
}

#[test]
fn priority_below_100_runs_the_vm_threads_at_a_positive_nice() {
    let test = "priority_below_100_runs_the_vm_threads_at_a_positive_nice";
    if !kvm_or_skip(test) {
        return;
    }
    let mut seen = Vec::new();

    let run = run_placed(
        "nice",
        1,
        "keeltest=pause:1500",
        "placement = { priority = 50 }",
        |pid| {
            let vcpu = wait_thread(pid, "keel-vcpu0");
            let supervisor = wait_thread(pid, "keel-vm-t");
            seen = vec![nice(pid, vcpu), nice(pid, supervisor)];
        },
    );

    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(seen, [10, 10]);
}

/// Scheduling policy and real-time priority of thread `tid` of `pid` (fields 41 and 40 of
/// its `stat`).
fn policy(pid: u32, tid: u32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    (
        fields[41 - 3].parse().unwrap(),
        fields[40 - 3].parse().unwrap(),
    )
}

#[test]
fn priority_above_100_runs_the_vm_threads_as_sched_rr() {
    let test = "priority_above_100_runs_the_vm_threads_as_sched_rr";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip::skip("placement", test, "not root: SCHED_RR is not permitted");
        return;
    }
    if !kvm_or_skip(test) || !two_cpus_or_skip(test) {
        return;
    }
    let mut seen = None;

    // Pinned to CPU 1 and short: a spinning real-time thread must not hog the host.
    let run = run_placed(
        "rr",
        1,
        "keeltest=pause:300",
        "placement = { pcpus = [1], priority = 177 }",
        |pid| {
            let vcpu = wait_thread(pid, "keel-vcpu0");
            seen = Some(policy(pid, vcpu));
        },
    );

    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(seen, Some((libc::SCHED_RR, 50)));
}

#[test]
fn budget_of_a_quarter_holds_a_spinning_guest_to_a_quarter_of_a_cpu() {
    let test = "budget_of_a_quarter_holds_a_spinning_guest_to_a_quarter_of_a_cpu";
    if !kvm_or_skip(test) || !cgroups_or_skip(test) {
        return;
    }
    let controller = host_cpu_controller().unwrap();
    let mut share = None;
    let mut cgroup_dir = None;

    let run = run_placed(
        "budget",
        1,
        "keeltest=pause:4000",
        "placement = { budget_us = 25000, period_us = 100000 }",
        |pid| {
            let scope = CgroupScope {
                system: "budget".into(),
                owner_pid: pid,
            };
            let dir = scope.vm_dir(&controller.mount.mount_point, "t");
            wait_thread(pid, "keel-vcpu0");
            // Past boot (TSC calibration, ~10 ms of guest time): the guest spins from here.
            std::thread::sleep(Duration::from_millis(500));
            let (u0, t0) = (cgroup_usage(&dir).unwrap(), Instant::now());
            std::thread::sleep(Duration::from_secs(2));
            let (u1, t1) = (cgroup_usage(&dir).unwrap(), Instant::now());
            share = Some((u1 - u0).as_secs_f64() / (t1 - t0).as_secs_f64());
            cgroup_dir = Some(scope.system_dir(&controller.mount.mount_point));
        },
    );

    assert_eq!(run.status, 0, "{run:?}");
    let share = share.unwrap();
    eprintln!(
        "placement: CPU share at a 25 % budget: {:.1} %",
        share * 100.0
    );
    assert!((0.20..=0.30).contains(&share), "share {share:.3}");
    let dir = cgroup_dir.unwrap();
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn keel_up_puts_each_budgeted_vmm_process_in_its_vms_cgroup() {
    let test = "keel_up_puts_each_budgeted_vmm_process_in_its_vms_cgroup";
    if !kvm_or_skip(test) || !cgroups_or_skip(test) {
        return;
    }
    let controller = host_cpu_controller().unwrap();
    let s = Scratch::new("upbudget");
    let toml = system(
        "upbudget",
        1,
        "keeltest=pause:1500",
        "placement = { budget_us = 50000, period_us = 100000 }",
    );
    let sys = s.write("system.toml", &toml);
    let mut quota = None;
    let mut system_dir = None;

    let run = run_keel(
        "placement",
        &["up", sys.to_str().unwrap()],
        RUN_TIMEOUT,
        |pid| {
            let scope = CgroupScope {
                system: "upbudget".into(),
                owner_pid: pid,
            };
            let dir = scope.vm_dir(&controller.mount.mount_point, "t");
            let start = Instant::now();
            // The VMM process (a child of `keel up`) is in the cgroup once it holds a pid.
            while std::fs::read_to_string(dir.join("cgroup.procs"))
                .map(|p| p.trim().is_empty())
                .unwrap_or(true)
            {
                assert!(start.elapsed() < APPEAR_TIMEOUT, "no {}", dir.display());
                std::thread::sleep(Duration::from_millis(10));
            }
            quota = Some(
                std::fs::read_to_string(dir.join("cpu.max"))
                    .or_else(|_| std::fs::read_to_string(dir.join("cpu.cfs_quota_us")))
                    .unwrap(),
            );
            system_dir = Some(scope.system_dir(&controller.mount.mount_point));
        },
    );

    assert_eq!(run.status, 0, "{run:?}");
    let quota = quota.unwrap();
    assert!(
        quota.trim() == "50000" || quota.trim() == "50000 100000",
        "{quota:?}"
    );
    let dir = system_dir.unwrap();
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn sched_rr_priority_with_a_budget_is_refused_on_linux() {
    let run = run_placed(
        "rr",
        1,
        "keeltest=pause:0",
        "placement = { priority = 150, budget_us = 5000, period_us = 10000 }",
        |_| {},
    );

    assert_eq!(run.status, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("keel: error: vm \"t\": placement: priority 150 runs as SCHED_RR on Linux"),
        "{run:?}"
    );
}

#[test]
fn cpu_the_process_cannot_use_is_refused_naming_vm_vcpu_and_cpu() {
    let run = run_placed(
        "nocpu",
        1,
        "keeltest=pause:0",
        "placement = { pcpus = [1000] }",
        |_| {},
    );

    assert_eq!(run.status, 2, "{run:?}");
    assert!(
        run.stderr.contains(
            "keel: error: vm \"t\": placement: vcpu 0: host CPU 1000 is not available to this process"
        ),
        "{run:?}"
    );
}
