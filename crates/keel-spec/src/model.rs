//! The parsed system description: plain data, `no_std` + `alloc`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::error::SpecError;

/// A guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    /// 64-bit x86 (PVH ELF or bzImage kernels).
    X86_64,
    /// 64-bit Arm (arm64 `Image` kernels).
    Aarch64,
}

impl Arch {
    /// The architecture this crate was compiled for, if Keel supports it as a guest architecture.
    pub const fn host() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    /// The name used in the system description (`"x86_64"` or `"aarch64"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Parses the name used in the system description.
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A path on the machine that runs (or builds) the system: already `${VAR}`-expanded and
/// resolved against the directory of the TOML file.
///
/// Kept as UTF-8 text so the model stays `no_std`; with the `std` feature it derefs to a
/// [`std::path::Path`] through [`HostPath::as_path`] and `AsRef<Path>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPath(String);

impl HostPath {
    /// Wraps an already resolved path.
    pub fn new(path: impl Into<String>) -> HostPath {
        HostPath(path.into())
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path as a `std` path.
    #[cfg(feature = "std")]
    pub fn as_path(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

#[cfg(feature = "std")]
impl AsRef<std::path::Path> for HostPath {
    fn as_ref(&self) -> &std::path::Path {
        self.as_path()
    }
}

impl fmt::Display for HostPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a character device (the platform UART or a virtio-console port) writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The VMM's standard output (and input, for the UART).
    Stdio,
    /// Discarded.
    Null,
    /// Appended to this file (created if missing).
    File(HostPath),
}

impl Output {
    /// Parses `"stdio"`, `"null"` or `"file:<path>"`; the file path is returned unresolved for
    /// the caller to expand. `None` if the text is none of these.
    pub fn parse_kind(text: &str) -> Option<OutputKind<'_>> {
        match text {
            "stdio" => Some(OutputKind::Stdio),
            "null" => Some(OutputKind::Null),
            _ => match text.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Some(OutputKind::File(path)),
                _ => None,
            },
        }
    }
}

/// The syntactic form of an [`Output`] before its file path is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind<'a> {
    /// `"stdio"`
    Stdio,
    /// `"null"`
    Null,
    /// `"file:<path>"`, the path as written.
    File(&'a str),
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Stdio => f.write_str("stdio"),
            Output::Null => f.write_str("null"),
            Output::File(path) => write!(f, "file:{path}"),
        }
    }
}

/// One explicit guest RAM region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl RamRegion {
    /// One past the last byte, or `None` if that overflows `u64`.
    pub fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size)
    }
}

/// How much guest RAM a VM has and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// `memory = "256M"`: this many bytes, laid out by [`crate::ram_layout`] for the arch.
    Size(u64),
    /// `[[vm.ram]]`: exactly these regions.
    Regions(Vec<RamRegion>),
}

impl Memory {
    /// Total guest RAM in bytes (saturating; validated systems never saturate).
    pub fn total(&self) -> u64 {
        match self {
            Memory::Size(size) => *size,
            Memory::Regions(regions) => regions
                .iter()
                .fold(0u64, |sum, r| sum.saturating_add(r.size)),
        }
    }
}

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file; empty for a disk [`DiskSpec::served`] by a storage VM.
    pub path: HostPath,
    /// Opened read-only and offered to the guest with `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// The serial returned for `VIRTIO_BLK_T_GET_ID` (at most 20 bytes).
    pub id: Option<String>,
    /// Served by a storage driver VM (docs/driver-vms.md) instead of a host file.
    pub served: Option<ServedDisk>,
}

impl DiskSpec {
    /// A disk backed by the host file `path`.
    pub fn file(path: HostPath, read_only: bool, id: Option<String>) -> DiskSpec {
        DiskSpec {
            path,
            read_only,
            id,
            served: None,
        }
    }
}

