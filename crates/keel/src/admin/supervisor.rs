//! The process supervisor of `keel daemon` ([`ProcessSupervisor`]): one VMM process per VM
//! (the hidden `__vmm` command, as `keel up` runs it, with `--state <state>/vms/<vm>`), one
//! switch process per network, restart policies with back-off, the dynamic pool within
//! `[limits]`, and adoption of the VMM processes a previous daemon left running. See
//! docs/admin.md, "Supervision".
//!
//! One monitor thread polls every VMM's pidfd (which works for adopted processes that are
//! not our children, too) with a timeout of at most [`TICK`]: an ended VMM is noticed
//! within that, reported as events, and restarted by its policy after its back-off.

mod policy;
mod process;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keel_kvm::log::{self, Level};
use keel_kvm::net::{PortFds, SharedMemory};
use keel_spec::plan::{PortOwner, SystemPlan};
use keel_spec::{MacAddr, Restart, System};

use super::model::{
    AdminError, CreateVm, Event, NicInfo, RestartPolicy, Supervisor, VmInfo, VmState,
};
use super::vmmproc;
use policy::{Decision, Ending, Usage};

/// The monitor's longest sleep: an ended VMM is noticed within this.
const TICK: Duration = Duration::from_millis(100);
/// How long `stop` waits for a killed VMM to be gone.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// Events queued for one subscriber before it counts as not reading (and is dropped).
const SUBSCRIBER_QUEUE: usize = 1024;

/// What the daemon gives the supervisor.
#[derive(Debug, Clone)]
pub struct Config {
    /// The system description.
    pub system_file: PathBuf,
    /// The state directory (exists, mode 0700).
    pub state_dir: PathBuf,
    /// The keel binary the VMM and switch processes run (`/proc/self/exe` in the daemon).
    pub exe: PathBuf,
    /// The VMM processes' log level.
    pub log_level: Level,
}

/// A VMM process the supervisor watches.
struct Proc {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    /// Spawned by this daemon (reaped with waitpid), not adopted.
    child: bool,
    started: Instant,
}

struct Vm {
    name: String,
    /// Declared in the description (else dynamic, with its request).
    request: Option<CreateVm>,
    /// The description `__vmm` loads (the system file, or the dynamic VM's own).
    system_arg: String,
    /// Its index in the plan's VMs (static VMs: network ports and shared regions).
    plan_index: Option<usize>,
    memory_mib: u64,
    vcpus: u32,
    restart: RestartPolicy,
    max_per_minute: u32,
    state: VmState,
    proc: Option<Proc>,
    restarts: u32,
    last_exit: Option<String>,
    backoff: Option<Duration>,
    restart_times: VecDeque<Instant>,
    restart_at: Option<Instant>,
    deadline: Option<Instant>,
    /// The admin ended (or is ending) it: no restart follows.
    by_admin: bool,
    /// A dynamic VM's ports of the dynamic pool, one per network of its request, in order.
    pool_ports: Vec<PoolPort>,
    /// Its network interfaces as the API shows them.
    nics: Vec<NicInfo>,
}

/// A spare port of the dynamic pool that a dynamic VM holds (docs/admin.md, "Networks").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolPort {
    /// The network (index into the plan's networks).
    network: usize,
    /// Its port on the network's switch (index into the network's ports).
    port: usize,
    /// Its index among the network's pool ports (what `create.json` records).
    slot: u16,
    /// The MAC the plan fixed for it.
    mac: MacAddr,
}

impl Vm {
    fn info(&self) -> VmInfo {
        VmInfo {
            name: self.name.clone(),
            state: self.state,
            r#static: self.request.is_none(),
            pid: self.proc.as_ref().and_then(|p| u32::try_from(p.pid).ok()),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            restart: self.restart,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            nics: self.nics.clone(),
        }
    }
}

/// The networks' side: port descriptors the VMMs inherit, and the switch processes.
struct Networks {
    /// `None` when the switches were adopted from a previous daemon (their ports' other
    /// ends are theirs alone: a VM with interfaces cannot be started again).
    ports: Option<Vec<Vec<Option<PortFds>>>>,
    shared: Vec<SharedMemory>,
    /// The block-forwarding links' eventfds; `None` while VMMs of a previous daemon hold
    /// them (a VM with links cannot be started again until a clean restart).
    links: Option<keel_kvm::forward::LinkSet>,
    /// The rings of each `[vsock] allow` pair (by pair index); `None` when a VMM of a
    /// previous daemon still maps the current ones (docs/vsock.md).
    vsock: Option<std::collections::BTreeMap<usize, PortFds>>,
    switches: Vec<(String, Arc<OwnedFd>, i32)>,
}

struct Inner {
    vms: Vec<Vm>,
    /// Pool ports (network, port) a previous holder left with inconsistent ring indices:
    /// not given again until the daemon restarts.
    retired: Vec<(usize, usize)>,
    subscribers: Vec<SyncSender<Event>>,
    next_seq: u64,
    closing: bool,
}

/// The supervisor of one system's VMM processes (`admin::model::Supervisor`).
pub struct ProcessSupervisor {
    config: Config,
    system: System,
    plan: SystemPlan,
    /// The system file's directory: relative paths of requests resolve against it.
    base: PathBuf,
    nets: Mutex<Networks>,
    inner: Mutex<Inner>,
    changed: Condvar,
}

fn internal(e: impl std::fmt::Display) -> AdminError {
    AdminError::Internal(e.to_string())
}

fn policy_of(r: Restart) -> RestartPolicy {
    match r {
        Restart::Never => RestartPolicy::Never,
        Restart::OnFailure => RestartPolicy::OnFailure,
        Restart::Always => RestartPolicy::Always,
    }
}

fn policy_name(r: RestartPolicy) -> &'static str {
    match r {
        RestartPolicy::Never => "never",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Always => "always",
    }
}

/// A TOML basic string (JSON's escapes are TOML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// What a dynamic VM's directory keeps of it (`create.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    seq: u64,
    request: CreateVm,
    /// The pool slot it holds on each network of its request, in order.
    #[serde(default)]
    pool_slots: Vec<u16>,
}

