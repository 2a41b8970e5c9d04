//! A VM's `placement` on Linux (docs/config.md, "placement"): where its threads run, their
//! scheduling class, and its CPU time budget.
//!
//! - **CPUs**: each vCPU thread gets the affinity of its `pcpus` entry (one CPU, or the set it
//!   may migrate between); every other thread of the VM (supervisor, I/O, device threads)
//!   gets the union of the VM's CPUs. A CPU the process may not use is refused before the
//!   VM is built ([`HostPlacement::prepare`]).
//! - **Priority** ([`sched_class`]): 100 is `SCHED_OTHER` at nice 0 (the threads keep the
//!   process's own class: `nice keel run` stays nice); below 100 a positive nice (19 at
//!   0); above 100 `SCHED_RR` with a real-time priority scaled into 1..=99. Where the host
//!   refuses it (`EPERM`: no `CAP_SYS_NICE`, `RLIMIT_RTPRIO`) one warning says so and the
//!   VM runs as `SCHED_OTHER`.
//! - **Budget** ([`Cgroup`]): `budget_us < period_us` puts the whole VMM process in a cgroup
//!   of its own, `keel/<system>-<pid>/<vm>` under the cgroup cpu controller's mount (v2
//!   `cpu.max`, or v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`), found in
//!   `/proc/self/mountinfo`. The process returns to its old cgroup and the VM's cgroup is
//!   removed when the VM ends. No usable controller is an error: a VM never runs
//!   unbudgeted. `SCHED_RR` threads are not limited by CFS bandwidth, so a priority above
//!   100 with a budget below its period is refused.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_spec::{CpuSet, Placement, VmSpec};

use crate::log;
use crate::vmm::VmmError;

/// The least CFS bandwidth quota and period Linux accepts, in microseconds (1 ms).
pub const MIN_QUOTA_US: u64 = 1000;
/// The longest CFS bandwidth period Linux accepts, in microseconds (1 s).
pub const MAX_PERIOD_US: u64 = 1_000_000;

/// The Linux scheduling class and level of a VM's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedClass {
    /// `SCHED_OTHER` (CFS) at this nice value (0..=19).
    Other {
        /// The nice value.
        nice: i32,
    },
    /// `SCHED_RR` at this real-time priority (1..=99).
    RoundRobin {
        /// The real-time priority.
        rt_priority: i32,
    },
}

impl std::fmt::Display for SchedClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchedClass::Other { nice } => write!(f, "SCHED_OTHER nice {nice}"),
            SchedClass::RoundRobin { rt_priority } => {
                write!(f, "SCHED_RR rt priority {rt_priority}")
            }
        }
    }
}

/// The Linux class of `placement.priority` (0..=254): 100 (the default) is `SCHED_OTHER` at
/// nice 0; below it the nice value grows linearly to 19 at priority 0 (rounded up, so every
/// priority below 100 is at least nice 1); above it `SCHED_RR`, 101 → 1 up to 254 → 99.
pub fn sched_class(priority: u8) -> SchedClass {
    let p = i32::from(priority.min(keel_spec::limits::MAX_PRIORITY));
    let default = i32::from(Placement::DEFAULT_PRIORITY);
    if p <= default {
        SchedClass::Other {
            nice: ((default - p) * 19 + default - 1) / default,
        }
    } else {
        let top = i32::from(keel_spec::limits::MAX_PRIORITY) - default - 1;
        SchedClass::RoundRobin {
            // Rounded to the nearest.
            rt_priority: 1 + ((p - default - 1) * 98 + top / 2) / top,
        }
    }
}

/// A `sched_param` of priority `priority` (musl's has more fields than glibc's).
fn sched_param(priority: i32) -> libc::sched_param {
    // SAFETY: sched_param is plain data; all-zero is a valid value.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = priority;
    param
}