/// Where a served disk's bytes are: a range of a disk of a storage VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedDisk {
    /// The storage VM's name.
    pub server: String,
    /// Index of the storage VM's disk holding the range (its own `[[vm.disk]]`, a file).
    pub server_disk: usize,
    /// Instead of `server_disk`: the name of a passed-through device of the storage VM (a
    /// virtio-blk or other block device the storage VM's own driver owns, which reports
    /// this name as its serial). Its size is not known to Keel: the storage VM's agent
    /// refuses a range past its end.
    pub server_passthrough: Option<String>,
    /// First byte of the range on that disk (a multiple of 4 KiB).
    pub start: u64,
    /// Bytes (a multiple of 4 KiB, not 0): the client's disk size.
    pub size: u64,
}

/// A virtio-console port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSpec {
    /// Where the guest's output goes.
    pub output: Output,
}

/// The physical CPUs one vCPU may run on: one CPU (the vCPU is pinned there) or a set it may
/// migrate between. `pcpus = [0, [1, 2]]` in a description is `[CpuSet::one(0),
/// CpuSet::new(vec![1, 2])]`; a one-element set is the same as its CPU.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CpuSet(Vec<u32>);

impl CpuSet {
    /// Exactly CPU `cpu`.
    pub fn one(cpu: u32) -> CpuSet {
        CpuSet(alloc::vec![cpu])
    }

    /// The CPUs `cpus`, in the order given (validation refuses an empty set and duplicates).
    pub fn new(cpus: Vec<u32>) -> CpuSet {
        CpuSet(cpus)
    }

    /// The CPUs, in the order given.
    pub fn cpus(&self) -> &[u32] {
        &self.0
    }

    /// The CPU, when the set has exactly one.
    pub fn single(&self) -> Option<u32> {
        match self.0.as_slice() {
            [cpu] => Some(*cpu),
            _ => None,
        }
    }
}

impl From<u32> for CpuSet {
    fn from(cpu: u32) -> CpuSet {
        CpuSet::one(cpu)
    }
}

impl fmt::Display for CpuSet {
    /// As written in a description: `3`, or `[1, 2]` for a set of several CPUs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(cpu) = self.single() {
            return write!(f, "{cpu}");
        }
        f.write_str("[")?;
        for (i, cpu) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{cpu}")?;
        }
        f.write_str("]")
    }
}

/// Where a VM's vCPUs run and how they are scheduled (seL4: MCS scheduling context; Linux/KVM:
/// thread affinity, scheduling class and a cgroup CPU bandwidth limit; docs/config.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Physical CPUs of each vCPU (`pcpus[i]` is where vCPU `i` may run); `None` leaves it
    /// to the host.
    pub pcpus: Option<Vec<CpuSet>>,
    /// Scheduling priority, 0..=254 (255 is kept for the kernel-side monitor).
    pub priority: u8,
    /// CPU time per period, in microseconds.
    pub budget_us: u64,
    /// Period, in microseconds; `budget_us <= period_us`.
    pub period_us: u64,
}

impl Placement {
    /// Default priority when `placement.priority` is not given.
    pub const DEFAULT_PRIORITY: u8 = 100;
    /// Default budget and period when not given (1 ms, seL4 Microkit's default).
    pub const DEFAULT_PERIOD_US: u64 = 1000;
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            pcpus: None,
            priority: Placement::DEFAULT_PRIORITY,
            budget_us: Placement::DEFAULT_PERIOD_US,
            period_us: Placement::DEFAULT_PERIOD_US,
        }
    }
}

/// What a guest reset (PSCI `SYSTEM_RESET`, i8042 or ACPI reset) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnReboot {
    /// Restart the VM in place: kernel and initrd reloaded, devices reset, disks kept.
    #[default]
    Restart,
    /// Stop the VM (the run ends, as on power-off but reported as a reboot).
    Stop,
}

impl OnReboot {
    /// The name used in the system description (`"restart"` or `"stop"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            OnReboot::Restart => "restart",
            OnReboot::Stop => "stop",
        }
    }

    /// Parses the name used in the system description.
    pub fn from_name(name: &str) -> Option<OnReboot> {
        match name {
            "restart" => Some(OnReboot::Restart),
            "stop" => Some(OnReboot::Stop),
            _ => None,
        }
    }
}

