//! `keel`: run and check Keel systems.
//!
//! Exit status: the guest's debug-exit code, 0 on power-off (and on a reboot the VM's
//! `on_reboot = "stop"` ends the run with, unless `--on-reboot=fail`), 1 on a guest crash or
//! a VMM/hypervisor failure, 2 on bad input, 4 when a VM that restarts on reboot reset more
//! than `max_restarts_per_minute` times within a minute.

mod admin;
mod sel4;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use keel_kvm::VmExitStatus;
use keel_kvm::log::{self, Level};
use keel_spec::{Memory, System, VmSpec};

const USAGE: &str = "\
keel: a virtual machine monitor (Linux KVM backend: x86_64 guests on x86_64 hosts,
aarch64 guests on aarch64 hosts)

USAGE:
    keel run <system.toml> [--vm NAME] [--log-level LEVEL] [--stats] [--on-reboot ACTION]
    keel up <system.toml> [--log-level LEVEL] [--stats] [--stats-interval SECS]
    keel check <system.toml>
    keel daemon <system.toml> [--state-dir DIR] [--socket PATH] [--log-level LEVEL]
    keel ctl [--socket PATH | --state-dir DIR] [--token T | --token-file F] [--json] <command>
    keel sel4 build <system.toml> [--board B] [--out DIR] | keel sel4 run <loader.img>
    keel --version | --help

COMMANDS:
    run      boot one VM of the system and wait until the guest stops
    up       run the whole system: one process per VM, one switch process per network;
             every VM's serial/console output on stdout prefixed with `[name] `; stdin
             goes to one VM at a time (the first; `@N` or `@name` then Enter at the start
             of a line switches, `@@` sends `@`: docs/console.md); stops on Ctrl-C (on a
             terminal: Ctrl-A x) or when every VM has ended
    check    validate the system (including its host files); one line per VM with one
             per network interface, then each network's ports and allowed pairs
    daemon   the admin: run the system's VMs supervised (one VMM process per VM, restart
             policies, dynamic VMs within [limits]) and serve the REST API on a Unix
             socket (default <state>/keel.sock); SIGTERM/SIGINT stop every VM; see
             docs/admin.md
    ctl      the client of `keel daemon`'s REST API: list, get, create, start, pause,
             resume, shutdown, stop, restart, delete, console, events, token list|create|
             revoke; see `keel ctl --help`
    sel4     build a seL4 Microkit image of the system (MICROKIT_SDK) and run it under
             QEMU; see `keel sel4 --help`

OPTIONS (run):
    --vm NAME             the VM to run (required when the system has several)
    --log-level LEVEL     error | warn | info | debug (default: info)
    --stats               print peak RSS, guest memory touched, exits by kind and wall time
    --on-reboot ACTION    for a VM with on_reboot = \"stop\" (the default, \"restart\", restarts
                          the VM in place): what the reboot that ends the run means
                          exit0 (default): status 0; fail: status 1

OPTIONS (up):
    --log-level LEVEL     as for run, in every VM process
    --stats               print each switch port's counters (frames, drops by reason) at
                          the end
    --stats-interval SECS print every process's counters every SECS seconds (0.1 to
                          86400) while the system runs, as on SIGUSR1

COUNTERS AT RUN TIME (up):
    kill -USR1 <pid of keel up> makes each switch process print one
    `keel: counters: switch \"NET\" port I (vm V net N): rx_frames ...` line per port and
    each VM process one `[V] keel: counters: vm \"V\" virtio-net ...` line per network
    interface, on stderr; the system keeps running. See docs/net.md.

With serial = \"stdio\" on a terminal, stdin is raw and goes to the guest's serial port;
type Ctrl-A x to stop the VM (Ctrl-A Ctrl-A sends a Ctrl-A).