/// Apply `class` to the calling thread (threads it creates afterwards inherit it).
pub fn set_current_thread_class(class: SchedClass) -> io::Result<()> {
    match class {
        SchedClass::Other { nice } => {
            let param = sched_param(0);
            // SAFETY: a valid sched_param; pid 0 is the calling thread.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain syscall; on Linux PRIO_PROCESS with 0 is the calling thread.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        SchedClass::RoundRobin { rt_priority } => {
            let param = sched_param(rt_priority);
            // SAFETY: a valid sched_param; pid 0 is the calling thread.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

/// Restrict thread `tid` (0: the calling thread) to `cpus`.
pub fn set_thread_affinity(tid: libc::pid_t, cpus: &[u32]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data, all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        let cpu = usize::try_from(cpu).unwrap_or(usize::MAX);
        // CPU_SET would index out of the set for such a CPU; the kernel would refuse it anyway.
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: a valid set of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The CPUs thread `tid` (0: the calling thread) may run on, ascending.
pub fn thread_affinity(tid: libc::pid_t) -> io::Result<Vec<u32>> {
    // SAFETY: cpu_set_t is plain data, all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid set of the size passed, filled in by the kernel.
    let rc =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .map(|cpu| cpu as u32)
        .collect())
}

/// `0-2,5` for `[0, 1, 2, 5]` (ascending input), as the kernel writes CPU lists.
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// How a VM's placement is applied on this host, checked before anything is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlacement {
    /// The VM.
    pub vm: String,
    /// CPUs of each vCPU thread, if the description places them.
    pub vcpus: Option<Vec<Vec<u32>>>,
    /// The union of the vCPUs' CPUs, ascending (every other VM thread runs there).
    pub union: Option<Vec<u32>>,
    /// `placement.priority`.
    pub priority: u8,
    /// Its class on Linux.
    pub class: SchedClass,
    /// CPU bandwidth `(budget_us, period_us)`, when the budget is below the period.
    pub bandwidth: Option<(u64, u64)>,
}

impl HostPlacement {
    /// Check `spec`'s placement against Linux's rules and this process's CPUs (`allowed`:
    /// the CPUs this process may use, see [`thread_affinity`]). Errors are the user's
    /// input ([`VmmError::Unsupported`]) and name the VM and the value.
    pub fn prepare(spec: &VmSpec, allowed: &[u32]) -> Result<HostPlacement, VmmError> {
        let p = spec.placement.clone().unwrap_or_default();
        let refuse = |what: String| VmmError::Unsupported {
            vm: spec.name.clone(),
            what,
        };
        let vcpus = match &p.pcpus {
            None => None,
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (vcpu, set) in list.iter().enumerate() {
                    out.push(check_set(vcpu, set, allowed).map_err(&refuse)?);
                }
                Some(out)
            }
        };
        let union = vcpus.as_ref().map(|v| {
            let mut all: Vec<u32> = v.iter().flatten().copied().collect();
            all.sort_unstable();
            all.dedup();
            all
        });
        let class = sched_class(p.priority);
        let bandwidth = (p.budget_us < p.period_us).then_some((p.budget_us, p.period_us));
        if let Some((budget, period)) = bandwidth {
            if let SchedClass::RoundRobin { .. } = class {
                return Err(refuse(format!(
                    "placement: priority {} runs as SCHED_RR on Linux, which a CPU budget (budget_us {budget} < period_us {period}, a CFS bandwidth limit) does not bound: give priority <= 100 or budget_us = period_us",
                    p.priority
                )));
            }
            if budget < MIN_QUOTA_US {
                return Err(refuse(format!(
                    "placement: budget_us {budget} is below {MIN_QUOTA_US}, the least CPU quota Linux's cgroup bandwidth control accepts"
                )));
            }
            if !(MIN_QUOTA_US..=MAX_PERIOD_US).contains(&period) {
                return Err(refuse(format!(
                    "placement: period_us {period} is outside {MIN_QUOTA_US}..={MAX_PERIOD_US}, the periods Linux's cgroup bandwidth control accepts"
                )));
            }
        }
        Ok(HostPlacement {
            vm: spec.name.clone(),
            vcpus,
            union,
            priority: p.priority,
            class,
            bandwidth,
        })
    }

    /// Whether anything differs from an unplaced VM (default class, no CPUs, no budget).
    pub fn is_default(&self) -> bool {
        self.vcpus.is_none()
            && self.bandwidth.is_none()
            && self.class == (SchedClass::Other { nice: 0 })
    }

    /// Put the calling thread (the one that creates the VM's threads) on the VM's CPUs and
    /// in its class (the default priority, 100, changes nothing); threads it creates
    /// inherit both. A class the host refuses (`EPERM`) is one warning and `SCHED_OTHER`;
    /// a refused affinity is an error.
    pub fn apply_to_current_thread(&self) -> Result<(), VmmError> {
        if let Some(union) = &self.union {
            set_thread_affinity(0, union).map_err(|e| {
                VmmError::Host(format!(
                    "vm {:?}: cannot restrict its threads to host CPUs {}: {e}",
                    self.vm,
                    cpu_list(union)
                ))
            })?;
        }
        // The default priority leaves the threads as the program runs them (`nice keel run`
        // stays nice).
        if self.priority == Placement::DEFAULT_PRIORITY {
            return Ok(());
        }
        match set_current_thread_class(self.class) {
            Ok(()) => Ok(()),
            // Nothing changed: the threads stay SCHED_OTHER at the process's nice value.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                log::warn(format_args!(
                    "vm {:?}: priority {} wants {}, which this host does not permit ({e}: needs CAP_SYS_NICE, or an RLIMIT_RTPRIO / RLIMIT_NICE that allows it); running as SCHED_OTHER at this process's nice value",
                    self.vm, self.priority, self.class
                ));
                Ok(())
            }
            Err(e) => Err(VmmError::Host(format!(
                "vm {:?}: priority {}: cannot set {}: {e}",
                self.vm, self.priority, self.class
            ))),
        }
    }
}

