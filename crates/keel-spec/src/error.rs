//! One error type for the whole crate: where in the file, and what was wrong there.

use alloc::string::String;
use core::fmt;

use crate::model::Arch;

/// An error in a system description. `Display` is one line: `<where>: <what>`, e.g.
/// `vm "web": disk 1: path /x does not exist` or
/// `line 4, column 7: unknown field "vcpu", expected one of ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Where: a TOML path such as `vm "web": disk 1`, or `line 4, column 7` for syntax errors;
    /// empty when the error is about the file as a whole.
    pub at: String,
    /// What was wrong.
    pub kind: ErrorKind,
}

impl SpecError {
    /// An error at `at`.
    pub fn new(at: impl Into<String>, kind: ErrorKind) -> SpecError {
        SpecError {
            at: at.into(),
            kind,
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.at, self.kind)
        }
    }
}

// The kind is already part of the one-line message; exposing it as `source()` would make a
// CLI that prints the chain say it twice.
impl core::error::Error for SpecError {}

/// What was wrong. Each message names the key and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// TOML syntax or shape (unknown field, wrong type, missing field).
    #[error("{0}")]
    Toml(String),
    /// The file defines no `[[vm]]`.
    #[error("no [[vm]] is defined (a system needs at least one VM)")]
    NoVms,
    /// A number outside its allowed range.
    #[error("{key}: {value} is out of range ({range})")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value given.
        value: i128,
        /// The allowed range, e.g. `1..=64`.
        range: &'static str,
    },
    /// A size below the minimum.
    #[error("{key}: {value} is too small (at least {min})")]
    TooSmall {
        /// The key.
        key: &'static str,
        /// The value given, as written or in human units.
        value: String,
        /// The minimum, in human units.
        min: &'static str,
    },
    /// A size above the maximum.
    #[error("{key}: {value} is too large (at most {max})")]
    TooLarge {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// The maximum.
        max: &'static str,
    },
    /// A size or address that is not page aligned.
    #[error("{key}: {value:#x} is not a multiple of 4 KiB")]
    Unaligned {
        /// The key.
        key: &'static str,
        /// The value given.
        value: u64,
    },
    /// Text that is not a size.
    #[error("{key}: {value:?} is not a size ({reason})")]
    BadSize {
        /// The key.
        key: &'static str,
        /// The text given.
        value: String,
        /// Why not.
        reason: &'static str,
    },
    /// A name that breaks the naming rule.
    #[error("name {name:?} is invalid ({rule})")]
    BadName {
        /// The name given.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// Two VMs with the same name.
    #[error("name {0:?} is used twice")]
    DuplicateName(String),
    /// Text that is not one of a key's fixed choices.
    #[error("{key}: {value:?} is not one of {expected}")]
    NotOneOf {
        /// The key.
        key: &'static str,
        /// The text given.
        value: String,
        /// The choices, quoted and comma-separated, e.g. `"restart", "stop"`.
        expected: &'static str,
    },
    /// An arch name that is not supported.
    #[error("arch: {0:?} is not supported (expected \"x86_64\" or \"aarch64\")")]
    BadArch(String),
    /// No arch given and the host is neither x86_64 nor aarch64.
    #[error("arch: must be given on this host (expected \"x86_64\" or \"aarch64\")")]
    NoHostArch,
    /// Both `memory` and `[[vm.ram]]`, or neither.
    #[error("{0}")]
    MemoryForm(&'static str),
    /// A RAM region whose end overflows.
    #[error("ram {index} ({base:#x}+{size}) wraps around the address space")]
    RamWraps {
        /// Index of the region.
        index: usize,
        /// Its base.
        base: u64,
        /// Its size, human readable.
        size: crate::size::SizeDisplay,
    },
    /// Two RAM regions overlap.
    #[error("ram {index} ({base:#x}+{size}) overlaps ram {other}")]
    RamOverlap {
        /// Index of the later region.
        index: usize,
        /// Its base.
        base: u64,
        /// Its size, human readable.
        size: crate::size::SizeDisplay,
        /// Index of the earlier region it overlaps.
        other: usize,
    },
    /// A RAM region inside the arch's device window.
    #[error("ram {index} ({base:#x}+{size}) overlaps the {arch} device window {window}")]
    RamInDeviceWindow {
        /// Index of the region.
        index: usize,
        /// Its base.
        base: u64,
        /// Its size, human readable.
        size: crate::size::SizeDisplay,
        /// The arch.
        arch: Arch,
        /// The window.
        window: crate::layout::DeviceWindow,
    },
    /// A RAM region beyond the guest-physical address limit.
    #[error("ram {index} ({base:#x}+{size}) ends above the guest-physical limit {limit:#x}")]
    RamAboveLimit {
        /// Index of the region.
        index: usize,
        /// Its base.
        base: u64,
        /// Its size, human readable.
        size: crate::size::SizeDisplay,
        /// The limit.
        limit: u64,
    },
    /// An x86_64 VM with explicit RAM but none at address 0.
    #[error("ram: an x86_64 VM needs a region starting at 0x0 (boot structures live below 1 MiB)")]
    X86NoLowRam,
    /// Too many of something.
    #[error("{key}: {count} given, at most {max} allowed")]
    TooMany {
        /// The key.
        key: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Text that is not an output.
    #[error("{key}: {value:?} is not an output (expected \"stdio\", \"null\" or \"file:<path>\")")]
    BadOutput {
        /// The key.
        key: &'static str,
        /// The text given.
        value: String,
    },
    /// A `${VAR}` that is not defined.
    #[error("{key}: ${{{var}}} is not defined (in {value:?})")]
    UndefinedVar {
        /// The key.
        key: &'static str,
        /// The variable.
        var: String,
        /// The text it appears in.
        value: String,
    },
    /// A malformed `${...}`.
    #[error("{key}: {value:?} has an unterminated or empty ${{...}}")]
    BadVarSyntax {
        /// The key.
        key: &'static str,
        /// The text given.
        value: String,
    },
    /// A path that is not UTF-8 once resolved (the base directory's name, usually).
    #[error("{key}: {path} is not valid UTF-8")]
    NonUtf8Path {
        /// The key.
        key: &'static str,
        /// The path, lossily converted.
        path: String,
    },
    /// An empty path.
    #[error("{0}: the path is empty")]
    EmptyPath(&'static str),
    /// A path that does not exist.
    #[error("{key} {path} does not exist")]
    NotFound {
        /// The key.
        key: &'static str,
        /// The resolved path.
        path: String,
    },
    /// A path that exists but is not a regular file.
    #[error("{key} {path} is not a regular file")]
    NotAFile {
        /// The key.
        key: &'static str,
        /// The resolved path.
        path: String,
    },
    /// A file that cannot be opened with the mode the VM needs.
    #[error("{key} {path} cannot be opened {mode}: {reason}")]
    CannotOpen {
        /// The key.
        key: &'static str,
        /// The resolved path.
        path: String,
        /// `read-only` or `read-write`.
        mode: &'static str,
        /// The OS error.
        reason: String,
    },
    /// An output file whose directory does not exist.
    #[error("{key}: directory {dir} of {path} does not exist")]
    NoOutputDir {
        /// The key.
        key: &'static str,
        /// The resolved file path.
        path: String,
        /// Its directory.
        dir: String,
    },
    /// A kernel file that is not a kernel for the VM's arch.
    #[error("kernel {path}: not an {arch} kernel ({reason})")]
    NotAKernel {
        /// The resolved path.
        path: String,
        /// The VM's arch.
        arch: Arch,
        /// What the file looks like instead.
        reason: String,
    },
    /// The same disk image used twice, at least once read-write.
    #[error("path {path} is also used by {other} (an image written by one disk cannot be shared)")]
    DiskShared {
        /// The resolved path.
        path: String,
        /// The other user, e.g. `vm "db": disk 0`.
        other: String,
    },
    /// A disk that is neither a file nor served, or both, or has keys of the other form.
    #[error("{0}")]
    DiskForm(&'static str),
    /// A served disk naming a storage VM or disk that cannot serve it.
    #[error("served_by: {0}")]
    BadServer(String),
    /// A served range that is empty, unaligned or overflowing.
    #[error("{key}: {value} {reason}")]
    ServedRange {
        /// `start` or `size`.
        key: &'static str,
        /// The value in bytes.
        value: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two clients' ranges of one storage VM disk overlap.
    #[error("range [{start:#x}, {end:#x}) of vm {server:?} disk {server_disk} overlaps {other}'s")]
    ServedOverlap {
        /// The storage VM.
        server: String,
        /// Its disk.
        server_disk: usize,
        /// First byte.
        start: u64,
        /// End.
        end: u64,
        /// The other client, e.g. `vm "a": disk 0`.
        other: String,
    },
    /// A served range that does not fit the storage VM's disk file.
    #[error("{0}")]
    ServedPastEnd(alloc::boxed::Box<ServedPastEnd>),
    /// A disk id longer than 20 bytes.
    #[error("id: {id:?} is {len} bytes long (at most 20)")]
    DiskIdTooLong {
        /// The id given.
        id: String,
        /// Its length.
        len: usize,
    },
    /// A placement whose CPU list does not match the vCPU count.
    #[error("placement: pcpus lists {count} CPUs for {vcpus} vcpus")]
    PlacementLength {
        /// Entries in `pcpus`.
        count: usize,
        /// The VM's vcpus.
        vcpus: u32,
    },
    /// A placement on a CPU the system may not use.
    #[error("placement: pcpu {pcpu} is out of range (system.pcpus = {pcpus})")]
    PcpuOutOfRange {
        /// The CPU given.
        pcpu: u32,
        /// `system.pcpus`.
        pcpus: u32,
    },
    /// A vCPU placed on an empty set of CPUs.
    #[error("placement: pcpus entry {vcpu} (vcpu {vcpu}) is an empty set of CPUs")]
    EmptyCpuSet {
        /// The vCPU.
        vcpu: u32,
    },
    /// A CPU listed twice in one vCPU's set.
    #[error("placement: pcpus entry {vcpu} (vcpu {vcpu}) = {set} lists CPU {pcpu} twice")]
    CpuTwiceInSet {
        /// The vCPU.
        vcpu: u32,
        /// The CPU listed twice.
        pcpu: u32,
        /// The set as written.
        set: String,
    },
    /// A scheduling budget longer than its period.
    #[error("placement: budget_us {budget} is longer than period_us {period}")]
    BudgetOverPeriod {
        /// The budget.
        budget: u64,
        /// The period.
        period: u64,
    },
    /// A command line that is too long.
    #[error("cmdline: {len} bytes is too long (at most {max})")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A command line with a NUL or other control character.
    #[error("cmdline: contains a control character at byte {0}")]
    CmdlineControl(usize),
    /// A MAC address that is not six hex octets.
    #[error(
        "mac: {0:?} is not a MAC address (expected six hex octets such as \"02:00:00:00:00:01\")"
    )]
    BadMac(String),
    /// A MAC address an interface cannot have.
    #[error("mac: {mac} is {reason}")]
    UnusableMac {
        /// The address.
        mac: String,
        /// Why (`a multicast address`, `all zeros`).
        reason: &'static str,
    },
    /// Two interfaces with the same MAC address.
    #[error("mac {mac} is also used by {other}{hint}")]
    DuplicateMac {
        /// The address.
        mac: String,
        /// The other interface (`vm "a": net 0`).
        other: String,
        /// How to fix it when the address was derived.
        hint: &'static str,
    },
    /// An interface attached to a network the description does not declare.
    #[error("network: {network:?} is not declared (declared: {declared})")]
    UnknownNetwork {
        /// The name given.
        network: String,
        /// The declared networks, or `none`.
        declared: String,
    },
    /// Two networks with the same name.
    #[error("name {0:?} is used by two networks")]
    DuplicateNetwork(String),
    /// One VM attached twice to one network.
    #[error("network: vm is already attached to {network:?} by net {first}")]
    AttachedTwice {
        /// The network.
        network: String,
        /// The VM's earlier interface.
        first: usize,
    },
    /// An allow list naming a VM that is not on the network.
    #[error("allow: {name:?} is not {what} (members: {members})")]
    NotAMember {
        /// The name given.
        name: String,
        /// `a VM of this system` or `attached to this network`.
        what: &'static str,
        /// The network's members, or `none`.
        members: String,
    },
    /// Two VMs with one vsock CID.
    #[error("cid {cid} is already vm {other:?}'s (each guest needs its own)")]
    DuplicateCid {
        /// The CID.
        cid: u32,
        /// The VM that has it first.
        other: String,
    },
    /// A `[vsock] allow` pair naming a VM the system does not have.
    #[error("allow: {name:?} is not a VM of this system (VMs with vsock: {members})")]
    VsockUnknownVm {
        /// The name given.
        name: String,
        /// The VMs with `[vm.vsock]`, or `none`.
        members: String,
    },
    /// A `[vsock] allow` pair naming a VM without `[vm.vsock]`.
    #[error("allow: vm {0:?} has no [vm.vsock]")]
    VsockNotEnabled(String),
    /// A `[vsock] allow` pair given twice (in either order).
    #[error("allow: pair ({a:?}, {b:?}) is given twice (pairs are symmetric)")]
    VsockPairTwice {
        /// One VM.
        a: String,
        /// The other.
        b: String,
    },
    /// An allow pair of one member with itself.
    #[error("allow: pair ({0:?}, {0:?}) names the same member twice")]
    AllowSelf(String),
    /// An allow list naming the dynamic pool (`"pool"`) on a network that `[limits]
    /// networks` does not list (it has no pool ports).
    #[error(
        "allow: {name:?} names the dynamic pool's ports, and this network is not in [limits] networks (it has none)"
    )]
    PoolNotListed {
        /// The name given (`"pool"`).
        name: String,
    },
    /// A VM named like the pool's pseudo-member on a network of the dynamic pool.
    #[error(
        "vm {name:?} is attached to this network, which is in [limits] networks: {name:?} names the dynamic pool's ports in its allow list; rename the VM"
    )]
    PoolNameTaken {
        /// The VM's name (`"pool"`).
        name: String,
    },
    /// An uplink that is not `tap:<interface>`.
    #[error(
        "uplink: {0:?} is not \"tap:<interface>\" with an interface name of 1 to 15 of a-z A-Z 0-9 . _ -"
    )]
    BadUplink(String),
    /// A `[[vm.shared]]` naming a region that `[[shared]]` does not declare.
    #[error("region: {region:?} is not declared (declared: {declared})")]
    UnknownShared {
        /// The name given.
        region: String,
        /// The declared regions, or `none`.
        declared: String,
    },
    /// A `[[vm.control]]` naming a VM the system does not have.
    #[error("vm: {vm:?} is not a VM of this system (VMs: {declared})")]
    UnknownControlTarget {
        /// The name given.
        vm: String,
        /// The system's VMs.
        declared: String,
    },
    /// A `[[vm.control]]` naming the VM it is in.
    #[error("vm: {0:?} is this VM itself (a VM cannot control itself)")]
    ControlSelf(String),
    /// Two `[[vm.control]]` of one VM naming the same target.
    #[error("vm: {vm:?} is already controlled by control {first}")]
    ControlTwice {
        /// The target.
        vm: String,
        /// The earlier `[[vm.control]]` naming it.
        first: usize,
    },
    /// A `[[vm.control]]` with no rights.
    #[error("rights: empty (give at least one of \"start\", \"stop\", \"restart\", \"status\")")]
    NoRights,
    /// A right given twice in one `[[vm.control]]`.
    #[error("rights: {0:?} is given twice")]
    RightTwice(&'static str),
    /// A pool slot (`start = false`) that no VM may start.
    #[error(
        "start = false, but no VM holds the \"start\" right on it ([[vm.control]]), so nothing could ever start it"
    )]
    PoolSlotWithoutStarter,
    /// Two `[[shared]]` regions with the same name.
    #[error("name {0:?} is used by two shared regions")]
    DuplicateShared(String),
    /// One VM mapping one region twice.
    #[error("region: {region:?} is already mapped by shared {first}")]
    SharedTwice {
        /// The region.
        region: String,
        /// The VM's earlier mapping of it.
        first: usize,
    },
    /// A shared mapping overlapping RAM, the device window, another mapping or the limit.
    #[error("region {region:?} at {base:#x}+{size} overlaps {other}")]
    SharedOverlap {
        /// The region.
        region: String,
        /// The mapping's guest-physical base.
        base: u64,
        /// The region's size.
        size: crate::size::SizeDisplay,
        /// What it overlaps (`ram 0 (0x0+256 MiB)`, `the x86_64 device window ...`).
        other: String,
    },
    /// A `[[vm.shared]]` stating a size other than the region's.
    #[error("size: {given} does not match region {region:?}, declared with size {declared}")]
    SharedSizeMismatch {
        /// The region.
        region: String,
        /// The size the mapping states.
        given: crate::size::SizeDisplay,
        /// The declared size.
        declared: crate::size::SizeDisplay,
    },
    /// A declared region no VM maps.
    #[error("region {0:?} is mapped by no VM (add a [[vm.shared]] naming it, or remove it)")]
    SharedUnused(String),
    /// A last-level cache whose size, ways and 4 KiB pages give no usable colour count.
    #[error(
        "llc: {size} bytes / {ways} ways / 4 KiB pages = {colours} colours; the colour count must be a whole power of two in 2..=16384"
    )]
    LlcColours {
        /// `llc.size`.
        size: u64,
        /// `llc.ways`.
        ways: u32,
        /// What the division gives (rounded down).
        colours: u64,
    },
    /// `cache_colours` without `[system] llc`.
    #[error(
        "cache_colours: given, but [system] llc is not (the colour count comes from the last-level cache, e.g. llc = {{ size = \"1M\", ways = 16 }})"
    )]
    ColoursWithoutLlc,
    /// An empty `cache_colours` list.
    #[error("cache_colours: the list is empty (leave the key out for uncoloured RAM)")]
    NoColours,
    /// A colour the cache does not have.
    #[error("cache_colours: colour {colour} is out of range (the llc has {colours} colours: 0..={max})", max = colours.saturating_sub(1))]
    ColourOutOfRange {
        /// The colour given.
        colour: i64,
        /// The cache's colour count.
        colours: u64,
    },
    /// A colour listed twice in one VM.
    #[error("cache_colours: colour {0} is listed twice")]
    DuplicateColour(u32),
    /// Two VMs given one colour.
    #[error(
        "cache_colours: colour {colour} is also given to {other} (VMs sharing a colour share cache sets, which colouring is meant to prevent)"
    )]
    ColourShared {
        /// The colour.
        colour: u32,
        /// The other VM, e.g. `vm "a"`.
        other: String,
    },
    /// A `[[vm.passthrough]]` entry of the wrong shape.
    #[error("{0}")]
    PassthroughShape(&'static str),
    /// A passed-through range that is empty, unaligned, wraps, or lies outside what it must.
    #[error("{key} {base:#x}+{size:#x}: {reason}")]
    PassthroughRange {
        /// `mmio` or `dt_reg`.
        key: &'static str,
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A passed-through interrupt that is not an SPI, or listed twice.
    #[error("irqs: {irq}: {reason}")]
    PassthroughIrq {
        /// The INTID given.
        irq: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A passed-through range overlapping something else of the VM's guest-physical space
    /// (the message's place names the device).
    #[error("mmio {base:#x}+{size:#x} overlaps {other}")]
    PassthroughOverlap {
        /// The device.
        name: String,
        /// The range's base.
        base: u64,
        /// Its size.
        size: u64,
        /// What it overlaps (`ram 0 (0x40000000+256 MiB)`, ...).
        other: String,
    },
    /// One physical resource given to two owners.
    #[error("{what} is also owned by {other}; a device has one owner")]
    PassthroughTaken {
        /// The resource (`mmio page 0xa003000`, `irq 79`).
        what: String,
        /// The other owner (`vm "b": passthrough "disk"`).
        other: String,
    },
    /// A DMA-capable device in a VM whose RAM is not identity-mapped.
    #[error(
        "dma = \"identity\" needs the VM's RAM identity-mapped: set ram_phys_addr = {base:#x} (its guest-physical base){given}"
    )]
    DmaNotIdentity {
        /// The device.
        name: String,
        /// The RAM's guest-physical base.
        base: u64,
        /// `, not 0x...` when another address is given, else empty.
        given: String,
    },
    /// A `ram_phys_addr` that cannot be used.
    #[error("ram_phys_addr: {value:#x}: {reason}")]
    RamPhysAddr {
        /// The address given.
        value: u64,
        /// Why not.
        reason: &'static str,
    },
}

/// A served range that does not fit the storage VM's disk file ([`ErrorKind::ServedPastEnd`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "range [{start:#x}, {end:#x}) does not fit vm {server:?} disk {server_disk} ({path}, {len} bytes)"
)]
pub struct ServedPastEnd {
    /// The storage VM.
    pub server: String,
    /// Its disk.
    pub server_disk: usize,
    /// The disk's file.
    pub path: String,
    /// Its length.
    pub len: u64,
    /// First byte.
    pub start: u64,
    /// End.
    pub end: u64,
}