/// What the admin (`keel daemon`) does when a VM's VMM process ends (`restart`). `keel run`
/// and `keel up` ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Never restarted (the default).
    #[default]
    Never,
    /// Restarted after a failure (a non-zero exit, a crash, a kill), with exponential
    /// back-off; not after the guest powered off.
    OnFailure,
    /// Restarted whenever its VMM ends, unless the admin itself stopped it.
    Always,
}

impl Restart {
    /// The name used in the system description.
    pub const fn as_str(self) -> &'static str {
        match self {
            Restart::Never => "never",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        }
    }

    /// Parses the name used in the system description.
    pub fn from_name(name: &str) -> Option<Restart> {
        match name {
            "never" => Some(Restart::Never),
            "on-failure" => Some(Restart::OnFailure),
            "always" => Some(Restart::Always),
            _ => None,
        }
    }
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[limits]`: what the admin may create at run time beyond the declared VMs (the dynamic
/// pool). A system without the table allows no dynamic VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    /// How many dynamic VMs may exist at once.
    pub max_vms: u32,
    /// Total guest RAM of the dynamic VMs, in bytes.
    pub memory: u64,
    /// Total vCPUs of the dynamic VMs.
    pub vcpus: u32,
    /// The kernels a dynamic VM may boot (resolved host paths).
    pub kernels: Vec<HostPath>,
    /// The initrds a dynamic VM may use.
    pub initrds: Vec<HostPath>,
    /// The disk images a dynamic VM may attach.
    pub disks: Vec<HostPath>,
    /// The declared networks a dynamic VM may join.
    pub networks: Vec<String>,
}

impl fmt::Display for OnReboot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An Ethernet MAC address. `Display` and [`MacAddr::parse`] use `02:00:00:00:00:01`.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parses six two-digit hex octets separated by `:` (either case).
    pub fn parse(text: &str) -> Option<MacAddr> {
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for octet in &mut mac {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *octet = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(MacAddr(mac))
    }

    /// Group (multicast or broadcast) address: bit 0 of the first octet.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The address Keel gives interface `nic` of VM `vm` when the description gives none:
    /// locally administered (`02:`), then `4b:` ("K"), then 32 bits of an FNV-1a hash of
    /// `<vm>/<nic>`. Two derived addresses may collide (the validator refuses that and asks
    /// for an explicit `mac`).
    pub fn derived(vm: &str, nic: usize) -> MacAddr {
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |b: u8| {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        };
        vm.bytes().for_each(&mut eat);
        eat(b'/');
        let mut n = nic;
        loop {
            eat(b'0' + (n % 10) as u8);
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let b = h.to_be_bytes();
        MacAddr([0x02, 0x4b, b[0], b[1], b[2], b[3]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One virtio-net interface of a VM (`[[vm.net]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The `[[network]]` it is attached to.
    pub network: String,
    /// Its MAC address; `None`: [`MacAddr::derived`].
    pub mac: Option<MacAddr>,
}

/// A VM's virtio-vsock device (`[vm.vsock]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// The guest's context ID: 3..=4294967294, unique in the system (0, 1 and 2 are the
    /// hypervisor, loopback and host; u32::MAX is VMADDR_CID_ANY).
    pub cid: u32,
    /// Linux: the host Unix socket of the VM (Firecracker's convention: the host connects and
    /// sends `CONNECT <port>\n`; a guest connection to host port P connects to
    /// `<socket>_<P>`). `None`: no host side (guest↔guest only).
    pub socket: Option<HostPath>,
}

/// A virtual Ethernet network (`[[network]]`): one switch, its ports the interfaces attached
/// to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Unique name, `[a-z0-9-]{1,32}`.
    pub name: String,
    /// Which pairs of members may exchange frames (by VM name; [`NetworkSpec::UPLINK`] names
    /// the uplink). `None`: every pair of members.
    pub allow: Option<Vec<(String, String)>>,
    /// Frame slots of each ring of each port (a power of two, 16..=4096).
    pub slots: u32,
    /// A host tap interface bridged into the network (Linux only), by interface name.
    pub uplink: Option<String>,
    /// Storm control: flooded frames (broadcast, multicast, unknown unicast) each port may
    /// send per second (1..=1,000,000).
    pub flood_rate: u32,
    /// Storm control: flooded frames a port may send at once (1..=65,536).
    pub flood_burst: u32,
}