/// The CPUs of vCPU `vcpu`'s set, ascending, if this process may use every one.
fn check_set(vcpu: usize, set: &CpuSet, allowed: &[u32]) -> Result<Vec<u32>, String> {
    for &cpu in set.cpus() {
        if !allowed.contains(&cpu) {
            return Err(format!(
                "placement: vcpu {vcpu}: host CPU {cpu} is not available to this process (its CPUs: {})",
                cpu_list(allowed)
            ));
        }
    }
    let mut cpus = set.cpus().to_vec();
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Restrict every thread of this process to `cpus` (a VMM process whose VM is placed: its
/// main thread and helpers stay on the VM's cores too).
pub fn confine_process(cpus: &[u32]) -> io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let tid: libc::pid_t = match entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            Some(t) => t,
            None => continue,
        };
        match set_thread_affinity(tid, cpus) {
            // A thread that ended meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// For a process that runs one VM (`keel run`, a `keel up` VMM process): restrict every
/// thread of it to the union of `spec`'s CPUs, if it places them. Refuses what
/// [`HostPlacement::prepare`] refuses.
pub fn confine_process_for(spec: &VmSpec) -> Result<(), VmmError> {
    let allowed = thread_affinity(0)
        .map_err(|e| VmmError::Host(format!("cannot read this thread's CPUs: {e}")))?;
    let Some(union) = HostPlacement::prepare(spec, &allowed)?.union else {
        return Ok(());
    };
    confine_process(&union).map_err(|e| {
        VmmError::Host(format!(
            "vm {:?}: cannot restrict the VMM process to host CPUs {}: {e}",
            spec.name,
            cpu_list(&union)
        ))
    })
}

// ---- cgroups -------------------------------------------------------------------------------

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mounted subtree's root inside its filesystem (`/` for a whole cgroup hierarchy).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type (`cgroup`, `cgroup2`, …).
    pub fstype: String,
    /// Per-superblock options (for a v1 cgroup: its controllers, e.g. `rw,cpu,cpuacct`).
    pub super_options: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4).unwrap_or_default();
        if bytes[i] == b'\\'
            && digits.len() == 3
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of a `/proc/<pid>/mountinfo` text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            // id parent maj:min root mount-point options [optional…] - fstype source super
            let dash = fields.iter().position(|f| *f == "-")?;
            if dash < 6 {
                return None;
            }
            Some(Mount {
                root: unescape(fields[3]),
                mount_point: PathBuf::from(unescape(fields[4])),
                fstype: (*fields.get(dash + 1)?).to_string(),
                super_options: (*fields.get(dash + 3)?).to_string(),
            })
        })
        .collect()
}

/// A cgroup hierarchy's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// cgroup v1, a hierarchy per controller (or group of controllers).
    V1,
    /// The unified cgroup v2 hierarchy.
    V2,
}

/// The hierarchy that carries the cpu controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuController {
    /// Its version.
    pub version: CgroupVersion,
    /// Its mount.
    pub mount: Mount,
}

