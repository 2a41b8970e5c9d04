//! Reading the TOML file into the model (`std`): shape via serde, then conversion with
//! precise, path-named errors, then the shared semantic checks, then host checks.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::env::expand;
use crate::error::{ErrorKind, SpecError};
use crate::model::VsockSpec;
use crate::model::{
    Access, Arch, ConsoleSpec, ControlRight, ControlSpec, CpuSet, DiskSpec, HostPath, Limits, Llc,
    MacAddr, Memory, NetworkSpec, NicSpec, OnReboot, Output, OutputKind, Placement, RamRegion,
    Restart, ServedDisk, SharedMapSpec, SharedSpec, System, VmSpec,
};
use crate::model::{Dma, PassthroughDt, PassthroughSpec};
use crate::size::parse_size;
use crate::validate::{check_vm, vm_label};

/// Reads, parses and validates a system description, and checks its host files (kernels are
/// kernels for the VM's arch, disks open with the mode they need, …). Relative paths are
/// resolved against the file's directory (made absolute); the system name defaults to the
/// file stem.
pub fn load(path: &Path) -> Result<System, SpecError> {
    Loader::new().load(path)
}

/// Parses and validates a system description given as text, resolving relative paths against
/// `base_dir`, and checks its host files. The system name defaults to `"keel"`.
pub fn parse_str(text: &str, base_dir: &Path) -> Result<System, SpecError> {
    Loader::new().parse_str(text, base_dir)
}

type EnvFn<'e> = &'e dyn Fn(&str) -> Option<String>;

fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// Parsing with options: where `${VAR}` values come from, and whether host files are checked.
///
/// ```no_run
/// let system = keel_spec::Loader::new()
///     .host_checks(false) // e.g. building for another machine
///     .load(std::path::Path::new("keel.toml"))?;
/// # Ok::<(), keel_spec::SpecError>(())
/// ```
pub struct Loader<'e> {
    env: EnvFn<'e>,
    host_checks: bool,
}

impl fmt::Debug for Loader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("host_checks", &self.host_checks)
            .finish_non_exhaustive()
    }
}

impl Default for Loader<'static> {
    fn default() -> Self {
        Loader::new()
    }
}

impl Loader<'static> {
    /// The process environment, host checks on.
    pub fn new() -> Self {
        Loader {
            env: &process_env,
            host_checks: true,
        }
    }
}