impl NetworkSpec {
    /// Default of `slots`.
    pub const DEFAULT_SLOTS: u32 = 256;
    /// Default of `flood_rate`: far above what hosts flood normally (ARP, neighbour
    /// discovery, DHCP, mDNS: a few frames per second), far below a storm (docs/net.md).
    pub const DEFAULT_FLOOD_RATE: u32 = 1000;
    /// Default of `flood_burst`: a quarter of the default ring (the switch's default
    /// `flood_depth`).
    pub const DEFAULT_FLOOD_BURST: u32 = 64;
    /// How allow lists name the uplink.
    pub const UPLINK: &'static str = "uplink";
    /// The name of the dynamic pool's ports in allow lists (networks in `[limits]
    /// networks` only): `["web", "pool"]` lets `web` talk to every dynamic VM on the
    /// network, `["pool", "pool"]` lets dynamic VMs talk to each other.
    pub const POOL: &'static str = "pool";

    /// A network with every member allowed to talk to every other, default slots and storm
    /// control, no uplink.
    pub fn new(name: impl Into<String>) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            allow: None,
            slots: NetworkSpec::DEFAULT_SLOTS,
            uplink: None,
            flood_rate: NetworkSpec::DEFAULT_FLOOD_RATE,
            flood_burst: NetworkSpec::DEFAULT_FLOOD_BURST,
        }
    }
}

/// A guest memory region shared between VMs (`[[shared]]`): declared once, mapped into
/// each VM that names it in a `[[vm.shared]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSpec {
    /// Unique name, `[a-z0-9-]{1,32}`.
    pub name: String,
    /// Size in bytes, a multiple of 4 KiB.
    pub size: u64,
}

/// What a guest may do with a shared region it maps.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Access {
    /// Read and write (the default).
    #[default]
    ReadWrite,
    /// Read only: a guest write is reported by its VMM and changes nothing.
    ReadOnly,
}

impl Access {
    /// The name used in the system description (`"rw"` or `"ro"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "rw",
            Access::ReadOnly => "ro",
        }
    }

    /// Parses the name used in the system description.
    pub fn from_name(name: &str) -> Option<Access> {
        match name {
            "rw" => Some(Access::ReadWrite),
            "ro" => Some(Access::ReadOnly),
            _ => None,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM's mapping of a shared region (`[[vm.shared]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMapSpec {
    /// The `[[shared]]` region it maps.
    pub region: String,
    /// Guest-physical address of its first byte (4 KiB aligned).
    pub base: u64,
    /// What the guest may do with it.
    pub access: Access,
    /// The region's size as this VM expects it, if the description states it (checked
    /// against the `[[shared]]` declaration).
    pub size: Option<u64>,
}

/// Whether a passed-through device can DMA (`dma`), and what the VM's RAM must then be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Dma {
    /// The device does no DMA (the default).
    #[default]
    None,
    /// The device DMAs to guest-physical addresses as if they were physical: the VM's RAM
    /// must be identity-mapped (`ram_phys_addr` equal to its guest-physical base).
    Identity,
}

impl Dma {
    /// The name used in the system description.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dma::None => "none",
            Dma::Identity => "identity",
        }
    }

    /// Parses the name used in the system description.
    pub fn from_name(name: &str) -> Option<Dma> {
        match name {
            "none" => Some(Dma::None),
            "identity" => Some(Dma::Identity),
            _ => None,
        }
    }
}

/// The device-tree node the guest gets for a passed-through device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassthroughDt {
    /// Its `compatible` string, e.g. `virtio,mmio`.
    pub compatible: String,
    /// Its `reg` ranges (default: the device's `mmio` ranges); each inside one of them.
    pub reg: Vec<RamRegion>,
}