/// The cpu controller among `mounts`: a cgroup2 mount whose `cgroup.controllers` (read by
/// `controllers`, given the mount point) lists `cpu`, else a v1 `cgroup` mount with the
/// `cpu` controller among its options.
pub fn find_cpu_controller(
    mounts: &[Mount],
    controllers: impl Fn(&Path) -> Option<String>,
) -> Option<CpuController> {
    let v2 = mounts.iter().find(|m| {
        m.fstype == "cgroup2"
            && controllers(&m.mount_point).is_some_and(|c| c.split_whitespace().any(|c| c == "cpu"))
    });
    if let Some(m) = v2 {
        return Some(CpuController {
            version: CgroupVersion::V2,
            mount: m.clone(),
        });
    }
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "cpu"))
        .map(|m| CpuController {
            version: CgroupVersion::V1,
            mount: m.clone(),
        })
}

/// This host's cpu controller (from `/proc/self/mountinfo`).
pub fn host_cpu_controller() -> Option<CpuController> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_cpu_controller(&parse_mountinfo(&text), |mount| {
        std::fs::read_to_string(mount.join("cgroup.controllers")).ok()
    })
}

/// The path (relative to the hierarchy's root) of this process's cgroup in `version`'s
/// hierarchy, from a `/proc/self/cgroup` text: the `0::` line for v2, the line listing
/// `cpu` for v1.
pub fn current_cgroup(proc_cgroup: &str, version: CgroupVersion) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let ours = match version {
            CgroupVersion::V2 => id == "0" && controllers.is_empty(),
            CgroupVersion::V1 => controllers.split(',').any(|c| c == "cpu"),
        };
        ours.then(|| path.to_string())
    })
}

/// Who a VM's cgroup belongs to: it is `keel/<system>-<owner_pid>/<vm>`, so two systems,
/// or two runs of one, do not collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupScope {
    /// The system's name.
    pub system: String,
    /// The process that runs the system (`keel run` itself, or the `keel up` parent of a
    /// VMM process).
    pub owner_pid: u32,
}

impl CgroupScope {
    /// The scope of system `system` run by this process.
    pub fn this_process(system: &str) -> CgroupScope {
        CgroupScope {
            system: system.to_string(),
            owner_pid: std::process::id(),
        }
    }

    /// The system's directory under a hierarchy mounted at `mount`:
    /// `<mount>/keel/<system>-<owner_pid>`.
    pub fn system_dir(&self, mount: &Path) -> PathBuf {
        mount
            .join("keel")
            .join(format!("{}-{}", self.system, self.owner_pid))
    }

    /// VM `vm`'s cgroup under a hierarchy mounted at `mount`.
    pub fn vm_dir(&self, mount: &Path, vm: &str) -> PathBuf {
        self.system_dir(mount).join(vm)
    }
}

/// The files (name, content) that set a cgroup's CPU bandwidth to `budget_us` per
/// `period_us`, in the order to write them.
pub fn bandwidth_files(
    version: CgroupVersion,
    budget_us: u64,
    period_us: u64,
) -> Vec<(&'static str, String)> {
    match version {
        CgroupVersion::V2 => vec![("cpu.max", format!("{budget_us} {period_us}"))],
        CgroupVersion::V1 => vec![
            ("cpu.cfs_period_us", period_us.to_string()),
            ("cpu.cfs_quota_us", budget_us.to_string()),
        ],
    }
}

/// CPU time used, from a v2 `cpu.stat` text (`usage_usec`).
pub fn parse_cpu_stat_usage(text: &str) -> Option<Duration> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("usage_usec ")?;
        v.trim().parse().ok().map(Duration::from_micros)
    })
}

/// Set when a VM's cgroup holds this process: a process is in one cgroup per hierarchy.
static PROCESS_IN_VM_CGROUP: AtomicBool = AtomicBool::new(false);

/// A VM's cgroup with its CPU bandwidth, holding this whole process. Dropping it moves the
/// process back where it was and removes the cgroup (and the system's directory once
/// empty; the shared `keel` directory stays).
#[derive(Debug)]
pub struct Cgroup {
    version: CgroupVersion,
    dir: PathBuf,
    /// Directories this created, outermost first (removed innermost first).
    created: Vec<PathBuf>,
    /// The cgroup the process came from.
    previous: PathBuf,
    /// Whether the process was moved in (a failed [`Cgroup::enter`] only removes what it
    /// created).
    entered: bool,
}