impl<'e> Loader<'e> {
    /// Takes `${VAR}` values from `env` instead of the process environment
    /// (`KEEL_CACHE` still defaults to `${HOME}/.cache/keel` when `env` has no value for it).
    pub fn env<'f>(self, env: &'f dyn Fn(&str) -> Option<String>) -> Loader<'f> {
        Loader {
            env,
            host_checks: self.host_checks,
        }
    }

    /// Whether to check host files (existence, kernel format, disk open modes). On by default.
    pub fn host_checks(mut self, on: bool) -> Self {
        self.host_checks = on;
        self
    }

    /// Like [`load`].
    pub fn load(&self, path: &Path) -> Result<System, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SpecError::new(
                "",
                ErrorKind::Read {
                    path: path.display().to_string(),
                    reason: crate::host::io_reason(&e),
                },
            )
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Absolute, so the paths stay valid if the VMM later changes directory.
        let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.parse_named(&text, &base_dir, &stem)
    }

    /// Like [`parse_str`].
    pub fn parse_str(&self, text: &str, base_dir: &Path) -> Result<System, SpecError> {
        self.parse_named(text, base_dir, "keel")
    }

    /// Parses `text` with `default_name` as the system name when `[system] name` is absent.
    pub fn parse_named(
        &self,
        text: &str,
        base_dir: &Path,
        default_name: &str,
    ) -> Result<System, SpecError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let system = self.convert(raw, base_dir, default_name)?;
        if self.host_checks {
            crate::host::check_host(&system)?;
        }
        Ok(system)
    }

    fn convert(
        &self,
        raw: RawFile,
        base_dir: &Path,
        default_name: &str,
    ) -> Result<System, SpecError> {
        let raw_system = raw.system.unwrap_or_default();
        let name = raw_system.name.unwrap_or_else(|| default_name.to_string());
        crate::validate::check_system_name(&name)?;
        let pcpus = match raw_system.pcpus {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                SpecError::new(
                    "system",
                    ErrorKind::OutOfRange {
                        key: "pcpus",
                        value: n.into(),
                        range: "1..=1024",
                    },
                )
            })?),
        };
        crate::validate::check_pcpus(pcpus)?;
        let llc = match raw_system.llc {
            None => None,
            Some(raw) => Some(llc(raw)?),
        };
        crate::validate::check_llc(llc)?;
        let ctx = Ctx {
            env: self.env,
            base_dir,
        };
        let mut networks = Vec::with_capacity(raw.network.len());
        for (index, net) in raw.network.into_iter().enumerate() {
            networks.push(network(index, net)?);
        }
        let mut shared = Vec::with_capacity(raw.shared.len());
        for (index, region) in raw.shared.into_iter().enumerate() {
            let at = crate::validate::shared_label(index, &region.name);
            shared.push(SharedSpec {
                size: number(&at, "size", region.size)?,
                name: region.name,
            });
        }
        let mut vms = Vec::with_capacity(raw.vm.len());
        for (index, raw_vm) in raw.vm.into_iter().enumerate() {
            let vm = ctx.vm(index, raw_vm)?;
            // Check each VM as soon as it is built so errors come in file order.
            check_vm(index, &vm, pcpus)?;
            crate::validate::check_colours(index, &vm, llc)?;
            vms.push(vm);
        }
        let limits = match raw.limits {
            None => None,
            Some(l) => Some(ctx.limits(l)?),
        };
        let vsock_allow = raw
            .vsock
            .map(|v| v.allow.into_iter().map(|[a, b]| (a, b)).collect())
            .unwrap_or_default();
        System::with_parts(name, pcpus, llc, vms, networks, shared)?
            .with_limits(limits)?
            .with_vsock_allow(vsock_allow)
    }
}

fn llc(raw: RawLlc) -> Result<Llc, SpecError> {
    let size = number("system: llc", "size", raw.size)?;
    let ways = u32::try_from(raw.ways)
        .ok()
        .filter(|w| (1..=crate::limits::MAX_LLC_WAYS).contains(w))
        .ok_or_else(|| {
            SpecError::new(
                "system",
                ErrorKind::OutOfRange {
                    key: "llc: ways",
                    value: raw.ways.into(),
                    range: "1..=1024",
                },
            )
        })?;
    Ok(Llc { size, ways })
}

fn network(index: usize, raw: RawNetwork) -> Result<NetworkSpec, SpecError> {
    let at = crate::validate::network_label(index, &raw.name);
    // A number that does not fit a u32 is out of the key's range (validation checks the rest).
    let number = |value: Option<i64>, default: u32, key: &'static str, range: &'static str| {
        value.map_or(Ok(default), |n| {
            u32::try_from(n).map_err(|_| {
                SpecError::new(
                    at.clone(),
                    ErrorKind::OutOfRange {
                        key,
                        value: n.into(),
                        range,
                    },
                )
            })
        })
    };
    let slots = number(
        raw.slots,
        NetworkSpec::DEFAULT_SLOTS,
        "slots",
        "a power of two in 16..=4096",
    )?;
    let flood_rate = number(
        raw.flood_rate,
        NetworkSpec::DEFAULT_FLOOD_RATE,
        "flood_rate",
        crate::validate::FLOOD_RATE_RANGE,
    )?;
    let flood_burst = number(
        raw.flood_burst,
        NetworkSpec::DEFAULT_FLOOD_BURST,
        "flood_burst",
        crate::validate::FLOOD_BURST_RANGE,
    )?;
    Ok(NetworkSpec {
        name: raw.name,
        allow: raw
            .allow
            .map(|pairs| pairs.into_iter().map(|[a, b]| (a, b)).collect()),
        slots,
        uplink: raw.uplink,
        flood_rate,
        flood_burst,
    })
}

/// Maps toml's multi-line error to one line: `line L, column C: message`.
fn toml_error(text: &str, error: &toml::de::Error) -> SpecError {
    let message = error
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .replace('`', "\"");
    let at = match error.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}")
        }
        None => String::new(),
    };
    SpecError::new(at, ErrorKind::Toml(message))
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