/// A physical device of the board given to one VM for its exclusive use
/// (`[[vm.passthrough]]`): its register pages mapped at the same guest-physical address
/// (uncached), its interrupts delivered to the VM as virtual interrupts. seL4 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassthroughSpec {
    /// Name, `[a-z0-9-]{1,32}`, unique in the VM (messages, the device-tree node).
    pub name: String,
    /// Physical register ranges, page aligned, mapped at the same guest-physical address.
    pub mmio: Vec<RamRegion>,
    /// GIC INTIDs (SPIs, 32 and up) of the device, delivered as the same virtual INTIDs.
    pub irqs: Vec<u32>,
    /// The guest's device-tree node, if the guest should be told about the device.
    pub dt: Option<PassthroughDt>,
    /// Whether the device DMAs (then the VM's RAM must be identity-mapped).
    pub dma: Dma,
}

/// One virtual machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Unique name, `[a-z0-9-]{1,32}`.
    pub name: String,
    /// Guest architecture.
    pub arch: Arch,
    /// Number of vCPUs, 1..=64.
    pub vcpus: u32,
    /// Guest RAM.
    pub memory: Memory,
    /// The kernel image.
    pub kernel: HostPath,
    /// The initial ramdisk, if any.
    pub initrd: Option<HostPath>,
    /// The kernel command line as given (the VMM appends device locations).
    pub cmdline: String,
    /// The platform UART (x86: 8250 at 0x3f8; arm64: PL011).
    pub serial: Output,
    /// Placement and scheduling, if given.
    pub placement: Option<Placement>,
    /// virtio-blk disks, in order.
    pub disks: Vec<DiskSpec>,
    /// virtio-console ports, in order.
    pub consoles: Vec<ConsoleSpec>,
    /// Whether the VM has a virtio-rng device.
    pub rng: bool,
    /// virtio-net interfaces, in order, each attached to a declared network.
    pub nics: Vec<NicSpec>,
    /// Shared regions mapped into this VM, in order, each a declared `[[shared]]`.
    pub shared: Vec<SharedMapSpec>,
    /// What a guest reset does.
    pub on_reboot: OnReboot,
    /// With [`OnReboot::Restart`]: the most restarts within any minute; one more stops
    /// the VM. 1..=1000.
    pub max_restarts_per_minute: u32,
    /// What the admin does when this VM's VMM ends (`restart`, default never). Restarts by
    /// policy count against `max_restarts_per_minute` too.
    pub restart: Restart,
    /// The cache colours of the board's last-level cache ([`Llc`]) whose physical pages
    /// back this VM's RAM (`cache_colours`); `None`: uncoloured. Applied on seL4 only.
    pub cache_colours: Option<Vec<u32>>,
    /// The VMs this VM may control, with its rights on each (`[[vm.control]]`): this VM is
    /// then a control VM, which asks the admin for operations on those VMs
    /// (`keel_core::control`). Each target once, never the VM itself.
    pub control: Vec<ControlSpec>,
    /// Whether the system starts this VM (`start`, default true). `false` makes it a pool
    /// slot: built into the system, started only when a control VM with the `start` right
    /// on it asks (the description must name one).
    pub start: bool,
    /// Physical devices of the board this VM owns (`[[vm.passthrough]]`). seL4 only.
    pub passthrough: Vec<PassthroughSpec>,
    /// Physical address of the VM's RAM (`ram_phys_addr`, seL4 only): its one RAM region
    /// at this fixed physical address, 2 MiB aligned; equal to the RAM's guest-physical
    /// base it is identity-mapped (what a DMA-capable passed-through device needs).
    pub ram_phys_addr: Option<u64>,
    /// Its virtio-vsock device (`[vm.vsock]`), if any.
    pub vsock: Option<VsockSpec>,
}

/// One `[[vm.control]]`: a target VM and the rights the controlling VM holds on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSpec {
    /// The target VM's name.
    pub vm: String,
    /// The rights, in the order given (each once, at least one).
    pub rights: Vec<ControlRight>,
}

/// A right of a control VM on a target VM (the operations of `keel_core::control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ControlRight {
    /// Start the target (a pool slot, or a VM stopped before).
    Start,
    /// Stop the target.
    Stop,
    /// Restart the target.
    Restart,
    /// Read the target's state.
    Status,
}

impl ControlRight {
    /// Every right, in the order the description documents them.
    pub const ALL: [ControlRight; 4] = [
        ControlRight::Start,
        ControlRight::Stop,
        ControlRight::Restart,
        ControlRight::Status,
    ];