impl Cgroup {
    /// Create VM `vm`'s cgroup under `controller` with `budget_us` per `period_us`, and move
    /// this process (all its threads) into it. Errors are one-line reasons.
    pub fn enter(
        controller: &CpuController,
        scope: &CgroupScope,
        vm: &str,
        budget_us: u64,
        period_us: u64,
    ) -> Result<Cgroup, String> {
        if PROCESS_IN_VM_CGROUP.swap(true, Ordering::SeqCst) {
            return Err(
                "a CPU budget moves the whole VMM process into the VM's cgroup, and this process already runs a budgeted VM".into(),
            );
        }
        let result = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("/proc/self/cgroup: {e}"))
            .and_then(|proc_cgroup| {
                current_cgroup(&proc_cgroup, controller.version)
                    .ok_or_else(|| "this process is in no cgroup of the cpu hierarchy".to_string())
            })
            .and_then(|here| {
                Cgroup::create_from(controller, scope, vm, budget_us, period_us, &here)
            });
        if result.is_err() {
            PROCESS_IN_VM_CGROUP.store(false, Ordering::SeqCst);
        }
        result
    }

    /// [`Cgroup::enter`]'s creation, for a process now in cgroup `here` (relative to the hierarchy's
    /// root).
    fn create_from(
        controller: &CpuController,
        scope: &CgroupScope,
        vm: &str,
        budget_us: u64,
        period_us: u64,
        here: &str,
    ) -> Result<Cgroup, String> {
        let mount = &controller.mount.mount_point;
        let version = controller.version;
        // Paths in /proc/self/cgroup are relative to the hierarchy's root; the mount may
        // show a subtree of it.
        let root = controller.mount.root.trim_end_matches('/');
        let relative = here.strip_prefix(root).unwrap_or(here);
        let previous = mount.join(relative.trim_start_matches('/'));
        let dir = scope.vm_dir(mount, vm);
        let mut cgroup = Cgroup {
            version,
            dir: dir.clone(),
            created: Vec::new(),
            previous,
            entered: false,
        };
        let keel = mount.join("keel");
        let system = scope.system_dir(mount);
        let enable = |parent: &Path| -> Result<(), String> {
            if version == CgroupVersion::V2 {
                let file = parent.join("cgroup.subtree_control");
                write_file(&file, "+cpu")?;
            }
            Ok(())
        };
        enable(mount)?;
        for d in [&keel, &system, &dir] {
            match std::fs::create_dir(d) {
                // The shared `keel` stays (another run may be creating its system there).
                Ok(()) if *d == keel => {}
                Ok(()) => cgroup.created.push(d.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && *d != dir => {}
                Err(e) => return Err(format!("cannot create cgroup {}: {e}", d.display())),
            }
            if *d != dir {
                enable(d)?;
            }
        }
        for (name, value) in bandwidth_files(version, budget_us, period_us) {
            write_file(&dir.join(name), &value)?;
        }
        write_file(&dir.join("cgroup.procs"), &std::process::id().to_string())?;
        cgroup.entered = true;
        Ok(cgroup)
    }

    /// What leaving and removing the cgroup at the end needs: the file the process writes
    /// its pid to (the previous cgroup's `cgroup.procs`) and the directories holding the
    /// directories it removes (for a sandboxed VMM: see `sandbox::SandboxProfile`).
    pub fn exit_paths(&self) -> (PathBuf, Vec<PathBuf>) {
        let parents = self
            .created
            .iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf))
            .collect();
        (self.previous.join("cgroup.procs"), parents)
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Its hierarchy's version.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let pid = std::process::id().to_string();
        if self.entered {
            if let Err(e) = write_file(&self.previous.join("cgroup.procs"), &pid) {
                log::warn(format_args!(
                    "cannot move the VMM process back out of cgroup {}: {e}",
                    self.dir.display()
                ));
            }
        }
        for d in self.created.iter().rev() {
            // A system directory another VM still uses stays.
            let _ = std::fs::remove_dir(d);
        }
        PROCESS_IN_VM_CGROUP.store(false, Ordering::SeqCst);
    }
}