EXIT STATUS:
    0    the guest powered off (or rebooted with on_reboot = \"stop\", see --on-reboot)
    V    the guest wrote V to the debug-exit port 0xf4 (x86)
    1    the guest crashed (triple fault), or the VMM or KVM failed
    2    bad input: arguments, system file, kernel, disks
    4    the guest rebooted more than max_restarts_per_minute times within a minute
         (on_reboot = \"restart\"); keel stopped it
    up:  0 if every VM ended with 0, else the first non-zero VM status (in file order);
         128+N when keel up was stopped by signal N (Ctrl-C: 130)
";

/// Exit status for bad input.
const EXIT_INPUT: u8 = 2;
/// Exit status for VMM failures and guest crashes.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit status when the restart limit stopped a guest that kept rebooting.
const EXIT_RESTART_LIMIT: u8 = 4;

/// A failure with the exit status it maps to.
pub(crate) struct Failure {
    pub(crate) status: u8,
    pub(crate) message: String,
}

impl Failure {
    fn input(message: impl Into<String>) -> Failure {
        Failure {
            status: EXIT_INPUT,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnReboot {
    Exit0,
    Fail,
}

#[derive(Debug)]
enum Command {
    Help,
    Version,
    Check {
        system: PathBuf,
    },
    Run {
        system: PathBuf,
        vm: Option<String>,
        level: Level,
        stats: bool,
        on_reboot: OnReboot,
    },
    Up {
        system: PathBuf,
        level: Level,
        stats: bool,
        interval: Option<Duration>,
    },
    /// `keel ctl ...`: the REST API's client.
    Ctl(admin::ctl::Invocation),
}

/// `--stats-interval`'s bounds, in seconds.
const STATS_INTERVAL_SECS: std::ops::RangeInclusive<f64> = 0.1..=86_400.0;

/// `--stats-interval SECS`: a number of seconds in [`STATS_INTERVAL_SECS`].
fn parse_interval(v: &str) -> Result<Duration, Failure> {
    v.parse::<f64>()
        .ok()
        .filter(|s| STATS_INTERVAL_SECS.contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            Failure::input(format!(
                "--stats-interval {v:?} is not a number of seconds from {} to {}",
                STATS_INTERVAL_SECS.start(),
                STATS_INTERVAL_SECS.end()
            ))
        })
}

/// Split `--opt=value` or take the value from the next argument.
fn option_value(
    arg: &str,
    name: &str,
    rest: &mut impl Iterator<Item = String>,
) -> Result<Option<String>, Failure> {
    if let Some(v) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
        return Ok(Some(v.to_string()));
    }
    if arg == name {
        return rest
            .next()
            .map(Some)
            .ok_or_else(|| Failure::input(format!("{name} needs a value")));
    }
    Ok(None)
}

fn parse_args(args: Vec<String>) -> Result<Command, Failure> {
    let mut it = args.into_iter();
    let Some(cmd) = it.next() else {
        return Err(Failure::input("no command given (try `keel --help`)"));
    };
    match cmd.as_str() {
        "-h" | "--help" | "help" => return Ok(Command::Help),
        "-V" | "--version" => return Ok(Command::Version),
        "run" | "check" | "up" => {}
        "ctl" => return admin::ctl::parse(it.collect()).map(Command::Ctl),
        other => {
            return Err(Failure::input(format!(
                "unknown command {other:?} (expected run, up, check, daemon or ctl; try `keel --help`)"
            )));
        }
    }
    let mut system: Option<PathBuf> = None;
    let mut vm = None;
    let mut level = Level::Info;
    let mut stats = false;
    let mut on_reboot = OnReboot::Exit0;
    let mut interval = None;
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        if cmd == "run" || cmd == "up" {
            if cmd == "run" {
                if let Some(v) = option_value(&arg, "--vm", &mut it)? {
                    vm = Some(v);
                    continue;
                }
                if let Some(v) = option_value(&arg, "--on-reboot", &mut it)? {
                    on_reboot = match v.as_str() {
                        "exit0" => OnReboot::Exit0,
                        "fail" => OnReboot::Fail,
                        _ => {
                            return Err(Failure::input(format!(
                                "--on-reboot {v:?} is not one of exit0, fail"
                            )));
                        }
                    };
                    continue;
                }
            }
            if cmd == "up" {
                if let Some(v) = option_value(&arg, "--stats-interval", &mut it)? {
                    interval = Some(parse_interval(&v)?);
                    continue;
                }
            }
            if let Some(v) = option_value(&arg, "--log-level", &mut it)? {
                level = Level::parse(&v).ok_or_else(|| {
                    Failure::input(format!(
                        "--log-level {v:?} is not one of error, warn, info, debug"
                    ))
                })?;
                continue;
            }
            if arg == "--stats" {
                stats = true;
                continue;
            }
        }
        if arg.starts_with('-') && arg != "-" {
            return Err(Failure::input(format!(
                "unknown option {arg:?} for `keel {cmd}` (try `keel --help`)"
            )));
        }
        if system.is_some() {
            return Err(Failure::input(format!(
                "unexpected argument {arg:?}: `keel {cmd}` takes one system file"
            )));
        }
        system = Some(PathBuf::from(arg));
    }
    let system = system.ok_or_else(|| {
        Failure::input(format!(
            "`keel {cmd}` needs a system file (keel {cmd} <system.toml>)"
        ))
    })?;
    Ok(if cmd == "check" {
        Command::Check { system }
    } else if cmd == "up" {
        Command::Up {
            system,
            level,
            stats,
            interval,
        }
    } else {
        Command::Run {
            system,
            vm,
            level,
            stats,
            on_reboot,
        }
    })
}

/// `keel daemon <system.toml> [--state-dir DIR] [--socket PATH] [--log-level L]`.
fn parse_daemon(args: &[String]) -> Result<admin::daemon::DaemonArgs, Failure> {
    let mut it = args.iter().cloned();
    let (mut system, mut state_dir, mut socket, mut level) = (None, None, None, Level::Info);
    while let Some(arg) = it.next() {
        if let Some(v) = option_value(&arg, "--state-dir", &mut it)? {
            state_dir = Some(PathBuf::from(v));
        } else if let Some(v) = option_value(&arg, "--socket", &mut it)? {
            socket = Some(PathBuf::from(v));
        } else if let Some(v) = option_value(&arg, "--log-level", &mut it)? {
            level = Level::parse(&v).ok_or_else(|| {
                Failure::input(format!(
                    "--log-level {v:?} is not one of error, warn, info, debug"
                ))
            })?;
        } else if arg.starts_with('-') {
            return Err(Failure::input(format!(
                "unknown option {arg:?} for `keel daemon` (try `keel --help`)"
            )));
        } else if system.replace(PathBuf::from(&arg)).is_some() {
            return Err(Failure::input(format!(
                "unexpected argument {arg:?}: `keel daemon` takes one system file"
            )));
        }
    }
    let system = system.ok_or_else(|| {
        Failure::input("`keel daemon` needs a system file (keel daemon <system.toml>)")
    })?;
    Ok(admin::daemon::DaemonArgs {
        system,
        state_dir,
        socket,
        level,
    })
}

pub(crate) fn load(path: &std::path::Path) -> Result<System, Failure> {
    keel_spec::load(path).map_err(|e| Failure::input(format!("{}: {e}", path.display())))
}

fn size_text(bytes: u64) -> String {
    if bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn summary(vm: &VmSpec) -> String {
    let memory = match &vm.memory {
        Memory::Size(s) => size_text(*s),
        Memory::Regions(r) => format!(
            "{} in {}",
            size_text(vm.memory.total()),
            plural(r.len(), "region")
        ),
    };
    let mut s = format!(
        "vm {:?}: {}, {}, {}, kernel {}",
        vm.name,
        vm.arch,
        plural(vm.vcpus as usize, "vCPU"),
        memory,
        vm.kernel
    );
    if let Some(i) = &vm.initrd {
        s.push_str(&format!(", initrd {i}"));
    }
    s.push_str(&format!(
        ", {}, {}, serial {}",
        plural(vm.disks.len(), "disk"),
        plural(vm.consoles.len(), "console"),
        vm.serial
    ));
    if vm.rng {
        s.push_str(", rng");
    }
    s
}

/// What `keel check` prints: one line per VM, each followed by one indented line per
/// network interface, per served disk, per client it serves and per shared region it maps and one for its vsock device; then per shared region one line; then
/// per network one line, one per port and one per allowed pair.
fn check_lines(plan: &keel_spec::plan::SystemPlan, sys: &System) -> Vec<String> {
    use keel_spec::plan::PortOwner;
    let mut lines = Vec::new();
    for vm in sys.vms() {
        lines.push(summary(vm));
        for (i, nic) in plan
            .vm(&vm.name)
            .map(|p| &p.nics[..])
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            lines.push(format!(
                "  net {i}: network {:?}, mac {}, port {}",
                nic.network_name, nic.mac, nic.port
            ));
        }
        for (i, d) in vm.disks.iter().enumerate() {
            if let Some(s) = &d.served {
                lines.push(format!(
                    "  disk {i}: served by vm {:?}, its disk {} [{:#x}, {:#x}){}",
                    s.server,
                    s.server_disk,
                    s.start,
                    s.start.saturating_add(s.size),
                    if d.read_only { ", read-only" } else { "" }
                ));
            }
        }
        for s in plan.vm(&vm.name).map(|p| &p.serves[..]).unwrap_or(&[]) {
            lines.push(format!(
                "  serves vm {:?} disk {}: its disk {} [{:#x}, {:#x}), region at {:#x} ({})",
                s.client,
                s.client_disk,
                s.server_disk,
                s.start,
                s.start.saturating_add(s.size),
                s.gpa,
                keel_spec::SizeDisplay(s.region_len)
            ));
        }
        for (i, m) in plan
            .vm(&vm.name)
            .map(|p| &p.shared[..])
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            lines.push(format!(
                "  shared {i}: region {:?} at {:#x}..{:#x} ({})",
                m.region,
                m.base,
                m.base.saturating_add(m.size),
                m.access
            ));
        }
        if let Some(v) = plan.vm(&vm.name).and_then(|p| p.vsock.as_ref()) {
            let socket = match &v.socket {
                Some(path) => format!("socket {path}"),
                None => "no host socket".into(),
            };
            let peers: Vec<String> = v
                .peers
                .iter()
                .map(|p| format!("vm {:?} (cid {})", p.vm, p.cid))
                .collect();
            let peers = if peers.is_empty() {
                "none".into()
            } else {
                peers.join(", ")
            };
            lines.push(format!("  vsock: cid {}, {socket}, peers {peers}", v.cid));
        }
    }
    for region in &plan.shared {
        let users: Vec<String> = region
            .users
            .iter()
            .map(|(vm, m)| format!("vm {vm:?} {} at {:#x}", m.access, m.base))
            .collect();
        lines.push(format!(
            "shared {:?}: {}, mapped by {}",
            region.name,
            keel_spec::SizeDisplay(region.size),
            users.join(", ")
        ));
    }
    for net in &plan.networks {
        lines.push(format!(
            "network {:?}: {}, {} slots per ring, MAC table {}, queue depth {} (flood {}), ageing {} ms",
            net.name,
            plural(net.ports.len(), "port"),
            net.slots,
            net.mac_table,
            net.queue_depth,
            net.flood_depth,
            net.ageing_ms
        ));
        let who = |port: u16| match net.ports.get(usize::from(port)).map(|p| &p.owner) {
            Some(PortOwner::Vm { vm, nic }) => format!("vm {vm:?} net {nic}"),
            Some(PortOwner::Uplink { tap }) => format!("uplink tap:{tap}"),
            Some(PortOwner::Pool { slot }) => format!("pool port {slot}"),
            None => "no such port".into(),
        };
        for (i, p) in net.ports.iter().enumerate() {
            let mac = match p.mac {
                Some(m) => format!("mac {m}"),
                None => "any source MAC no VM port declares".into(),
            };
            lines.push(format!("  port {i}: {}, {mac}", who(i as u16)));
        }
        if net.allow.is_empty() {
            lines.push("  allow: none (no two ports may exchange frames)".into());
        }
        for &(a, b) in &net.allow {
            lines.push(format!(
                "  allow: port {a} ({}) <-> port {b} ({})",
                who(a),
                who(b)
            ));
        }
    }
    lines
}

fn check(system: &std::path::Path) -> Result<u8, Failure> {
    let sys = load(system)?;
    let plan = keel_spec::plan::plan(&sys)
        .map_err(|e| Failure::input(format!("{}: {e}", system.display())))?;
    for line in check_lines(&plan, &sys) {
        println!("{line}");
    }
    Ok(0)
}

fn pick_vm<'a>(sys: &'a System, name: Option<&str>) -> Result<&'a VmSpec, Failure> {
    let names = || {
        sys.vms()
            .iter()
            .map(|v| format!("{:?}", v.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => sys.vm(n).ok_or_else(|| {
            Failure::input(format!("no vm {n:?} in the system (it has {})", names()))
        }),
        None => match sys.vms() {
            [only] => Ok(only),
            _ => Err(Failure::input(format!(
                "the system has {} VMs; choose one with --vm ({})",
                sys.vms().len(),
                names()
            ))),
        },
    }
}

fn run(
    system: &std::path::Path,
    vm: Option<&str>,
    stats: bool,
    on_reboot: OnReboot,
) -> Result<u8, Failure> {
    let sys = load(system)?;
    let spec = pick_vm(&sys, vm)?;
    if let Some(why) = keel_kvm::vmm::kvm_refusal(spec) {
        return Err(Failure::input(format!("vm {:?}: {why}", spec.name)));
    }
    // `keel run`'s VMM is sandboxed like `keel up`'s (docs/security.md).
    keel_kvm::sandbox::request_for(spec).map_err(|e| Failure::input(e.to_string()))?;
    if !spec.nics.is_empty() {
        return Err(Failure::input(format!(
            "vm {:?} has network interfaces: run the whole system with `keel up {}` (it starts the switches)",
            spec.name,
            system.display()
        )));
    }
    // Shared regions: this VM is their only user here; the memory files live as long as
    // the VM (its VMM maps them).
    let network = if spec.shared.is_empty() {
        None
    } else {
        let plan = keel_spec::plan::plan_vm_of(&sys, spec)
            .map_err(|e| Failure::input(format!("{}: {e}", system.display())))?;
        let files = plan
            .shared
            .iter()
            .map(|m| {
                usize::try_from(m.size)
                    .map_err(|_| std::io::Error::other("too large"))
                    .and_then(|len| {
                        keel_kvm::net::SharedMemory::create(
                            &format!("keel-shared-{}", m.region),
                            len,
                        )
                    })
                    .map_err(|e| Failure {
                        status: EXIT_FAILURE,
                        message: format!("shared region {:?}: {e}", m.region),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Some(
            keel_kvm::VmNetwork::new(plan, Vec::new())
                .and_then(|n| n.with_shared(files))
                .map_err(vmm_failure)?,
        )
    };
    warn_colours_not_applied(std::slice::from_ref(spec));
    let scope = keel_kvm::placement::CgroupScope::this_process(sys.name());
    run_vm_to_exit(spec, network, false, &scope, stats, on_reboot)
}

/// The warning `keel run` and `keel up` print (once) when VMs have `cache_colours`, or
/// `None` when none has.
pub(crate) fn colours_warning(vms: &[VmSpec]) -> Option<String> {
    let names: Vec<String> = vms
        .iter()
        .filter(|v| v.cache_colours.is_some())
        .map(|v| format!("{:?}", v.name))
        .collect();
    if names.is_empty() {
        return None;
    }
    Some(format!(
        "cache_colours of vm {} are not applied on Linux/KVM: a user-space VMM cannot choose the physical pages behind guest RAM (colours apply on seL4, `keel sel4 build`)",
        names.join(", ")
    ))
}

/// Print [`colours_warning`] if there is one.
pub(crate) fn warn_colours_not_applied(vms: &[VmSpec]) {
    if let Some(w) = colours_warning(vms) {
        log::warn(format_args!("{w}"));
    }
}

/// A VMM error as a failure: bad input (exit 2) or a VMM/KVM failure (exit 1).
pub(crate) fn vmm_failure(e: keel_kvm::VmmError) -> Failure {
    Failure {
        status: if e.is_input_error() {
            EXIT_INPUT
        } else {
            EXIT_FAILURE
        },
        message: e.to_string(),
    }
}

/// Run VM `spec` (with its network ports and shared regions; `in_up`: in a `keel up` VMM
/// process) until it stops for good; its exit status.
pub(crate) fn run_vm_to_exit(
    spec: &VmSpec,
    network: Option<keel_kvm::VmNetwork>,
    in_up: bool,
    scope: &keel_kvm::placement::CgroupScope,
    stats: bool,
    on_reboot: OnReboot,
) -> Result<u8, Failure> {
    // The serial console is the terminal: raw mode while the VM runs (Ctrl-A x quits).
    let _raw = if spec.serial == keel_spec::Output::Stdio && !in_up {
        keel_kvm::host::RawTerminal::enable()
    } else {
        None
    };
    // In `keel up`, SIGUSR1 asks for the network devices' counters (docs/net.md).
    let counters_signal = if in_up {
        Some(up::counters_signal_fd()?)
    } else {
        None
    };
    // Builds the VM (bad input is reported here, before any note), then runs it,
    // restarting it in place on a guest reset as its `on_reboot` says.
    // A placed VM's process stays on its CPUs: this thread and any it starts, too.
    keel_kvm::placement::confine_process_for(spec).map_err(vmm_failure)?;
    let handle = keel_kvm::start_vm_in(spec, network, scope).map_err(vmm_failure)?;
    if let Some(fd) = counters_signal {
        up::report_counters_on_signal(fd, &spec.name, handle.probe())?;
    }
    if !in_up {
        // `keel up` prints it once for the whole system.
        keel_kvm::host::note_software_kvm();
    }
    let mut report = handle.wait().map_err(vmm_failure)?;
    // `keel run` exits right after: the kernel destroys the VM at exit faster than an
    // explicit close of its fd (bench/ANALYSIS.md, teardown).
    report.leave_vm_to_process_exit();
    if stats {
        eprintln!("{}", report.stats);
    }
    match report.status {
        VmExitStatus::PowerOff => Ok(0),
        VmExitStatus::ExitCode(v) => Ok(v),
        VmExitStatus::Reboot => {
            eprintln!("keel: guest requested reboot");
            Ok(if on_reboot == OnReboot::Fail {
                EXIT_FAILURE
            } else {
                0
            })
        }
        // keel_kvm::run_vm has said why in one line.
        VmExitStatus::RestartLimit { .. } => Ok(EXIT_RESTART_LIMIT),
        // Not produced by `keel run` (nothing here calls `VmHandle::stop`).
        VmExitStatus::HostStop => Ok(0),
        VmExitStatus::Crash => Err(Failure {
            status: EXIT_FAILURE,
            message: format!(
                "vm {:?}: the guest crashed (triple fault / shutdown)",
                spec.name
            ),
        }),
    }
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        keel_kvm::host::restore_terminal();
        eprintln!("keel: error: internal error (a bug in keel): {msg}{location}");
        std::process::exit(i32::from(EXIT_FAILURE));
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hidden = match args.first().map(String::as_str) {
        Some(up::VMM_COMMAND) => Some(up::vmm_main(&args[1..])),
        Some(up::SWITCH_COMMAND) => Some(up::switch_main(&args[1..])),
        _ => None,
    };
    if let Some(result) = hidden {
        return match result {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("keel: error: {}", e.message);
                ExitCode::from(e.status)
            }
        };
    }
    if args.first().map(String::as_str) == Some("daemon") {
        return match parse_daemon(&args[1..]).and_then(admin::daemon::run) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("keel: error: {}", e.message);
                ExitCode::from(e.status)
            }
        };
    }
    if args.first().map(String::as_str) == Some("sel4") {
        return match sel4::main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keel: error: {}", e.message);
                ExitCode::from(e.status)
            }
        };
    }
    let result = parse_args(args).and_then(|cmd| match cmd {
        Command::Help => {
            print!("{USAGE}");
            Ok(0)
        }
        Command::Version => {
            println!("keel {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Check { system } => check(&system),
        Command::Run {
            system,
            vm,
            level,
            stats,
            on_reboot,
        } => {
            log::set_level(level);
            run(&system, vm.as_deref(), stats, on_reboot)
        }
        Command::Up {
            system,
            level,
            stats,
            interval,
        } => {
            log::set_level(level);
            up::up(&system, level, stats, interval)
        }
        Command::Ctl(inv) => admin::ctl::run(&inv),
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("keel: error: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn daemon_options_are_parsed() {
        let a = parse_daemon(&args(
            "sys.toml --state-dir /s --socket=/s/x.sock --log-level debug",
        ))
        .ok()
        .unwrap();

        assert_eq!(
            a,
            admin::daemon::DaemonArgs {
                system: PathBuf::from("sys.toml"),
                state_dir: Some(PathBuf::from("/s")),
                socket: Some(PathBuf::from("/s/x.sock")),
                level: Level::Debug,
            }
        );
    }

    #[test]
    fn daemon_refuses_an_unknown_option_naming_it() {
        let e = parse_daemon(&args("sys.toml --stats")).err().unwrap();

        assert_eq!(e.status, EXIT_INPUT);
        assert!(e.message.contains("\"--stats\""), "{}", e.message);
    }

    #[test]
    fn run_options_are_parsed() {
        let cmd = parse_args(args("run sys.toml --vm web --log-level=debug --stats"))
            .ok()
            .unwrap();
        match cmd {
            Command::Run {
                system,
                vm,
                level,
                stats,
                on_reboot,
            } => {
                assert_eq!(system, PathBuf::from("sys.toml"));
                assert_eq!(vm.as_deref(), Some("web"));
                assert_eq!(level, Level::Debug);
                assert!(stats);
                assert_eq!(on_reboot, OnReboot::Exit0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn up_options_are_parsed() {
        let cmd = parse_args(args("up sys.toml --stats --log-level warn"))
            .ok()
            .unwrap();

        assert!(matches!(
            cmd,
            Command::Up {
                level: Level::Warn,
                stats: true,
                ..
            }
        ));
    }

    #[test]
    fn up_stats_interval_is_parsed_in_seconds() {
        let cmd = parse_args(args("up sys.toml --stats-interval 2.5"))
            .ok()
            .unwrap();

        assert!(matches!(
            cmd,
            Command::Up { interval: Some(d), .. } if d == Duration::from_millis(2500)
        ));
    }

    #[test]
    fn stats_interval_out_of_range_is_bad_input_naming_it() {
        let err = parse_args(args("up sys.toml --stats-interval=0"))
            .err()
            .unwrap();

        assert_eq!(err.status, EXIT_INPUT);
        assert!(
            err.message.contains("--stats-interval \"0\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn run_refuses_the_stats_interval_option() {
        let err = parse_args(args("run sys.toml --stats-interval 1"))
            .err()
            .unwrap();

        assert_eq!(err.status, EXIT_INPUT);
        assert!(err.message.contains("--stats-interval"));
    }

    #[test]
    fn up_refuses_the_vm_option() {
        let err = parse_args(args("up sys.toml --vm a")).err().unwrap();

        assert_eq!(err.status, EXIT_INPUT);
        assert!(err.message.contains("--vm"));
    }

    #[test]
    fn unknown_option_is_bad_input() {
        let err = parse_args(args("run sys.toml --frobnicate")).err().unwrap();
        assert_eq!(err.status, EXIT_INPUT);
        assert!(err.message.contains("--frobnicate"));
    }

    #[test]
    fn bad_log_level_is_rejected_naming_it() {
        let err = parse_args(args("run sys.toml --log-level loud"))
            .err()
            .unwrap();
        assert!(err.message.contains("\"loud\""));
    }

    #[test]
    fn missing_system_file_is_bad_input() {
        let err = parse_args(args("check")).err().unwrap();
        assert_eq!(err.status, EXIT_INPUT);
    }

    #[test]
    fn on_reboot_fail_is_accepted() {
        let cmd = parse_args(args("run s.toml --on-reboot fail"))
            .ok()
            .unwrap();
        assert!(matches!(
            cmd,
            Command::Run {
                on_reboot: OnReboot::Fail,
                ..
            }
        ));
    }

    fn vm_with_colours(name: &str, colours: Option<Vec<u32>>) -> VmSpec {
        let mut v = VmSpec::new(
            name,
            keel_spec::Arch::Aarch64,
            keel_spec::HostPath::new("/k"),
            Memory::Size(64 << 20),
        );
        v.cache_colours = colours;
        v
    }

    #[test]
    fn the_colours_warning_names_every_coloured_vm_in_one_line() {
        let vms = [
            vm_with_colours("a", Some(vec![0])),
            vm_with_colours("b", None),
            vm_with_colours("c", Some(vec![1])),
        ];

        let w = colours_warning(&vms).unwrap();

        assert!(
            w.starts_with("cache_colours of vm \"a\", \"c\" are not applied on Linux/KVM"),
            "{w}"
        );
        assert_eq!(w.lines().count(), 1);
    }

    #[test]
    fn uncoloured_vms_get_no_colours_warning() {
        assert_eq!(colours_warning(&[vm_with_colours("a", None)]), None);
    }
}