    /// The name used in the system description.
    pub const fn as_str(self) -> &'static str {
        match self {
            ControlRight::Start => "start",
            ControlRight::Stop => "stop",
            ControlRight::Restart => "restart",
            ControlRight::Status => "status",
        }
    }

    /// Parses the name used in the system description.
    pub fn from_name(name: &str) -> Option<ControlRight> {
        ControlRight::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl VmSpec {
    /// Default of `max_restarts_per_minute`.
    pub const DEFAULT_MAX_RESTARTS_PER_MINUTE: u32 = 5;

    /// A VM with the given name, arch, kernel and memory, and defaults for everything else
    /// (1 vCPU, serial on stdio, no devices, restart on reboot). Handy for building a model in code.
    pub fn new(name: impl Into<String>, arch: Arch, kernel: HostPath, memory: Memory) -> VmSpec {
        VmSpec {
            name: name.into(),
            arch,
            vcpus: 1,
            memory,
            kernel,
            initrd: None,
            cmdline: String::new(),
            serial: Output::Stdio,
            placement: None,
            disks: Vec::new(),
            consoles: Vec::new(),
            rng: false,
            nics: Vec::new(),
            shared: Vec::new(),
            on_reboot: OnReboot::Restart,
            max_restarts_per_minute: VmSpec::DEFAULT_MAX_RESTARTS_PER_MINUTE,
            restart: Restart::Never,
            cache_colours: None,
            control: Vec::new(),
            start: true,
            passthrough: Vec::new(),
            ram_phys_addr: None,
            vsock: None,
        }
    }
}

/// The board's last-level cache (`[system] llc`), as far as page colouring needs it: a
/// physical page's colour is `(paddr / 4 KiB) mod colours()`, and pages of different
/// colours never compete for the same cache sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Llc {
    /// Total size in bytes.
    pub size: u64,
    /// Associativity (ways).
    pub ways: u32,
}

impl Llc {
    /// Bytes of a page: the unit a colour is given in.
    pub const PAGE: u64 = 4096;

    /// The number of page colours: `size / ways / 4 KiB` (a validated [`System`]'s is a
    /// power of two, at least 2); 0 for a malformed cache.
    pub fn colours(&self) -> u64 {
        if self.ways == 0 {
            return 0;
        }
        self.size / u64::from(self.ways) / Llc::PAGE
    }
}

/// A validated system: its name, the physical CPUs it may use, and its VMs.
///
/// Only built through [`System::new`] (or the parsers, which call it), so a `System` in hand has
/// passed every semantic check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    pub(crate) name: String,
    pub(crate) pcpus: Option<u32>,
    pub(crate) vms: Vec<VmSpec>,
    pub(crate) networks: Vec<NetworkSpec>,
    pub(crate) shared: Vec<SharedSpec>,
    pub(crate) llc: Option<Llc>,
    pub(crate) limits: Option<Limits>,
    pub(crate) vsock_allow: Vec<(String, String)>,
}

impl System {
    /// Validates and builds a system (see [`crate::limits`] for the rules).
    pub fn new(name: String, pcpus: Option<u32>, vms: Vec<VmSpec>) -> Result<System, SpecError> {
        System::with_networks(name, pcpus, vms, Vec::new())
    }

    /// Like [`System::new`], with networks (`[[network]]`) the VMs' interfaces attach to.
    pub fn with_networks(
        name: String,
        pcpus: Option<u32>,
        vms: Vec<VmSpec>,
        networks: Vec<NetworkSpec>,
    ) -> Result<System, SpecError> {
        System::with_shared(name, pcpus, vms, networks, Vec::new())
    }

    /// Like [`System::with_networks`], with guest memory regions (`[[shared]]`) the VMs'
    /// `[[vm.shared]]` entries map.
    pub fn with_shared(
        name: String,
        pcpus: Option<u32>,
        vms: Vec<VmSpec>,
        networks: Vec<NetworkSpec>,
        shared: Vec<SharedSpec>,
    ) -> Result<System, SpecError> {
        System::with_parts(name, pcpus, None, vms, networks, shared)
    }