/// CPU time the tasks of cgroup `dir` have used: v2 `cpu.stat` `usage_usec`; v1
/// `cpuacct.usage` where cpuacct shares the cpu hierarchy, else the sum of its threads'
/// run time (`/proc/<tid>/schedstat`, live threads only).
pub fn cgroup_usage(dir: &Path) -> io::Result<Duration> {
    if let Ok(text) = std::fs::read_to_string(dir.join("cpu.stat")) {
        if let Some(u) = parse_cpu_stat_usage(&text) {
            return Ok(u);
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
        if let Ok(ns) = text.trim().parse() {
            return Ok(Duration::from_nanos(ns));
        }
    }
    let tasks = std::fs::read_to_string(dir.join("tasks"))?;
    let mut ns = 0u64;
    for tid in tasks.split_whitespace() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{tid}/schedstat")) {
            ns = ns.saturating_add(
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            );
        }
    }
    Ok(Duration::from_nanos(ns))
}

/// Remove what is left of system `scope`'s cgroups (VMM processes that were killed cannot
/// remove their own): each VM's directory, then the system's. Directories still in use
/// stay.
pub fn remove_system_cgroups(scope: &CgroupScope) {
    let Some(controller) = host_cpu_controller() else {
        return;
    };
    let dir = scope.system_dir(&controller.mount.mount_point);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(&dir);
}