// ---- the shape of the file -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    system: Option<RawSystem>,
    #[serde(default)]
    vm: Vec<RawVm>,
    #[serde(default)]
    network: Vec<RawNetwork>,
    #[serde(default)]
    shared: Vec<RawShared>,
    limits: Option<RawLimits>,
    vsock: Option<RawVsockAllow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVsockAllow {
    #[serde(default)]
    allow: Vec<[String; 2]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVsock {
    cid: i64,
    socket: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_vms: i64,
    memory: RawNumber,
    vcpus: i64,
    #[serde(default)]
    kernels: Vec<String>,
    #[serde(default)]
    initrds: Vec<String>,
    #[serde(default)]
    disks: Vec<String>,
    #[serde(default)]
    networks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    name: String,
    size: RawNumber,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSharedMap {
    region: String,
    base: RawNumber,
    access: Option<String>,
    size: Option<RawNumber>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    vm: String,
    rights: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    allow: Option<Vec<[String; 2]>>,
    slots: Option<i64>,
    uplink: Option<String>,
    flood_rate: Option<i64>,
    flood_burst: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNic {
    network: String,
    mac: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSystem {
    name: Option<String>,
    pcpus: Option<i64>,
    llc: Option<RawLlc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLlc {
    size: RawNumber,
    ways: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    arch: Option<String>,
    vcpus: Option<i64>,
    memory: Option<RawNumber>,
    #[serde(default)]
    ram: Vec<RawRam>,
    kernel: String,
    initrd: Option<String>,
    cmdline: Option<String>,
    serial: Option<String>,
    placement: Option<RawPlacement>,
    #[serde(default)]
    disk: Vec<RawDisk>,
    #[serde(default)]
    console: Vec<RawConsole>,
    rng: Option<RawRng>,
    #[serde(default)]
    net: Vec<RawNic>,
    #[serde(default)]
    shared: Vec<RawSharedMap>,
    #[serde(default)]
    control: Vec<RawControl>,
    start: Option<bool>,
    on_reboot: Option<String>,
    max_restarts_per_minute: Option<i64>,
    restart: Option<String>,
    cache_colours: Option<Vec<i64>>,
    vsock: Option<RawVsock>,
    #[serde(default)]
    passthrough: Vec<RawPassthrough>,
    ram_phys_addr: Option<RawNumber>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassthrough {
    name: String,
    #[serde(default)]
    mmio: Vec<RawRam>,
    #[serde(default)]
    irqs: Vec<i64>,
    dt: Option<String>,
    dt_reg: Option<Vec<RawRam>>,
    dma: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRam {
    base: RawNumber,
    size: RawNumber,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    pcpus: Option<Vec<RawCpuSet>>,
    priority: Option<i64>,
    budget_us: Option<i64>,
    period_us: Option<i64>,
}

/// One `pcpus` entry: a CPU, or the set of CPUs a vCPU may migrate between.
enum RawCpuSet {
    One(i64),
    Set(Vec<i64>),
}

impl<'de> Deserialize<'de> for RawCpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawCpuSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CPU number or an array of CPU numbers such as [1, 2]")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawCpuSet, E> {
                Ok(RawCpuSet::One(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawCpuSet, E> {
                i64::try_from(v)
                    .map(RawCpuSet::One)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawCpuSet, A::Error> {
                let mut cpus = Vec::new();
                while let Some(cpu) = seq.next_element::<i64>()? {
                    cpus.push(cpu);
                }
                Ok(RawCpuSet::Set(cpus))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    path: Option<String>,
    #[serde(default)]
    read_only: bool,
    id: Option<String>,
    served_by: Option<String>,
    server_disk: Option<usize>,
    server_passthrough: Option<String>,
    start: Option<RawNumber>,
    size: Option<RawNumber>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    output: Option<String>,
}

/// `[vm.rng]` has no keys yet; the table's presence adds the device.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRng {}

/// A size or address: a TOML integer, or a string such as `"256M"` or `"0x4000_0000"`.
enum RawNumber {
    Integer(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a size string such as \"256M\"")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawNumber, E> {
                Ok(RawNumber::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawNumber, E> {
                i64::try_from(v)
                    .map(RawNumber::Integer)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawNumber, E> {
                Ok(RawNumber::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

// ---- conversion ------------------------------------------------------------------------

struct Ctx<'a> {
    env: EnvFn<'a>,
    base_dir: &'a Path,
}

impl Ctx<'_> {
    fn vm(&self, index: usize, raw: RawVm) -> Result<VmSpec, SpecError> {
        // Name first: every later message names the VM by it.
        crate::validate::check_vm_name(index, &raw.name)?;
        let at = vm_label(index, Some(&raw.name));
        let fail = |kind| SpecError::new(at.clone(), kind);
        let arch = match &raw.arch {
            Some(name) => {
                Arch::from_name(name).ok_or_else(|| fail(ErrorKind::BadArch(name.clone())))?
            }
            None => Arch::host().ok_or_else(|| fail(ErrorKind::NoHostArch))?,
        };
        let vcpus = match raw.vcpus {
            None => 1,
            Some(n) => u32::try_from(n).map_err(|_| {
                fail(ErrorKind::OutOfRange {
                    key: "vcpus",
                    value: n.into(),
                    range: "1..=64",
                })
            })?,
        };
        let memory = match (raw.memory, raw.ram.is_empty()) {
            (Some(_), false) => {
                return Err(fail(ErrorKind::MemoryForm(
                    "memory and [[vm.ram]] are mutually exclusive; give one",
                )));
            }
            (None, true) => {
                return Err(fail(ErrorKind::MemoryForm(
                    "neither memory nor [[vm.ram]] is given",
                )));
            }
            (Some(size), true) => Memory::Size(number(&at, "memory", size)?),
            (None, false) => {
                let mut regions = Vec::with_capacity(raw.ram.len());
                for (i, ram) in raw.ram.into_iter().enumerate() {
                    let here = format!("{at}: ram {i}");
                    regions.push(RamRegion {
                        base: number(&here, "base", ram.base)?,
                        size: number(&here, "size", ram.size)?,
                    });
                }
                Memory::Regions(regions)
            }
        };
        let on_reboot = match &raw.on_reboot {
            None => OnReboot::default(),
            Some(text) => OnReboot::from_name(text).ok_or_else(|| {
                fail(ErrorKind::NotOneOf {
                    key: "on_reboot",
                    value: text.clone(),
                    expected: "\"restart\", \"stop\"",
                })
            })?,
        };
        let max_restarts_per_minute = match raw.max_restarts_per_minute {
            None => VmSpec::DEFAULT_MAX_RESTARTS_PER_MINUTE,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=crate::limits::MAX_RESTARTS_PER_MINUTE).contains(n))
                .ok_or_else(|| {
                    fail(ErrorKind::OutOfRange {
                        key: "max_restarts_per_minute",
                        value: n.into(),
                        range: "1..=1000",
                    })
                })?,
        };
        let restart = match &raw.restart {
            None => Restart::default(),
            Some(text) => Restart::from_name(text).ok_or_else(|| {
                fail(ErrorKind::NotOneOf {
                    key: "restart",
                    value: text.clone(),
                    expected: "\"never\", \"on-failure\", \"always\"",
                })
            })?,
        };
        let cache_colours = match raw.cache_colours {
            None => None,
            Some(list) => Some(
                list.into_iter()
                    .map(|c| {
                        u32::try_from(c).map_err(|_| {
                            fail(ErrorKind::OutOfRange {
                                key: "cache_colours",
                                value: c.into(),
                                range: "0..(the llc's colour count)",
                            })
                        })
                    })
                    .collect::<Result<Vec<u32>, _>>()?,
            ),
        };
        let kernel = self.path(&at, "kernel", &raw.kernel)?;
        let initrd = match &raw.initrd {
            Some(p) => Some(self.path(&at, "initrd", p)?),
            None => None,
        };
        let serial = match &raw.serial {
            Some(text) => self.output(&at, "serial", text)?,
            None => Output::Stdio,
        };
        let placement = match raw.placement {
            Some(p) => Some(placement(&at, p)?),
            None => None,
        };
        let mut disks = Vec::with_capacity(raw.disk.len());
        for (i, disk) in raw.disk.into_iter().enumerate() {
            let here = format!("{at}: disk {i}");
            let form = |why: &'static str| SpecError::new(&here, ErrorKind::DiskForm(why));
            let spec = match (disk.path, disk.served_by) {
                (Some(_), Some(_)) => {
                    return Err(form(
                        "path and served_by are mutually exclusive: a disk is a host file or a range of a storage VM's disk",
                    ));
                }
                (None, None) => {
                    return Err(form("give path (a host file) or served_by (a storage VM)"));
                }
                (Some(path), None) => {
                    if disk.server_disk.is_some()
                        || disk.server_passthrough.is_some()
                        || disk.start.is_some()
                        || disk.size.is_some()
                    {
                        return Err(form(
                            "server_disk, server_passthrough, start and size go with served_by, not with path",
                        ));
                    }
                    DiskSpec::file(self.path(&here, "path", &path)?, disk.read_only, disk.id)
                }
                (None, Some(server)) => {
                    let Some(size) = disk.size else {
                        return Err(form(
                            "a disk served_by a storage VM needs size (its range's length)",
                        ));
                    };
                    if disk.server_disk.is_some() && disk.server_passthrough.is_some() {
                        return Err(form(
                            "server_disk and server_passthrough are mutually exclusive: the range is on a disk or on a passed-through device of the storage VM",
                        ));
                    }
                    let served = ServedDisk {
                        server,
                        server_disk: disk.server_disk.unwrap_or(0),
                        server_passthrough: disk.server_passthrough,
                        start: match disk.start {
                            Some(s) => number(&here, "start", s)?,
                            None => 0,
                        },
                        size: number(&here, "size", size)?,
                    };
                    DiskSpec {
                        path: HostPath::default(),
                        read_only: disk.read_only,
                        id: disk.id,
                        served: Some(served),
                    }
                }
            };
            disks.push(spec);
        }
        let mut consoles = Vec::with_capacity(raw.console.len());
        for (i, console) in raw.console.into_iter().enumerate() {
            let here = format!("{at}: console {i}");
            let output = match &console.output {
                Some(text) => self.output(&here, "output", text)?,
                None => Output::Stdio,
            };
            consoles.push(ConsoleSpec { output });
        }
        let mut nics = Vec::with_capacity(raw.net.len());
        for (i, nic) in raw.net.into_iter().enumerate() {
            let mac = match &nic.mac {
                None => None,
                Some(text) => Some(MacAddr::parse(text).ok_or_else(|| {
                    SpecError::new(format!("{at}: net {i}"), ErrorKind::BadMac(text.clone()))
                })?),
            };
            nics.push(NicSpec {
                network: nic.network,
                mac,
            });
        }
        let mut shared = Vec::with_capacity(raw.shared.len());
        for (i, map) in raw.shared.into_iter().enumerate() {
            let here = format!("{at}: shared {i}");
            let access = match &map.access {
                None => Access::default(),
                Some(text) => Access::from_name(text).ok_or_else(|| {
                    SpecError::new(
                        here.clone(),
                        ErrorKind::NotOneOf {
                            key: "access",
                            value: text.clone(),
                            expected: "\"rw\", \"ro\"",
                        },
                    )
                })?,
            };
            shared.push(SharedMapSpec {
                base: number(&here, "base", map.base)?,
                size: match map.size {
                    Some(size) => Some(number(&here, "size", size)?),
                    None => None,
                },
                region: map.region,
                access,
            });
        }
        let mut control = Vec::with_capacity(raw.control.len());
        for (i, c) in raw.control.into_iter().enumerate() {
            let here = format!("{at}: control {i}");
            let mut rights = Vec::with_capacity(c.rights.len());
            for text in &c.rights {
                rights.push(ControlRight::from_name(text).ok_or_else(|| {
                    SpecError::new(
                        here.clone(),
                        ErrorKind::NotOneOf {
                            key: "rights",
                            value: text.clone(),
                            expected: "\"start\", \"stop\", \"restart\", \"status\"",
                        },
                    )
                })?);
            }
            control.push(ControlSpec { vm: c.vm, rights });
        }
        let mut passthrough = Vec::with_capacity(raw.passthrough.len());
        for (i, p) in raw.passthrough.into_iter().enumerate() {
            passthrough.push(passthrough_spec(&format!("{at}: passthrough {i}"), p)?);
        }
        let ram_phys_addr = match raw.ram_phys_addr {
            Some(n) => Some(number(&at, "ram_phys_addr", n)?),
            None => None,
        };
        let vsock = match raw.vsock {
            None => None,
            Some(v) => {
                let here = format!("{at}: vsock");
                let cid = u32::try_from(v.cid).map_err(|_| {
                    SpecError::new(
                        here.clone(),
                        ErrorKind::OutOfRange {
                            key: "cid",
                            value: v.cid.into(),
                            range: "3..=4294967294 (0, 1 and 2 are reserved, 2 is the host)",
                        },
                    )
                })?;
                let socket = match &v.socket {
                    Some(p) => Some(self.path(&here, "socket", p)?),
                    None => None,
                };
                Some(VsockSpec { cid, socket })
            }
        };
        Ok(VmSpec {
            passthrough,
            ram_phys_addr,
            name: raw.name,
            arch,
            vcpus,
            memory,
            kernel,
            initrd,
            cmdline: raw.cmdline.unwrap_or_default(),
            serial,
            placement,
            disks,
            consoles,
            rng: raw.rng.is_some(),
            nics,
            shared,
            on_reboot,
            max_restarts_per_minute,
            restart,
            cache_colours,
            control,
            start: raw.start.unwrap_or(true),
            vsock,
        })
    }

    /// `[limits]`: counts as given (range-checked by validation), paths resolved like a
    /// VM's.
    fn limits(&self, raw: RawLimits) -> Result<Limits, SpecError> {
        let at = "limits";
        let count = |key: &'static str, n: i64, range: &'static str| {
            u32::try_from(n).map_err(|_| {
                SpecError::new(
                    at,
                    ErrorKind::OutOfRange {
                        key,
                        value: n.into(),
                        range,
                    },
                )
            })
        };
        let paths = |key: &'static str, list: Vec<String>| {
            list.iter()
                .map(|p| self.path(at, key, p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Limits {
            max_vms: count("max_vms", raw.max_vms, "0..=1024")?,
            memory: number(at, "memory", raw.memory)?,
            vcpus: count("vcpus", raw.vcpus, "0..=65536")?,
            kernels: paths("kernels", raw.kernels)?,
            initrds: paths("initrds", raw.initrds)?,
            disks: paths("disks", raw.disks)?,
            networks: raw.networks,
        })
    }

    /// Expands `${VAR}`s and resolves a relative path against the base directory.
    fn path(&self, at: &str, key: &'static str, text: &str) -> Result<HostPath, SpecError> {
        let expanded = expand(key, text, self.env).map_err(|k| SpecError::new(at, k))?;
        if expanded.is_empty() {
            return Err(SpecError::new(at, ErrorKind::EmptyPath(key)));
        }
        let path = Path::new(&expanded);
        let resolved = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        };
        match resolved.into_os_string().into_string() {
            Ok(s) => Ok(HostPath::new(s)),
            Err(os) => Err(SpecError::new(
                at,
                ErrorKind::NonUtf8Path {
                    key,
                    path: os.to_string_lossy().into_owned(),
                },
            )),
        }
    }

    fn output(&self, at: &str, key: &'static str, text: &str) -> Result<Output, SpecError> {
        match Output::parse_kind(text) {
            Some(OutputKind::Stdio) => Ok(Output::Stdio),
            Some(OutputKind::Null) => Ok(Output::Null),
            Some(OutputKind::File(path)) => Ok(Output::File(self.path(at, key, path)?)),
            None => Err(SpecError::new(
                at,
                ErrorKind::BadOutput {
                    key,
                    value: text.to_string(),
                },
            )),
        }
    }
}

/// One `[[vm.passthrough]]`: numbers and names converted; the rules are validation's.
fn passthrough_spec(at: &str, raw: RawPassthrough) -> Result<PassthroughSpec, SpecError> {
    let ranges = |key: &'static str, list: Vec<RawRam>| -> Result<Vec<RamRegion>, SpecError> {
        list.into_iter()
            .enumerate()
            .map(|(j, r)| {
                let here = format!("{at}: {key} {j}");
                Ok(RamRegion {
                    base: number(&here, "base", r.base)?,
                    size: number(&here, "size", r.size)?,
                })
            })
            .collect()
    };
    let mmio = ranges("mmio", raw.mmio)?;
    let mut irqs = Vec::with_capacity(raw.irqs.len());
    for n in raw.irqs {
        irqs.push(u32::try_from(n).map_err(|_| {
            SpecError::new(
                at,
                ErrorKind::OutOfRange {
                    key: "irqs",
                    value: n.into(),
                    range: "32..1020",
                },
            )
        })?);
    }
    let dt = match (raw.dt, raw.dt_reg) {
        (Some(compatible), reg) => Some(PassthroughDt {
            compatible,
            reg: match reg {
                Some(list) => ranges("dt_reg", list)?,
                None => mmio.clone(),
            },
        }),
        (None, Some(_)) => {
            return Err(SpecError::new(
                at,
                ErrorKind::PassthroughShape("dt_reg needs dt (the node's compatible string)"),
            ));
        }
        (None, None) => None,
    };
    let dma = match &raw.dma {
        None => Dma::None,
        Some(text) => Dma::from_name(text).ok_or_else(|| {
            SpecError::new(
                at,
                ErrorKind::NotOneOf {
                    key: "dma",
                    value: text.clone(),
                    expected: "\"none\", \"identity\"",
                },
            )
        })?,
    };
    Ok(PassthroughSpec {
        name: raw.name,
        mmio,
        irqs,
        dt,
        dma,
    })
}

fn number(at: &str, key: &'static str, raw: RawNumber) -> Result<u64, SpecError> {
    match raw {
        RawNumber::Integer(n) => u64::try_from(n).map_err(|_| {
            SpecError::new(
                at,
                ErrorKind::BadSize {
                    key,
                    value: n.to_string(),
                    reason: "negative",
                },
            )
        }),
        RawNumber::Text(text) => parse_size(&text).map_err(|reason| {
            SpecError::new(
                at,
                ErrorKind::BadSize {
                    key,
                    value: text,
                    reason,
                },
            )
        }),
    }
}

fn placement(at: &str, raw: RawPlacement) -> Result<Placement, SpecError> {
    let range = |key: &'static str, value: i64, range: &'static str| {
        SpecError::new(
            at,
            ErrorKind::OutOfRange {
                key,
                value: value.into(),
                range,
            },
        )
    };
    let cpu = |p: i64| u32::try_from(p).map_err(|_| range("placement: pcpus", p, "0..=1023"));
    let pcpus = match raw.pcpus {
        None => None,
        Some(list) => Some(
            list.into_iter()
                .map(|entry| match entry {
                    RawCpuSet::One(p) => cpu(p).map(CpuSet::one),
                    RawCpuSet::Set(set) => set
                        .into_iter()
                        .map(cpu)
                        .collect::<Result<Vec<u32>, _>>()
                        .map(CpuSet::new),
                })
                .collect::<Result<Vec<CpuSet>, _>>()?,
        ),
    };
    let priority = match raw.priority {
        None => Placement::DEFAULT_PRIORITY,
        Some(p) => u8::try_from(p)
            .ok()
            .filter(|&p| p <= crate::limits::MAX_PRIORITY)
            .ok_or_else(|| range("placement: priority", p, "0..=254"))?,
    };
    let micros = |key: &'static str, value: Option<i64>, default: u64| match value {
        None => Ok(default),
        Some(v) => u64::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| range(key, v, "1..")),
    };
    let period_us = micros(
        "placement: period_us",
        raw.period_us,
        Placement::DEFAULT_PERIOD_US,
    )?;
    // An unset budget means the whole period.
    let budget_us = micros("placement: budget_us", raw.budget_us, period_us)?;
    Ok(Placement {
        pcpus,
        priority,
        budget_us,
        period_us,
    })
}