    /// Like [`System::with_networks`], with the board's last-level cache (`[system] llc`)
    /// that VMs' `cache_colours` refer to.
    pub fn with_llc(
        name: String,
        pcpus: Option<u32>,
        llc: Option<Llc>,
        vms: Vec<VmSpec>,
        networks: Vec<NetworkSpec>,
    ) -> Result<System, SpecError> {
        System::with_parts(name, pcpus, llc, vms, networks, Vec::new())
    }

    /// Every part of a system: name, CPUs, last-level cache, VMs, networks, shared regions.
    pub fn with_parts(
        name: String,
        pcpus: Option<u32>,
        llc: Option<Llc>,
        vms: Vec<VmSpec>,
        networks: Vec<NetworkSpec>,
        shared: Vec<SharedSpec>,
    ) -> Result<System, SpecError> {
        crate::validate::check_system_name(&name)?;
        crate::validate::check_pcpus(pcpus)?;
        crate::validate::check_llc(llc)?;
        for (index, vm) in vms.iter().enumerate() {
            crate::validate::check_vm(index, vm, pcpus)?;
            crate::validate::check_colours(index, vm, llc)?;
        }
        crate::validate::check_across_vms(&vms)?;
        crate::validate::check_colours_across_vms(&vms)?;
        crate::validate::check_networks(&vms, &networks)?;
        crate::validate::check_shared(&vms, &shared)?;
        crate::validate::check_control(&vms)?;
        crate::validate::check_passthrough(&vms, &shared)?;
        crate::validate::check_vsock(&vms, &[])?;
        Ok(System {
            name,
            pcpus,
            vms,
            networks,
            shared,
            llc,
            limits: None,
            vsock_allow: Vec::new(),
        })
    }

    /// This system with the VM pairs whose guests may reach each other over vsock (`[vsock]
    /// allow`; symmetric, each pair once, both VMs with `[vm.vsock]`).
    pub fn with_vsock_allow(mut self, allow: Vec<(String, String)>) -> Result<System, SpecError> {
        crate::validate::check_vsock(&self.vms, &allow)?;
        self.vsock_allow = allow;
        Ok(self)
    }

    /// The vsock pairs (`[vsock] allow`), in file order.
    pub fn vsock_allow(&self) -> &[(String, String)] {
        &self.vsock_allow
    }

    /// This system with `[limits]` (`None`: no dynamic VMs), checked against its networks.
    pub fn with_limits(mut self, limits: Option<Limits>) -> Result<System, SpecError> {
        if let Some(l) = &limits {
            crate::validate::check_limits(l, &self.networks)?;
        }
        crate::validate::check_pool(limits.as_ref(), &self.vms, &self.networks)?;
        self.limits = limits;
        Ok(self)
    }

    /// The dynamic pool's limits (`[limits]`), if the description allows dynamic VMs.
    pub fn limits(&self) -> Option<&Limits> {
        self.limits.as_ref()
    }

    /// The shared regions (`[[shared]]`), in file order.
    pub fn shared(&self) -> &[SharedSpec] {
        &self.shared
    }

    /// The board's last-level cache, if the description gives it.
    pub fn llc(&self) -> Option<Llc> {
        self.llc
    }

    /// The networks, in file order.
    pub fn networks(&self) -> &[NetworkSpec] {
        &self.networks
    }

    /// The MAC address of interface `nic` of `vm`: the given one, else the derived one.
    pub fn nic_mac(vm: &VmSpec, nic: usize) -> Option<MacAddr> {
        let spec = vm.nics.get(nic)?;
        Some(spec.mac.unwrap_or_else(|| MacAddr::derived(&vm.name, nic)))
    }

    /// The system's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of physical CPUs the system may use, if given.
    pub fn pcpus(&self) -> Option<u32> {
        self.pcpus
    }

    /// The VM with this name.
    pub fn vm(&self, name: &str) -> Option<&VmSpec> {
        self.vms.iter().find(|vm| vm.name == name)
    }

    /// All VMs, in file order.
    pub fn vms(&self) -> &[VmSpec] {
        &self.vms
    }
}