fn write_file(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_priority_is_sched_other_nice_0() {
        assert_eq!(sched_class(100), SchedClass::Other { nice: 0 });
    }

    #[test]
    fn priority_0_is_nice_19() {
        assert_eq!(sched_class(0), SchedClass::Other { nice: 19 });
    }

    #[test]
    fn every_priority_below_100_has_a_positive_nice_falling_with_priority() {
        let nices: Vec<i32> = (0..100)
            .map(|p| match sched_class(p) {
                SchedClass::Other { nice } => nice,
                other => panic!("priority {p}: {other:?}"),
            })
            .collect();

        assert!(nices.iter().all(|&n| (1..=19).contains(&n)), "{nices:?}");
        assert!(nices.windows(2).all(|w| w[0] >= w[1]), "{nices:?}");
        assert_eq!((nices[50], nices[99]), (10, 1));
    }

    #[test]
    fn priorities_above_100_are_sched_rr_from_1_to_99() {
        assert_eq!(sched_class(101), SchedClass::RoundRobin { rt_priority: 1 });
        assert_eq!(sched_class(254), SchedClass::RoundRobin { rt_priority: 99 });
        assert_eq!(sched_class(177), SchedClass::RoundRobin { rt_priority: 50 });
    }

    #[test]
    fn cpu_list_joins_runs() {
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(cpu_list(&[3]), "3");
    }

    const HYBRID: &str = "\
25 30 0:23 / /sys ro,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
37 31 0:32 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpuset
";

    #[test]
    fn mountinfo_lines_give_root_mount_point_type_and_options() {
        let mounts = parse_mountinfo(HYBRID);

        assert_eq!(mounts.len(), 5);
        assert_eq!(
            mounts[3],
            Mount {
                root: "/".into(),
                mount_point: "/sys/fs/cgroup/cpu,cpuacct".into(),
                fstype: "cgroup".into(),
                super_options: "rw,cpu,cpuacct".into(),
            }
        );
    }

    #[test]
    fn mountinfo_without_optional_fields_and_with_escapes_is_parsed() {
        let mounts =
            parse_mountinfo("40 1 0:40 /sub /mnt/my\\040cg rw - cgroup2 none rw\nbroken line\n");

        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/mnt/my cg"));
        assert_eq!(
            (mounts[0].root.as_str(), mounts[0].fstype.as_str()),
            ("/sub", "cgroup2")
        );
    }

    #[test]
    fn hybrid_host_without_cpu_in_v2_uses_the_v1_cpu_hierarchy() {
        let mounts = parse_mountinfo(HYBRID);

        let c = find_cpu_controller(&mounts, |_| Some("hugetlb\n".into())).unwrap();

        assert_eq!(c.version, CgroupVersion::V1);
        assert_eq!(
            c.mount.mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
    }

    #[test]
    fn v2_with_the_cpu_controller_is_preferred() {
        let mounts = parse_mountinfo(HYBRID);

        let c =
            find_cpu_controller(&mounts, |_| Some("cpuset cpu io memory pids\n".into())).unwrap();

        assert_eq!(c.version, CgroupVersion::V2);
        assert_eq!(c.mount.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn cpuacct_or_cpuset_alone_is_not_the_cpu_controller() {
        let mounts = parse_mountinfo(
            "1 0 0:1 / /a rw - cgroup cgroup rw,cpuacct\n2 0 0:2 / /b rw - cgroup cgroup rw,cpuset\n",
        );

        assert_eq!(find_cpu_controller(&mounts, |_| None), None);
    }

    #[test]
    fn current_cgroup_is_read_per_version() {
        let text = "12:cpu,cpuacct:/user.slice\n4:cpuset:/\n0::/user.slice/session-1.scope\n";

        assert_eq!(
            current_cgroup(text, CgroupVersion::V1).as_deref(),
            Some("/user.slice")
        );
        assert_eq!(
            current_cgroup(text, CgroupVersion::V2).as_deref(),
            Some("/user.slice/session-1.scope")
        );
    }

    #[test]
    fn vm_cgroup_is_named_by_system_owner_pid_and_vm() {
        let scope = CgroupScope {
            system: "lab".into(),
            owner_pid: 4242,
        };

        assert_eq!(
            scope.vm_dir(Path::new("/sys/fs/cgroup"), "web"),
            PathBuf::from("/sys/fs/cgroup/keel/lab-4242/web")
        );
    }

    #[test]
    fn v2_bandwidth_is_one_cpu_max_line() {
        assert_eq!(
            bandwidth_files(CgroupVersion::V2, 25_000, 100_000),
            vec![("cpu.max", "25000 100000".to_string())]
        );
    }

    #[test]
    fn v1_bandwidth_sets_the_period_then_the_quota() {
        assert_eq!(
            bandwidth_files(CgroupVersion::V1, 25_000, 100_000),
            vec![
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "25000".to_string())
            ]
        );
    }

    #[test]
    fn v2_cpu_stat_usage_is_read_in_microseconds() {
        let text = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";

        assert_eq!(
            parse_cpu_stat_usage(text),
            Some(Duration::from_micros(1500))
        );
    }

    fn spec(vcpus: u32, placement: Placement) -> VmSpec {
        let mut v = VmSpec::new(
            "web",
            keel_spec::Arch::X86_64,
            keel_spec::HostPath::new("/k"),
            keel_spec::Memory::Size(64 << 20),
        );
        v.vcpus = vcpus;
        v.placement = Some(placement);
        v
    }

    /// A VM of one vCPU per set of `pcpus`, each placed on its set.
    fn pinned(pcpus: Vec<CpuSet>) -> VmSpec {
        let vcpus = u32::try_from(pcpus.len()).unwrap();
        spec(
            vcpus,
            Placement {
                pcpus: Some(pcpus),
                ..Placement::default()
            },
        )
    }

    /// A placement with `budget_us` of every `period_us`, the rest default.
    fn budget(budget_us: u64, period_us: u64) -> Placement {
        Placement {
            budget_us,
            period_us,
            ..Placement::default()
        }
    }

    /// Why a one-vCPU VM with `placement` is refused on a host of CPU 0.
    fn one_vcpu_refusal(placement: Placement) -> String {
        HostPlacement::prepare(&spec(1, placement), &[0])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn hybrid_placement_gives_each_vcpu_its_set_and_the_rest_the_union() {
        let v = pinned(vec![CpuSet::one(3), CpuSet::new(vec![1, 0])]);

        let h = HostPlacement::prepare(&v, &[0, 1, 2, 3]).unwrap();

        assert_eq!(h.vcpus, Some(vec![vec![3], vec![0, 1]]));
        assert_eq!(h.union, Some(vec![0, 1, 3]));
    }

    #[test]
    fn cpu_outside_the_process_is_refused_naming_vm_vcpu_and_cpu() {
        let v = pinned(vec![CpuSet::one(0), CpuSet::new(vec![1, 5])]);

        let e = HostPlacement::prepare(&v, &[0, 1]).unwrap_err();

        assert_eq!(
            e.to_string(),
            "vm \"web\": placement: vcpu 1: host CPU 5 is not available to this process (its CPUs: 0-1)"
        );
    }

    #[test]
    fn sched_rr_with_a_budget_is_refused() {
        let p = Placement {
            priority: 150,
            ..budget(5000, 10_000)
        };

        let e = one_vcpu_refusal(p);

        assert!(e.contains("priority 150 runs as SCHED_RR"), "{e}");
    }

    #[test]
    fn budget_below_linux_minimum_quota_is_refused() {
        let p = budget(500, 1000);

        let e = one_vcpu_refusal(p);

        assert!(e.contains("budget_us 500 is below 1000"), "{e}");
    }

    #[test]
    fn period_beyond_a_second_with_a_budget_is_refused() {
        let p = budget(1_000_000, 2_000_000);

        let e = one_vcpu_refusal(p);

        assert!(
            e.contains("period_us 2000000 is outside 1000..=1000000"),
            "{e}"
        );
    }

    #[test]
    fn full_budget_needs_no_bandwidth_limit() {
        let v = spec(1, Placement::default());

        let h = HostPlacement::prepare(&v, &[0]).unwrap();

        assert!(h.is_default());
        assert_eq!(h.bandwidth, None);
    }

    #[test]
    fn vmm_from_spec_refuses_a_budget_it_cannot_apply() {
        let mut v = spec(
            1,
            Placement {
                budget_us: 25_000,
                period_us: 100_000,
                ..Placement::default()
            },
        );
        v.arch = keel_spec::Arch::host().unwrap();

        let e = crate::Vmm::from_spec(&v).unwrap_err().to_string();

        assert!(e.contains("needs the VM's own cgroup"), "{e}");
    }

    /// A directory standing in for a cgroup mount: `Cgroup::enter`'s writes land in plain
    /// files there (the kernel's control files do not exist, so every write creates one).
    struct FakeMount(PathBuf);

    impl FakeMount {
        fn new(name: &str) -> FakeMount {
            let dir =
                std::env::temp_dir().join(format!("keel-placement-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeMount(dir)
        }

        fn controller(&self, version: CgroupVersion) -> CpuController {
            CpuController {
                version,
                mount: Mount {
                    root: "/".into(),
                    mount_point: self.0.clone(),
                    fstype: "cgroup2".into(),
                    super_options: "rw".into(),
                },
            }
        }

        fn read(&self, path: &str) -> String {
            std::fs::read_to_string(self.0.join(path)).unwrap_or_else(|e| format!("({e})"))
        }
    }

    impl Drop for FakeMount {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn lab() -> CgroupScope {
        CgroupScope {
            system: "lab".into(),
            owner_pid: 7,
        }
    }

    #[test]
    fn v2_cgroup_enables_cpu_down_the_tree_then_writes_cpu_max_and_the_pid() {
        let m = FakeMount::new("v2");
        let controller = m.controller(CgroupVersion::V2);

        let c = Cgroup::create_from(&controller, &lab(), "web", 25_000, 100_000, "/").unwrap();

        assert_eq!(c.path(), m.0.join("keel/lab-7/web"));
        assert_eq!(
            [
                m.read("cgroup.subtree_control"),
                m.read("keel/cgroup.subtree_control"),
                m.read("keel/lab-7/cgroup.subtree_control"),
                m.read("keel/lab-7/web/cpu.max"),
                m.read("keel/lab-7/web/cgroup.procs"),
            ],
            [
                "+cpu".to_string(),
                "+cpu".into(),
                "+cpu".into(),
                "25000 100000".into(),
                std::process::id().to_string()
            ]
        );
    }

    #[test]
    fn v1_cgroup_writes_period_then_quota_and_the_pid() {
        let m = FakeMount::new("v1");
        let controller = m.controller(CgroupVersion::V1);

        let _c = Cgroup::create_from(&controller, &lab(), "web", 25_000, 100_000, "/").unwrap();

        assert_eq!(
            [
                m.read("keel/lab-7/web/cpu.cfs_period_us"),
                m.read("keel/lab-7/web/cpu.cfs_quota_us"),
                m.read("keel/lab-7/web/cgroup.procs"),
            ],
            [
                "100000".to_string(),
                "25000".into(),
                std::process::id().to_string()
            ]
        );
        assert!(!m.0.join("keel/cgroup.subtree_control").exists());
    }
}