impl ProcessSupervisor {
    /// Load the system, adopt what a previous daemon left running, start the switches and
    /// the static VMs, and the monitor thread.
    pub fn start(config: Config) -> Result<Arc<ProcessSupervisor>, crate::Failure> {
        // With the dynamic pool's spare ports (docs/admin.md, "Networks").
        let (system, plan) = crate::up::load_plan_with_pool(&config.system_file)?;
        for vm in system.vms() {
            if keel_spec::Arch::host() != Some(vm.arch) {
                return Err(crate::Failure::input(format!(
                    "vm {:?}: arch \"{}\" cannot run on this {} host",
                    vm.name,
                    vm.arch,
                    std::env::consts::ARCH
                )));
            }
        }
        let fail = |what: &str, e: std::io::Error| crate::Failure {
            status: crate::EXIT_FAILURE,
            message: format!("{what}: {e}"),
        };
        std::fs::create_dir_all(config.state_dir.join("vms"))
            .map_err(|e| fail("state directory", e))?;
        std::fs::create_dir_all(config.state_dir.join("switches"))
            .map_err(|e| fail("state directory", e))?;
        let base = config
            .system_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut vms = Vec::new();
        for (i, spec) in system.vms().iter().enumerate() {
            let plan_index = plan
                .vms
                .iter()
                .position(|p| p.name == spec.name)
                .or(Some(i));
            let nics = plan_index
                .and_then(|n| plan.vms.get(n))
                .map(|p| {
                    p.nics
                        .iter()
                        .map(|n| NicInfo {
                            network: n.network_name.clone(),
                            mac: n.mac.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            vms.push(Vm {
                name: spec.name.clone(),
                request: None,
                system_arg: config.system_file.display().to_string(),
                plan_index,
                pool_ports: Vec::new(),
                nics,
                memory_mib: spec.memory.total() >> 20,
                vcpus: spec.vcpus,
                restart: policy_of(spec.restart),
                max_per_minute: spec.max_restarts_per_minute,
                state: VmState::Created,
                proc: None,
                restarts: 0,
                last_exit: None,
                backoff: None,
                restart_times: VecDeque::new(),
                restart_at: None,
                deadline: None,
                by_admin: false,
            });
        }
        let sup = Arc::new(ProcessSupervisor {
            config,
            system,
            plan,
            base,
            nets: Mutex::new(Networks {
                ports: None,
                shared: Vec::new(),
                links: None,
                vsock: None,
                switches: Vec::new(),
            }),
            inner: Mutex::new(Inner {
                vms,
                retired: Vec::new(),
                subscribers: Vec::new(),
                next_seq: 0,
                closing: false,
            }),
            changed: Condvar::new(),
        });
        sup.restore_dynamic();
        sup.start_networks()?;
        sup.adopt_or_start();
        let monitor = Arc::clone(&sup);
        std::thread::Builder::new()
            .name("keel-supervisor".into())
            .spawn(move || monitor.monitor())
            .map_err(|e| fail("monitor thread", e))?;
        Ok(sup)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.config.state_dir.join("vms").join(vm)
    }

    /// Dynamic VMs persisted by a previous daemon (`vms/<vm>/create.json`), in creation
    /// order, state created.
    fn restore_dynamic(&self) {
        let Ok(dir) = std::fs::read_dir(self.config.state_dir.join("vms")) else {
            return;
        };
        let mut found: Vec<Persisted> = dir
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("create.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        found.sort_by_key(|p| p.seq);
        let mut inner = self.lock();
        for p in found {
            if inner.vms.iter().any(|v| v.name == p.request.name) {
                continue;
            }
            inner.next_seq = inner.next_seq.max(p.seq + 1);
            let mut ports = Vec::new();
            for (net, &slot) in p.request.networks.iter().zip(&p.pool_slots) {
                let held = |pp: &PoolPort| {
                    inner
                        .vms
                        .iter()
                        .any(|v| v.pool_ports.iter().any(|q| q == pp))
                };
                match self.pool_port(net, slot) {
                    Some(pp) if !held(&pp) => ports.push(pp),
                    _ => log::error(format_args!(
                        "vm {:?}: pool port {slot} of network {net:?} is not in the description's pool now (or is held by another VM); the VM cannot start on that network",
                        p.request.name
                    )),
                }
            }
            let vm = self.dynamic_vm(p.request, ports);
            inner.vms.push(vm);
        }
    }

    /// Pool port `slot` of network `network` in the plan.
    fn pool_port(&self, network: &str, slot: u16) -> Option<PoolPort> {
        let n = self.plan.networks.iter().position(|x| x.name == network)?;
        let (port, p) = self.plan.networks[n]
            .ports
            .iter()
            .enumerate()
            .find(|(_, p)| p.owner == PortOwner::Pool { slot })?;
        Some(PoolPort {
            network: n,
            port,
            slot,
            mac: p.mac?,
        })
    }

    /// A pool port of `network` no VM holds (the first), else a refusal naming the limit.
    fn free_pool_port(
        inner: &Inner,
        plan: &SystemPlan,
        network: &str,
    ) -> Result<PoolPort, AdminError> {
        let n = plan.networks.iter().position(|x| x.name == network);
        let ports: Vec<PoolPort> = n
            .map(|n| {
                plan.networks[n]
                    .ports
                    .iter()
                    .enumerate()
                    .filter_map(|(port, p)| match (&p.owner, p.mac) {
                        (PortOwner::Pool { slot }, Some(mac)) => Some(PoolPort {
                            network: n,
                            port,
                            slot: *slot,
                            mac,
                        }),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ports
            .iter()
            .find(|pp| {
                !inner.retired.contains(&(pp.network, pp.port))
                    && !inner
                        .vms
                        .iter()
                        .any(|v| v.pool_ports.iter().any(|q| q == *pp))
            })
            .copied()
            .ok_or_else(|| {
                let retired = inner.retired.iter().filter(|r| Some(r.0) == n).count();
                AdminError::Limit {
                    limit: "limits.networks",
                    detail: format!(
                        "network {network:?}: no free port of the dynamic pool ({} ports, {retired} retired, the rest held)",
                        ports.len()
                    ),
                }
            })
    }

    /// Give pool port `pp` to a new holder: frames the switch queued for the previous one
    /// are skipped (docs/admin.md, "Networks"), so the next VM sees only frames sent after
    /// it got the port. Nothing to do while the daemon has no descriptors of the ports
    /// (adopted switches).
    fn reset_pool_port(&self, pp: &PoolPort) -> Result<(), PortReuseError> {
        let nets = self.nets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fds) = nets
            .ports
            .as_ref()
            .and_then(|p| p.get(pp.network))
            .and_then(|n| n.get(pp.port))
            .and_then(Option::as_ref)
        else {
            return Ok(());
        };
        let slots = u64::from(self.plan.networks[pp.network].slots);
        let skipped = drop_queued_frames(fds, slots)?;
        if skipped > 0 {
            log::info(format_args!(
                "network {:?}: pool port {}: {skipped} frames queued for its previous holder dropped",
                self.plan.networks[pp.network].name, pp.slot
            ));
        }
        Ok(())
    }

    /// A free pool port of `network`, reset for a new holder ([`Self::reset_pool_port`]);
    /// a port whose rings are inconsistent is retired and the next one tried.
    fn take_pool_port(&self, inner: &mut Inner, network: &str) -> Result<PoolPort, AdminError> {
        loop {
            let pp = Self::free_pool_port(inner, &self.plan, network)?;
            match self.reset_pool_port(&pp) {
                Ok(()) => return Ok(pp),
                Err(PortReuseError::Wild(e)) => {
                    log::error(format_args!(
                        "network {network:?}: pool port {}: its ring from the switch was left inconsistent ({e}); retired until the daemon restarts",
                        pp.slot
                    ));
                    inner.retired.push((pp.network, pp.port));
                }
                Err(PortReuseError::Host(e)) => {
                    return Err(internal(format!(
                        "network {network:?}: pool port {}: {e}",
                        pp.slot
                    )));
                }
            }
        }
    }

    fn dynamic_vm(&self, req: CreateVm, pool_ports: Vec<PoolPort>) -> Vm {
        let nics = pool_ports
            .iter()
            .map(|pp| NicInfo {
                network: self.plan.networks[pp.network].name.clone(),
                mac: pp.mac.to_string(),
            })
            .collect();
        Vm {
            pool_ports,
            nics,
            name: req.name.clone(),
            system_arg: self
                .vm_dir(&req.name)
                .join("system.toml")
                .display()
                .to_string(),
            plan_index: None,
            memory_mib: req.memory_mib,
            vcpus: req.vcpus,
            restart: req.restart,
            max_per_minute: keel_spec::VmSpec::DEFAULT_MAX_RESTARTS_PER_MINUTE,
            state: VmState::Created,
            proc: None,
            restarts: 0,
            last_exit: None,
            backoff: None,
            restart_times: VecDeque::new(),
            restart_at: None,
            deadline: None,
            by_admin: false,
            request: Some(req),
        }
    }

    /// Adopt the switches of a previous daemon if they still run, else create the ports
    /// and shared regions and start a switch per network.
    fn start_networks(&self) -> Result<(), crate::Failure> {
        let mut nets = self.nets.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.config.state_dir.join("switches");
        let mut adopted = Vec::new();
        let mut records = Vec::new();
        for net in &self.plan.networks {
            let path = dir.join(format!("{}.json", net.name));
            if let Some(r) = process::load(&path)
                && let Some(fd) = process::adopt(&r)
            {
                adopted.push((net.name.clone(), Arc::new(fd), r.pid));
                records.push(r);
            }
        }
        if !self.plan.networks.is_empty() && adopted.len() == self.plan.networks.len() {
            log::info(format_args!(
                "adopted the {} switch processes of a previous daemon",
                adopted.len()
            ));
            // Copies of their ports' descriptors, so VMs with interfaces can start again.
            let mut ports = Vec::new();
            for (n, ((_, fd, _), r)) in adopted.iter().zip(&records).enumerate() {
                match self.recover_ports(n, r, fd) {
                    Ok(p) => ports.push(p),
                    Err(e) => {
                        log::warn(format_args!(
                            "network {:?}: cannot take copies of its ports from the adopted switch process {} ({e}); its VMs cannot be started again until the daemon is restarted cleanly",
                            self.plan.networks[n].name, r.pid
                        ));
                        break;
                    }
                }
            }
            if ports.len() == adopted.len() {
                nets.ports = Some(ports);
            }
            nets.switches = adopted;
            return Ok(());
        }
        // Partly alive: stop the rest and start over.
        for (_, fd, _) in &adopted {
            let _ = process::pidfd_signal(fd, libc::SIGTERM);
        }
        nets.ports = Some(crate::up::create_ports(&self.plan)?);
        // A VMM of a previous daemon that still runs maps the shared regions' current
        // memory files, which live in VMMs only: new files would split each region (a VM
        // started now would not see what the running ones write). Then none are created,
        // and VMs mapping shared regions cannot start until a clean restart.
        let live_user = self.plan.vms.iter().find(|v| {
            !v.shared.is_empty()
                && process::load(&self.vm_dir(&v.name).join("vmm.json"))
                    .is_some_and(|r| process::adopt(&r).is_some())
        });
        nets.shared = match live_user {
            Some(v) => {
                log::warn(format_args!(
                    "vm {:?} of a previous daemon still runs with the shared regions' memory: VMs mapping shared regions cannot be started again until the daemon is restarted cleanly",
                    v.name
                ));
                Vec::new()
            }
            None => crate::up::create_shared(&self.plan)?,
        };
        nets.links = match live_user {
            Some(_) => None,
            None => Some(crate::up::create_links(&self.plan)?),
        };
        // The vsock rings live in VMMs only, like the shared regions: not created again
        // while a VMM of a previous daemon maps them.
        let live_vsock = self.plan.vms.iter().find(|v| {
            v.vsock.as_ref().is_some_and(|s| !s.peers.is_empty())
                && process::load(&self.vm_dir(&v.name).join("vmm.json"))
                    .is_some_and(|r| process::adopt(&r).is_some())
        });
        nets.vsock = match live_vsock {
            Some(v) => {
                log::warn(format_args!(
                    "vm {:?} of a previous daemon still runs with its vsock rings: VMs with vsock peers cannot be started again until the daemon is restarted cleanly",
                    v.name
                ));
                None
            }
            None => Some(crate::up::create_vsock_links(&self.plan)?),
        };
        let system_arg = self.config.system_file.display().to_string();
        for (n, net) in self.plan.networks.iter().enumerate() {
            let ports = nets.ports.as_ref().and_then(|p| p.get(n));
            let (args, fds) = crate::up::switch_command(
                &system_arg,
                &net.name,
                ports.map_or(&[], |v| v),
                false,
                true,
            );
            let mut record = process::spawn(
                &self.config.exe,
                &args,
                fds,
                &dir.join(format!("{}.log", net.name)),
            )
            .map_err(|e| crate::Failure {
                status: crate::EXIT_FAILURE,
                message: format!("network {:?}: cannot start its switch: {e}", net.name),
            })?;
            record.ports = process::switch_ports(&record.argv).unwrap_or_default();
            let _ = process::save(&dir.join(format!("{}.json", net.name)), &record);
            let fd = process::pidfd_open(record.pid).map_err(|e| crate::Failure {
                status: crate::EXIT_FAILURE,
                message: format!("network {:?}: pidfd: {e}", net.name),
            })?;
            nets.switches
                .push((net.name.clone(), Arc::new(fd), record.pid));
        }
        Ok(())
    }

    /// Copies of network `n`'s port descriptors, taken from its adopted switch process
    /// (`pidfd`, checked against `record` by the adoption) with `pidfd_getfd`: the numbers
    /// its record names, which must be its command line's `--port`s, one per port of the
    /// plan besides the uplink, each memfd of the plan's ring size.
    fn recover_ports(
        &self,
        n: usize,
        record: &process::Record,
        pidfd: &OwnedFd,
    ) -> Result<Vec<Option<PortFds>>, String> {
        let net = &self.plan.networks[n];
        let numbers =
            process::switch_ports(&record.argv).ok_or("its command line has a malformed --port")?;
        if numbers != record.ports {
            return Err("its record's ports differ from its command line".into());
        }
        let wanted = net
            .ports
            .iter()
            .filter(|p| !matches!(p.owner, PortOwner::Uplink { .. }))
            .count();
        if numbers.len() != wanted {
            return Err(format!(
                "it has {} ports, the description {wanted}",
                numbers.len()
            ));
        }
        let len = usize::try_from(net.ring_bytes()).map_err(|e| e.to_string())?;
        let mut numbers = numbers.into_iter();
        let mut out = Vec::with_capacity(net.ports.len());
        let mut taken = Vec::new();
        for p in &net.ports {
            if matches!(p.owner, PortOwner::Uplink { .. }) {
                out.push(None);
                continue;
            }
            // The switch's `--port` is `TO,FROM,VMM_EVENTFD,SWITCH_EVENTFD`
            // (`up::switch_command`): it rings the third and waits on the fourth.
            let theirs = numbers.next().ok_or("fewer ports than planned")?;
            let mut copies = Vec::with_capacity(4);
            for fd in theirs {
                copies.push(
                    process::pidfd_getfd(pidfd, fd)
                        .map_err(|e| format!("pidfd_getfd of its fd {fd}: {e}"))?,
                );
            }
            // Owned by `take_inherited` below (fresh descriptors: it cannot refuse them).
            let ours: Vec<i32> = copies.into_iter().map(IntoRawFd::into_raw_fd).collect();
            // The VMM's view (`PortFds::arg`): TO,FROM,SWITCH_EVENTFD,VMM_EVENTFD.
            let arg = format!("{},{},{},{}", ours[0], ours[1], ours[3], ours[2]);
            let fds = PortFds::take_inherited(&arg, &mut taken).map_err(|e| e.to_string())?;
            for (m, fd) in [(&fds.to_switch, theirs[0]), (&fds.from_switch, theirs[1])] {
                if m.len() != len {
                    return Err(format!(
                        "its fd {fd}: {} bytes, a ring of this network is {len}",
                        m.len()
                    ));
                }
            }
            out.push(Some(fds));
        }
        Ok(out)
    }

    /// Adopt each VM's VMM if it still runs; handle the ones that ended while no daemon
    /// watched by their policy; start the static VMs that have no VMM.
    fn adopt_or_start(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        for i in 0..inner.vms.len() {
            let dir = self.vm_dir(&inner.vms[i].name);
            let record = process::load(&dir.join("vmm.json"));
            if let Some(r) = &record
                && let Some(fd) = process::adopt(r)
            {
                let vm = &mut inner.vms[i];
                vm.state = match process::stat(r.pid) {
                    Some(('T', _)) | Some(('t', _)) => VmState::Paused,
                    _ => VmState::Running,
                };
                vm.proc = Some(Proc {
                    pid: r.pid,
                    pidfd: Arc::new(fd),
                    child: false,
                    started: now,
                });
                log::info(format_args!(
                    "vm {:?}: adopted its VMM process {}",
                    vm.name, r.pid
                ));
                continue;
            }
            if record.is_some() {
                // It ran when the previous daemon died and has ended since.
                let _ = std::fs::remove_file(dir.join("vmm.json"));
                let exit = read_exit(&dir)
                    .unwrap_or_else(|| "ended while no daemon watched (killed)".into());
                inner.vms[i].state = VmState::Running;
                self.ended(&mut inner, i, exit, now);
                continue;
            }
            // Static VMs start with the daemon, except pool slots (`start = false`), which
            // wait for a start request.
            let autostart = inner.vms[i].request.is_none()
                && self
                    .system
                    .vms()
                    .iter()
                    .any(|v| v.name == inner.vms[i].name && v.start);
            if autostart {
                if let Err(e) = self.spawn_vm(&mut inner, i) {
                    log::error(format_args!("vm {:?}: {e}", inner.vms[i].name));
                    let from = inner.vms[i].state;
                    inner.vms[i].state = VmState::Crashed;
                    inner.vms[i].last_exit = Some(e.to_string());
                    self.emit_state(&mut inner, i, from);
                }
            }
        }
    }

    /// Send `event` to every subscriber; drop those that stopped reading.
    fn emit(inner: &mut Inner, event: Event) {
        inner
            .subscribers
            .retain(|s| match s.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            });
    }

    fn emit_state(&self, inner: &mut Inner, i: usize, from: VmState) {
        let to = inner.vms[i].state;
        if from != to {
            let vm = inner.vms[i].name.clone();
            Self::emit(inner, Event::State { vm, from, to });
        }
        self.changed.notify_all();
    }

    /// Start VM `i`'s VMM process (state running).
    fn spawn_vm(&self, inner: &mut Inner, i: usize) -> Result<(), AdminError> {
        let vm = &inner.vms[i];
        let dir = self.vm_dir(&vm.name);
        std::fs::create_dir_all(&dir).map_err(|e| internal(format!("{}: {e}", dir.display())))?;
        let _ = std::fs::remove_file(dir.join(vmmproc::EXIT_FILE));
        let mut args = vec![
            crate::up::VMM_COMMAND.to_string(),
            vm.system_arg.clone(),
            "--vm".into(),
            vm.name.clone(),
            "--log-level".into(),
            self.config.log_level.name().to_string(),
        ];
        let nets = self.nets.lock().unwrap_or_else(|p| p.into_inner());
        let mut fds = Vec::new();
        if let Some(p) = vm.plan_index.and_then(|n| self.plan.vms.get(n)) {
            let has_nics = !p.nics.is_empty();
            if !p.shared.is_empty() && nets.shared.len() != self.plan.shared.len() {
                return Err(AdminError::Internal(format!(
                    "vm {:?}: its shared regions' memory files belong to processes of a previous daemon; stop the daemon (SIGTERM) and start it again to start this VM",
                    vm.name
                )));
            }
            match &nets.ports {
                Some(ports) => {
                    fds = crate::up::vmm_fd_args(
                        &self.plan,
                        p,
                        ports,
                        &nets.shared,
                        nets.links.as_ref(),
                        &mut args,
                    );
                }
                None if has_nics || !p.shared.is_empty() => {
                    return Err(AdminError::Internal(format!(
                        "vm {:?}: its network ports and shared regions belong to switch processes of a previous daemon; stop the daemon (SIGTERM) and start it again to start this VM",
                        vm.name
                    )));
                }
                None => {}
            }
            if p.vsock.as_ref().is_some_and(|v| !v.peers.is_empty()) {
                match &nets.vsock {
                    Some(links) => fds.extend(crate::up::vsock_fd_args(p, links, &mut args)),
                    None => {
                        return Err(AdminError::Internal(format!(
                            "vm {:?}: its vsock rings belong to processes of a previous daemon; stop the daemon (SIGTERM) and start it again to start this VM",
                            vm.name
                        )));
                    }
                }
            }
        }
        // A dynamic VM's pool ports, in the order of its description's interfaces.
        for pp in &vm.pool_ports {
            let Some(p) = nets
                .ports
                .as_ref()
                .and_then(|p| p.get(pp.network))
                .and_then(|n| n.get(pp.port))
                .and_then(Option::as_ref)
            else {
                return Err(AdminError::Internal(format!(
                    "vm {:?}: its network ports belong to switch processes of a previous daemon; stop the daemon (SIGTERM) and start it again to start this VM",
                    vm.name
                )));
            };
            args.push("--nic".into());
            args.push(p.arg());
            fds.extend(p.raw());
        }
        args.push("--state".into());
        args.push(dir.display().to_string());
        let record = process::spawn(&self.config.exe, &args, fds, &dir.join("vmm.log"))
            .map_err(|e| internal(format!("vm {:?}: cannot start its VMM: {e}", vm.name)))?;
        drop(nets);
        let pidfd = process::pidfd_open(record.pid).map_err(internal)?;
        process::save(&dir.join("vmm.json"), &record).map_err(internal)?;
        let from = inner.vms[i].state;
        let vm = &mut inner.vms[i];
        vm.proc = Some(Proc {
            pid: record.pid,
            pidfd: Arc::new(pidfd),
            child: true,
            started: Instant::now(),
        });
        vm.state = VmState::Running;
        vm.by_admin = false;
        vm.deadline = None;
        vm.restart_at = None;
        self.emit_state(inner, i, from);
        Ok(())
    }

    /// VM `i`'s VMM ended with `exit`: events, state, and its policy's decision.
    fn ended(&self, inner: &mut Inner, i: usize, exit: String, now: Instant) {
        let from = inner.vms[i].state;
        let vm = &mut inner.vms[i];
        let ran_for = vm
            .proc
            .take()
            .map_or(Duration::ZERO, |p| now.saturating_duration_since(p.started));
        let _ = std::fs::remove_file(self.vm_dir(&vm.name).join("vmm.json"));
        let ending = if vm.by_admin {
            Ending::ByAdmin
        } else if exit == "exit 0" {
            Ending::Clean
        } else {
            Ending::Failure
        };
        vm.last_exit = Some(exit.clone());
        vm.deadline = None;
        let recent = policy::recent(&mut vm.restart_times, now);
        let decision = policy::decide(vm.restart, ending, recent, vm.max_per_minute);
        let name = vm.name.clone();
        match decision {
            Decision::Restart => {
                let delay = policy::next_backoff(vm.backoff, ran_for);
                vm.backoff = Some(delay);
                vm.restart_at = Some(now + delay);
                vm.state = VmState::Restarting;
            }
            Decision::Stay(state) => vm.state = state,
        }
        if ending == Ending::Failure {
            Self::emit(
                inner,
                Event::Crashed {
                    vm: name.clone(),
                    exit,
                },
            );
        }
        if decision == Decision::Stay(VmState::Crashed) && recent > 0 {
            log::warn(format_args!(
                "vm {name:?}: restarted {recent} times within a minute (max_restarts_per_minute); not restarting it again"
            ));
        }
        self.emit_state(inner, i, from);
    }

    /// The monitor: ended VMMs, due restarts, passed shutdown deadlines.
    fn monitor(self: Arc<Self>) {
        loop {
            let (fds, next): (Vec<(String, Arc<OwnedFd>)>, Option<Instant>) = {
                let inner = self.lock();
                if inner.closing {
                    return;
                }
                let fds = inner
                    .vms
                    .iter()
                    .filter_map(|v| v.proc.as_ref().map(|p| (v.name.clone(), p.pidfd.clone())))
                    .collect();
                let next = inner
                    .vms
                    .iter()
                    .flat_map(|v| [v.restart_at, v.deadline])
                    .flatten()
                    .min();
                (fds, next)
            };
            let now = Instant::now();
            let wait = next
                .map_or(TICK, |t| t.saturating_duration_since(now))
                .min(TICK);
            let switches: Vec<(String, Arc<OwnedFd>, i32)> = self
                .nets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .switches
                .clone();
            let mut pollfds: Vec<libc::pollfd> = fds
                .iter()
                .map(|(_, fd)| fd)
                .chain(switches.iter().map(|(_, fd, _)| fd))
                .map(|fd| libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(100);
            // SAFETY: a valid array of pollfds whose descriptors `fds` keeps open.
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, ms) };
            for ((name, fd, pid), p) in switches.iter().zip(&pollfds[fds.len()..]) {
                if p.revents != 0 {
                    self.switch_ended(name, fd, *pid);
                }
            }
            let mut inner = self.lock();
            let now = Instant::now();
            for ((name, fd), p) in fds.iter().zip(&pollfds) {
                if p.revents == 0 {
                    continue;
                }
                let Some(i) = inner.vms.iter().position(|v| {
                    &v.name == name && v.proc.as_ref().is_some_and(|p| Arc::ptr_eq(&p.pidfd, fd))
                }) else {
                    continue;
                };
                let exit = self.exit_of(&inner.vms[i]);
                self.ended(&mut inner, i, exit, now);
            }
            for i in 0..inner.vms.len() {
                let vm = &mut inner.vms[i];
                if vm.deadline.is_some_and(|d| d <= now) {
                    vm.deadline = None;
                    if let Some(p) = &vm.proc {
                        log::info(format_args!(
                            "vm {:?}: not powered off by the shutdown deadline; stopping it",
                            vm.name
                        ));
                        let _ = process::pidfd_signal(&p.pidfd, libc::SIGKILL);
                    }
                }
                if vm.restart_at.is_some_and(|t| t <= now) && vm.state == VmState::Restarting {
                    vm.restart_at = None;
                    vm.restart_times.push_back(now);
                    vm.restarts = vm.restarts.saturating_add(1);
                    let (name, restarts) = (vm.name.clone(), vm.restarts);
                    match self.spawn_vm(&mut inner, i) {
                        Ok(()) => Self::emit(&mut inner, Event::Restarted { vm: name, restarts }),
                        Err(e) => {
                            let from = inner.vms[i].state;
                            inner.vms[i].state = VmState::Crashed;
                            inner.vms[i].last_exit = Some(e.to_string());
                            self.emit_state(&mut inner, i, from);
                        }
                    }
                }
            }
        }
    }

    /// A switch process ended (crashed or killed): its VMs keep running without their
    /// network; logged, not restarted (its ports' other ends are the VMMs').
    fn switch_ended(&self, name: &str, fd: &Arc<OwnedFd>, pid: i32) {
        if self.lock().closing {
            return;
        }
        let mut nets = self.nets.lock().unwrap_or_else(|p| p.into_inner());
        nets.switches.retain(|(_, f, _)| !Arc::ptr_eq(f, fd));
        let how = process::reap(pid).unwrap_or_else(|| "ended".into());
        log::error(format_args!(
            "the switch of network {name:?} ended ({how}); its VMs have no network until the daemon is restarted"
        ));
    }

    /// How VM `vm`'s ended VMM ended: waitpid for our children, else its exit file.
    fn exit_of(&self, vm: &Vm) -> String {
        let Some(p) = &vm.proc else {
            return "ended".into();
        };
        if p.child
            && let Some(s) = process::reap(p.pid)
        {
            return s;
        }
        read_exit(&self.vm_dir(&vm.name)).unwrap_or_else(|| "ended (status unknown: killed)".into())
    }

    /// Pause or resume: VM `vm` in state `from` with a VMM gets `signal` through its pidfd
    /// and is then in state `to` (a state event); in any other state, a conflict naming
    /// `action`.
    fn signal_state(
        &self,
        vm: &str,
        (from, to): (VmState, VmState),
        signal: libc::c_int,
        action: &'static str,
    ) -> Result<VmInfo, AdminError> {
        let mut inner = self.lock();
        let i = Self::find(&inner, vm)?;
        let v = &inner.vms[i];
        let Some(p) = v.proc.as_ref().filter(|_| v.state == from) else {
            return Err(Self::conflict(v, action));
        };
        process::pidfd_signal(&p.pidfd, signal).map_err(internal)?;
        inner.vms[i].state = to;
        self.emit_state(&mut inner, i, from);
        Ok(inner.vms[i].info())
    }

    fn find(inner: &Inner, vm: &str) -> Result<usize, AdminError> {
        inner
            .vms
            .iter()
            .position(|v| v.name == vm)
            .ok_or_else(|| AdminError::NotFound(vm.to_string()))
    }

    fn conflict(vm: &Vm, action: &'static str) -> AdminError {
        AdminError::Conflict {
            vm: vm.name.clone(),
            state: vm.state,
            action,
        }
    }

    /// Kill VM `i`'s VMM (the admin's doing: no restart) and wait until it is gone.
    fn kill_and_wait<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        i: usize,
    ) -> Result<MutexGuard<'a, Inner>, AdminError> {
        let name = inner.vms[i].name.clone();
        let vm = &mut inner.vms[i];
        vm.by_admin = true;
        vm.restart_at = None;
        if vm.state == VmState::Restarting {
            let from = vm.state;
            vm.state = VmState::Stopped;
            self.emit_state(&mut inner, i, from);
            return Ok(inner);
        }
        if let Some(p) = &vm.proc {
            let _ = process::pidfd_signal(&p.pidfd, libc::SIGKILL);
        }
        let until = Instant::now() + STOP_WAIT;
        while inner
            .vms
            .iter()
            .find(|v| v.name == name)
            .is_some_and(|v| v.proc.is_some())
        {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AdminError::Internal(format!(
                    "vm {name:?}: its VMM did not end within {} s of SIGKILL",
                    STOP_WAIT.as_secs()
                )));
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(inner)
    }

    /// Stop every VM and switch (the daemon's orderly exit: SIGTERM/SIGINT). VMs stay
    /// declared; their directories (and dynamic VMs' requests) are kept.
    pub fn shutdown_all(&self) {
        // Every VMM is killed first, then waited for: the VMs end together.
        let names: Vec<String> = {
            let mut inner = self.lock();
            for vm in &mut inner.vms {
                vm.by_admin = true;
                if let Some(p) = &vm.proc {
                    let _ = process::pidfd_signal(&p.pidfd, libc::SIGKILL);
                }
            }
            inner.vms.iter().map(|v| v.name.clone()).collect()
        };
        for n in names {
            let inner = self.lock();
            if let Ok(i) = Self::find(&inner, &n)
                && (inner.vms[i].proc.is_some() || inner.vms[i].state == VmState::Restarting)
            {
                if let Err(e) = self.kill_and_wait(inner, i) {
                    log::error(format_args!("{e}"));
                }
            }
        }
        self.lock().closing = true;
        let nets = self.nets.lock().unwrap_or_else(|p| p.into_inner());
        for (name, fd, pid) in &nets.switches {
            let _ = process::pidfd_signal(fd, libc::SIGTERM);
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 2000) };
            let _ = process::reap(*pid);
            let _ = std::fs::remove_file(
                self.config
                    .state_dir
                    .join("switches")
                    .join(format!("{name}.json")),
            );
        }
    }

    /// The dynamic VM's description (`vms/<vm>/system.toml`): the system's name, one VM.
    fn dynamic_toml(&self, req: &CreateVm, ports: &[PoolPort]) -> String {
        let mut t = format!("[system]\nname = {}\n", quoted(self.system.name()));
        // Its networks as its VMM sees them: the name and the ring size of each.
        for pp in ports {
            let net = &self.plan.networks[pp.network];
            t.push_str(&format!(
                "\n[[network]]\nname = {}\nslots = {}\n",
                quoted(&net.name),
                net.slots
            ));
        }
        t.push_str(&format!(
            "\n[[vm]]\nname = {}\nkernel = {}\nmemory = \"{}M\"\nvcpus = {}\ncmdline = {}\nserial = \"stdio\"\nrestart = \"{}\"\n",
            quoted(&req.name),
            quoted(&policy::resolve(&self.base, &req.kernel)),
            req.memory_mib,
            req.vcpus,
            quoted(&req.cmdline),
            policy_name(req.restart),
        ));
        if let Some(i) = &req.initrd {
            t.push_str(&format!(
                "initrd = {}\n",
                quoted(&policy::resolve(&self.base, i))
            ));
        }
        for d in &req.disks {
            t.push_str(&format!(
                "\n[[vm.disk]]\npath = {}\n",
                quoted(&policy::resolve(&self.base, d))
            ));
        }
        for pp in ports {
            t.push_str(&format!(
                "\n[[vm.net]]\nnetwork = {}\nmac = \"{}\"\n",
                quoted(&self.plan.networks[pp.network].name),
                pp.mac
            ));
        }
        t
    }

    fn usage(inner: &Inner) -> Usage {
        let mut u = Usage::default();
        for v in inner.vms.iter().filter(|v| v.request.is_some()) {
            u.vms += 1;
            u.memory = u
                .memory
                .saturating_add(v.memory_mib.saturating_mul(1 << 20));
            u.vcpus = u.vcpus.saturating_add(v.vcpus);
        }
        u
    }
}

/// Why a pool port cannot be given to a new holder.
#[derive(Debug)]
enum PortReuseError {
    /// Its ring's indices are inconsistent (a previous holder wrote garbage).
    Wild(String),
    /// The host failed (mapping the ring).
    Host(String),
}

/// Skip the frames queued in port `fds`'s ring from the switch (`slots` slots), as the
/// consumer the next holder's VMM will be (see `keel_net::ring::FrameConsumer::skip_pending`).
/// Only while no VMM holds the port. How many frames were skipped.
fn drop_queued_frames(fds: &PortFds, slots: u64) -> Result<u64, PortReuseError> {
    let map = fds
        .from_switch
        .map()
        .map_err(|e| PortReuseError::Host(format!("map: {e}")))?;
    // SAFETY: `map` outlives the window and the consumer made from it: both are dropped
    // at the end of this function, before `map`.
    let window =
        unsafe { map.frame_window(slots) }.map_err(|e| PortReuseError::Host(e.to_string()))?;
    let mut consumer = keel_net::ring::FrameConsumer::attach(window);
    consumer
        .skip_pending()
        .map_err(|e| PortReuseError::Wild(e.to_string()))
}

/// The first line of `dir/exit`, if the VMM wrote one.
/// The first line of a VMM's `exit` record. The VMM writes that file and may be
/// compromised, so at most [`EXIT_RECORD_MAX`] bytes are read and control characters are
/// replaced: a hostile record costs the daemon neither memory nor a forged log line.
fn read_exit(dir: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(dir.join(vmmproc::EXIT_FILE)).ok()?;
    let mut bytes = Vec::new();
    file.take(EXIT_RECORD_MAX).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let line = text.lines().next()?;
    Some(
        line.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    )
}

/// How much of a VMM's `exit` record the daemon reads.
const EXIT_RECORD_MAX: u64 = 4096;

impl Supervisor for ProcessSupervisor {
    fn list(&self) -> Vec<VmInfo> {
        self.lock().vms.iter().map(Vm::info).collect()
    }

    fn get(&self, vm: &str) -> Result<VmInfo, AdminError> {
        let inner = self.lock();
        Ok(inner.vms[Self::find(&inner, vm)?].info())
    }

    fn create(&self, req: CreateVm) -> Result<VmInfo, AdminError> {
        if req.vcpus == 0 {
            return Err(AdminError::Invalid("vcpus: 0 (at least 1)".into()));
        }
        let mut inner = self.lock();
        if inner.vms.iter().any(|v| v.name == req.name) {
            return Err(AdminError::Exists(req.name));
        }
        policy::check_create(self.system.limits(), Self::usage(&inner), &self.base, &req)?;
        for d in &req.disks {
            let path = policy::resolve(&self.base, d);
            let user = inner.vms.iter().find(|v| {
                v.request.as_ref().is_some_and(|r| {
                    r.disks
                        .iter()
                        .any(|x| policy::resolve(&self.base, x) == path)
                })
            });
            if let Some(u) = user {
                return Err(AdminError::Invalid(format!(
                    "disk {path} is used by vm {:?} (an image written by one disk cannot be shared)",
                    u.name
                )));
            }
        }
        // A free pool port of each network it names (the limits allowed them above).
        let mut ports = Vec::new();
        for n in &req.networks {
            ports.push(self.take_pool_port(&mut inner, n)?);
        }
        let text = self.dynamic_toml(&req, &ports);
        // The description's own checks (name rule, sizes, kernel and disk files).
        let parsed = keel_spec::Loader::new()
            .parse_named(&text, &self.base, self.system.name())
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        if let Some(spec) = parsed.vms().first()
            && self.system.vm(&spec.name).is_some()
        {
            return Err(AdminError::Exists(req.name));
        }
        let dir = self.vm_dir(&req.name);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        std::fs::write(dir.join("system.toml"), &text).map_err(internal)?;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let persisted = Persisted {
            seq,
            request: req.clone(),
            pool_slots: ports.iter().map(|pp| pp.slot).collect(),
        };
        std::fs::write(
            dir.join("create.json"),
            serde_json::to_vec(&persisted).map_err(internal)?,
        )
        .map_err(internal)?;
        let name = req.name.clone();
        let vm = self.dynamic_vm(req, ports);
        let info = vm.info();
        inner.vms.push(vm);
        Self::emit(&mut inner, Event::Created { vm: name });
        Ok(info)
    }

    fn start(&self, vm: &str) -> Result<VmInfo, AdminError> {
        let mut inner = self.lock();
        let i = Self::find(&inner, vm)?;
        match inner.vms[i].state {
            VmState::Created | VmState::Stopped | VmState::Crashed => {}
            _ => return Err(Self::conflict(&inner.vms[i], "start")),
        }
        inner.vms[i].backoff = None;
        self.spawn_vm(&mut inner, i)?;
        Ok(inner.vms[i].info())
    }

    fn pause(&self, vm: &str) -> Result<VmInfo, AdminError> {
        self.signal_state(
            vm,
            (VmState::Running, VmState::Paused),
            libc::SIGSTOP,
            "pause",
        )
    }

    fn resume(&self, vm: &str) -> Result<VmInfo, AdminError> {
        self.signal_state(
            vm,
            (VmState::Paused, VmState::Running),
            libc::SIGCONT,
            "resume",
        )
    }

    fn shutdown(&self, vm: &str, deadline: Duration) -> Result<VmInfo, AdminError> {
        let mut inner = self.lock();
        let i = Self::find(&inner, vm)?;
        let v = &inner.vms[i];
        let from = v.state;
        let (VmState::Running | VmState::Paused, Some(p)) = (v.state, &v.proc) else {
            return Err(Self::conflict(v, "shut down"));
        };
        // A paused guest cannot answer: it runs again first.
        if from == VmState::Paused {
            process::pidfd_signal(&p.pidfd, libc::SIGCONT).map_err(internal)?;
        }
        process::pidfd_signal(&p.pidfd, vmmproc::SHUTDOWN_SIGNAL).map_err(internal)?;
        let v = &mut inner.vms[i];
        v.by_admin = true;
        v.deadline = Some(Instant::now() + deadline);
        v.state = VmState::ShuttingDown;
        self.emit_state(&mut inner, i, from);
        Ok(inner.vms[i].info())
    }

    fn stop(&self, vm: &str) -> Result<VmInfo, AdminError> {
        let inner = self.lock();
        let i = Self::find(&inner, vm)?;
        let v = &inner.vms[i];
        if v.proc.is_none() && v.state != VmState::Restarting {
            return Err(Self::conflict(v, "stop"));
        }
        let inner = self.kill_and_wait(inner, i)?;
        Ok(inner.vms[i].info())
    }

    fn restart(&self, vm: &str) -> Result<VmInfo, AdminError> {
        let inner = self.lock();
        let i = Self::find(&inner, vm)?;
        let mut inner = if inner.vms[i].proc.is_some() || inner.vms[i].state == VmState::Restarting
        {
            self.kill_and_wait(inner, i)?
        } else {
            inner
        };
        inner.vms[i].backoff = None;
        self.spawn_vm(&mut inner, i)?;
        Ok(inner.vms[i].info())
    }

    fn delete(&self, vm: &str) -> Result<(), AdminError> {
        let inner = self.lock();
        let i = Self::find(&inner, vm)?;
        if inner.vms[i].request.is_none() {
            return Err(AdminError::Invalid(format!(
                "vm {vm:?} is declared in the system description: only dynamic VMs can be deleted"
            )));
        }
        let mut inner = if inner.vms[i].proc.is_some() || inner.vms[i].state == VmState::Restarting
        {
            self.kill_and_wait(inner, i)?
        } else {
            inner
        };
        let i = Self::find(&inner, vm)?;
        inner.vms.remove(i);
        let _ = std::fs::remove_dir_all(self.vm_dir(vm));
        Self::emit(&mut inner, Event::Deleted { vm: vm.to_string() });
        Ok(())
    }

    fn console(&self, vm: &str) -> Result<UnixStream, AdminError> {
        // A VMM just started may not serve its socket yet: a few tries within a second.
        let mut tries = 0;
        loop {
            {
                let inner = self.lock();
                let i = Self::find(&inner, vm)?;
                if inner.vms[i].proc.is_none() {
                    return Err(Self::conflict(&inner.vms[i], "attach the console"));
                }
            }
            match vmmproc::in_dir(&self.vm_dir(vm), vmmproc::CONSOLE_SOCK, |p| {
                UnixStream::connect(p)
            }) {
                Ok(s) => return Ok(s),
                Err(e) if tries >= 20 => {
                    return Err(internal(format!("vm {vm:?}: console: {e}")));
                }
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = std::sync::mpsc::sync_channel(SUBSCRIBER_QUEUE);
        self.lock().subscribers.push(tx);
        rx
    }
}

#[cfg(test)]
mod tests;
